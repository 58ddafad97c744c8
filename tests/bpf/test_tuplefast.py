# SPDX-License-Identifier: GPL-2.0-only
"""The exact-tuple fast path (tuple_fast, probed before classification) against the full path.

Each packet runs twice: under the compiled generation (both fast paths beside the reduced
classifier, which lacks what they decide), and under the whole classifier compiled without the
reduction and with both fast paths off (empty maps, no shapes or lengths): the program as it was
before. Verdict, the counters that rise (the nat PREROUTING one included, with nat_new on) and the
reason statistics must be the same, for packets in a box (hits: the bench's shape, a guarded DROP,
a destination-and-port box, a prefix-and-protocol box, with broken checksums, fragments, IP
options, truncated headers, forwarded and deferred destinations) and outside every box (an
earlier ct, per-device or TCP-flags rule, another port, a source beyond the run). A tampered map
then shows the program really takes the fast path on a hit."""
import dataclasses
import struct

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, raw

from ipt2xdp import abi, libbpf
from ipt2xdp.classifier import ACCEPT, DEFER, DROP, Action, ClassifierRule, CtClass, IntervalSet, Match, U32_MAX, Verdict
from ipt2xdp.compile import compile
from tests.bpf.packets import DST
from tests.bpf.test_fastpath import (FORWARDED, LOCAL, fast_and_full, ip, observe, routed,  # noqa: F401 (routed: a fixture)
                                     single, without_fast_path)

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
TCP_, UDP_ = frozenset({6}), frozenset({17})


def udp_drop(source, dport, rule_id, action=DROP):
    return ClassifierRule(Match(src=single(source), proto=UDP_, dport=IntervalSet.single(dport)), action, rule_id)


RUN = [f"10.5.0.{i}" for i in range(20)]  # the bench's shape: one SET slot on the full path
RULES = [
    ClassifierRule(Match(dst=LOCAL.complement(U32_MAX)), DEFER, 0),
    ClassifierRule(Match(dst=single(DST), proto=UDP_, dport=IntervalSet.single(69)), DROP, 1),
    ClassifierRule(Match(dst=single(DST), proto=TCP_, dport=IntervalSet.single(8443)), DROP, 6),
    ClassifierRule(Match(src=single("10.0.0.1"), ct=frozenset({CtClass.NONE, CtClass.NONE_VERIFIED})), ACCEPT, 2),
    ClassifierRule(Match(src=single("10.0.0.3"), iif=frozenset({1})), ACCEPT, 3),
    ClassifierRule(Match(src=single("10.0.0.4"), proto=TCP_, tcp_flags=frozenset({0x02})), DEFER, 4),
    *[udp_drop(a, 53, 10 + i) for i, a in enumerate(RUN)],
    udp_drop("10.0.0.1", 53, 30),
    udp_drop("10.0.0.3", 53, 31),
    udp_drop("10.0.0.4", 53, 32),
    ClassifierRule(Match(src=single("10.0.0.4"), proto=TCP_, dport=IntervalSet.single(22)), DROP, 33),
    udp_drop("10.7.0.1", 53, 35, Action(Verdict.DROP, guard=abi.GUARD_ADDITIONS)),
    ClassifierRule(Match(src=IntervalSet.cidr("10.6.0.0/24"), proto=frozenset({47})), DROP, 36),
    ClassifierRule(Match(proto=UDP_, dport=IntervalSet.single(53)), ACCEPT, 40),
    ClassifierRule(Match(proto=TCP_, dport=IntervalSet.single(23)), DROP, 41),
]
# (source, layer above IP) of packets in a box, and of packets the proof leaves to the classifier
HITS = [("10.5.0.0", UDP(dport=53)), ("10.5.0.19", UDP(sport=9, dport=53)), ("10.0.0.4", UDP(dport=53)),
        ("10.7.0.1", UDP(dport=53)), ("10.6.0.9", "gre"), ("203.0.113.5", UDP(dport=69)),
        ("203.0.113.5", TCP(dport=8443, flags="S")), ("203.0.113.5", TCP(dport=8443, flags="A"))]
MISSES = [("10.0.0.1", UDP(dport=53)), ("10.0.0.3", UDP(dport=53)), ("10.0.0.4", TCP(dport=22, flags="S")),
          ("10.5.0.0", UDP(dport=54)), ("10.5.0.20", UDP(dport=53)), ("10.5.0.0", TCP(dport=53, flags="S")),
          ("203.0.113.5", TCP(dport=23, flags="S")), ("10.6.0.9", ICMP())]
PLAIN_DROPS = [hit for hit in HITS if hit[0] != "10.7.0.1"]  # the guarded DROP depends on the set guard
SHAPES = {(abi.K_SRC | abi.K_PROTO | abi.K_DPORT, 32, 0), (abi.K_DST | abi.K_PROTO | abi.K_DPORT, 0, 32),
          (abi.K_SRC | abi.K_PROTO, 24, 0)}


def build(src, upper, dst=DST, **fields):
    if upper == "gre":
        return raw(Ether() / IP(src=src, dst=dst, proto=47, **fields) / (b"\0" * 20))
    return raw(Ether() / IP(src=src, dst=dst, **fields) / upper)


def variants(src, upper):
    """The packet, the ones the program passes before classifying, and other destinations."""
    good = build(src, upper)
    out = [("as is", good),
           ("to a forwarded destination", build(src, upper, dst=FORWARDED)),
           ("to a destination the plan defers", build(src, upper, dst="192.0.2.99")),
           ("first fragment", build(src, upper, flags="MF")),
           ("IP options", build(src, upper, options=b"\x01\x01\x01\x00")),
           ("tot_len beyond the frame", good[:16] + struct.pack("!H", 400) + good[18:])]
    if upper != "gre":
        out.append(("truncated L4 header", good[:14 + 20 + 4]))
        # byte 40: the UDP checksum, a TCP sequence number byte, the ICMP id: the checksum fails
        out.append(("bad L4 checksum", good[:40] + bytes([good[40] ^ 0xFF]) + good[41:]))
    return out


@pytest.fixture(scope="module", params=[0, abi.NAT_NEW_ON], ids=["nat-off", "nat-new"])
def generations(request):
    nat_new = request.param
    tables = compile(RULES, ACCEPT, nat_new=nat_new)
    fast = tables.fast_path
    assert set(fast.shapes) == SHAPES and not fast.plens
    assert fast.dsts == LOCAL
    probe = {}
    for src, upper in HITS + MISSES:
        packet = IP(build(src, upper)[14:])
        l4 = packet.payload
        probe[(src, repr(upper))] = fast.probe_packet(ip(src), ip(DST), packet.proto, getattr(l4, "sport", None),
                                                      getattr(l4, "dport", None))
    assert all(probe[(s, repr(u))] for s, u in HITS), "the hits must be in the fast path"
    assert not any(probe[(s, repr(u))] for s, u in MISSES), "the misses must be left out"
    rule_of = tables.maps["counter_rules"].values  # the slots hold counters: their rules' ids
    held = [struct.unpack_from("=I", rule_of, 4 * struct.unpack_from("=I", tables.maps["slots"].values,
                                                                    i * tables.maps["slots"].value_size)[0])[0]
            for i in range(tables.slot_count)]
    assert held == [0, 2, 3, 4, 30, 31, 33, 40, 41], held  # the boxes' rules left the class bitmaps
    return tables, without_fast_path(compile(RULES, ACCEPT, reduce=False, nat_new=nat_new)), nat_new


@pytest.mark.parametrize("forwarding", [0, 1])
@pytest.mark.parametrize("case", HITS + MISSES, ids=lambda c: f"{c[0]}-{c[1]!r}".replace(" ", ""))
def test_fast_path_equals_full_path(routed, dataplane, generations, case, forwarding):  # noqa: F811
    tables, full_tables, nat_new = generations
    routed.run(["sysctl", "-qw", f"net.ipv4.conf.all.forwarding={forwarding}"])
    full = fast_and_full(dataplane, tables, full_tables, variants(*case), case)
    if case in PLAIN_DROPS and not forwarding and not nat_new:
        verdict, rose, _ = full[0]
        assert verdict == XDP_DROP and len(rose) == 1, (case, full[0])  # a hit is a drop worth comparing


def test_hits_are_decided_by_the_map(routed, dataplane, generations):  # noqa: F811
    """Point every entry at another counter: a hit now counts there, so the program read
    tuple_fast (and the route check and counters ran on that path)."""
    tables, _, nat_new = generations
    routed.run(["sysctl", "-qw", "net.ipv4.conf.all.forwarding=0"])
    tuple_fast = tables.maps["tuple_fast"]
    values = b"".join(struct.pack("=II", 41, abi.ACT_DROP) for _ in range(tuple_fast.count))
    tampered = dataclasses.replace(tables, maps=dict(tables.maps, tuple_fast=dataclasses.replace(tuple_fast, values=values)))
    dataplane.apply_generation(tampered)
    for src, upper in PLAIN_DROPS:
        if nat_new and upper == "gre":
            continue  # nat_would_see cannot tell for GRE: netfilter decides
        ((verdict, rose, stats),) = observe(dataplane, [build(src, upper)])
        assert (verdict, 41 in rose, stats.get("classified")) == (XDP_DROP, True, 1), (src, upper)
    # a miss is classified: 10.0.0.1 without a conntrack entry is accepted by rule 2
    ((verdict, rose, _),) = observe(dataplane, [build("10.0.0.1", UDP(dport=53))])
    assert (verdict, rose) == (XDP_PASS, {2: 1})


def test_without_its_tuple_fast_map_a_generation_passes(routed, dataplane, generations):  # noqa: F811
    """The class bitmaps lack the boxes, so a generation whose tuple_fast map is gone must not
    classify a packet the fast path applies to: it passes it (lookup_fail)."""
    tables, _, nat_new = generations
    routed.run(["sysctl", "-qw", "net.ipv4.conf.all.forwarding=0"])
    dataplane.apply_generation(tables)
    listed = build(RUN[3], UDP(dport=53))
    verdict, rose, _ = observe(dataplane, [listed])[0]
    assert (verdict, rose.get(13)) == (XDP_DROP, 1)  # (and the nat PREROUTING counter, with nat_new)
    active = dataplane.read_state().active
    libbpf.delete_elem(dataplane.map_fds[abi.GEN_MAPS["tuple_fast"].name], struct.pack("=I", active))
    ((verdict, rose, stats),) = observe(dataplane, [listed])
    assert (verdict, rose, stats.get("lookup_fail")) == (XDP_PASS, {}, 1)
    deferred = build(RUN[3], UDP(dport=53), dst="192.0.2.99")
    ((verdict, rose, stats),) = observe(dataplane, [deferred])
    assert (verdict, rose) == (XDP_PASS, {0: 1}) and stats.get("classified") == 1


def test_a_proof_ignoring_earlier_rules_fails_the_comparison(routed, dataplane, generations, monkeypatch):  # noqa: F811
    """The comparison above catches a proof that ignores the earlier rules meeting a box: each
    miss then differs between the unsound generation and the full path."""
    from ipt2xdp import tuplefast

    _, full_tables, nat_new = generations
    routed.run(["sysctl", "-qw", "net.ipv4.conf.all.forwarding=0"])
    monkeypatch.setattr(tuplefast, "meets", lambda match, box: False)
    unsound = compile(RULES, ACCEPT, nat_new=nat_new)
    monkeypatch.undo()
    differ = []
    for src, upper in [("10.0.0.1", UDP(dport=53)), ("10.0.0.3", UDP(dport=53)), ("10.0.0.4", TCP(dport=22, flags="S"))]:
        dataplane.apply_generation(unsound)
        got = observe(dataplane, [build(src, upper)])
        dataplane.apply_generation(full_tables)
        want = observe(dataplane, [build(src, upper)])
        differ.append(got != want)
    assert differ == [True, True, True]
