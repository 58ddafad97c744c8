# SPDX-License-Identifier: GPL-2.0-only
"""NEW versus INVALID for packets without a conntrack entry, against the kernel.

The same crafted packets (raw socket, so their L4 checksums arrive as written) are sent to closed
ports of a receiver whose ruleset counts INVALID packets with a LOG rule before a DROP policy:
first with netfilter alone, then with ipt2xdp attached. XDP must drop exactly the packets
conntrack makes NEW (valid checksum, SYN; ACK when nf_conntrack_tcp_loose=1; UDP) and hand every
packet conntrack may find INVALID (bad checksum, bad UDP length, SYN+FIN, short data offset, ACK
with tcp_loose=0) to netfilter: the INVALID rule's counter must move exactly as without XDP.
"""
import json
import socket
import struct
import sys
import time

import pytest
from scapy.all import IP, TCP, UDP, raw

from ipt2xdp import netns
from tests.nsutil import inside, unload_and_close

pytestmark = pytest.mark.kernel

RULES = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j LOG --log-prefix "invalid: "
-A INPUT -p tcp -m tcp --dport 8080 -m state --state NEW -j ACCEPT
COMMIT
"""


def _bad_checksum(packet: bytes) -> bytes:
    at = 20 + (16 if packet[9] == 6 else 6)
    return packet[:at] + bytes([packet[at] ^ 0xFF]) + packet[at + 1:]


def _udp_length(packet: bytes, length: int) -> bytes:
    """The UDP length field rewritten, the checksum made valid again over the whole IP payload."""
    buf = bytearray(packet)
    struct.pack_into("!HH", buf, 24, length, 0)
    l4 = bytes(buf[20:])
    data = bytes(buf[12:20]) + struct.pack("!BBH", 0, 17, len(l4)) + l4 + (b"\0" if len(l4) % 2 else b"")
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", buf, 26, (~total & 0xFFFF) or 0xFFFF)
    return bytes(buf)


def probes(src, dst):
    """(description, IP packet, conntrack's verdict: 'new' or 'invalid') with tcp_loose=1."""
    def tcp(sport, flags, **kw):
        return raw(IP(src=src, dst=dst) / TCP(sport=sport, dport=31337, flags=flags, seq=1000 + sport, **kw))

    def udp(sport, payload=b"probe!!!", **kw):
        return raw(IP(src=src, dst=dst) / UDP(sport=sport, dport=31338, **kw) / payload)

    return [
        ("SYN", tcp(41001, "S"), "new"),
        ("SYN with ECE and CWR", tcp(41002, "SEC"), "new"),
        ("SYN with 301 bytes of data", raw(IP(src=src, dst=dst) / TCP(sport=41003, dport=31337, flags="S") /
                                           (b"d" * 301)), "new"),
        ("ACK (picked up with tcp_loose=1)", tcp(41004, "A"), "new"),
        ("UDP", udp(41005), "new"),
        ("UDP without a checksum", udp(41006, chksum=0), "new"),
        ("SYN, bad checksum", _bad_checksum(tcp(41101, "S")), "invalid"),
        ("SYN+FIN", tcp(41102, "SF"), "invalid"),
        ("SYN+ACK", tcp(41103, "SA"), "invalid"),
        ("RST", tcp(41104, "R"), "invalid"),
        ("SYN, data offset 4", tcp(41105, "S", dataofs=4), "invalid"),
        ("UDP, bad checksum", _bad_checksum(udp(41106)), "invalid"),
        ("UDP, length beyond the payload", _udp_length(udp(41107), 40), "invalid"),
    ]


def ipt2xdp(ns, *args):
    return ns.run(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-m", "ipt2xdp", *args], check=False)


def counters(ns):
    """(INVALID rule packets, policy packets) from netfilter's own counters."""
    lines = ns.run(["iptables-nft", "-L", "INPUT", "-v", "-n", "-x"]).stdout.splitlines()
    policy = int(lines[0].split("policy DROP ")[1].split()[0])
    invalid = next(int(line.split()[0]) for line in lines[2:] if "ctstate INVALID" in line)
    return invalid, policy


def xdp_dropped(ns) -> int:
    return json.loads(ipt2xdp(ns, "status", "--json").stdout)["xdp_dropped_packets"]


def send(ns, dst, packets):
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for packet in packets:
            s.sendto(packet, (dst, 0))
    finally:
        s.close()
    time.sleep(0.3)


def measure(rx, tx, dst, packets):
    before = counters(rx)
    send(tx, dst, packets)
    after = counters(rx)
    return after[0] - before[0], after[1] - before[1]


@pytest.mark.parametrize("mode,loose", [("native", 1), ("generic", 1), ("native", 0)])
def test_invalid_counts_as_without_xdp(tmp_path, mode, loose):
    pair = netns.veth_pair()
    try:
        rx, tx = pair.receiver, pair.sender
        rules = tmp_path / "rules.v4"
        rules.write_text(RULES)
        rx.run(["iptables-nft-restore", str(rules)])
        rx.run(["sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_loose={loose}"])
        rx.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_checksum=1"])
        cases = probes(pair.sender_ip, pair.receiver_ip)
        if not loose:  # an ACK without an entry is not picked up: INVALID
            cases = [(d, p, "invalid" if d.startswith("ACK") else v) for d, p, v in cases]
        packets = [p for _, p, _ in cases]
        invalid = sum(v == "invalid" for _, _, v in cases)

        # netfilter alone: every probe meets the policy, the INVALID ones the LOG rule first
        alone = measure(rx, tx, pair.receiver_ip, packets)
        assert alone == (invalid, len(packets)), f"netfilter alone: {alone}, probes {[d for d, _, _ in cases]}"
        for description, packet, verdict in cases:  # and one by one, so a wrong expectation is named
            got = measure(rx, tx, pair.receiver_ip, [packet])
            assert got == ((1, 1) if verdict == "invalid" else (0, 1)), f"{description}: netfilter alone {got}"

        result = ipt2xdp(rx, "import", str(rules), "--iface", pair.receiver_if, "--mode", mode)
        assert result.returncode == 0, result.stderr
        dropped0 = xdp_dropped(rx)
        with_xdp = measure(rx, tx, pair.receiver_ip, packets)
        # the INVALID rule counts exactly as before; XDP dropped the NEW ones before netfilter
        assert with_xdp == (invalid, invalid), f"with XDP: {with_xdp}"
        assert xdp_dropped(rx) - dropped0 == len(packets) - invalid
        for description, packet, verdict in cases:
            got = measure(rx, tx, pair.receiver_ip, [packet])
            assert got == ((1, 1) if verdict == "invalid" else (0, 0)), f"{description}: with XDP {got}"
    finally:
        unload_and_close(pair)
