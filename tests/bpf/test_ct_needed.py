# SPDX-License-Identifier: GPL-2.0-only
"""Conntrack and the L4 checksum are asked only when the protocol's class rows differ between
conntrack classes (bpf/ipt2xdp.bpf.c, ct_matters): no lookup when no slot's match depends on the
class, no checksum when NONE and NONE_VERIFIED share a row. These tables have real conntrack
entries (inserted with `conntrack -I` in the module's namespace), so FOUND is reached in both
directions beside NONE and NONE_VERIFIED, for TCP and UDP, with address-only rules (SET and plain)
that do not constrain the class. Each case is also judged by classifier.evaluate with the class
the kernel gives the packet."""
import subprocess

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw

from ipt2xdp import abi
from ipt2xdp.classifier import (ACCEPT, DROP, ClassifierRule, CtClass, IntervalSet, Match, PacketKey, Verdict,
                                evaluate)
from ipt2xdp.compile import compile
from tests.bpf.packets import DST

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
TCP_, UDP_ = frozenset({6}), frozenset({17})
FOUND_, NONE_, VERIFIED_ = frozenset({CtClass.FOUND}), frozenset({CtClass.NONE}), frozenset({CtClass.NONE_VERIFIED})
LISTED = [f"10.7.0.{i}" for i in range(1, 9)]  # a merged run: one SET slot


def ip_int(text):
    a, b, c, d = (int(x) for x in text.split("."))
    return a << 24 | b << 16 | c << 8 | d


RULES = [
    ClassifierRule(Match(src=IntervalSet.single(ip_int("10.9.9.9"))), DROP, 500),            # no conntrack
    *[ClassifierRule(Match(src=IntervalSet.single(ip_int(a)), ct=FOUND_), ACCEPT, 510 + i)    # SET slot, ct
      for i, a in enumerate(LISTED)],
    ClassifierRule(Match(proto=TCP_, ct=FOUND_), ACCEPT, 501),
    ClassifierRule(Match(proto=TCP_, dport=IntervalSet.single(80), ct=NONE_), ACCEPT, 502),
    ClassifierRule(Match(proto=UDP_, ct=VERIFIED_), ACCEPT, 503),
    ClassifierRule(Match(proto=UDP_, ct=NONE_), DROP, 504),
    ClassifierRule(Match(proto=TCP_, dport=IntervalSet.single(81)), DROP, 505),               # no conntrack
]
DEFAULT_ACTION = DROP

# (src, sport, dport) with an entry: original direction src -> DST
ENTRIES = [("1.2.3.4", 40000, 22), ("10.9.9.9", 40001, 22), (LISTED[2], 40002, 22), ("1.2.3.5", 40003, 81)]


@pytest.fixture(scope="module", autouse=True)
def conntrack_entries(routing_namespace):
    for src, sport, dport in ENTRIES:
        routing_namespace.run(["conntrack", "-I", "-p", "tcp", "-s", src, "-d", DST, "--sport", str(sport),
                               "--dport", str(dport), "--state", "ESTABLISHED", "-u", "SEEN_REPLY", "-t", "600"])
    yield
    subprocess.run(routing_namespace.argv(["conntrack", "-F"]), capture_output=True)


def tcp(src, sport, dport, dst=DST, flags="A"):
    return raw(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def udp(src, sport, dport):
    return raw(Ether() / IP(src=src, dst=DST) / UDP(sport=sport, dport=dport))


def bad_checksum(packet):
    at = 14 + 20 + (16 if packet[14 + 9] == 6 else 6)
    return packet[:at] + bytes([packet[at] ^ 0x01]) + packet[at + 1:]


CASES = [
    # (description, packet, its conntrack class, key fields for evaluate, expected verdict, counter)
    ("an address rule without conntrack decides a packet that has an entry",
     tcp("10.9.9.9", 40001, 22), CtClass.FOUND, ("10.9.9.9", DST, 6, 40001, 22), XDP_DROP, 500),
    ("...and one that has none", tcp("10.9.9.9", 5, 23), CtClass.NONE_VERIFIED, ("10.9.9.9", DST, 6, 5, 23),
     XDP_DROP, 500),
    ("set member with an entry: the set slot asks conntrack", tcp(LISTED[2], 40002, 22), CtClass.FOUND,
     (LISTED[2], DST, 6, 40002, 22), XDP_PASS, 512),
    ("set member without an entry falls through to the default", tcp(LISTED[2], 7, 443), CtClass.NONE_VERIFIED,
     (LISTED[2], DST, 6, 7, 443), XDP_DROP, None),
    ("entry, original direction: FOUND", tcp("1.2.3.4", 40000, 22), CtClass.FOUND, ("1.2.3.4", DST, 6, 40000, 22),
     XDP_PASS, 501),
    ("entry, reply direction: FOUND", tcp(DST, 22, 40000, dst="1.2.3.4"), CtClass.FOUND,
     (DST, "1.2.3.4", 6, 22, 40000), XDP_PASS, 501),
    ("no entry, valid checksum, to :80: NONE_VERIFIED does not match the NONE rule", tcp("1.2.3.6", 9, 80),
     CtClass.NONE_VERIFIED, ("1.2.3.6", DST, 6, 9, 80), XDP_DROP, None),
    ("no entry, bad checksum, to :80: NONE", bad_checksum(tcp("1.2.3.6", 9, 80)), CtClass.NONE,
     ("1.2.3.6", DST, 6, 9, 80), XDP_PASS, 502),
    ("entry to :81 is FOUND before the :81 rule", tcp("1.2.3.5", 40003, 81), CtClass.FOUND,
     ("1.2.3.5", DST, 6, 40003, 81), XDP_PASS, 501),
    ("no entry to :81, bad checksum: the :81 rule needs no checksum", bad_checksum(tcp("1.2.3.6", 9, 81)),
     CtClass.NONE, ("1.2.3.6", DST, 6, 9, 81), XDP_DROP, 505),
    ("udp, valid checksum: NONE_VERIFIED", udp("1.2.3.7", 9, 53), CtClass.NONE_VERIFIED,
     ("1.2.3.7", DST, 17, 9, 53), XDP_PASS, 503),
    ("udp, bad checksum: NONE", bad_checksum(udp("1.2.3.7", 9, 53)), CtClass.NONE, ("1.2.3.7", DST, 17, 9, 53),
     XDP_DROP, 504),
]


@pytest.mark.parametrize("description,packet,ct,key,verdict,counter", CASES, ids=[c[0] for c in CASES])
def test_conntrack_asked_when_needed(dataplane, description, packet, ct, key, verdict, counter):
    src, dst, proto, sport, dport = key
    flags = packet[14 + 20 + 13] & 0x3F if proto == 6 else None
    want, rule_id = evaluate(RULES, DEFAULT_ACTION, PacketKey(ip_int(src), ip_int(dst), proto, sport, dport, iif=1,
                                                              tcp_flags=flags, ct=ct))
    assert (want == Verdict.DROP) == (verdict == XDP_DROP) and rule_id == counter, f"table disagrees: {description}"
    dataplane.apply_generation(compile(RULES, DEFAULT_ACTION))
    got, _ = dataplane.test_run(packet, ingress_ifindex=1)
    assert got == verdict, description
    risen = {k for k, v in dataplane.read_counters().items() if v[0]}
    assert risen == ({counter} if counter is not None else {abi.DEFAULT_COUNTER}), description


# Only FOUND tells TCP rows apart (no checksum asked); UDP rows never differ (no lookup).
RULES_LOOKUP_ONLY = [
    ClassifierRule(Match(proto=TCP_, ct=FOUND_), ACCEPT, 601),
    ClassifierRule(Match(proto=TCP_, dport=IntervalSet.single(81)), DROP, 602),
    ClassifierRule(Match(proto=UDP_, dport=IntervalSet.single(53)), DROP, 603),
]
CASES_LOOKUP_ONLY = [
    ("entry to :81: FOUND", tcp("1.2.3.5", 40003, 81), CtClass.FOUND, ("1.2.3.5", DST, 6, 40003, 81), XDP_PASS, 601),
    ("no entry to :81, bad checksum: dropped by the :81 rule", bad_checksum(tcp("1.2.3.6", 9, 81)), CtClass.NONE,
     ("1.2.3.6", DST, 6, 9, 81), XDP_DROP, 602),
    ("no entry to :81, valid checksum", tcp("1.2.3.6", 9, 81), CtClass.NONE_VERIFIED, ("1.2.3.6", DST, 6, 9, 81),
     XDP_DROP, 602),
    ("udp/53, bad checksum, no conntrack rule for udp", bad_checksum(udp("1.2.3.7", 9, 53)), CtClass.NOT_LOOKED_UP,
     ("1.2.3.7", DST, 17, 9, 53), XDP_DROP, 603),
    ("udp/54 to the default", udp("1.2.3.7", 9, 54), CtClass.NOT_LOOKED_UP, ("1.2.3.7", DST, 17, 9, 54), XDP_PASS,
     None),
]


@pytest.mark.parametrize("description,packet,ct,key,verdict,counter", CASES_LOOKUP_ONLY,
                         ids=[c[0] for c in CASES_LOOKUP_ONLY])
def test_lookup_without_checksum(dataplane, description, packet, ct, key, verdict, counter):
    src, dst, proto, sport, dport = key
    want, rule_id = evaluate(RULES_LOOKUP_ONLY, ACCEPT, PacketKey(ip_int(src), ip_int(dst), proto, sport, dport, iif=1,
                                                                  ct=ct))
    assert (want == Verdict.DROP) == (verdict == XDP_DROP) and rule_id == counter, f"table disagrees: {description}"
    dataplane.apply_generation(compile(RULES_LOOKUP_ONLY, ACCEPT))
    got, _ = dataplane.test_run(packet, ingress_ifindex=1)
    assert got == verdict, description
    risen = {k for k, v in dataplane.read_counters().items() if v[0]}
    assert risen == ({counter} if counter is not None else {abi.DEFAULT_COUNTER}), description
