# SPDX-License-Identifier: GPL-2.0-only
"""compile() without a kernel: interval sets, slot merging, classes, capacity, dump."""
import struct

import pytest

from ipt2xdp import abi
from ipt2xdp.classifier import (ACCEPT, CONTINUE, DEFER, DROP, ClassifierRule, IntervalSet, Match, U16_MAX,
                                validate)
from ipt2xdp.compile import build_slots, compile, field_classes
from ipt2xdp.errors import CapacityError


def test_interval_set_algebra():
    a = IntervalSet.of([(1, 5), (10, 20), (6, 7)])
    assert a.intervals == ((1, 7), (10, 20))
    assert a.intersection(IntervalSet.of([(5, 12)])).intervals == ((5, 7), (10, 12))
    assert a.complement(U16_MAX).intervals == ((0, 0), (8, 9), (21, U16_MAX))
    assert a.union(IntervalSet.single(8)).intervals == ((1, 8), (10, 20))
    assert 7 in a and 9 not in a and 20 in a and 21 not in a
    assert IntervalSet.cidr("10.0.0.0/8").as_prefix() == (0x0A000000, 8)
    assert IntervalSet.of([(0, 2)]).as_prefix() is None
    assert IntervalSet.cidrs(["10.0.0.0/9", "10.128.0.0/9"]).as_prefix() == (0x0A000000, 8)


def test_validate_rejects_backward_continue():
    with pytest.raises(ValueError):
        validate([ClassifierRule(Match(), CONTINUE(0), 0)], ACCEPT)
    with pytest.raises(ValueError):
        validate([], CONTINUE(1))


def test_validate_checks_every_rule_not_taken_over_from_the_last_classifier_that_passed():
    rules = blocklist(1000)
    validate(rules, ACCEPT)
    for wrong in (ClassifierRule(Match(), DROP, -1), ClassifierRule(Match(), CONTINUE(0), 7)):
        for where in (0, 500, 1000):  # in place of a rule that passed, and after them all
            changed = rules[:where] + [wrong] + rules[where + 1:]
            with pytest.raises(ValueError):
                validate(changed, ACCEPT)
        validate(rules + [ClassifierRule(Match(), DROP, 5000)], ACCEPT)  # what passed, and one more
    many_new = blocklist(1000, start=1)  # equal rules, other objects: checked again
    validate(many_new, ACCEPT)
    with pytest.raises(ValueError):
        validate(many_new[:-1] + [ClassifierRule(Match(), DROP, -3)], ACCEPT)


def blocklist(n, start=0, action=DROP, plen=32):
    step = 1 << (32 - plen)
    return [ClassifierRule(Match(src=IntervalSet.range(0x0A000000 + i * step, 0x0A000000 + (i + 1) * step - 1)),
                           action, start + i) for i in range(n)]


def test_runs_of_exact_rules_merge_into_one_set_slot():
    rules = blocklist(100) + [ClassifierRule(Match(proto=frozenset({6})), ACCEPT, 100)] + blocklist(50, 200, plen=24)
    slots, rule_to_slot = build_slots(rules)
    assert len(slots) == 3
    assert [s.set_members is not None for s in slots] == [True, False, True]
    assert rule_to_slot == {0: 0, 100: 1, 101: 2}
    t = compile(rules, ACCEPT, reduce=False)
    assert t.set_count == 2 and t.maps["exact_set"].count == 150
    assert slots[2].src_plen == 24
    # the first run is the blocklist fast path's alone; the tcp ACCEPT keeps the second one classified
    t = compile(rules, ACCEPT)
    assert t.set_count == 1 and t.maps["exact_set"].count == 50 and t.maps["src_fast"].count == 100


@pytest.mark.parametrize("seed", range(30))
def test_a_set_slot_matches_the_union_of_its_rules_field_by_field(seed):
    """The set slot's match (what the bitmaps encode) is each field's union over its rules, however
    the keyed values repeat, touch or leave gaps (same prefix length in a run: its shape)."""
    import random

    rng = random.Random(seed)
    plen = rng.choice([8, 16, 24, 31, 32])
    span = 1 << (32 - plen)
    base = rng.randrange(0, (1 << 32) // span - 40) * span
    rules = []
    for i in range(rng.randrange(4, 60)):
        src = base + rng.randrange(0, 40) * span
        port = rng.choice([rng.randrange(0, 65536), 80, 81, 82, 65535, 0])
        rules.append(ClassifierRule(Match(src=IntervalSet(((src, src + span - 1),)), proto=frozenset({17}),
                                          dport=IntervalSet.single(port), iif=frozenset({3})), DROP, i))
    slots, _ = build_slots(rules)
    assert len(slots) == 1 and slots[0].set_members is not None
    for name in ("src", "dport"):
        union = IntervalSet.of(i for r in rules for i in getattr(r.match, name).intervals)
        assert getattr(slots[0].match, name) == union, name
    assert slots[0].match.proto == frozenset({17}) and slots[0].match.iif == frozenset({3})
    assert slots[0].match.dst is None and slots[0].match.sport is None


def test_short_runs_and_continue_targets_stay_plain():
    rules = blocklist(3) + [ClassifierRule(Match(), CONTINUE(6), 3)] + blocklist(6, 10)
    slots, _ = build_slots(rules)
    # rule 6 is a CONTINUE target, so the second run splits there: 4..5 plain, 6..9 merged
    assert [len(s.set_members) if s.set_members else 0 for s in slots] == [0, 0, 0, 0, 0, 0, 4]


def test_duplicate_exact_rules_keep_the_first():
    rules = blocklist(5) + blocklist(5, 100)
    t = compile(rules, ACCEPT, reduce=False)
    rule_of = struct.unpack("=5I", t.maps["counter_rules"].values)  # the shadowed copies get no counter
    values = sorted(rule_of[struct.unpack("=I", v)[0]] for _, v in t.maps["exact_set"].entries())
    assert values == [0, 1, 2, 3, 4]


def test_field_classes_merge_equal_rule_sets():
    rules = [ClassifierRule(Match(dport=IntervalSet.range(10, 20)), DROP, 0),
             ClassifierRule(Match(dport=IntervalSet.of([(15, 30), (100, 100)])), DROP, 1)]
    slots, _ = build_slots(rules)
    intervals, bitmaps = field_classes("dport", slots)
    assert intervals == [(0, 0), (10, 1), (15, 2), (21, 3), (31, 0), (100, 3), (101, 0)]
    assert bitmaps == [0, 0b01, 0b11, 0b10]
    # "no port" (65536) is in no constrained slot's set
    assert intervals[-1] == (101, 0)


def test_unconstrained_fields_are_left_out_of_the_mask():
    # reduce=False: the classifier keeps the rule the exact-tuple fast path decides
    t = compile([ClassifierRule(Match(proto=frozenset({6})), DROP, 0)], ACCEPT, reduce=False)
    assert t.field_mask == 1 << abi.F_PROTO


def test_capacity_error_and_defer():
    rules = [ClassifierRule(Match(dport=IntervalSet.single(p)), DROP, p) for p in range(10)]
    with pytest.raises(CapacityError):
        compile(rules, ACCEPT, max_slots=5, merge_min_run=100)
    t = compile(rules, ACCEPT, max_slots=5, overflow="defer", merge_min_run=100)
    assert t.slot_count == 5 and t.overflowed_rules == 6 and t.notes


def test_dump_is_deterministic_and_names_the_sets():
    rules = blocklist(4) + [ClassifierRule(Match(proto=frozenset({17}), dport=IntervalSet.single(53)), DEFER, 9)]
    a, b = compile(rules, DROP, reduce=False).dump(), compile(rules, DROP, reduce=False).dump()
    assert a == b
    assert "slots 2 sets 1 default DROP" in a
    assert "set 0a000003000000000000000001000000 -> counter=3 (rule 3)" in a
    reduced = compile(rules, DROP).dump()
    assert "slots 1 sets 0 default DROP" in reduced and "src_fast 0a000003/32 -> rule 3 action 0x1" in reduced


def test_fast_path_rules_get_no_counter():
    """A 1k-address blocklist the fast path holds counts in its entries: the counters array holds
    the classifier's rules (before and after the list), the default and the overflow catch-all."""
    ssh = ClassifierRule(Match(src=IntervalSet.range(0xC0A80000, 0xC0A8FFFF), proto=frozenset({6}),
                               dport=IntervalSet.range(22, 22)), ACCEPT, 0)  # not from the list
    dns = ClassifierRule(Match(proto=frozenset({17}), dport=IntervalSet.range(53, 53)), ACCEPT, 1001)
    web = ClassifierRule(Match(proto=frozenset({6}), dport=IntervalSet.range(80, 80)), DROP, 1002)
    rules = [ssh] + blocklist(1000, 1) + [dns, web]
    t = compile(rules, ACCEPT)
    assert t.maps["src_fast"].count == 1000
    assert t.maps["counters"].max_entries == 3 + 2
    assert struct.unpack("=3I", t.maps["counter_rules"].values) == (0, 1001, 1002)
    cfg = abi.GenConfig.from_buffer_copy(t.maps["cfg"].values)
    assert (cfg.counter_stride, cfg.default_counter) == (5, 3)
    slots = [abi.Slot.from_buffer_copy(v) for _, v in t.maps["slots"].entries()]
    assert [(s.counter, s.action) for s in slots] == [(0, abi.ACT_ACCEPT), (1, abi.ACT_ACCEPT), (2, abi.ACT_DROP)]
    # the whole classifier in the class bitmaps: every rule may count in the array
    assert compile(rules, ACCEPT, reduce=False).maps["counters"].max_entries == 1003 + 2


def test_large_blocklist_compiles_into_one_set_or_the_fast_path():
    # how fast: bench/ (control section), never a timed assertion here
    t = compile(blocklist(100_000), ACCEPT, reduce=False)
    assert t.slot_count == 1 and t.maps["exact_set"].count == 100_000
    t = compile(blocklist(100_000), ACCEPT)
    assert t.slot_count == 0 and t.maps["src_fast"].count == 100_000 and t.rule_count == 100_000


# --- golden dump (nftables .payload style): the map contents of a small classifier ---------------
GOLDEN = __import__("pathlib").Path(__file__).parent / "compile" / "small.maps"


def golden_classifier():
    tcp = frozenset({6})
    return [
        ClassifierRule(Match(src=IntervalSet.cidr("10.0.0.0/8"), proto=tcp, dport=IntervalSet.single(22)), DROP, 0),
        ClassifierRule(Match(proto=frozenset({17}), dport=IntervalSet.single(53)), ACCEPT, 1),
        ClassifierRule(Match(iif=frozenset({2})), CONTINUE(4), 2),
        ClassifierRule(Match(proto=tcp), DEFER, 3),
    ] + blocklist(4, 4)


def test_golden_dump():
    """IPT2XDP_UPDATE_GOLDEN=1 rewrites tests/compile/small.maps; review the diff."""
    import os
    text = "\n".join(f"# {r.rule_id}: {r.match} -> {r.action!r}" for r in golden_classifier()) + "\n"
    text += compile(golden_classifier(), ACCEPT).dump()
    if os.environ.get("IPT2XDP_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert GOLDEN.read_text() == text


def test_digest_is_that_of_the_maps_whichever_were_hashed_before():
    """Tables.digest takes a map's hash from the last digest made only where its bytes are the
    same: digests made one after another are the ones made afresh."""
    import ipt2xdp.compile as compile_module

    rulesets = [blocklist(300), blocklist(300) + [ClassifierRule(Match(proto=frozenset({17})), DROP, 900)],
                blocklist(300, plen=24), blocklist(300)]
    in_turn = [compile(rules, ACCEPT).digest for rules in rulesets]
    fresh = []
    for rules in rulesets:
        compile_module._MAP_HASHES.clear()
        fresh.append(compile(rules, ACCEPT).digest)
    assert in_turn == fresh
    assert len(set(fresh)) == 3 and fresh[0] == fresh[3]
