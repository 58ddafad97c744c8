# SPDX-License-Identifier: GPL-2.0-only
"""The drops nat PREROUTING would have seen (gen_config.nat_new): counted on abi.NAT_NEW_COUNTER
beside their rule when the packet makes a new conntrack entry, on their rule alone when it does not,
and passed to netfilter when XDP cannot tell. Expectations from nf_nat_inet_fn (nat runs for a new
entry only), tcp_new/udp and icmp_new (which packets make one) and tcp_error (PSH is masked)."""
import pytest
from scapy.all import IP, UDP, Ether, raw

from ipt2xdp import abi
from ipt2xdp.classifier import ACCEPT, DROP, ClassifierRule, IntervalSet, Match
from ipt2xdp.compile import compile
from tests.bpf.packets import icmp, proto, tcp, udp

XDP_DROP, XDP_PASS = 1, 2
RULE = 7
NAT = abi.NAT_NEW_COUNTER
NEW, NOT_NEW, UNSURE = "new", "not new", "unsure"


def _bad_udp_checksum(packet: bytes) -> bytes:
    return packet[:40] + bytes([packet[40] ^ 0x01]) + packet[41:]


CASES = [
    ("UDP without an entry makes one", udp("1.2.3.4", 53), NEW, NEW),
    ("UDP checksum 0 is not checked", raw(Ether() / IP(src="1.2.3.4", dst="192.0.2.1") / UDP(sport=1, dport=53,
                                                                                           chksum=0) / b"z"), NEW, NEW),
    ("UDP with a bad checksum: unverified", _bad_udp_checksum(udp("1.2.3.4", 53)), UNSURE, UNSURE),
    ("TCP SYN starts a connection", tcp("1.2.3.4", 80, flags="S"), NEW, NEW),
    ("TCP SYN|PSH|URG: PSH is masked", tcp("1.2.3.4", 80, flags="SPU"), NEW, NEW),
    ("TCP ACK: picked up only with tcp_loose", tcp("1.2.3.4", 80, flags="A"), NOT_NEW, NEW),
    ("TCP RST is refused", tcp("1.2.3.4", 80, flags="R"), NOT_NEW, NOT_NEW),
    ("TCP SYN|ACK is refused without an entry", tcp("1.2.3.4", 80, flags="SA"), NOT_NEW, NOT_NEW),
    ("ICMP echo request may belong to an entry XDP cannot look up", icmp("1.2.3.4", 8), UNSURE, UNSURE),
    ("ICMP echo reply never makes an entry", icmp("1.2.3.4", 0), NOT_NEW, NOT_NEW),
    ("ICMP port unreachable is RELATED or INVALID", icmp("1.2.3.4", 3, 3), NOT_NEW, NOT_NEW),
    ("GRE may belong to an entry XDP cannot look up", proto("1.2.3.4", 47), UNSURE, UNSURE),
]


def _run(dataplane, nat_new, packet, match=Match()):
    tables = compile([ClassifierRule(match, DROP, RULE)], ACCEPT, nat_new=nat_new)
    dataplane.apply_generation(tables)
    got, _ = dataplane.test_run(packet, ingress_ifindex=1)
    return got, {k for k, v in dataplane.read_counters().items() if v[0]}, tables.fast_path is not None


@pytest.mark.parametrize("loose", [False, True], ids=["strict", "tcp_loose"])
@pytest.mark.parametrize("description,packet,strict,with_loose", CASES, ids=[c[0] for c in CASES])
def test_which_drops_nat_prerouting_would_have_seen(dataplane, description, packet, strict, with_loose, loose):
    bits = abi.NAT_NEW_ON | (abi.NAT_NEW_TCP_LOOSE if loose else 0)
    want = with_loose if loose else strict
    got, counted, _ = _run(dataplane, bits, packet)
    expected = {NEW: (XDP_DROP, {RULE, NAT}), NOT_NEW: (XDP_DROP, {RULE}), UNSURE: (XDP_PASS, set())}[want]
    assert (got, counted) == expected, description


@pytest.mark.parametrize("description,packet,strict,with_loose", CASES, ids=[c[0] for c in CASES])
def test_a_blocklist_fast_path_drop_is_judged_the_same(dataplane, description, packet, strict, with_loose):
    """A source-only DROP is decided by the fast path, before the class keys are computed: what
    nat_would_see reads must still be set for it."""
    got, counted, fast = _run(dataplane, abi.NAT_NEW_ON, packet, Match(src=IntervalSet.single(0x01020304)))
    assert fast, "the rule should be on the blocklist fast path"
    expected = {NEW: (XDP_DROP, {RULE, NAT}), NOT_NEW: (XDP_DROP, {RULE}), UNSURE: (XDP_PASS, set())}[strict]
    assert (got, counted) == expected, description


def test_off_the_program_drops_and_counts_as_before(dataplane):
    for packet in (icmp("1.2.3.4", 8), udp("1.2.3.4", 53), proto("1.2.3.4", 47)):
        assert _run(dataplane, 0, packet)[:2] == (XDP_DROP, {RULE})


def test_a_packet_of_a_known_flow_is_not_seen_by_nat(dataplane, routing_namespace):
    routing_namespace.run(["conntrack", "-I", "-p", "udp", "-s", "1.2.3.4", "-d", "192.0.2.1", "--sport", "40000",
                           "--dport", "53", "-t", "60", "-u", "SEEN_REPLY"])
    try:
        assert _run(dataplane, abi.NAT_NEW_ON, udp("1.2.3.4", 53))[:2] == (XDP_DROP, {RULE})
        assert _run(dataplane, abi.NAT_NEW_ON, udp("1.2.3.4", 54))[:2] == (XDP_DROP, {RULE, NAT})
        # the same through the blocklist fast path
        fast = Match(src=IntervalSet.single(0x01020304))
        assert _run(dataplane, abi.NAT_NEW_ON, udp("1.2.3.4", 53), fast) == (XDP_DROP, {RULE}, True)
        assert _run(dataplane, abi.NAT_NEW_ON, udp("1.2.3.4", 54), fast) == (XDP_DROP, {RULE, NAT}, True)
    finally:
        routing_namespace.run(["conntrack", "-F"], check=False)
