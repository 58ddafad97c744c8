# SPDX-License-Identifier: GPL-2.0-only
"""The packet language of `ipt2xdp explain --packet`: good specs in canonical form, bad ones with the
column of the offending word, and the bytes built from a spec read back by an independent parser."""
import pytest

from ipt2xdp.errors import ParseError, render_diagnostics
from ipt2xdp.packetspec import from_ipv4, parse_packet, to_frame

GOOD = [
    ("tcp 198.51.100.7:4242 > 10.0.0.1:22 flags S iface eth0",
     "tcp 198.51.100.7:4242 > 10.0.0.1:22 flags S iface eth0 ct none"),
    ("tcp 198.51.100.7 > 10.0.0.1:ssh", "tcp 198.51.100.7:40000 > 10.0.0.1:22 flags S ct none"),
    ("tcp 1.2.3.4:1>5.6.7.8:2 flags SYN,ACK", "tcp 1.2.3.4:1 > 5.6.7.8:2 flags SA ct none"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 flags none", "tcp 1.2.3.4:1 > 5.6.7.8:2 flags none ct none"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 flags fsrpau", "tcp 1.2.3.4:1 > 5.6.7.8:2 flags FSRPAU ct none"),
    ("udp 192.0.2.9:53 > 10.0.0.1:5353 ct ESTABLISHED", "udp 192.0.2.9:53 > 10.0.0.1:5353 ct established"),
    ("icmp 192.0.2.9 > 10.0.0.1", "icmp 192.0.2.9 > 10.0.0.1 type 8 code 0 ct none"),
    ("icmp 192.0.2.9 > 10.0.0.1 type port-unreachable ct related",
     "icmp 192.0.2.9 > 10.0.0.1 type 3 code 3 ct related"),
    ("icmp 192.0.2.9 > 10.0.0.1 code 4 type 3", "icmp 192.0.2.9 > 10.0.0.1 type 3 code 4 ct none"),
    ("47 192.0.2.9 > 10.0.0.1", "gre 192.0.2.9 > 10.0.0.1 ct none"),
    ("esp 192.0.2.9 > 10.0.0.1 iface bond0.12 frag more", "esp 192.0.2.9 > 10.0.0.1 iface bond0.12 ct none frag more"),
    ("udp 192.0.2.9:1 > 10.0.0.1:2 ct untracked frag first",
     "udp 192.0.2.9:1 > 10.0.0.1:2 ct untracked frag first"),
]


@pytest.mark.parametrize("text, canonical", GOOD)
def test_good_specs_and_their_canonical_form(text, canonical):
    spec = parse_packet(text)
    assert str(spec) == canonical
    assert parse_packet(str(spec)) == spec  # the canonical form reads back to the same packet


BAD = [  # spec, column, message fragment
    ("", 1, "empty packet"),
    ("foo 1.2.3.4 > 5.6.7.8", 1, "unknown protocol 'foo'"),
    ("all 1.2.3.4 > 5.6.7.8", 1, "unknown protocol 'all'"),
    ("tcp", 5, "source address expected"),
    ("tcp 1.2.3.400:1 > 5.6.7.8:22", 5, "invalid source address '1.2.3.400'"),
    ("tcp 1.2.3.4:1 5.6.7.8:22", 15, "'>' expected"),
    ("tcp 1.2.3.4:1 >", 17, "destination address expected"),
    ("tcp 1.2.3.4:1 > 5.6.7.8", 17, "tcp needs a destination port"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:65536", 25, "invalid destination port '65536'"),
    ("tcp 1.2.3.4:nosuchservice > 5.6.7.8:1", 13, "invalid source port"),
    ("icmp 1.2.3.4:5 > 5.6.7.8", 14, "icmp has no ports"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 flags SX", 34, "unknown TCP flag 'X'"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 flags SYN,BAD", 37, "unknown TCP flag 'BAD'"),
    ("udp 1.2.3.4:1 > 5.6.7.8:2 flags S", 27, "flags are for tcp only"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 type 3", 27, "type is for icmp only"),
    ("icmp 1.2.3.4 > 5.6.7.8 type bogus", 29, "unknown ICMP type 'bogus'"),
    ("icmp 1.2.3.4 > 5.6.7.8 code 256", 29, "invalid ICMP code '256'"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 ct", 29, "'ct' needs a value"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 ct iface eth0", 29, "'ct' needs a value"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 ct maybe", 30, "unknown conntrack state 'maybe'"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 frag middle", 32, "unknown fragment kind 'middle'"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 ct new ct new", 34, "'ct' given twice"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 bogus 3", 27, "unexpected 'bogus'"),
    ("tcp 1.2.3.4:1 > 5.6.7.8:2 iface a/b", 33, "invalid device name"),
]


@pytest.mark.parametrize("text, col, message", BAD)
def test_bad_specs_point_at_the_column(text, col, message):
    with pytest.raises(ParseError) as caught:
        parse_packet(text)
    diagnostic = caught.value.diagnostics[0]
    assert caught.value.exit_code == 2
    assert message in diagnostic.message
    assert (diagnostic.span.path, diagnostic.span.line, diagnostic.span.col) == ("<packet>", 1, col)
    rendered = render_diagnostics(caught.value.diagnostics, caught.value.source_lines).splitlines()
    assert rendered[0].startswith(f"<packet>:1:{col}: error: ")
    assert rendered[1] == "  " + text
    assert rendered[2].index("^") == 2 + col - 1  # the caret sits under the column


FRAMES = ["tcp 198.51.100.7:4242 > 10.0.0.1:22 flags SA", "udp 192.0.2.9:53 > 10.0.0.1:5353",
          "icmp 192.0.2.9 > 10.0.0.1 type 3 code 1", "gre 192.0.2.9 > 10.0.0.1"]


@pytest.mark.parametrize("text", FRAMES)
def test_frames_are_valid_packets_scapy_reads_back(text):
    from scapy.all import ICMP, IP, TCP, UDP, Ether

    spec = parse_packet(text)
    frame = to_frame(spec)
    packet = Ether(frame)
    ip = packet[IP]
    assert (ip.src, ip.dst, ip.proto, ip.ihl, ip.flags.value, ip.frag) == (spec.src, spec.dst, spec.proto, 5, 0, 0)
    rebuilt = IP(bytes(ip))
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == ip.chksum  # scapy computes the same IP checksum
    if spec.proto == 6:
        assert (packet[TCP].sport, packet[TCP].dport, int(packet[TCP].flags)) == (4242, 22, 0x12)
        layer = packet[TCP]
    elif spec.proto == 17:
        assert (packet[UDP].sport, packet[UDP].dport) == (53, 5353)
        layer = packet[UDP]
    elif spec.proto == 1:
        assert (packet[ICMP].type, packet[ICMP].code) == (3, 1)
        layer = packet[ICMP]
    else:
        return
    checksum = layer.chksum
    del layer.chksum
    assert IP(bytes(packet[IP])).getlayer(type(layer)).chksum == checksum
    assert from_ipv4(frame[14:], spec.iface) == spec


def test_from_ipv4_reads_fragments_and_refuses_what_the_language_cannot_say():
    from scapy.all import IP, TCP, UDP, raw

    assert from_ipv4(raw(IP(src="1.1.1.1", dst="2.2.2.2", flags="MF") / UDP(sport=1, dport=2))).frag == "first"
    assert from_ipv4(raw(IP(src="1.1.1.1", dst="2.2.2.2", flags="MF", frag=5, proto=17) / (b"x" * 8))).frag == "more"
    assert from_ipv4(raw(IP(src="1.1.1.1", dst="2.2.2.2", frag=5, proto=17) / (b"x" * 8))).frag == "last"
    assert from_ipv4(raw(IP(src="1.1.1.1", dst="2.2.2.2", options=b"\x01\x01\x01\x00") / TCP())) is None
    assert from_ipv4(raw(IP(src="1.1.1.1", dst="2.2.2.2") / TCP())[:30]) is None  # truncated TCP header
