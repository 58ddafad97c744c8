# SPDX-License-Identifier: GPL-2.0-only
"""A connection NATed by a conntrack expectation, not by a rule: found by the --nat work (s8-natcompat).

An FTP server on 198.51.100.10 is published at 198.51.100.20:21 (nat PREROUTING DNAT, the ftp helper
assigned in raw). nf_nat_ftp rewrites the server's PASV reply to announce .20 and sets up an
expectation whose first packet nf_nat_follow_master DNATs back to .10. So the data connection's
SYN, to 198.51.100.20:10000, leaves PREROUTING addressed to .10 without any nat rule matching it, and
is RELATED at filter/INPUT: `-d .20 ! --dport 21 -j DROP` does not see it, the RELATED accept takes it.
XDP sees .20 and no conntrack entry (an expectation is not an entry: bpf_xdp_ct_lookup cannot see it),
so neither the guards (no nat rule matches port 10000) nor NAT_FLOWS (TCP without an entry) stop
its DROP. Netfilter accepted, XDP dropped: an invariant violation, on both backends, until the
planner marked such plans (plan.nat_expectations: NAT and helpers) and the program took no TCP/UDP
drop for them (abi.NAT_EXPECT).

The control connection is a real TCP connection from the sender's kernel; the data SYN is sent from
AF_PACKET with a full checksum, as a remote client's NIC delivers it (a veth peer's kernel leaves
the checksum partial, which XDP cannot verify: the planner then keeps NEW and INVALID open and the
difference would hide). Accepted = conntrack confirmed an entry for it (only after filter/INPUT).
"""
import socket
import threading
import time

import pytest

from compat_tests import harness
from compat_tests.observe import inside

pytestmark = pytest.mark.kernel

SERVER, PUBLISHED, DATA_PORT = "198.51.100.10", "198.51.100.20", 10000
RULESET = f"""*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d {PUBLISHED}/32 -p tcp -m tcp --dport 21 -j DNAT --to-destination {SERVER}:21
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -d {PUBLISHED}/32 -p tcp -m tcp ! --dport 21 -j DROP
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 21 -j ACCEPT
COMMIT
"""


def _passive_data_syn(backend: str, attached: bool):
    """(the PASV reply the client got, whether the data connection's SYN was accepted)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    with harness.Testbed((SERVER, PUBLISHED)) as bed:
        bed.load(RULESET, backend)
        bed.sender.run(["ip", "route", "add", "198.51.100.0/24", "via", bed.pair.receiver_ip])
        if attached:
            harness.ipt2xdp_attach("native", reuse=False)(bed.receiver, bed.receiver_if, backend=backend)
        with inside(bed.receiver.path):
            control = socket.socket()
            control.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            control.bind((SERVER, 21))
            control.listen(1)
            # The data port listens: its SYN-ACK marks the entry SEEN_REPLY (a lone RST would kill it).
            data = socket.socket()
            data.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            data.bind((SERVER, DATA_PORT))
            data.listen(1)
        with inside(bed.sender.path):
            client = socket.socket()
            client.settimeout(5)
        served = threading.Event()

        def serve():
            conn, _ = control.accept()
            # nf_conntrack_ftp parses a line only after an earlier one in the same direction ended
            # (find_nl_seq): the greeting comes first, as from any FTP server.
            conn.sendall(b"220 ready\r\n")
            conn.recv(100)
            p1, p2 = DATA_PORT >> 8, DATA_PORT & 0xFF
            conn.sendall(f"227 Entering Passive Mode ({SERVER.replace('.', ',')},{p1},{p2}).\r\n".encode())
            served.wait(5)
            conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        ends = None
        try:
            client.connect((PUBLISHED, 21))
            client.recv(100)
            client.sendall(b"PASV\r\n")
            reply = client.recv(200).decode()
            ends = bed.endpoints({6})
            syn = IP(src=bed.pair.sender_ip, dst=PUBLISHED) / TCP(sport=40000, dport=DATA_PORT, flags="S", seq=1000)
            ends.tx.send(bytes(Ether(dst=ends.receiver_mac, src=ends.sender_mac) / syn))
            time.sleep(0.3)
            listed = bed.receiver.run(["conntrack", "-L", "-p", "tcp", "--sport", "40000"], check=False).stdout
            return reply, f"dport={DATA_PORT}" in listed
        finally:
            served.set()
            thread.join(5)
            client.close()
            control.close()
            data.close()
            if ends is not None:
                ends.close()


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_netfilter_accepts_the_data_connection_an_expectation_dnats(backend):
    reply, accepted = _passive_data_syn(backend, attached=False)
    assert "(198,51,100,20,39,16)" in reply  # nf_nat_ftp announced the published address
    assert accepted


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_xdp_passes_the_data_connection_an_expectation_dnats(backend):
    # fixed by abi.NAT_EXPECT (plan.nat_expectations): with helpers and NAT, no TCP/UDP drop in XDP
    _, accepted = _passive_data_syn(backend, attached=True)
    assert accepted
