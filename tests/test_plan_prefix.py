# SPDX-License-Identifier: GPL-2.0-only
"""A long-lived planner's re-plans (TERM_MEMO with the rules' conjunctions, planprefix's INPUT
prefix, reachable()'s remembered prefix) equal a fresh plan after every kind of edit: append,
insert first, delete the last and a middle rule, a user chain edited, a jump, RETURN or counting
rule in the way, an earlier table's change (other guards), a host fact changed, shadowing and
maybe-drop rules. Compared: the plan itself (classifier, decisions, counter paths, codes, notes)
and what the fingerprints compare of it (report records and summary)."""
import random
from dataclasses import replace

import pytest

from ipt2xdp import decisions, identitymemo, planprefix, planrecord, planstore, report
from ipt2xdp import plan as planner
from ipt2xdp.parse import ParseMemo, parse
from tests.fingerprint import HOSTS

RECEIVER, ROUTER = HOSTS["receiver"], HOSTS["router"]

HEAD = """*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:f2b-sshd - [0:0]
"""
DROPS = [f"-A INPUT -s 10.0.{i // 250}.{i % 250 + 1}/32 -p tcp -m tcp --dport {1000 + i} -j DROP" for i in range(60)]
TAIL = ["-A INPUT -p tcp -m tcp --dport 22 -j f2b-sshd", "-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT",
        "-A f2b-sshd -s 203.0.113.5/32 -j DROP", "-A f2b-sshd -s 203.0.113.6/32 -j REJECT --reject-with icmp-port-unreachable",
        "-A f2b-sshd -j RETURN"]


def text_of(lines):
    return HEAD + "\n".join(lines) + "\nCOMMIT\n"


def outcome(result, ruleset, host):
    """The plan, its report records and summary, and the plan record's JSON an import saves (which
    a long-lived planner makes from the parts of its last one)."""
    from ipt2xdp.commands import import_

    prepared = import_._Prepared.__new__(import_._Prepared)
    prepared.host, prepared.result, prepared.ipset_mode, prepared._record = host, result, "mirror", None
    prepared.text = planrecord.canonical_text(ruleset, result)
    return result, report.decision_records(result), report.summary(result), prepared.plan_record("nft", ["rcv0"], ruleset)[1]


def fresh(text, host):
    saved = planner.TERM_MEMO, decisions._LAST
    planner.TERM_MEMO, decisions._LAST = None, None
    try:
        ruleset = parse(text, "<fresh>")
        return outcome(planner.plan(ruleset, host), ruleset, host)
    finally:
        planner.TERM_MEMO, decisions._LAST = saved


class Planner:
    """What ipt2xdp.watch.warm keeps between syncs: the parse memo and TERM_MEMO per host object."""

    def __init__(self):
        self.memo = ParseMemo()
        self.resumed = []

    def plan(self, text, host):
        if planner.TERM_MEMO is None or planner.TERM_MEMO["host"] is not host:
            planner.TERM_MEMO = {"host": host, "terms": {}}
        ruleset = parse(text, "<iptables-save>", self.memo)
        return outcome(planner.plan(ruleset, host), ruleset, host)


@pytest.fixture
def warm(monkeypatch):
    p = Planner()
    monkeypatch.setattr(planstore, "JSON_CHUNK", 4)  # pieces of the saved JSON kept: many, at these sizes
    real = planprefix.resume
    monkeypatch.setattr(planprefix, "resume", lambda *a: p.resumed.append(real(*a)) or p.resumed[-1])
    yield p
    planner.TERM_MEMO, decisions._LAST = None, None


def _insert(lines, at, line):
    return lines[:at] + [line] + lines[at:]


EDITS = [  # (name, edit of the rule lines, must the plan reuse a prefix)
    ("append", lambda ls: _insert(ls, 60, "-A INPUT -s 192.0.2.1/32 -j DROP"), True),
    ("delete the appended", lambda ls: [x for x in ls if "192.0.2.1/32" not in x], True),
    ("insert first", lambda ls: ["-A INPUT -s 192.0.2.2/32 -j DROP"] + ls, False),
    ("delete first", lambda ls: ls[1:], False),
    ("delete in the middle", lambda ls: ls[:30] + ls[31:], True),
    ("a broad ACCEPT that shadows what follows", lambda ls: _insert(ls, 40, "-A INPUT -s 10.0.0.0/16 -j ACCEPT"), True),
    ("a maybe-drop, then an ACCEPT", lambda ls: _insert(_insert(ls, 20, "-A INPUT -m ttl --ttl-eq 3 -j DROP"), 45,
                                                          "-A INPUT -p udp -j ACCEPT"), True),
    ("a LOG rule", lambda ls: _insert(ls, 10, "-A INPUT -p icmp -j LOG"), True),
    ("a counting rule (jump paths)", lambda ls: _insert(ls, 50, "-A INPUT -s 10.0.0.0/8"), True),
    ("append after it", lambda ls: _insert(ls, len(ls) - 5, "-A INPUT -s 192.0.2.3/32 -j DROP"), True),
    ("the user chain edited", lambda ls: _insert(ls, len(ls) - 1, "-A f2b-sshd -s 203.0.113.7/32 -j DROP"), True),
    ("a jump in the middle", lambda ls: _insert(ls, 15, "-A INPUT -s 10.0.0.5/32 -j f2b-sshd"), True),
    ("append after the jump", lambda ls: _insert(ls, len(ls) - 5, "-A INPUT -s 192.0.2.4/32 -j DROP"), True),
    ("RETURN in INPUT", lambda ls: _insert(ls, 5, "-A INPUT -s 10.9.0.0/16 -j RETURN"), True),
    ("append after the RETURN", lambda ls: _insert(ls, len(ls) - 5, "-A INPUT -s 192.0.2.5/32 -j DROP"), True),
    ("a -m set DROP", lambda ls: _insert(ls, 3, "-A INPUT -m set --match-set bad src -j DROP"), True),
    ("append after the set rule", lambda ls: _insert(ls, len(ls) - 5, "-A INPUT -s 192.0.2.6/32 -j DROP"), True),
]


def test_each_edit_replans_to_a_fresh_plan(warm):
    lines = DROPS + TAIL
    for host in (RECEIVER, ROUTER):
        planner.TERM_MEMO = None
        warm.plan(text_of(lines), host)
        for name, edit, reuses in EDITS:
            lines = edit(lines)
            warm.resumed.clear()
            got = warm.plan(text_of(lines), host)
            assert got == fresh(text_of(lines), host), name
            if reuses:  # else this test shows nothing about the prefix
                assert warm.resumed and warm.resumed[-1] > 0, name
        lines = DROPS + TAIL


def test_an_earlier_table_change_moves_every_position(warm):
    """The same INPUT rules (the same objects: the mangle table comes after them in the text)
    behind one more guard: the state after the guards differs, so nothing is taken."""
    mangle, filter_table = HEAD.split("COMMIT\n")[:2]

    def layout(rules, mangle_rules=""):
        return filter_table + "\n".join(rules) + "\nCOMMIT\n" + mangle.replace(
            ":POSTROUTING ACCEPT [0:0]\n", ":POSTROUTING ACCEPT [0:0]\n" + mangle_rules) + "COMMIT\n"
    warm.plan(layout(DROPS + TAIL), RECEIVER)
    appended = DROPS + ["-A INPUT -s 192.0.2.9/32 -j DROP"] + TAIL
    warm.plan(layout(appended), RECEIVER)
    assert warm.resumed[-1] > 0  # the same objects: else this test shows nothing
    changed = layout(appended, "-A PREROUTING -s 10.0.0.0/24 -j MARK --set-xmark 0x1/0xffffffff\n")
    got = warm.plan(changed, RECEIVER)
    assert warm.resumed[-1] == 0
    assert got == fresh(changed, RECEIVER)
    assert got[0].rules != fresh(layout(appended), RECEIVER)[0].rules


def test_a_host_object_swapped_in_the_same_memo_is_not_resumed(warm):
    """A caller that puts another host into the TERM_MEMO dict it keeps (the terms are stored
    with their host): the prefix kept for the other host is not taken."""
    text = text_of(["-A INPUT -i rcv0 -s 10.0.0.0/8 -j DROP"] + DROPS + TAIL)
    warm.plan(text, RECEIVER)
    other = replace(RECEIVER, attached=("eth0",))
    planner.TERM_MEMO["host"] = other
    appended = text_of(["-A INPUT -i rcv0 -s 10.0.0.0/8 -j DROP"] + DROPS + ["-A INPUT -s 192.0.2.9/32 -j DROP"] + TAIL)
    ruleset = parse(appended, "<iptables-save>", warm.memo)
    assert outcome(planner.plan(ruleset, other), ruleset, other) == fresh(appended, other)
    assert warm.resumed[-1] == 0


def test_a_host_fact_change_is_planned_afresh(warm):
    text = text_of(["-A INPUT -i rcv0 -s 10.0.0.0/8 -j DROP"] + DROPS + TAIL)
    warm.plan(text, RECEIVER)
    other = replace(RECEIVER, attached=("eth0",))
    assert warm.plan(text, other) == fresh(text, other)
    assert fresh(text, other) != fresh(text, RECEIVER)  # else this test shows nothing


@pytest.mark.parametrize("seed", range(8))
def test_random_edits_at_the_end_and_in_the_middle(warm, seed):
    rng = random.Random(seed)
    lines = DROPS + TAIL
    host = RECEIVER if seed % 2 else ROUTER
    warm.plan(text_of(lines), host)
    pool = [line for _, edit, _ in EDITS for line in edit([]) if line.startswith("-A INPUT")]
    for _ in range(12):
        inputs = [i for i, line in enumerate(lines) if line.startswith("-A INPUT")]
        if rng.random() < 0.5:
            lines = _insert(lines, rng.choice(inputs[len(inputs) // 2:]) + 1, rng.choice(pool))
        else:
            del lines[rng.choice(inputs)]
        assert warm.plan(text_of(lines), host) == fresh(text_of(lines), host)


def test_reachable_remembered_prefix_equals_a_fresh_answer():
    """reachable()'s own prefix: CONTINUE targets (state resets) and coverers before the change."""
    from ipt2xdp.classifier import ACCEPT, CONTINUE, DROP, ClassifierRule, IntervalSet, Match

    def rules_of(sources):
        out = []
        for i, (lo, hi, action) in enumerate(sources):
            out.append(ClassifierRule(Match(src=IntervalSet.of([(lo, hi)])), action, i))
        return out
    # CONTINUE(4): the coverers start again at 4, so [0, 100] no longer covers what follows
    base = [(0, 100, ACCEPT), (5, 5, DROP), (200, 300, CONTINUE(4)), (250, 250, DROP), (7, 7, DROP),
            (50, 60, DROP), (8, 8, DROP), (0, 1000, DROP), (9, 9, DROP)]
    decisions._LAST = None
    try:
        for cut in range(len(base) + 1):
            decisions.reachable(rules_of(base), remember=True)
            changed = rules_of(base[:cut] + [(1, 1, DROP)] + base[cut:])
            got = decisions.reachable(changed, remember=True)
            decisions._LAST, remembered = None, decisions._LAST
            assert got == decisions.reachable(changed), cut
            decisions._LAST = remembered
    finally:
        decisions._LAST = None


def test_common_prefix_takes_equal_objects_and_stops_at_the_first_other_value():
    a, b, c = [1000 + 1], [1000 + 2], [1000 + 3]
    assert identitymemo.common_prefix([a, b, c], [a, b, c]) == 3
    assert identitymemo.common_prefix([a, b, c], [a, list(b), c]) == 3  # equal, not the same object
    assert identitymemo.common_prefix([a, b, c], [a, c, b]) == 1
    assert identitymemo.common_prefix([a, b], [a, b, c]) == 2
    assert identitymemo.common_prefix([], [a]) == 0
    assert planstore._same_start([a, b, c], [a, list(b), c]) == 1  # the very objects only
    assert planstore._same_start([a, b], [a, b, c]) == 2
    assert planstore._same_start(None, [a]) == 0
    assert identitymemo.identical_prefix([a, b, c], [a, b, c], limit=2) == 2  # planprefix: never the last rule
    assert identitymemo.identical_prefix([a, b], [a], limit=-1) == 0


def test_common_prefix_compares_a_bounded_number_of_copies():
    items = [[i] for i in range(identitymemo.MAX_EQUAL_COPIES + 10)]
    copies = [list(item) for item in items]
    assert identitymemo.common_prefix(items, copies) == identitymemo.MAX_EQUAL_COPIES  # shorter, never longer
    assert identitymemo.common_prefix(items, copies[:5] + items[5:]) == len(items)


def test_set_rules_before_the_change_guard_the_drops_after_it(warm):
    """With mirrored sets (tests.fingerprint's made-up copies), a set match early in INPUT gives the
    DROPs after it guard bits (set events): the appended DROP must get them from the taken prefix."""
    from tests.fingerprint import _with_sets

    lines = DROPS[:10] + ["-A INPUT -m set --match-set bad src -j ACCEPT", "-A INPUT -m set --match-set worse src -j DROP"] \
        + DROPS[10:] + TAIL
    host = _with_sets(RECEIVER, parse(text_of(lines), "x"))
    # a member of "worse" may time out: the plan's deadline comes from the set expiries
    host = replace(host, ipsets=tuple(replace(s, expiry_ns=10**12) if s.name == "worse" else s for s in host.ipsets))
    assert host.ipsets
    warm.plan(text_of(lines), host)
    for line in ("-A INPUT -s 192.0.2.1/32 -j DROP", "-A INPUT -s 192.0.2.2/32 -p udp -j DROP"):
        lines = _insert(lines, len(lines) - 5, line)
        got = warm.plan(text_of(lines), host)
        assert warm.resumed[-1] > 20
        assert got == fresh(text_of(lines), host)
        index = sum(1 for x in lines[:lines.index(line) + 1] if x.startswith("-A INPUT"))
        appended = [rule for rule, path in zip(got[0].rules, got[0].counter_paths) if path and path[-1].index == index
                    and path[-1].chain == "INPUT"]
        assert appended and all(rule.action.guard for rule in appended)  # else this test shows nothing
        assert got[0].set_deadline_ns == 10**12


def test_replaced_prefixes_wait_to_be_freed_by_the_caller(warm):
    """plan() does not free the prefix it replaces (a whole plan at 10k rules): it waits in
    planprefix.DROPPED for import_._offload's caller, at most DROPPED_KEPT of them."""
    planprefix.take_dropped()
    warm.plan(text_of(DROPS + TAIL), RECEIVER)
    kept = planner.TERM_MEMO["prefix"]
    warm.plan(text_of(DROPS[1:] + TAIL), RECEIVER)
    assert planprefix.take_dropped() == [kept]
    for count in range(planprefix.DROPPED_KEPT + 3):
        warm.plan(text_of(DROPS[count % 2:] + TAIL), RECEIVER)
    assert len(planprefix.take_dropped()) == planprefix.DROPPED_KEPT
    assert planprefix.take_dropped() == []
