# SPDX-License-Identifier: GPL-2.0-only
"""BPF_PROG_TEST_RUN tables over the compiled program (katran fixture style): each case has a
description, a packet, the expected XDP verdict and the counter that must rise (None: a
structural pass that no rule counts)."""
import random
import struct

import pytest
from scapy.all import ARP, ICMP, IP, TCP, UDP, Dot1Q, Ether, IPv6, raw

from ipt2xdp import abi
from ipt2xdp.classifier import (ACCEPT, CONTINUE, DEFER, DROP, ClassifierRule, CtClass, IntervalSet, Match,
                                PacketKey, U32_MAX, evaluate)
from ipt2xdp.compile import compile
from tests.bpf.packets import icmp, patch_ip, proto, tcp, udp

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
DEFAULT = abi.DEFAULT_COUNTER


def cidr(text):
    return IntervalSet.cidr(text)


def ports(lo, hi=None):
    return IntervalSet.range(lo, lo if hi is None else hi)


TCP_, UDP_, ICMP_ = frozenset({6}), frozenset({17}), frozenset({1})

RULES = [
    ClassifierRule(Match(src=cidr("10.0.0.0/8"), proto=TCP_, dport=ports(22)), DROP, 100),                   # 0
    ClassifierRule(Match(proto=UDP_, dport=ports(53)), ACCEPT, 101),                                          # 1
    ClassifierRule(Match(proto=UDP_, sport=ports(1000, 2000)), DROP, 102),                                    # 2
    ClassifierRule(Match(src=cidr("192.168.0.0/16").complement(U32_MAX), proto=TCP_, dport=ports(80)), DROP, 103),
    ClassifierRule(Match(proto=ICMP_, icmp=IntervalSet.range(8 * 256, 8 * 256 + 255)), DROP, 104),            # 4
    ClassifierRule(Match(proto=TCP_, dport=ports(443), tcp_flags=frozenset({0x02})), CONTINUE(7), 105),       # 5
    ClassifierRule(Match(proto=TCP_, dport=ports(443)), DROP, 106),                                           # 6
    ClassifierRule(Match(proto=TCP_, dport=ports(443)), DEFER, 107),                                          # 7
    ClassifierRule(Match(iif=frozenset({1}), proto=frozenset({47})), DROP, 108),                              # 8
] + [
    ClassifierRule(Match(src=cidr(f"203.0.113.{i}/32")), DROP, 200 + i) for i in range(10)                    # 9..18
] + [
    ClassifierRule(Match(proto=TCP_, dport=ports(8080)), ACCEPT, 110),                                        # 19
    ClassifierRule(Match(dst=cidr("198.51.100.0/24")), DROP, 111),                                            # 20
    ClassifierRule(Match(src=cidr("172.16.0.0/12"), proto=TCP_, tcp_flags=frozenset({0x02, 0x12})), DROP, 112),
]

E = Ether()
CASES = [
    # structural passes: never counted by a rule
    ("IPv6 is passed", raw(E / IPv6() / TCP(dport=22)), XDP_PASS, None),
    ("ARP is passed", raw(E / ARP()), XDP_PASS, None),
    ("VLAN-tagged IPv4 is passed", raw(E / Dot1Q(vlan=5) / IP(src="10.1.1.1", dst="192.0.2.1") / TCP(dport=22)),
     XDP_PASS, None),
    ("QinQ-tagged IPv4 is passed", raw(Ether(type=0x88A8) / Dot1Q(vlan=5) / Dot1Q(vlan=6) /
                                      IP(src="10.1.1.1") / TCP(dport=22)), XDP_PASS, None),
    # (BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, so that case cannot be run)
    ("bare Ethernet header with the IPv4 ethertype", raw(Ether(type=0x0800)), XDP_PASS, None),
    ("IPv4 header truncated", tcp("10.1.1.1", 22)[:14 + 12], XDP_PASS, None),
    ("ihl 4 is malformed", patch_ip(tcp("10.1.1.1", 22), 0, "B", 0x44), XDP_PASS, None),
    ("version 6 in an IPv4 ethertype", patch_ip(tcp("10.1.1.1", 22), 0, "B", 0x65), XDP_PASS, None),
    ("tot_len beyond the frame", patch_ip(tcp("10.1.1.1", 22), 2, "!H", 200), XDP_PASS, None),
    ("tot_len below the header", patch_ip(tcp("10.1.1.1", 22), 2, "!H", 16), XDP_PASS, None),
    ("TCP header cut by tot_len (frame padded)", patch_ip(tcp("10.1.1.1", 22), 2, "!H", 30), XDP_PASS, None),
    ("first fragment (MF)", tcp("10.1.1.1", 22, flags="A") and raw(E / IP(src="10.1.1.1", flags="MF") / TCP(dport=22)),
     XDP_PASS, None),
    ("later fragment (offset)", raw(E / IP(src="10.1.1.1", frag=10, proto=6) / (b"\0" * 20)), XDP_PASS, None),
    ("truncated TCP header", tcp("10.1.1.1", 22)[:14 + 20 + 12], XDP_PASS, None),
    ("TCP data offset 4", raw(E / IP(src="10.1.1.1") / TCP(dport=22, dataofs=4)), XDP_PASS, None),
    ("truncated UDP header", udp("1.1.1.1", 53)[:14 + 20 + 6], XDP_PASS, None),
    ("truncated ICMP header", icmp("1.1.1.1", 8)[:14 + 20 + 4], XDP_PASS, None),
    # rules, first match
    ("tcp/22 from 10/8 hits rule 0 (DROP)", tcp("10.1.2.3", 22), XDP_DROP, 100),
    # The stack handles IP options before filter/INPUT (ICMP parameter problem, source routes):
    # such packets go to netfilter even when a rule would match.
    ("tcp/22 with IP options is passed", raw(E / IP(src="10.1.2.3", dst="192.0.2.1", options=b"\x01\x01\x01\x00") /
                                              TCP(dport=22)), XDP_PASS, None),
    ("tcp/22 from 11/8 falls to the default", tcp("11.0.0.1", 22), XDP_PASS, DEFAULT),
    ("tcp/22 from 10.255.255.255 (prefix end)", tcp("10.255.255.255", 22), XDP_DROP, 100),
    ("tcp/22 from 9.255.255.255 (just below)", tcp("9.255.255.255", 22), XDP_PASS, DEFAULT),
    ("udp/22 from 10/8: protocol mismatch", udp("10.1.2.3", 22), XDP_PASS, DEFAULT),
    ("udp/53 accepted by rule 1", udp("1.2.3.4", 53), XDP_PASS, 101),
    ("udp/53 padded to 60 bytes still classified", udp("1.2.3.4", 53) + b"\0" * 8, XDP_PASS, 101),
    ("udp sport 1000 (range start) dropped", udp("1.2.3.4", 9, sport=1000), XDP_DROP, 102),
    ("udp sport 2000 (range end) dropped", udp("1.2.3.4", 9, sport=2000), XDP_DROP, 102),
    ("udp sport 999 not in range", udp("1.2.3.4", 9, sport=999), XDP_PASS, DEFAULT),
    ("udp sport 2001 not in range", udp("1.2.3.4", 9, sport=2001), XDP_PASS, DEFAULT),
    ("udp/53 with sport 1500: rule 1 first", udp("1.2.3.4", 53, sport=1500), XDP_PASS, 101),
    ("tcp/80 from outside 192.168/16 (negation)", tcp("8.8.8.8", 80), XDP_DROP, 103),
    ("tcp/80 from 192.168.1.1 (negated away)", tcp("192.168.1.1", 80), XDP_PASS, DEFAULT),
    ("tcp/80 from 192.167.255.255 (below the hole)", tcp("192.167.255.255", 80), XDP_DROP, 103),
    ("tcp/80 from 192.169.0.0 (above the hole)", tcp("192.169.0.0", 80), XDP_DROP, 103),
    ("icmp echo request dropped", icmp("1.2.3.4", 8), XDP_DROP, 104),
    ("icmp echo request code 3 dropped", icmp("1.2.3.4", 8, 3), XDP_DROP, 104),
    ("icmp echo reply passes", icmp("1.2.3.4", 0), XDP_PASS, DEFAULT),
    ("tcp SYN/443: CONTINUE skips rule 6, DEFER by rule 7", tcp("1.2.3.4", 443, flags="S"), XDP_PASS, 107),
    ("tcp ACK/443 dropped by rule 6", tcp("1.2.3.4", 443, flags="A"), XDP_DROP, 106),
    ("tcp SYN+ACK/443 dropped by rule 6", tcp("1.2.3.4", 443, flags="SA"), XDP_DROP, 106),
    ("GRE on ifindex 1 dropped (iif)", proto("1.2.3.4", 47), XDP_DROP, 108),
    ("ESP falls to the default", proto("1.2.3.4", 50), XDP_PASS, DEFAULT),
    ("blocklist member 203.0.113.5 (merged set)", tcp("203.0.113.5", 8080), XDP_DROP, 205),
    ("blocklist member 203.0.113.0", udp("203.0.113.0", 9), XDP_DROP, 200),
    ("203.0.113.10 not in the blocklist", tcp("203.0.113.10", 8080), XDP_PASS, 110),
    ("blocklist member, but udp/53 matches rule 1 first", udp("203.0.113.3", 53), XDP_PASS, 101),
    ("dst 198.51.100.7 dropped", tcp("1.1.1.1", 9, dst="198.51.100.7"), XDP_DROP, 111),
    ("tcp SYN from 172.16/12 dropped (flags set)", tcp("172.20.0.1", 9, flags="S"), XDP_DROP, 112),
    ("tcp SYN+ACK from 172.16/12 dropped", tcp("172.20.0.1", 9, flags="SA"), XDP_DROP, 112),
    ("tcp ACK from 172.16/12 passes", tcp("172.20.0.1", 9, flags="A"), XDP_PASS, DEFAULT),
    ("tcp SYN+ECE from 172.16/12: ECE/CWR are outside the 6 flag bits", tcp("172.20.0.1", 9, flags="SE"),
     XDP_DROP, 112),
]


@pytest.fixture(scope="module")
def loaded(dataplane):
    dataplane.apply_generation(compile(RULES, ACCEPT))
    return dataplane


@pytest.mark.parametrize("description,packet,verdict,counter", CASES, ids=[c[0] for c in CASES])
def test_packet(loaded, description, packet, verdict, counter):
    before = loaded.read_counters()
    got, _ = loaded.test_run(packet, ingress_ifindex=1)
    after = loaded.read_counters()
    assert got == verdict, description
    risen = {k for k in after if after[k][0] != before.get(k, (0, 0))[0]}
    assert risen == ({counter} if counter is not None else set()), description
    if counter is not None:
        ip_len = struct.unpack_from("!H", packet, 16)[0]
        assert after[counter][1] - before.get(counter, (0, 0))[1] == ip_len, "bytes count the IP total length"


@pytest.mark.parametrize("policy,verdict", [(DROP, XDP_DROP), (DEFER, XDP_PASS), (ACCEPT, XDP_PASS)])
def test_default_policy(dataplane, policy, verdict):
    dataplane.apply_generation(compile(RULES[:2], policy))
    assert dataplane.test_run(tcp("5.5.5.5", 7))[0] == verdict
    assert dataplane.test_run(udp("5.5.5.5", 53))[0] == XDP_PASS  # rule 1 ACCEPT before the policy


def test_defer_all_passes_everything(dataplane):
    dataplane.apply_generation(compile(RULES, DROP))
    assert dataplane.test_run(tcp("10.1.1.1", 22))[0] == XDP_DROP
    dataplane.defer_all(True)
    assert dataplane.test_run(tcp("10.1.1.1", 22))[0] == XDP_PASS
    dataplane.defer_all(False)
    assert dataplane.test_run(tcp("10.1.1.1", 22))[0] == XDP_DROP


def test_empty_ruleset_uses_the_policy(dataplane):
    dataplane.apply_generation(compile([], DROP))
    assert dataplane.test_run(tcp("10.1.1.1", 22))[0] == XDP_DROP
    assert dataplane.test_run(raw(Ether() / IPv6()))[0] == XDP_PASS


# --- differential: random classifiers against classifier.evaluate --------------------------------

def _random_intervals(rng, top, small):
    n = rng.randint(1, 3)
    out = []
    for _ in range(n):
        lo = rng.choice(small) if rng.random() < 0.7 else rng.randint(0, top)
        hi = min(top, lo + rng.choice([0, 0, 1, 5, 100, 1 << 20]))
        out.append((lo, hi))
    s = IntervalSet.of(out)
    return s.complement(top) if rng.random() < 0.2 and s.complement(top) else s


def _random_rules(rng, n):
    addrs = [0x0A000000, 0x0A000001, 0x0A0000FF, 0xC0A80101, 0x08080808, 0xFFFFFFFF, 0]
    port_values = [0, 22, 53, 80, 443, 1024, 65535]
    rules = []
    for i in range(n):
        m = {}
        if rng.random() < 0.5:
            m["src"] = _random_intervals(rng, U32_MAX, addrs)
        if rng.random() < 0.3:
            m["dst"] = _random_intervals(rng, U32_MAX, addrs)
        if rng.random() < 0.5:
            m["proto"] = frozenset(rng.sample([1, 6, 17, 47], rng.randint(1, 2)))
        if rng.random() < 0.4:
            m["dport"] = _random_intervals(rng, 65535, port_values)
        if rng.random() < 0.2:
            m["sport"] = _random_intervals(rng, 65535, port_values)
        if rng.random() < 0.1:
            m["tcp_flags"] = frozenset(rng.sample(range(64), 3))
        if rng.random() < 0.1:
            m["icmp"] = _random_intervals(rng, 65535, [0, 8 * 256, 3 * 256 + 1])
        if rng.random() < 0.1:
            m["iif"] = frozenset({1}) if rng.random() < 0.5 else frozenset({77})
        if rng.random() < 0.2:
            m["ct"] = frozenset(rng.sample(list(CtClass), rng.randint(1, 2)))
        r = rng.random()
        action = (DROP if r < 0.4 else ACCEPT if r < 0.7 else DEFER if r < 0.85 or i >= n - 1
                  else CONTINUE(rng.randint(i + 1, n)))
        rules.append(ClassifierRule(Match(**m), action, i))
    # a merged run of exact sources
    base = rng.randint(0, n)
    run = [ClassifierRule(Match(src=IntervalSet.single(0x0A000000 + j), proto=frozenset({6})), DROP, 1000 + j)
           for j in range(6)]
    rules = rules[:base] + run + rules[base:]
    fixed = []
    for idx, rule in enumerate(rules):  # re-aim CONTINUE targets after the insertion
        if rule.action.verdict.name == "CONTINUE":
            target = rule.action.target + (6 if rule.action.target >= base and idx < base else 0)
            target = max(idx + 1, min(target, len(rules)))
            rule = ClassifierRule(rule.match, CONTINUE(target), rule.rule_id)
        fixed.append(rule)
    return fixed


def _random_packet(rng):
    addrs = ["10.0.0.0", "10.0.0.1", "10.0.0.3", "10.0.0.255", "192.168.1.1", "8.8.8.8", "255.255.255.255", "0.0.0.0",
             "10.0.1.0", "9.255.255.255"]
    src, dst = rng.choice(addrs), rng.choice(addrs)
    p = rng.choice(["tcp", "udp", "icmp", "gre"])
    port = rng.choice([0, 22, 23, 53, 80, 443, 1024, 1025, 65535, 65534, 101, 100])
    sport = rng.choice([0, 22, 53, 80, 1024, 65535, 40000])
    flags = rng.randint(0, 63)
    # a bad L4 checksum leaves a packet without an entry NONE; a valid one makes it NONE_VERIFIED
    bad = rng.random() < 0.3
    ct = CtClass.NONE if bad else CtClass.NONE_VERIFIED
    if p == "tcp":
        pkt = raw(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=port, flags=flags))
        key = PacketKey(_ip(src), _ip(dst), 6, sport, port, 1, None, flags, ct)
    elif p == "udp":
        pkt = raw(Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=port))
        key = PacketKey(_ip(src), _ip(dst), 17, sport, port, 1, ct=ct)
    elif p == "icmp":
        t, c = rng.choice([(8, 0), (0, 0), (3, 1), (3, 3)])
        pkt = raw(Ether() / IP(src=src, dst=dst) / ICMP(type=t, code=c))
        key = PacketKey(_ip(src), _ip(dst), 1, None, None, 1, t * 256 + c)
    else:
        pkt = proto(src, 47, dst=dst)
        key = PacketKey(_ip(src), _ip(dst), 47, None, None, 1)
    if bad and p in ("tcp", "udp"):
        pkt = _bad_l4_checksum(pkt)
    return pkt, key


def _ip(text):
    return struct.unpack("!I", bytes(int(x) for x in text.split(".")))[0]


@pytest.mark.parametrize("seed", range(12))
def test_random_classifiers_match_reference(dataplane, seed):
    rng = random.Random(seed)
    rules = _random_rules(rng, rng.choice([5, 20, 80, 300]))
    default = rng.choice([DROP, ACCEPT, DEFER])
    dataplane.apply_generation(compile(rules, default, merge_min_run=4))
    expected_counts = {}
    for _ in range(150):
        pkt, key = _random_packet(rng)
        verdict, rule_id = evaluate(rules, default, key)
        got, _ = dataplane.test_run(pkt, ingress_ifindex=1)
        want = XDP_DROP if verdict.name == "DROP" else XDP_PASS
        assert got == want, f"seed {seed}: {key} expected {verdict.name} (rule {rule_id})"
        counter = DEFAULT if rule_id is None else rule_id
        expected_counts[counter] = expected_counts.get(counter, 0) + 1
    counts = {k: v[0] for k, v in dataplane.read_counters().items() if v[0]}
    assert counts == expected_counts, f"seed {seed}: per-rule counters"


def test_overflow_defers_the_rest(dataplane):
    rules = [ClassifierRule(Match(proto=TCP_, dport=ports(p)), DROP, p) for p in range(1, 11)]
    # reduce=False: the class bitmaps keep the rules (the exact-tuple fast path would hold them all)
    tables = compile(rules, DROP, max_slots=4, overflow="defer", merge_min_run=100, reduce=False)
    assert tables.slot_count == 4 and tables.overflowed_rules == 7
    dataplane.apply_generation(tables)
    assert dataplane.test_run(tcp("1.1.1.1", 2))[0] == XDP_DROP        # kept
    assert dataplane.test_run(tcp("1.1.1.1", 9))[0] == XDP_PASS        # beyond capacity: netfilter decides
    assert dataplane.test_run(tcp("1.1.1.1", 999))[0] == XDP_PASS      # even the DROP policy is deferred
    assert dataplane.read_counters()[abi.OVERFLOW_COUNTER][0] == 2


# --- conntrack class: BPF_PROG_TEST_RUN has no conntrack entry for these tuples ------------------

NONE_, FOUND_, NLU_ = frozenset({CtClass.NONE}), frozenset({CtClass.FOUND}), frozenset({CtClass.NOT_LOOKED_UP})
VERIFIED_ = frozenset({CtClass.NONE_VERIFIED})
CT_RULES = [
    ClassifierRule(Match(proto=TCP_, dport=ports(22), ct=FOUND_), ACCEPT, 300),
    ClassifierRule(Match(proto=UDP_, ct=VERIFIED_), DROP, 301),
    ClassifierRule(Match(ct=NLU_), DROP, 302),
    ClassifierRule(Match(proto=TCP_, dport=ports(80), ct=VERIFIED_), DROP, 303),
    ClassifierRule(Match(proto=TCP_, ct=FOUND_ | NLU_), DROP, 304),
    ClassifierRule(Match(proto=TCP_, dport=ports(81), ct=NONE_), DROP, 305),
    ClassifierRule(Match(proto=UDP_, ct=NONE_), DROP, 306),
]


def _bad_l4_checksum(packet: bytes) -> bytes:
    at = 14 + 20 + (16 if packet[14 + 9] == 6 else 6)
    return packet[:at] + bytes([packet[at] ^ 0x01]) + packet[at + 1:]


def _udp_with_length(length: int, payload: bytes = b"x" * 8, checksum_over=None) -> bytes:
    """UDP whose length field is `length`; its checksum (nonzero) covers the whole IP payload with
    the payload length in the pseudo-header (as conntrack sums it), or `checksum_over` bytes."""
    ip = IP(src="1.2.3.4", dst="192.0.2.1") / UDP(sport=40000, dport=53, len=length, chksum=0) / payload
    frame = bytearray(raw(Ether() / ip))
    l4 = frame[34:34 + (checksum_over or len(frame) - 34)]
    pseudo = bytes(frame[26:34]) + struct.pack("!BBH", 0, 17, len(l4))
    data = pseudo + bytes(l4) + (b"\0" if len(l4) % 2 else b"")
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", frame, 40, (~total & 0xFFFF) or 0xFFFF)
    return bytes(frame)


def _tcp_payload(size: int, flags="S") -> bytes:
    return raw(Ether() / IP(src="1.2.3.4", dst="192.0.2.1") / TCP(sport=40000, dport=80, flags=flags) / (b"p" * size))


CT_CASES = [
    ("tcp/22 without an entry is not FOUND", tcp("1.2.3.4", 22), XDP_PASS, DEFAULT),
    ("udp without an entry, valid checksum: NONE_VERIFIED", udp("1.2.3.4", 53), XDP_DROP, 301),
    ("icmp is never looked up", icmp("1.2.3.4", 3, 3), XDP_DROP, 302),
    ("GRE is never looked up", proto("1.2.3.4", 47), XDP_DROP, 302),
    ("valid SYN: NONE_VERIFIED", tcp("1.2.3.4", 80, flags="S"), XDP_DROP, 303),
    ("SYN with ECE and CWR: NONE_VERIFIED", tcp("1.2.3.4", 80, flags="SEC"), XDP_DROP, 303),
    ("SYN+FIN, valid checksum: NONE_VERIFIED (the flags are the planner's)", tcp("1.2.3.4", 80, flags="SF"),
     XDP_DROP, 303),
    ("ACK only, valid checksum: NONE_VERIFIED", tcp("1.2.3.4", 80, flags="A"), XDP_DROP, 303),
    ("SYN with 1401 bytes of data (three chunks, odd tail)", _tcp_payload(1401), XDP_DROP, 303),
    ("SYN with 2028 bytes of data (2048 L4 bytes, the limit)", _tcp_payload(2028), XDP_DROP, 303),
    ("SYN with 2029 bytes of data: too long to verify, not NONE_VERIFIED", _tcp_payload(2029), XDP_PASS, DEFAULT),
    ("bad TCP checksum: NONE", _bad_l4_checksum(tcp("1.2.3.4", 81, flags="S")), XDP_DROP, 305),
    ("bad TCP checksum is not NONE_VERIFIED", _bad_l4_checksum(tcp("1.2.3.4", 80, flags="S")), XDP_PASS, DEFAULT),
    ("bad UDP checksum: NONE", _bad_l4_checksum(udp("1.2.3.4", 53)), XDP_DROP, 306),
    ("UDP checksum 0 is not checked: NONE_VERIFIED",
     raw(Ether() / IP(src="1.2.3.4", dst="192.0.2.1") / UDP(sport=1, dport=53, chksum=0) / b"zero"), XDP_DROP, 301),
    ("UDP length field as the payload, checksum over it", _udp_with_length(16), XDP_DROP, 301),
    ("UDP length field beyond the IP payload: NONE", _udp_with_length(17), XDP_DROP, 306),
    ("UDP length field below 8: NONE", _udp_with_length(7), XDP_DROP, 306),
    ("UDP length field short of the payload, checksum over all of it: NONE_VERIFIED",
     _udp_with_length(12), XDP_DROP, 301),
    ("UDP length field short of the payload, checksum over the length only: NONE (conntrack sums it all)",
     _udp_with_length(12, checksum_over=12), XDP_DROP, 306),
    ("TCP data offset 4 is malformed: passed unclassified",
     raw(Ether() / IP(src="1.2.3.4", dst="192.0.2.1") / TCP(sport=1, dport=81, flags="S", dataofs=4)), XDP_PASS, None),
]


@pytest.mark.parametrize("description,packet,verdict,counter", CT_CASES, ids=[c[0] for c in CT_CASES])
def test_ct_class(dataplane, description, packet, verdict, counter):
    tables = compile(CT_RULES, ACCEPT)
    assert tables.field_mask & (1 << abi.F_CT_STATE)
    dataplane.apply_generation(tables)
    got, _ = dataplane.test_run(packet, ingress_ifindex=1)
    assert got == verdict, description
    risen = {k for k, v in dataplane.read_counters().items() if v[0]}
    assert risen == ({counter} if counter is not None else set()), description


def test_no_lookup_without_ct_rules():
    assert not compile(RULES, ACCEPT).field_mask & (1 << abi.F_CT_STATE)
