# SPDX-License-Identifier: GPL-2.0-only
"""The exact-tuple fast path (ipt2xdp/tuplefast.py) on crafted and random classifiers.

Soundness is checked against classifier.evaluate(): every packet whose values the program's
probe (FastPath.probe_packet) finds in an entry, varied over every other field (destination,
ports, device, conntrack class, TCP flags, ICMP type), must be dropped by the entry's rule under
first-match evaluation of the whole classifier; and the reduced classifier beside the fast path
must decide every packet as the whole one. Crafted cases show each kind of earlier rule that
meets a box keeps it out, and those that miss it do not; the last tests make the proof ignore
the earlier rules and check that the soundness check catches it."""
import itertools
import random

import pytest

from ipt2xdp import abi, fastpath, tuplefast, tuplestretch
from ipt2xdp.classifier import (ACCEPT, CONTINUE, DEFER, DROP, ClassifierRule, CtClass, IntervalSet, Match,
                                PacketKey, U32_MAX, Verdict, evaluate)
from ipt2xdp.compile import compile
from ipt2xdp.mapencode import action_code
from tests.test_fastpath import GUARDED, ip

TCP_, UDP_, ICMP_ = frozenset({6}), frozenset({17}), frozenset({1})


def addr(*texts):
    return IntervalSet.cidrs(texts)


def port(value):
    return IntervalSet.single(value)


def rule(match, action, rule_id):
    return ClassifierRule(match, action, rule_id)


def udp_drop(source, dport, rule_id, action=DROP):
    """The bench's shape: -s SOURCE/32 -p udp --dport P -j DROP."""
    return rule(Match(src=addr(source), proto=UDP_, dport=port(dport)), action, rule_id)


SOURCES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1"]
DSTS = ["192.0.2.1", "192.0.2.2", "192.0.2.200"]
PORTS = [22, 53, 80]


def packets(sources=SOURCES, dsts=DSTS):
    """Packets over small domains, every other field varied."""
    out = []
    for s, d, proto, iif, ct in itertools.product(sources, dsts, (6, 17, 1, 47), (1, 2), tuple(CtClass)):
        if proto in (6, 17):
            for sport, dport in itertools.product((1000, 53), PORTS):
                for flags in ((0x02, 0x10) if proto == 6 else (None,)):
                    out.append(PacketKey(ip(s), ip(d), proto, sport, dport, iif=iif, ct=ct, tcp_flags=flags))
        else:
            out.append(PacketKey(ip(s), ip(d), proto, iif=iif, ct=ct, icmp=8 * 256 if proto == 1 else None))
    return out


def hit(fast, packet):
    return fast.probe_packet(packet.src, packet.dst, packet.proto, packet.sport, packet.dport)


def assert_sound(rules, fast, default=ACCEPT, universe=None):
    """Every packet the fast paths hold is dropped by the entry's rule (first-match, whole
    classifier); and the reduced classifier beside them decides every packet as the whole one.
    Returns how many packets the tuple path decided."""
    held = fastpath.reduce_classifier(rules, fast)
    held = rules if held is None else held
    decided = 0
    for packet in universe or packets():
        want = evaluate(rules, default, packet)
        found = hit(fast, packet)
        if found is not None:
            assert want == (Verdict.DROP, found[0]), (packet, found)
            decided += fast.probe(packet.src) is None
            got = (Verdict.DROP, found[0])
        else:
            got = evaluate(held, default, packet)
        assert got == want, (packet, held)
    return decided


def boxes(rules):
    """{rule_id: box text} of the probed entries."""
    fast = fastpath.analyse(rules, action_code)
    return {rule_id: tuplefast.describe(box) for box, rule_id, _ in fast.tuples if box[0] in fast.shapes}


def test_the_bench_shape_is_all_in_and_leaves_the_classifier():
    rules = [udp_drop(s, 53, i) for i, s in enumerate(SOURCES)] + [rule(Match(), ACCEPT, 9)]
    fast = fastpath.analyse(rules, action_code)
    assert fast.shapes == ((abi.K_SRC | abi.K_PROTO | abi.K_DPORT, 32, 0),) and fast.plens == ()
    assert boxes(rules)[0] == "-s 10.0.0.1/32 -p 17 --dport 53"
    assert fast.probe_packet(ip("10.0.0.2"), ip("192.0.2.1"), 17, 4000, 53) == (1, abi.ACT_DROP)
    assert fast.probe_packet(ip("10.0.0.2"), ip("192.0.2.1"), 17, 4000, 54) is None
    assert fast.probe_packet(ip("10.0.0.2"), ip("192.0.2.1"), 6, 4000, 53) is None
    assert fastpath.reduce_classifier(rules, fast) == [rules[-1]]
    assert assert_sound(rules, fast) > 0


@pytest.mark.parametrize("earlier", [
    rule(Match(src=addr("10.0.0.1")), ACCEPT, 100),                                   # same source
    rule(Match(src=addr("10.0.0.0/24"), ct=frozenset({CtClass.FOUND})), ACCEPT, 100),  # ct, wider source
    rule(Match(src=addr("10.0.0.1"), iif=frozenset({2})), ACCEPT, 100),               # per device
    rule(Match(proto=UDP_), DEFER, 100),                                              # a guard, no source
    rule(Match(dport=port(53), proto=UDP_), CONTINUE(2), 100),                        # a CONTINUE
    rule(Match(src=addr("10.0.0.1"), proto=UDP_, dport=port(53)), GUARDED, 100),      # same box, another counter
    rule(Match(src=addr("10.0.0.0/30")), DROP, 100),                                  # a wider DROP
    rule(Match(src=addr("10.0.0.1"), dst=addr("192.0.2.2")), ACCEPT, 100),            # one destination
    rule(Match(proto=UDP_, sport=port(1000)), ACCEPT, 100),                           # a source port
    rule(Match(ct=frozenset({CtClass.FOUND})), ACCEPT, 100),                          # ESTABLISHED
    rule(Match(iif=frozenset({1})), DEFER, 100),                                      # a device guard
    rule(Match(), ACCEPT, 100),                                                       # anything
], ids=["accept", "ct", "iif", "proto-guard", "continue", "guarded-same-box", "wider-drop", "dst", "sport",
        "established", "device-guard", "anything"])
def test_an_earlier_rule_meeting_the_box_keeps_it_out(earlier):
    rules = [earlier, udp_drop("10.0.0.1", 53, 1), udp_drop("10.0.0.2", 53, 2)]
    if earlier.action.verdict is Verdict.CONTINUE:
        rules.append(rule(Match(src=addr("10.0.0.2")), ACCEPT, 3))
    assert 1 not in boxes(rules)
    assert_sound(rules, fastpath.analyse(rules, action_code))


@pytest.mark.parametrize("earlier", [
    rule(Match(src=addr("10.0.0.2")), ACCEPT, 100),                                   # another source
    rule(Match(src=addr("10.0.0.1"), proto=TCP_), ACCEPT, 100),                       # another protocol
    rule(Match(src=addr("10.0.0.1"), proto=UDP_, dport=port(80)), ACCEPT, 100),       # another port
    rule(Match(proto=TCP_, tcp_flags=frozenset({2})), DROP, 100),                     # TCP only
    rule(Match(proto=ICMP_, icmp=IntervalSet.single(8 * 256)), ACCEPT, 100),          # ICMP only
    rule(Match(dst=addr("192.0.2.200")), DEFER, 100),                                 # destination alone
], ids=["source", "protocol", "port", "tcp-flags", "icmp", "destination-only"])
def test_an_earlier_rule_missing_the_box_does_not(earlier):
    rules = [earlier, udp_drop("10.0.0.1", 53, 1), rule(Match(), ACCEPT, 9)]
    assert 1 in boxes(rules)
    fast = fastpath.analyse(rules, action_code)
    assert assert_sound(rules, fast) > 0
    if earlier.match.dst is not None:  # the destination exception: not for the guard's destinations
        assert ip("192.0.2.200") not in fast.dsts and ip("192.0.2.1") in fast.dsts


def test_what_qualifies():
    assert tuplefast.box_of(Match(src=addr("10.0.0.0/24"), dst=addr("192.0.2.1"), proto=TCP_,
                                  sport=port(1), dport=port(2))) is not None
    assert tuplefast.box_of(Match(dst=addr("192.0.2.1"), proto=TCP_, dport=port(443))) is not None  # kube-like
    assert tuplefast.box_of(Match(proto=ICMP_)) is not None
    not_boxes = [Match(src=addr("10.0.0.1")),                       # the blocklist fast path's
                 Match(dst=addr("192.0.2.1")),                      # the destination exception
                 Match(src=addr("10.0.0.1", "10.0.0.3"), proto=UDP_),  # two blocks
                 Match(proto=frozenset({6, 17}), dport=port(53)),   # two protocols
                 Match(proto=UDP_, dport=IntervalSet.range(53, 54)),  # a port range
                 Match(dport=port(53)),                             # a port without its protocol
                 Match(proto=frozenset({132}), dport=port(53)),     # ports the program does not read
                 Match(src=addr("10.0.0.1"), proto=UDP_, ct=frozenset({CtClass.NONE})),
                 Match(src=addr("10.0.0.1"), proto=UDP_, iif=frozenset({1})),
                 Match(proto=TCP_, tcp_flags=frozenset({2}))]
    assert [m for m in not_boxes if tuplefast.box_of(m) is not None] == []
    rules = [rule(Match(src=addr("10.0.0.1"), proto=UDP_), ACCEPT, 0)] + \
        [rule(m, DROP, 1 + i) for i, m in enumerate(not_boxes)]
    assert fastpath.analyse(rules, action_code).tuples == []


def test_a_guarded_drop_keeps_its_guard_and_duplicates_keep_the_first():
    rules = [udp_drop("10.0.0.1", 53, 0, GUARDED), udp_drop("10.0.0.1", 53, 1), udp_drop("10.0.0.2", 22, 2)]
    fast = fastpath.analyse(rules, action_code)
    assert [(rule_id, code) for _, rule_id, code in fast.tuples] == [(0, action_code(GUARDED)), (2, abi.ACT_DROP)]
    assert_sound(rules, fast)


def test_shapes_most_entries_first_at_most_four():
    rules = [udp_drop(f"10.0.0.{i}", 53, i) for i in range(1, 6)]
    rules += [rule(Match(dst=addr(f"192.0.2.{i}"), proto=UDP_, dport=port(443)), DROP, 10 + i) for i in range(3)]
    rules += [rule(Match(src=addr(f"10.1.{i}.0/24"), proto=TCP_), DROP, 20 + i) for i in range(2)]
    rules += [rule(Match(proto=frozenset({47})), DROP, 30), rule(Match(proto=frozenset({50})), DROP, 31),
              rule(Match(src=addr("10.2.0.0/16"), proto=TCP_, sport=port(7)), DROP, 32)]
    fast = fastpath.analyse(rules, action_code)
    assert fast.shapes == ((abi.K_SRC | abi.K_PROTO | abi.K_DPORT, 32, 0), (abi.K_DST | abi.K_PROTO | abi.K_DPORT, 0, 32),
                           (abi.K_PROTO, 0, 0), (abi.K_SRC | abi.K_PROTO, 24, 0))
    assert fast.tuple_left_out == 1
    universe = [PacketKey(ip("10.2.3.4"), ip("192.0.2.1"), 6, 7, 443, tcp_flags=2),   # the unprobed shape
                PacketKey(ip("10.2.3.4"), ip("192.0.2.1"), 17, 7, 443),               # -d .1 -p udp --dport 443
                PacketKey(ip("10.1.1.9"), ip("192.0.2.2"), 6, 5, 443, tcp_flags=2)] + packets()
    assert assert_sound(rules, fast, universe=universe) > 0
    assert fastpath.reduce_classifier(rules, fast) == [rules[-1]]  # the unprobed shape stays


def test_keys_packed_before_are_taken_only_for_the_same_boxes_and_shapes():
    rules = [udp_drop(f"10.0.0.{i}", 53, i) for i in range(1, 6)]
    rules += [rule(Match(dst=addr(f"192.0.2.{i}"), proto=UDP_, dport=port(443)), DROP, 10 + i) for i in range(3)]
    fast = fastpath.analyse(rules, action_code)
    shapes = list(fast.shapes)
    calls = [(fast.tuples, shapes), (fast.tuples, shapes[::-1]), (fast.tuples[:4], shapes),
             (fast.tuples[:4] + fast.tuples[5:], shapes), (fast.tuples, shapes)]
    in_turn = [tuplefast.encode(entries, order) for entries, order in calls]
    afresh = []
    for entries, order in calls:
        tuplefast._LAST_KEYS[:] = [[], None, b""]
        afresh.append(tuplefast.encode(entries, order))
    assert in_turn == afresh and in_turn[0] != in_turn[1]


def test_compile_writes_the_map_and_the_shapes():
    local = addr("192.0.2.1/32", "224.0.0.0/4")
    rules = [rule(Match(dst=local.complement(U32_MAX)), DEFER, 0)] + \
        [udp_drop(s, 53, 1 + i) for i, s in enumerate(SOURCES)] + [rule(Match(), ACCEPT, 9)]
    tables = compile(rules, ACCEPT)
    cfg = abi.GenConfig.from_buffer_copy(tables.maps["cfg"].values)
    assert list(cfg.tuple_fast_fields) == [abi.K_SRC | abi.K_PROTO | abi.K_DPORT, 0, 0, 0]
    assert cfg.tuple_fast_src_plen[0] == 32 and list(cfg.src_fast_plens) == [0, 0, 0, 0]
    # the masks the program makes the key with: the source, no destination, dport (the second
    # u16 of the key's port word, in memory), the protocol
    masks = (cfg.tuple_fast_src_mask[0], cfg.tuple_fast_dst_mask[0], cfg.tuple_fast_port_mask[0],
             cfg.tuple_fast_proto_mask[0])
    assert [m.to_bytes(4, "little") for m in masks[:3]] == [b"\xff" * 4, bytes(4), bytes(2) + b"\xff" * 2]
    assert masks[3] == 0xFF and tuplefast.masks((abi.K_DST, 0, 24))[1].to_bytes(4, "little") == b"\xff\xff\xff\0"
    assert [(cfg.src_fast_dst_lo[i], cfg.src_fast_dst_hi[i]) for i in range(cfg.src_fast_ndst)] == list(local)
    assert tables.maps["tuple_fast"].count == 4 and tables.slot_count == 2  # the guard and the ACCEPT
    key, value = sorted(tables.maps["tuple_fast"].entries())[0]
    assert key == bytes([10, 0, 0, 1]) + bytes(4) + bytes(2) + (53).to_bytes(2, "big") + bytes([0, 0, 17, 0])
    assert value == (1).to_bytes(4, "little") + abi.ACT_DROP.to_bytes(4, "little")
    assert "tuple_fast shape 0: key_fields=0x15 plen=32/0" in tables.dump()
    off = compile([rule(Match(ct=frozenset({CtClass.FOUND})), ACCEPT, 0)] + rules[1:], ACCEPT)
    assert off.maps["tuple_fast"].count == 0
    assert list(abi.GenConfig.from_buffer_copy(off.maps["cfg"].values).tuple_fast_fields) == [0, 0, 0, 0]


def test_an_imported_ruleset_of_the_bench_gets_the_fast_path():
    """The whole way from ruleset text: parse, plan (with its guards) and compile."""
    from bench.e2e import DPORT, SRC, rules_ruleset
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan
    from tests.fingerprint import HOSTS

    result = plan(parse(rules_ruleset(200), "e2e.rules"), HOSTS["receiver"])
    tables = compile(result.rules, result.default)
    fast = tables.fast_path
    assert len(fast.tuples) == 200 and fast.tuple_left_out == 0 and tables.maps["tuple_fast"].count == 200
    assert tables.slot_count == 2  # the planner's guard and the policy
    here = int(HOSTS["receiver"].local_destinations[0].network_address)
    deciding = [PacketKey(ip(SRC), dst, 17, 4000, DPORT, ct=ct) for dst in (here, ip("192.0.2.1")) for ct in CtClass]
    assert fast.probe_packet(ip(SRC), here, 17, 4000, DPORT) == (result.rules[-2].rule_id, abi.ACT_DROP)
    assert fast.probe_packet(ip(SRC), ip("192.0.2.1"), 17, 4000, DPORT) is None  # not local: the guard defers
    assert assert_sound(list(result.rules), fast, result.default, universe=deciding + packets()) == len(CtClass)


@pytest.mark.parametrize("seed", range(60))
def test_random_classifiers_sound_and_reduced_exactly(seed):
    rng = random.Random(7000 + seed)
    rules = random_rules(rng, rng.randint(2, 12))
    fast = fastpath.analyse(rules, action_code)
    assert_sound(rules, fast, rng.choice((ACCEPT, DROP, DEFER)))


def random_rules(rng, n):
    rules = []
    for i in range(n):
        fields = {}
        if rng.random() < 0.7:
            fields["src"] = addr(rng.choice(SOURCES[:3] + ["10.0.0.0/30"]))
        if rng.random() < 0.25:
            fields["dst"] = addr(rng.choice(DSTS))
        if rng.random() < 0.75:
            fields["proto"] = rng.choice((TCP_, UDP_, UDP_, ICMP_))
            if fields["proto"] != ICMP_ and rng.random() < 0.7:
                fields[rng.choice(("dport", "dport", "sport"))] = port(rng.choice(PORTS + [1000]))
        extra = rng.random()
        if extra < 0.08:
            fields["ct"] = frozenset({rng.choice(tuple(CtClass))})
        elif extra < 0.14:
            fields["iif"] = frozenset({rng.choice((1, 2))})
        elif extra < 0.18 and fields.get("proto") == TCP_:
            fields["tcp_flags"] = frozenset({2})
        elif extra < 0.24 and "src" not in fields:
            fields = {"dst": addr(rng.choice(DSTS))}  # a destination-only guard
        action = rng.choice((DROP, DROP, DROP, DROP, ACCEPT, DEFER, GUARDED, "continue"))
        if action == "continue":
            action = CONTINUE(rng.randint(i + 1, n))
        rules.append(rule(Match(**fields), action, i))
    return rules


def test_the_random_classifiers_have_entries():
    """The random test above is about something: most of its classifiers have entries."""
    with_entries = sum(bool(fastpath.analyse(random_rules(random.Random(7000 + s), random.Random(7000 + s).randint(2, 12)),
                                             action_code).shapes) for s in range(60))
    assert with_entries >= 30


def test_a_proof_ignoring_earlier_rules_is_caught(monkeypatch):
    """The soundness check fails when the proof forgets the earlier rules that meet a box: each
    kind of earlier rule, and the random classifiers."""
    monkeypatch.setattr(tuplefast, "meets", lambda match, box: False)
    caught = 0
    for earlier in (rule(Match(src=addr("10.0.0.1")), ACCEPT, 100),
                    rule(Match(ct=frozenset({CtClass.FOUND})), ACCEPT, 100),
                    rule(Match(src=addr("10.0.0.1"), iif=frozenset({2})), DEFER, 100),
                    rule(Match(proto=UDP_, dport=port(53)), CONTINUE(3), 100)):
        rules = [earlier, udp_drop("10.0.0.1", 53, 1), udp_drop("10.0.0.2", 53, 2), rule(Match(), ACCEPT, 9)]
        with pytest.raises(AssertionError):
            assert_sound(rules, fastpath.analyse(rules, action_code))
        caught += 1
    for seed in range(60):
        rng = random.Random(7000 + seed)
        rules = random_rules(rng, rng.randint(2, 12))
        try:
            assert_sound(rules, fastpath.analyse(rules, action_code), rng.choice((ACCEPT, DROP, DEFER)))
        except AssertionError:
            caught += 1
    assert caught > 4 + 10
    monkeypatch.undo()
    monkeypatch.setattr(tuplefast._EarlierRules, "that_may_meet", lambda self, box: [])  # an index that loses rules
    rules = [rule(Match(src=addr("10.0.0.0/24"), proto=UDP_), ACCEPT, 0), udp_drop("10.0.0.1", 53, 1)]
    with pytest.raises(AssertionError):
        assert_sound(rules, fastpath.analyse(rules, action_code))


def test_a_hundred_thousand_rules_analyse_in_linear_time(monkeypatch):
    # linear, counted in the earlier rules each box is compared with (how fast: bench/, not a timer)
    rules = [rule(Match(dst=IntervalSet.single(ip("192.0.2.1")).complement(U32_MAX)), DEFER, 0)]
    rules += [rule(Match(src=IntervalSet.single(ip("100.64.0.0") + i), proto=UDP_, dport=port(1000 + i % 50000)),
                   DROP, 1 + i) for i in range(100_000)]
    rules += [rule(Match(proto=UDP_, dport=port(53)), DROP, 200_000)]  # no source: every earlier source meets it
    compared = []
    meets = tuplefast.meets
    monkeypatch.setattr(tuplefast, "meets", lambda match, box: compared.append(1) or meets(match, box))
    fast = fastpath.analyse(rules, action_code)
    assert len(compared) <= 2 * len(rules)
    assert len(fast.tuples) == 100_000 and fast.tuples[-1][1] == 100_000


def leading_single_source_rules(rng, n):
    """Mostly rules on one source address from a small pool (namesakes: each may meet an earlier
    one's box), with destination-only guards among them and, past the first few, a rule of
    another kind that ends the leading stretch."""
    rules = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.06:
            rules.append(rule(Match(dst=addr(rng.choice(DSTS))), rng.choice((DEFER, ACCEPT)), i))
            continue
        if roll < 0.09 and i > n // 2:
            rules.append(rule(Match(**{rng.choice(("src", "dst")): addr("10.0.0.0/30")}, proto=UDP_), DROP, i))
            continue
        fields = {"src": addr(rng.choice(SOURCES))}
        if rng.random() < 0.9:
            fields["proto"] = rng.choice((TCP_, UDP_, UDP_, ICMP_))
            if fields["proto"] != ICMP_ and rng.random() < 0.7:
                fields[rng.choice(("dport", "dport", "sport"))] = port(rng.choice(PORTS))
        if rng.random() < 0.2:
            fields["dst"] = addr(rng.choice(DSTS))
        if rng.random() < 0.05:
            fields["ct"] = frozenset({CtClass.FOUND})
        rules.append(rule(Match(**fields), rng.choice((DROP, DROP, DROP, GUARDED, ACCEPT)), 100 + i))
    return rules


@pytest.mark.parametrize("seed", range(40))
def test_the_leading_single_sources_in_c_passes_are_the_loop(seed, monkeypatch):
    """tuplestretch.leading_single_sources (C-level passes over the leading rules on one address) gives what
    analyse's rule-by-rule loop gives from the first rule: entries, their rules, and the index
    the rules after the stretch are proven against."""
    rng = random.Random(9100 + seed)
    rules = random_rules(rng, rng.randint(2, 12)) if seed % 4 == 0 else leading_single_source_rules(rng, rng.randint(5, 120))
    destination_only = [i for i, r in enumerate(rules) if r.match.src is None and fastpath._only_destination(r.match)]
    passes = tuplefast.analyse(rules, action_code, destination_only)
    monkeypatch.setattr(tuplestretch, "leading_single_sources", lambda rules, facts, skip, code, earlier: ([], [], 0))
    loop = tuplefast.analyse(rules, action_code, destination_only)
    assert passes == loop
    if seed % 4:
        assert_sound(rules, fastpath.analyse(rules, action_code))


def test_the_leading_stretch_test_is_about_something():
    """Most of the classifiers above have entries in the stretch and namesakes kept out."""
    kept_out = with_entries = 0
    for seed in range(40):
        if seed % 4 == 0:
            continue
        rng = random.Random(9100 + seed)
        rules = leading_single_source_rules(rng, rng.randint(5, 120))
        entries, index, stop = tuplestretch.leading_single_sources(
            rules, tuplefast.matchmemo.facts_of(rules),
            {i for i, r in enumerate(rules) if r.match.src is None and fastpath._only_destination(r.match)},
            action_code, tuplefast._EarlierRules())
        with_entries += bool(entries) and stop > 3
        kept_out += sum(1 for i in range(stop) if rules[i].action == DROP and tuplefast.box_of(rules[i].match)
                        and i not in index)
    assert with_entries >= 25 and kept_out >= 25


def reference_analysis(rules, destination_only):
    """analyse() as the module docstring states it, rule by rule through _EarlierRules alone."""
    earlier, entries, index = tuplefast._EarlierRules(), [], []
    for i, r in enumerate(rules):
        if i in destination_only:
            continue
        box = tuplefast.box_of(r.match)
        if box is not None and r.action.verdict is Verdict.DROP:
            others = earlier.that_may_meet(box)
            if others is not None and not any(tuplefast.meets(rules[j].match, box) for j in others):
                entries.append((box, r.rule_id, action_code(r.action)))
                index.append(i)
        earlier.add(i, r.match)
    return entries, index


def port_jump_rules(rng, n):
    """fail2ban's shape: single-source rules with rules on a destination port alone among them
    (a jump's condition, its chain's RETURN), few ports, sometimes a destination or a loose rule."""
    rules = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.15:
            rules.append(rule(Match(proto=rng.choice((TCP_, UDP_)), dport=port(rng.choice(PORTS))),
                              rng.choice((CONTINUE(n), ACCEPT, DEFER)), i))
        elif roll < 0.17:
            rules.append(rule(Match(dst=addr(rng.choice(DSTS)), proto=UDP_), ACCEPT, i))
        elif roll < 0.18:
            rules.append(rule(Match(proto=UDP_), ACCEPT, i))
        else:
            fields = {"src": addr(rng.choice(SOURCES)), "proto": rng.choice((TCP_, UDP_))}
            if rng.random() < 0.8:
                fields["dport"] = port(rng.choice(PORTS))
            rules.append(rule(Match(**fields), rng.choice((DROP, DROP, DROP, GUARDED, ACCEPT)), i))
    return rules


@pytest.mark.parametrize("seed", range(40))
def test_the_inline_index_lookups_are_that_may_meet(seed, monkeypatch):
    """analyse's inline cases (only sources, or sources and destination ports, indexed so far)
    give what that_may_meet gives, at its scan limit too (a small one here, so it is met)."""
    rng = random.Random(9300 + seed)
    rules = port_jump_rules(rng, rng.randint(5, 150))
    if seed % 2:
        monkeypatch.setattr(tuplefast, "MAX_SCAN", rng.randint(1, 6))
    destination_only = [i for i, r in enumerate(rules) if r.match.src is None and fastpath._only_destination(r.match)]
    assert tuplefast.analyse(rules, action_code, destination_only) == reference_analysis(rules, set(destination_only))


def test_the_inline_lookup_test_is_about_something(monkeypatch):
    """Its classifiers have entries, and boxes kept out by an earlier rule on a port alone."""
    with_entries = kept_out = 0
    for seed in range(40):
        rules = port_jump_rules(random.Random(9300 + seed), 150)
        entries, index = reference_analysis(rules, set())
        with_entries += len(entries) > 5
        for i, r in enumerate(rules):
            box = tuplefast.box_of(r.match)
            if box and r.action == DROP and i not in index and any(
                    rules[j].match.src is None and tuplefast.meets(rules[j].match, box) for j in range(i)):
                kept_out += 1
    assert with_entries >= 30 and kept_out >= 30
