# SPDX-License-Identifier: GPL-2.0-only
"""Connection state with real flows in namespaces: the XDP program asks conntrack
(bpf_xdp_ct_lookup), so a ruleset that starts with ESTABLISHED,RELATED -j ACCEPT keeps its
established flows, still drops NEW traffic to closed ports in the driver, lets ICMP errors for
existing flows through, and answers UDP requests both ways."""
import json
import socket
import sys
import time

import pytest

from ipt2xdp import netns
from tests.nsutil import inside

pytestmark = pytest.mark.kernel

RULES = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m tcp --dport 8080 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p udp -m udp --dport 5353 -j ACCEPT
COMMIT
"""
# In force before the connections are opened, so that conntrack tracks them (it starts in a
# namespace only once a rule needs it).
BEFORE = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""


def ipt2xdp(ns, *args):
    return ns.run(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-m", "ipt2xdp", *args], check=False)


def policy_packets(ns) -> int:
    first = ns.run(["iptables-nft", "-L", "INPUT", "-v", "-n", "-x"]).stdout.splitlines()[0]
    return int(first.split("policy DROP ")[1].split()[0])


def xdp_dropped(ns) -> int:
    return json.loads(ipt2xdp(ns, "status", "--json").stdout)["xdp_dropped_packets"]


def sock(ns, kind, bind=None, timeout=2.0):
    with inside(ns):
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if bind is not None:
            s.bind(bind)
    s.settimeout(timeout)
    return s


@pytest.fixture
def pair():
    with netns.veth_pair() as p:
        yield p


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_conntrack_flows(pair, tmp_path, mode):
    rx, tx = pair.receiver, pair.sender
    before = tmp_path / "before.v4"
    before.write_text(BEFORE)
    rx.run(["iptables-nft-restore", str(before)])

    # flow A: sender -> receiver:8080 (an accepted port); flow B: receiver -> sender:9000 (its
    # replies are only accepted as ESTABLISHED); both opened before the import
    listen_a = sock(rx, socket.SOCK_STREAM, ("0.0.0.0", 8080))
    listen_a.listen(4)
    client_a = sock(tx, socket.SOCK_STREAM)
    client_a.connect((pair.receiver_ip, 8080))
    server_a, _ = listen_a.accept()
    server_a.settimeout(2.0)
    listen_b = sock(tx, socket.SOCK_STREAM, ("0.0.0.0", 9000))
    listen_b.listen(4)
    client_b = sock(rx, socket.SOCK_STREAM)
    client_b.connect((pair.sender_ip, 9000))
    server_b, _ = listen_b.accept()
    server_b.settimeout(2.0)
    client_a.sendall(b"hello")
    assert server_a.recv(100) == b"hello"

    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    result = ipt2xdp(rx, "import", str(rules), "--iface", pair.receiver_if, "--mode", mode)
    assert result.returncode == 0, result.stderr
    policy0, dropped0 = policy_packets(rx), xdp_dropped(rx)

    # established flows keep working in both directions
    for i in range(20):
        client_a.sendall(b"a%02d" % i)
        assert server_a.recv(100) == b"a%02d" % i
        server_a.sendall(b"r%02d" % i)
        assert client_a.recv(100) == b"r%02d" % i
        server_b.sendall(b"b%02d" % i)  # arrives at the receiver on an ephemeral port
        assert client_b.recv(100) == b"b%02d" % i
        client_b.sendall(b"c%02d" % i)
        assert server_b.recv(100) == b"c%02d" % i

    # UDP request/response both ways: to the accepted port, and the receiver as a client
    udp_server = sock(rx, socket.SOCK_DGRAM, ("0.0.0.0", 5353))
    udp_client = sock(tx, socket.SOCK_DGRAM)
    udp_client.sendto(b"q", (pair.receiver_ip, 5353))
    data, peer = udp_server.recvfrom(100)
    udp_server.sendto(b"answer", peer)
    assert udp_client.recv(100) == b"answer"
    echo = sock(tx, socket.SOCK_DGRAM, ("0.0.0.0", 6000))
    asker = sock(rx, socket.SOCK_DGRAM)
    asker.sendto(b"ping", (pair.sender_ip, 6000))
    data, peer = echo.recvfrom(100)
    echo.sendto(b"pong", peer)
    assert asker.recv(100) == b"pong"

    # an ICMP error for an existing flow (port unreachable for the receiver's UDP) gets through
    refused = sock(rx, socket.SOCK_DGRAM, timeout=3.0)
    refused.connect((pair.sender_ip, 6999))
    refused.send(b"x")
    with pytest.raises(ConnectionRefusedError):
        refused.recv(100)
    assert policy_packets(rx) == policy0, "nothing so far met the policy"

    # NEW traffic to closed ports dies in XDP: netfilter's policy never sees it
    dropped_before = xdp_dropped(rx)
    assert dropped_before >= dropped0
    probe = sock(tx, socket.SOCK_DGRAM)
    for _ in range(10):
        probe.sendto(b"x" * 16, (pair.receiver_ip, 7001))
    syn = sock(tx, socket.SOCK_STREAM, timeout=1.5)
    with pytest.raises(OSError):
        syn.connect((pair.receiver_ip, 7000))  # SYN and retransmits, all dropped
    time.sleep(0.2)
    assert xdp_dropped(rx) >= dropped_before + 11
    assert policy_packets(rx) == policy0

    # and flows still work afterwards
    client_a.sendall(b"end")
    assert server_a.recv(100) == b"end"
    for s in (listen_a, client_a, server_a, listen_b, client_b, server_b, udp_server, udp_client, echo, asker,
              refused, probe, syn):
        s.close()
