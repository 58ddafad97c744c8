# SPDX-License-Identifier: GPL-2.0-only
"""Forwarded versus local traffic with real packets, three namespaces in a line:

    sender --veth-- receiver (ipt2xdp, forwarding on) --veth-- far

The ruleset drops UDP port 7777 in filter/INPUT and accepts it in filter/FORWARD. The receiver's
local destinations are a snapshot taken at import; when an address is later removed and routed to
`far`, XDP must not go on dropping its packets as INPUT's (they are forwarded now), and no
re-import may be needed. Controls: while the address is local XDP drops; with forwarding off the
stack would drop the packets anyway, and XDP does too.
"""
import json
import os
import socket
import sys
import time

import pytest

from ipt2xdp import netns
from tests.nsutil import inside

pytestmark = pytest.mark.kernel

PORT = 7777
RULES = f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport {PORT} -j DROP
-A FORWARD -p udp -m udp --dport {PORT} -j ACCEPT
COMMIT
"""


def ipt2xdp(ns, *args):
    return ns.run(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-m", "ipt2xdp", *args], check=False)


def status(ns) -> dict:
    return json.loads(ipt2xdp(ns, "status", "--json").stdout)


def forward_accepted(ns) -> int:
    out = ns.run(["iptables-nft", "-L", "FORWARD", "-v", "-n", "-x"]).stdout
    line = next(l for l in out.splitlines() if f"dpt:{PORT}" in l)
    return int(line.split()[0])


@pytest.fixture
def line():
    """(pair, far, far_if, moved address) with routes for the moved address through the receiver."""
    pair = netns.veth_pair()
    try:
        far = netns.create_namespace("far")
        pair._extra.append(far)
        octet = pair.receiver_ip.split(".")[2]
        tag = f"{os.getpid() % 10000}x{octet}"
        inner, outer = f"i2xi{tag}"[:15], f"i2xo{tag}"[:15]
        netns._run(["ip", "link", "add", inner, "netns", pair.receiver.name, "type", "veth",
                    "peer", "name", outer, "netns", far.name])
        moved = f"10.79.{octet}.1"
        pair.receiver.sh(f"ip addr add 10.78.{octet}.1/24 dev {inner} && ip link set {inner} up && "
                         f"ip addr add {moved}/32 dev {pair.receiver_if} && sysctl -qw net.ipv4.ip_forward=1")
        far.sh(f"ip addr add 10.78.{octet}.2/24 dev {outer} && ip link set {outer} up && "
               f"ip route add {pair.sender_ip}/32 via 10.78.{octet}.1")
        pair.sender.run(["ip", "route", "add", f"{moved}/32", "via", pair.receiver_ip])
        yield pair, far, outer, moved
    finally:
        from tests.nsutil import unload_and_close
        unload_and_close(pair)


def _move_to_far(pair, far, far_if, moved) -> None:
    """Remove the address from the receiver, give it to `far`, and route it there."""
    octet = moved.split(".")[2]
    pair.receiver.sh(f"ip addr del {moved}/32 dev {pair.receiver_if} && ip route add {moved}/32 via 10.78.{octet}.2")
    far.run(["ip", "addr", "add", f"{moved}/32", "dev", far_if])


def _send_and_count(pair, far, dst, count=5) -> int:
    """Send count UDP datagrams from the sender to dst:PORT; how many reach `far`."""
    with inside(far):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("0.0.0.0", PORT))
    rx.settimeout(0.5)
    with inside(pair.sender):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(count):
            tx.sendto(b"p%02d" % i, (dst, PORT))
        got = 0
        deadline = time.monotonic() + 2.0
        while got < count and time.monotonic() < deadline:
            try:
                rx.recv(100)
                got += 1
            except socket.timeout:
                break
        return got
    finally:
        tx.close()
        rx.close()


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_removed_address_is_forwarded_without_reimport(line, tmp_path, mode):
    pair, far, far_if, moved = line
    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    result = ipt2xdp(pair.receiver, "import", str(rules), "--iface", pair.receiver_if, "--mode", mode)
    assert result.returncode == 0, result.stderr

    # the address is local: INPUT's DROP applies and XDP takes it
    before = status(pair.receiver)
    assert _send_and_count(pair, far, moved) == 0
    after = status(pair.receiver)
    assert after["xdp_dropped_packets"] - before["xdp_dropped_packets"] == 5
    assert after["stats"]["not_local"] == before["stats"]["not_local"]

    # move the address to `far` and route it there: the receiver forwards, FORWARD accepts
    _move_to_far(pair, far, far_if, moved)
    forwarded0, before = forward_accepted(pair.receiver), status(pair.receiver)
    assert _send_and_count(pair, far, moved) == 5, "XDP dropped packets the kernel now forwards"
    after = status(pair.receiver)
    assert after["xdp_dropped_packets"] == before["xdp_dropped_packets"]
    assert after["stats"]["not_local"] - before["stats"]["not_local"] == 5
    assert forward_accepted(pair.receiver) - forwarded0 == 5

    # forwarding off: the stack drops what is not local, and so may XDP (the INPUT verdict)
    pair.receiver.run(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    before = status(pair.receiver)
    assert _send_and_count(pair, far, moved) == 0
    after = status(pair.receiver)
    assert after["xdp_dropped_packets"] - before["xdp_dropped_packets"] == 5


def test_forwarding_off_drops_without_xdp_too(line):
    """The control for the last step above: netfilter alone, forwarding off, address removed and
    routed away: the packets never reach `far` (the stack drops them before any hook decides)."""
    pair, far, far_if, moved = line
    pair.receiver.run(["iptables-nft-restore"], input=RULES)
    _move_to_far(pair, far, far_if, moved)
    pair.receiver.run(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    forwarded0 = forward_accepted(pair.receiver)
    assert _send_and_count(pair, far, moved) == 0
    assert forward_accepted(pair.receiver) == forwarded0
    pair.receiver.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    assert _send_and_count(pair, far, moved) == 5, "the set-up forwards once forwarding is on"
