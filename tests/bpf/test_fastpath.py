# SPDX-License-Identifier: GPL-2.0-only
"""The blocklist fast path (src_fast, probed before classification) against the full path.

Each packet runs twice: under the compiled generation (the fast path beside the reduced classifier,
which lacks what the fast path decides), and under the whole classifier compiled without the
reduction and with the fast path switched off (src_fast empty, no prefix lengths), which is the
program as it was before.
Verdict, the counters that rise and the reason statistics must be the same, for sources in the
fast path (hits: every protocol, broken checksums, fragments, IP options, truncated headers, a
forwarded destination) and sources left out of it (misses: an earlier ACCEPT, ct or per-device
rule, a protocol-specific DROP). A tampered entry then shows the program really takes the fast
path on a hit."""
import ctypes
import dataclasses
import struct

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, raw

from ipt2xdp import abi
from ipt2xdp.classifier import (ACCEPT, DEFER, DROP, Action, ClassifierRule, CtClass, IntervalSet, Match,
                                PacketKey, U32_MAX, Verdict, evaluate)
from ipt2xdp.compile import compile
from ipt2xdp.mapencode import MapContents
from tests.bpf.packets import DST, patch_ip, proto

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
TCP_ = frozenset({6})
FORWARDED = "198.51.100.7"  # routed via d0 when forwarding is on


def ip(text):
    a, b, c, d = (int(x) for x in text.split("."))
    return a << 24 | b << 16 | c << 8 | d


def single(text):
    return IntervalSet.single(ip(text))


LISTED = [f"10.5.0.{i}" for i in range(20)]  # a merged run: one SET slot on the full path
# the planner's first rule: destinations it did not see as local go to netfilter (FORWARDED was
# local when planned; the route check before a DROP sees that it is forwarded now)
LOCAL = IntervalSet.cidrs([DST + "/32", "198.51.100.0/24", "224.0.0.0/4"])
RULES = [
    ClassifierRule(Match(dst=LOCAL.complement(U32_MAX)), DEFER, 0),
    ClassifierRule(Match(src=single("10.0.0.1"), ct=frozenset({CtClass.FOUND})), ACCEPT, 1),
    ClassifierRule(Match(src=single("10.0.0.2"), proto=TCP_, dport=IntervalSet.single(22)), DROP, 2),
    ClassifierRule(Match(src=single("10.0.0.3"), iif=frozenset({1})), ACCEPT, 3),
    ClassifierRule(Match(src=IntervalSet.cidr("10.6.0.0/24")), DROP, 4),
    ClassifierRule(Match(src=single("10.7.0.1")), Action(Verdict.DROP, guard=abi.GUARD_ADDITIONS), 5),
    *[ClassifierRule(Match(src=single(a)), DROP, 10 + i) for i, a in enumerate(LISTED)],
    ClassifierRule(Match(src=single("10.0.0.1")), DROP, 40),
    ClassifierRule(Match(src=single("10.0.0.2")), DROP, 41),
    ClassifierRule(Match(src=single("10.0.0.3")), DROP, 42),
    ClassifierRule(Match(proto=frozenset({17}), dport=IntervalSet.single(53)), ACCEPT, 43),
    ClassifierRule(Match(proto=TCP_, dport=IntervalSet.single(23)), DROP, 44),
]
HITS = ["10.6.0.0", "10.6.0.255", "10.7.0.1", LISTED[0], LISTED[7], LISTED[-1]]
MISSES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.6.1.0", "10.5.0.20", "192.0.2.77"]


def variants(src):
    """Packets from src: every protocol, ports that other rules single out, and the packets the
    program passes before classifying."""
    e = Ether()
    tcp = raw(e / IP(src=src, dst=DST) / TCP(sport=40000, dport=22, flags="S"))
    return [
        ("tcp/22 SYN", tcp),
        ("tcp/23", raw(e / IP(src=src, dst=DST) / TCP(dport=23))),
        ("udp/53", raw(e / IP(src=src, dst=DST) / UDP(dport=53))),
        ("icmp echo", raw(e / IP(src=src, dst=DST) / ICMP())),
        ("gre", proto(src, 47)),
        ("tcp, bad checksum", tcp[:-4] + bytes([tcp[-4] ^ 0xFF]) + tcp[-3:]),
        ("to a forwarded destination", raw(e / IP(src=src, dst=FORWARDED) / TCP(dport=80))),
        ("to a destination the plan defers", raw(e / IP(src=src, dst="192.0.2.99") / TCP(dport=80))),
        ("multicast", raw(e / IP(src=src, dst="224.0.0.251") / UDP(dport=5353))),
        ("first fragment", raw(e / IP(src=src, dst=DST, flags="MF") / TCP(dport=22))),
        ("IP options", raw(e / IP(src=src, dst=DST, options=b"\x01\x01\x01\x00") / TCP(dport=22))),
        ("truncated TCP header", tcp[:14 + 20 + 12]),
        ("tot_len beyond the frame", patch_ip(tcp, 2, "!H", 200)),
    ]


def without_fast_path(tables):
    """The same generation with the fast paths off (the exact-tuple one too): the full path alone."""
    maps = dict(tables.maps)
    cfg = abi.GenConfig.from_buffer_copy(maps["cfg"].values)
    for i in range(abi.SRC_FAST_PLENS):
        cfg.src_fast_plens[i] = 0
    for i in range(abi.TUPLE_FAST_SHAPES):
        cfg.tuple_fast_fields[i] = 0
    maps["cfg"] = dataclasses.replace(maps["cfg"], values=bytes(cfg))
    maps["src_fast"] = MapContents("src_fast", 1, ctypes.sizeof(abi.SrcFastKey), ctypes.sizeof(abi.SrcFastValue))
    maps["tuple_fast"] = MapContents("tuple_fast", 1, ctypes.sizeof(abi.ExactKey), ctypes.sizeof(abi.SrcFastValue))
    return dataclasses.replace(tables, maps=maps)


def observe(dp, packets):
    """Per packet: (verdict, counters that rose, stats that rose)."""
    out = []
    for packet in packets:
        counters, stats = dp.read_counters(), dp.read_stats()
        verdict, _ = dp.test_run(packet, ingress_ifindex=1)
        after, after_stats = dp.read_counters(), dp.read_stats()
        rose = {k: v[0] - counters.get(k, (0, 0))[0] for k, v in after.items() if v[0] != counters.get(k, (0, 0))[0]}
        out.append((verdict, rose, {k: v - stats[k] for k, v in after_stats.items() if v != stats[k]}))
    return out


@pytest.fixture(scope="module")
def routed(routing_namespace):
    routing_namespace.sh("ip link add d0 type veth peer name d1 && ip link set d1 up && ip link set d0 up && "
                         "ip addr add 10.9.0.1/24 dev d0 && ip addr add 192.0.2.1/32 dev d0 && "
                         "ip route add 198.51.100.0/24 via 10.9.0.2")
    return routing_namespace


@pytest.fixture(scope="module")
def tables():
    tables = compile(RULES, ACCEPT)
    fast = tables.fast_path
    assert all(fast.probe(ip(a), ip(DST)) for a in HITS), "the hit sources must be in the fast path"
    assert not any(fast.probe(ip(a)) for a in MISSES), "the miss sources must be left out"
    assert fast.dsts == LOCAL and not fast.probe(ip(HITS[0]), ip("192.0.2.99"))
    # the reduced classifier: the listed run, the /24 and the guarded DROP are the fast path's alone
    # (and rule 2, -s 10.0.0.2 -p tcp --dport 22, the exact-tuple fast path's)
    rule_of = tables.maps["counter_rules"].values  # the slots hold counters: their rules' ids
    held = [struct.unpack_from("=I", rule_of, 4 * struct.unpack_from("=I", tables.maps["slots"].values,
                                                                    i * tables.maps["slots"].value_size)[0])[0]
            for i in range(tables.slot_count)]
    assert held == [0, 1, 3, 40, 41, 42, 43, 44], held
    return tables


def fast_and_full(dataplane, tables, full_tables, named, label):
    """observe() of the named packets under the generation with a fast path and under the full
    path; every observation must be the same. The full path's, for further checks."""
    packets = [p for _, p in named]
    dataplane.apply_generation(tables)
    fast = observe(dataplane, packets)
    dataplane.apply_generation(full_tables)
    full = observe(dataplane, packets)
    for (name, _), got, want in zip(named, fast, full):
        assert got == want, f"{label} {name}: fast path {got}, full path {want}"
    return full


@pytest.fixture(scope="module")
def full_tables():
    """The whole classifier (no reduction), fast path off: the program before the fast path."""
    return without_fast_path(compile(RULES, ACCEPT, reduce=False))


@pytest.mark.parametrize("forwarding", [0, 1])
@pytest.mark.parametrize("source", HITS + MISSES)
def test_fast_path_equals_full_path(routed, dataplane, tables, full_tables, source, forwarding):
    routed.run(["sysctl", "-qw", f"net.ipv4.conf.all.forwarding={forwarding}"])
    full = fast_and_full(dataplane, tables, full_tables, variants(source), source)
    # and the full path is the reference semantics on the classified ones
    verdict, rose, stats = full[0]
    if "classified" in stats and "not_local" not in stats and rose:
        want_verdict, rule_id = evaluate(RULES, ACCEPT, PacketKey(ip(source), ip(DST), 6, 40000, 22, iif=1,
                                                                  tcp_flags=0x02, ct=CtClass.NONE_VERIFIED))
        assert set(rose) == {rule_id if rule_id is not None else abi.DEFAULT_COUNTER}


def test_hit_sources_are_decided_by_the_map(routed, dataplane, tables):
    """Point every entry at another counter: a hit now counts there, so the program read src_fast
    (and the route check and counters ran on that path)."""
    routed.run(["sysctl", "-qw", "net.ipv4.conf.all.forwarding=0"])
    src_fast = tables.maps["src_fast"]
    values = b"".join(struct.pack("=II", 44, abi.ACT_DROP) for _ in range(src_fast.count))
    tampered = dataclasses.replace(tables, maps=dict(tables.maps, src_fast=dataclasses.replace(src_fast, values=values)))
    dataplane.apply_generation(tampered)
    udp53 = raw(Ether() / IP(src=LISTED[3], dst=DST) / UDP(dport=53))
    ((verdict, rose, stats),) = observe(dataplane, [udp53])
    assert (verdict, rose) == (XDP_DROP, {44: 1}) and stats.get("classified") == 1
    # a miss is classified: 10.0.0.1 without a conntrack entry reaches its own DROP (rule 40)
    miss = raw(Ether() / IP(src="10.0.0.1", dst=DST) / UDP(dport=53))
    assert observe(dataplane, [miss])[0][:2] == (XDP_DROP, {40: 1})


def test_without_its_src_fast_map_a_generation_passes(routed, dataplane, tables):
    """The class bitmaps lack the listed sources, so a generation whose src_fast map is gone must
    not classify a packet the fast path applies to: it passes it (lookup_fail)."""
    from ipt2xdp import libbpf

    routed.run(["sysctl", "-qw", "net.ipv4.conf.all.forwarding=0"])
    dataplane.apply_generation(tables)
    listed = raw(Ether() / IP(src=LISTED[3], dst=DST) / UDP(dport=53))
    assert observe(dataplane, [listed])[0][:2] == (XDP_DROP, {10 + 3: 1})
    active = dataplane.read_state().active
    libbpf.delete_elem(dataplane.map_fds[abi.GEN_MAPS["src_fast"].name], struct.pack("=I", active))
    ((verdict, rose, stats),) = observe(dataplane, [listed])
    assert (verdict, rose, stats.get("lookup_fail")) == (XDP_PASS, {}, 1)
    # a destination the fast path does not apply to is still classified (the guard defers it)
    deferred = raw(Ether() / IP(src=LISTED[3], dst="192.0.2.99") / UDP(dport=53))
    ((verdict, rose, stats),) = observe(dataplane, [deferred])
    assert (verdict, rose) == (XDP_PASS, {0: 1}) and stats.get("classified") == 1
