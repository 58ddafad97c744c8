# SPDX-License-Identifier: GPL-2.0-only
"""The blocklist fast path set (ipt2xdp/fastpath.py) on crafted and random classifiers.

Exactness is checked two ways: against classifier.evaluate() on packets from each entry that vary
every other field (a sound entry gives the same DROP and rule for all of them), and against a
brute-force restatement of the rule over a small address universe (an address belongs iff the
first rule whose source holds it is a source-only DROP), so the set is neither too big nor smaller
than that rule allows. The last tests make the analysis unsound on purpose and check that the
evaluate() check catches it."""
import itertools
import random
import struct

import pytest

from ipt2xdp import abi, fastpath, fastreduce
from ipt2xdp.classifier import (ACCEPT, CONTINUE, DEFER, DROP, Action, ClassifierRule, CtClass, IntervalSet, Match,
                                PacketKey, U32_MAX, Verdict, evaluate)
from ipt2xdp.compile import compile
from ipt2xdp.mapencode import action_code as _action_code

TCP_, UDP_ = frozenset({6}), frozenset({17})
GUARDED = Action(Verdict.DROP, guard=abi.GUARD_REMOVALS)


def ip(text):
    a, b, c, d = (int(x) for x in text.split("."))
    return a << 24 | b << 16 | c << 8 | d


def src(*texts):
    return IntervalSet.cidrs(texts)


def rule(match, action, rule_id):
    return ClassifierRule(match, action, rule_id)


def entries(rules):
    """{(network text, plen): (rule_id, action code)} of the probed entries."""
    fast = fastpath.analyse(rules, _action_code)
    return {(f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", plen): (rule_id, code)
            for n, plen, rule_id, code in fast.entries if plen in fast.plens}


def packets_from(address, rules):
    """Packets from `address` varying every other field over the values the rules single out."""
    dsts, ports = {ip("192.0.2.1")}, {1, 22, 53, 80}
    for r in rules:
        if r.match.dst is not None:
            dsts.update(v for lo, hi in r.match.dst for v in (lo, hi, max(lo - 1, 0), min(hi + 1, U32_MAX)))
        for field in (r.match.sport, r.match.dport):
            if field is not None:
                ports.update(v for lo, hi in field for v in (lo, hi))
    out = []
    for dst, proto, iif, ct in itertools.product(sorted(dsts), (6, 17, 1, 47), (1, 2, 3), tuple(CtClass)):
        if proto in (6, 17):
            for sport, dport in itertools.product(sorted(ports)[:4], sorted(ports)):
                out.append(PacketKey(address, dst, proto, sport, dport, iif=iif, ct=ct,
                                     tcp_flags=0x02 if proto == 6 else None))
        else:
            out.append(PacketKey(address, dst, proto, iif=iif, ct=ct, icmp=8 * 256 if proto == 1 else None))
    return out


def assert_sound(rules, fast):
    """Every packet from every probed entry (its first, last and a middle address) to a destination
    the fast path applies to is dropped by the entry's rule under first-match evaluation."""
    checked = 0
    for net, plen, rule_id, code in fast.entries:
        if plen not in fast.plens:
            continue
        top = net + (1 << (32 - plen)) - 1
        for address in {net, top, (net + top) // 2}:
            assert fast.probe(address) == (rule_id, code)
            for packet in packets_from(address, rules):
                if fast.probe(address, packet.dst) is not None:
                    assert evaluate(rules, ACCEPT, packet) == (Verdict.DROP, rule_id), (address, packet)
                    checked += 1
    assert checked or not fast.plens


def test_plain_blocklist_is_all_in_with_its_own_counters():
    rules = [rule(Match(src=src(f"10.0.0.{i}")), DROP, 100 + i) for i in range(20)]
    assert entries(rules) == {(f"10.0.0.{i}", 32): (100 + i, abi.ACT_DROP) for i in range(20)}
    assert_sound(rules, fastpath.analyse(rules, _action_code))


def test_address_before_an_accept_rule_is_left_out():
    rules = [rule(Match(src=src("10.0.0.1")), ACCEPT, 1),
             rule(Match(src=src("10.0.0.1")), DROP, 2), rule(Match(src=src("10.0.0.2")), DROP, 3)]
    assert entries(rules) == {("10.0.0.2", 32): (3, abi.ACT_DROP)}


def test_a_rule_without_source_before_the_list_leaves_everything_out():
    # ESTABLISHED,RELATED -j ACCEPT first: a listed source with a tracked flow is accepted
    ct_first = [rule(Match(ct=frozenset({CtClass.FOUND})), ACCEPT, 1)] + \
        [rule(Match(src=src(f"10.0.0.{i}")), DROP, 10 + i) for i in range(5)]
    assert entries(ct_first) == {}
    iface_first = [rule(Match(iif=frozenset({2})), ACCEPT, 1), rule(Match(src=src("10.0.0.1")), DROP, 2)]
    assert entries(iface_first) == {}
    port_first = [rule(Match(proto=TCP_, dport=IntervalSet.single(22)), ACCEPT, 1), rule(Match(src=src("10.0.0.1")), DROP, 2)]
    assert entries(port_first) == {}


def test_rules_after_the_list_do_not_matter():
    rules = [rule(Match(src=src("10.0.0.1")), DROP, 1),
             rule(Match(ct=frozenset({CtClass.FOUND})), ACCEPT, 2), rule(Match(src=src("10.0.0.2")), DROP, 3)]
    assert entries(rules) == {("10.0.0.1", 32): (1, abi.ACT_DROP)}
    assert_sound(rules, fastpath.analyse(rules, _action_code))


def test_source_specific_ct_and_iface_rules_exclude_only_their_sources():
    rules = [rule(Match(src=src("10.0.0.1"), ct=frozenset({CtClass.FOUND})), ACCEPT, 1),
             rule(Match(src=src("10.0.0.2"), iif=frozenset({3})), ACCEPT, 2),
             *[rule(Match(src=src(f"10.0.0.{i}")), DROP, 10 + i) for i in range(1, 5)]]
    assert entries(rules) == {("10.0.0.3", 32): (13, abi.ACT_DROP), ("10.0.0.4", 32): (14, abi.ACT_DROP)}
    assert_sound(rules, fastpath.analyse(rules, _action_code))


def test_a_protocol_specific_drop_is_not_protocol_independent():
    rules = [rule(Match(src=src("10.0.0.1"), proto=TCP_), DROP, 1),
             rule(Match(src=src("10.0.0.1")), DROP, 2),  # tcp from .1 counts on rule 1, the rest on 2
             rule(Match(src=src("10.0.0.2"), proto=UDP_), DROP, 3),
             rule(Match(src=src("10.0.0.3")), DROP, 4)]
    assert entries(rules) == {("10.0.0.3", 32): (4, abi.ACT_DROP)}


def test_defer_guards_and_continue_exclude_the_sources_they_may_match():
    rules = [rule(Match(src=src("10.1.0.0/16"), proto=TCP_, dport=IntervalSet.single(80)), DEFER, 1),  # a DNAT guard
             rule(Match(src=src("10.2.0.0/24"), proto=UDP_), CONTINUE(3), 2),
             rule(Match(src=src("10.2.0.0/24")), DROP, 3),
             rule(Match(src=src("10.1.2.3")), DROP, 4), rule(Match(src=src("10.2.0.9")), DROP, 5),
             rule(Match(src=src("10.3.0.1")), DROP, 6)]
    assert entries(rules) == {("10.3.0.1", 32): (6, abi.ACT_DROP)}
    assert_sound(rules, fastpath.analyse(rules, _action_code))


def test_prefixes_and_overlaps():
    rules = [rule(Match(src=src("10.9.9.9")), DROP, 1),
             rule(Match(src=src("10.8.0.0/16")), DROP, 3),
             rule(Match(src=src("10.8.1.1")), DROP, 4),      # shadowed by rule 3
             rule(Match(src=src("10.7.0.0/24", "10.6.0.0/24")), DROP, 5)]
    assert entries(rules) == {("10.9.9.9", 32): (1, abi.ACT_DROP), ("10.8.0.0", 16): (3, abi.ACT_DROP),
                              ("10.6.0.0", 24): (5, abi.ACT_DROP), ("10.7.0.0", 24): (5, abi.ACT_DROP)}
    assert_sound(rules, fastpath.analyse(rules, _action_code))


def test_a_prefix_holding_an_earlier_source_keeps_the_rest():
    rules = [rule(Match(src=src("10.9.9.9")), ACCEPT, 1), rule(Match(src=src("10.9.0.0/16")), DROP, 2)]
    fast = fastpath.analyse(rules, _action_code)
    # 10.9.0.0/16 minus one address: one block of each length /17../32
    assert sorted(plen for _, plen, _, _ in fast.entries) == list(range(17, 33))
    assert sum(1 << (32 - plen) for _, plen, _, _ in fast.entries) == (1 << 16) - 1
    assert {rule_id for _, _, rule_id, _ in fast.entries} == {2}
    assert fast.probe(ip("10.9.9.9")) is None and fast.left_out == 12
    assert_sound(rules, fast)


def test_negated_source_splits_into_prefixes_and_never_probes_slash_zero():
    rules = [rule(Match(src=src("192.168.0.0/16").complement(U32_MAX)), DROP, 1)]
    fast = fastpath.analyse(rules, _action_code)
    assert 0 not in fast.plens and fast.entries
    covered = sum(1 << (32 - plen) for _, plen, _, _ in fast.entries)
    assert covered == (1 << 32) - (1 << 16) and fast.left_out == len(fast.entries) - sum(
        1 for e in fast.entries if e[1] in fast.plens)
    assert_sound(rules, fast)
    assert fast.probe(ip("192.168.1.1")) is None


def test_at_most_four_lengths_most_entries_first():
    rules = [rule(Match(src=src(f"10.{plen}.{i}.0/{plen}" if plen <= 24 else f"10.{plen}.{i}.0/{plen}")), DROP, plen * 100 + i)
             for plen, count in ((32, 5), (24, 4), (28, 3), (30, 2), (29, 1)) for i in range(count)]
    fast = fastpath.analyse(rules, _action_code)
    assert fast.plens == (32, 24, 28, 30) and fast.left_out == 1
    assert fast.probe(ip("10.29.0.0")) is None  # its length is not probed: the classifier decides


def test_guarded_drop_keeps_its_guard():
    rules = [rule(Match(src=src("10.0.0.1", "10.0.0.3")), GUARDED, 1)]
    assert entries(rules) == {("10.0.0.1", 32): (1, abi.ACT_SET_GUARDED | abi.GUARD_REMOVALS),
                              ("10.0.0.3", 32): (1, abi.ACT_SET_GUARDED | abi.GUARD_REMOVALS)}


def test_compile_writes_the_map_and_the_lengths():
    rules = [rule(Match(src=src("10.0.0.1")), DROP, 0), rule(Match(src=src("10.1.0.0/16")), DROP, 1)]
    tables = compile(rules, ACCEPT)
    cfg = abi.GenConfig.from_buffer_copy(tables.maps["cfg"].values)
    assert list(cfg.src_fast_plens) == [16, 32, 0, 0] or list(cfg.src_fast_plens) == [32, 16, 0, 0]
    got = {key: struct.unpack("=II", value) for key, value in tables.maps["src_fast"].entries()}
    assert got == {struct.pack("!I", ip("10.0.0.1")) + struct.pack("=I", 32): (0, abi.ACT_DROP),
                   struct.pack("!I", ip("10.1.0.0")) + struct.pack("=I", 16): (1, abi.ACT_DROP)}
    none = compile([rule(Match(proto=TCP_), DROP, 0)], ACCEPT)
    assert list(abi.GenConfig.from_buffer_copy(none.maps["cfg"].values).src_fast_plens) == [0, 0, 0, 0]
    assert none.maps["src_fast"].count == 0


def test_overflow_keeps_only_entries_of_held_rules():
    rules = [rule(Match(src=src(f"10.0.0.{i}"), proto=TCP_, dport=IntervalSet.range(1 + i, 2 + i)), DROP, i)
             for i in range(6)] + [rule(Match(src=src(f"10.9.0.{i}")), DROP, 6 + i) for i in range(3)]
    tables = compile(rules, ACCEPT, overflow="defer", max_slots=7, reduce=False)
    assert tables.overflowed_rules == 3 and tables.fast_path.entries == [] and tables.maps["src_fast"].count == 0
    tables = compile(rules, ACCEPT, overflow="defer", max_slots=8, reduce=False)
    assert tables.overflowed_rules == 2
    assert [(e[0], e[2]) for e in tables.fast_path.entries] == [(ip("10.9.0.0"), 6)]
    assert tables.maps["src_fast"].count == 1
    # reduced, the three source-only DROPs leave the class bitmaps: the other six fit in 7 slots
    tables = compile(rules, ACCEPT, overflow="defer", max_slots=7)
    assert tables.overflowed_rules == 0 and tables.slot_count == 6 and tables.rule_count == 9
    assert [(e[0], e[2]) for e in tables.fast_path.entries] == [(ip(f"10.9.0.{i}"), 6 + i) for i in range(3)]
    # when even the reduced classifier does not fit, the whole one is cut as before
    tables = compile(rules, ACCEPT, overflow="defer", max_slots=5)
    assert tables.overflowed_rules == 5 and tables.fast_path.entries == [] and tables.slot_count == 5


# --- random classifiers over a small address universe -------------------------------------------

UNIVERSE = [ip("10.0.0.0") + i for i in range(16)]


def random_rules(rng, n, destination_only=0.5):
    rules = []
    for i in range(n):
        lo = rng.choice(UNIVERSE)
        width = rng.choice((1, 1, 1, 2, 4, 8))
        lo -= (lo - UNIVERSE[0]) % width
        fields = {"src": IntervalSet.range(lo, lo + width - 1) if rng.random() < 0.88 else None}
        extra = rng.random()
        if fields["src"] is None and extra < destination_only:  # a destination-only rule (the planner's local guard)
            fields["dst"] = rng.choice((IntervalSet.range(ip("192.0.2.0"), ip("192.0.2.127")),
                                        IntervalSet.single(ip("192.0.2.1")).complement(U32_MAX),
                                        IntervalSet.single(ip("192.0.2.200"))))
        elif extra < 0.12:
            fields["proto"] = rng.choice((TCP_, UDP_))
        elif extra < 0.18:
            fields["ct"] = frozenset({rng.choice(tuple(CtClass))})
        elif extra < 0.22:
            fields["iif"] = frozenset({rng.choice((1, 2))})
        elif extra < 0.26:
            fields["dport"], fields["proto"] = IntervalSet.single(rng.choice((22, 80))), TCP_
        action = rng.choice((DROP, DROP, DROP, ACCEPT, DEFER, GUARDED, "continue"))
        if action == "continue":
            action = CONTINUE(rng.randint(i + 1, n))
        rules.append(rule(Match(**fields), action, i))
    return rules


def brute_force(rules):
    """{address: (rule_id, code)}: the first rule whose source holds the address (no source: any
    address), rules on the destination alone aside, is a DROP constraining nothing else."""
    out = {}
    for address in UNIVERSE:
        for r in rules:
            if r.match.src is None and fastpath._only_destination(r.match):
                continue
            if r.match.src is None or address in r.match.src:
                if r.action.verdict == Verdict.DROP and r.match.src is not None and fastpath._only_source(r.match):
                    out[address] = (r.rule_id, _action_code(r.action))
                break
    return out


@pytest.mark.parametrize("seed", range(60))
def test_random_classifiers_exact_and_sound(seed):
    rng = random.Random(seed)
    rules = random_rules(rng, rng.randint(1, 14))
    fast = fastpath.analyse(rules, _action_code)
    assert fast.left_out == 0
    assert {a: fast.probe(a) for a in UNIVERSE if fast.probe(a)} == brute_force(rules)
    assert_sound(rules, fast)
    # the destinations left out are exactly those of destination-only rules before the last entry
    # (of either fast path: the program checks them once before both)
    if fast.plens:
        last = max(i for i, r in enumerate(rules)
                   if r.rule_id in {e[2] for e in fast.entries} | {rule_id for _, rule_id, _ in fast.tuples})
        for dst in (ip("192.0.2.0"), ip("192.0.2.1"), ip("192.0.2.200"), ip("8.8.8.8")):
            held = any(r.match.src is None and fastpath._only_destination(r.match) and dst in r.match.dst
                       for r in rules[:last])
            assert (dst in fast.dsts) == (not held)


def test_the_planners_local_guard_limits_the_destinations():
    local = IntervalSet.cidrs(["192.0.2.1/32", "127.0.0.0/8", "224.0.0.0/4"])
    rules = [rule(Match(dst=local.complement(U32_MAX)), DEFER, 0)] + \
        [rule(Match(src=src(f"10.0.0.{i}")), DROP, 1 + i) for i in range(5)] + [rule(Match(), ACCEPT, 9)]
    fast = fastpath.analyse(rules, _action_code)
    assert fast.dsts == local and len(fast.entries) == 5
    assert fast.probe(ip("10.0.0.1"), ip("192.0.2.1")) == (2, abi.ACT_DROP)
    assert fast.probe(ip("10.0.0.1"), ip("192.0.2.2")) is None  # deferred by the guard: not local
    assert_sound(rules, fast)


def test_an_imported_blocklist_gets_the_fast_path():
    """The whole way from ruleset text: parse, plan (with its guards) and compile."""
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan
    from tests.fingerprint import HOSTS

    head = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    text = head + "".join(f"-A INPUT -s 10.1.0.{i}/32 -j DROP\n" for i in range(50)) + "COMMIT\n"
    host = HOSTS["receiver"]
    result = plan(parse(text, "bl.rules"), host)
    tables = compile(result.rules, result.default)
    fast = tables.fast_path
    local = IntervalSet.of((int(n.network_address), int(n.broadcast_address)) for n in host.local_destinations)
    assert fast.plens == (32,) and len(fast.entries) == 50 and fast.dsts == local
    assert_sound(list(result.rules), fast)
    stateful = head + "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n" + text[len(head):]
    result = plan(parse(stateful, "st.rules"), host)
    assert compile(result.rules, result.default).fast_path.plens == ()


def test_an_unsound_analysis_is_caught(monkeypatch):
    """The checks above fail when the analysis forgets a field or the earlier rules."""
    rules = [rule(Match(src=src("10.0.0.1"), proto=TCP_), DROP, 1), rule(Match(src=src("10.0.0.2")), DROP, 2)]
    monkeypatch.setattr(fastpath, "_only_source", lambda match: match.dst is None)  # forgets the protocol
    fast = fastpath.analyse(rules, _action_code)
    with pytest.raises(AssertionError):
        assert_sound(rules, fast)
    monkeypatch.undo()

    rules = [rule(Match(src=src("10.0.0.1"), ct=frozenset({CtClass.FOUND})), ACCEPT, 1),
             rule(Match(src=src("10.0.0.1")), DROP, 2)]
    sound = fastpath.analyse(rules, _action_code)
    assert sound.entries == []
    unsound = fastpath.FastPath(entries=[(ip("10.0.0.1"), 32, 2, abi.ACT_DROP)], plens=(32,))  # ignores rule 1
    with pytest.raises(AssertionError):
        assert_sound(rules, unsound)


# --- the reduced classifier: what the fast path decides leaves the class bitmaps ----------------

def program(rules, default, packet):
    """What the program decides with the reduced classifier: (verdict, rule_id) of the fast path's
    entry on a hit, else first-match evaluation of the rules the class bitmaps hold."""
    fast = fastpath.analyse(rules, _action_code)
    held = fastpath.reduce_classifier(rules, fast)
    return _program(fast, rules if held is None else held, default, packet)


def _program(fast, held, default, packet):
    hit = fast.probe_packet(packet.src, packet.dst, packet.proto, packet.sport, packet.dport)
    if hit is not None:
        return Verdict.DROP, hit[0]
    return evaluate(held, default, packet)


def assert_reduction_exact(rules, default=ACCEPT, sources=None, held=None):
    """Every packet (every source of the universe, destinations and other fields varied) gets the
    full classifier's verdict and counter from the fast path plus the reduced classifier."""
    fast = fastpath.analyse(rules, _action_code)
    if held is None:
        held = fastpath.reduce_classifier(rules, fast)
        held = rules if held is None else held
    checked = 0
    for address in sources or UNIVERSE + [ip("10.0.1.0")]:
        for packet in packets_from(address, rules):
            want = evaluate(rules, default, packet)
            assert _program(fast, held, default, packet) == want, (packet, held)
            checked += 1
    return checked


def test_a_plain_blocklist_leaves_the_classifier_entirely():
    rules = [rule(Match(src=src(f"10.0.0.{i}")), DROP, 100 + i) for i in range(8)] + [rule(Match(proto=TCP_), ACCEPT, 1)]
    held = fastpath.reduce_classifier(rules, fastpath.analyse(rules, _action_code))
    assert held == [rules[-1]]
    assert_reduction_exact(rules, DROP)


def test_a_destination_rule_between_keeps_the_earlier_entries_classified():
    # 10.0.0.1 to 192.0.2.1 is not fast-pathed (rule 1 holds that destination before the last
    # entry's rule) but the full classifier drops it at rule 0: rule 0 must stay whole
    rules = [rule(Match(src=src("10.0.0.1")), DROP, 0),
             rule(Match(dst=IntervalSet.single(ip("192.0.2.1"))), ACCEPT, 1),
             rule(Match(src=src("10.0.0.2")), DROP, 2)]
    fast = fastpath.analyse(rules, _action_code)
    assert fast.probe(ip("10.0.0.1"), ip("192.0.2.1")) is None and fast.probe(ip("10.0.0.1"), ip("8.8.8.8"))
    assert fastpath.reduce_classifier(rules, fast) == rules[:2]  # rule 2 goes: rule 1 decides what is left out
    assert_reduction_exact(rules)


def test_a_destination_continue_keeps_only_the_rules_it_lands_before():
    rules = [rule(Match(dst=IntervalSet.single(ip("192.0.2.1"))), CONTINUE(2), 0),
             rule(Match(src=src("10.0.0.1")), DROP, 1),     # jumped over: goes
             rule(Match(src=src("10.0.0.2")), DROP, 2),     # landed on: stays
             rule(Match(src=src("10.0.0.3")), DROP, 3),     # landed before: stays
             rule(Match(dst=IntervalSet.single(ip("192.0.2.1"))), DEFER, 4),
             rule(Match(src=src("10.0.0.4")), DROP, 5),     # after a terminal guard: goes
             rule(Match(proto=TCP_), CONTINUE(8), 6), rule(Match(src=src("10.0.0.5")), DROP, 7), rule(Match(), ACCEPT, 8)]
    held = fastpath.reduce_classifier(rules, fastpath.analyse(rules, _action_code))
    assert [r.rule_id for r in held] == [0, 2, 3, 4, 6, 7, 8]
    assert held[0].action == CONTINUE(1) and held[4].action == CONTINUE(6)  # targets follow the rules that stay
    assert_reduction_exact(rules)


def test_a_partly_probed_source_keeps_the_rest():
    # 10.0.0.0/28 minus .1 is one block of each length /29../32; the two /27s make five lengths,
    # so /29 (fewest entries, shortest) is not probed and stays in rule 1
    rules = [rule(Match(src=src("10.0.0.1")), ACCEPT, 0), rule(Match(src=src("10.0.0.0/28")), DROP, 1),
             rule(Match(src=src("10.0.1.0/27")), DROP, 2), rule(Match(src=src("10.0.2.0/27")), DROP, 3)]
    fast = fastpath.analyse(rules, _action_code)
    assert fast.plens == (27, 32, 31, 30) and fast.left_out == 1
    held = fastpath.reduce_classifier(rules, fast)
    assert held == [rules[0], rule(Match(src=src("10.0.0.1", "10.0.0.8/29")), DROP, 1)]  # .1: the ACCEPT shadows it
    assert_reduction_exact(rules, sources=[ip("10.0.0.0") + i for i in range(16)] + [ip("10.0.1.7"), ip("10.0.2.31")])


def test_no_fast_path_no_reduction():
    rules = [rule(Match(ct=frozenset({CtClass.FOUND})), ACCEPT, 0), rule(Match(src=src("10.0.0.1")), DROP, 1)]
    assert fastpath.reduce_classifier(rules, fastpath.analyse(rules, _action_code)) is None


@pytest.mark.parametrize("seed", range(80))
def test_random_reductions_give_the_full_verdict_and_counter(seed):
    rng = random.Random(1000 + seed)
    rules = random_rules(rng, rng.randint(2, 14), destination_only=0.35)
    assert_reduction_exact(rules, rng.choice((ACCEPT, DROP, DEFER)))


def test_removing_too_much_is_caught(monkeypatch):
    """The check above fails when the reduction ignores the destinations the fast path leaves out
    or the lengths it does not probe."""
    rules = [rule(Match(src=src("10.0.0.1")), DROP, 0),
             rule(Match(dst=IntervalSet.single(ip("192.0.2.1"))), ACCEPT, 1),
             rule(Match(src=src("10.0.0.2")), DROP, 2)]
    monkeypatch.setattr(fastreduce, "_unreached_outside", lambda *args: ([0], [True]))
    with pytest.raises(AssertionError):
        assert_reduction_exact(rules)
    monkeypatch.undo()
    rules = [rule(Match(src=src(f"10.0.0.{i}/{plen}")), DROP, i) for i, plen in ((0, 32), (4, 30), (8, 29), (2, 31), (1, 32))]
    rules += [rule(Match(src=src("10.0.0.16/28")), DROP, 9)]  # a fifth length: left out
    fast = fastpath.analyse(rules, _action_code)
    assert fast.left_out == 1
    everything_gone = [r for r in rules if r.rule_id == 9][:0]
    with pytest.raises(AssertionError):
        assert_reduction_exact(rules, sources=[ip("10.0.0.16")], held=everything_gone)
