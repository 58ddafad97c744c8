# SPDX-License-Identifier: GPL-2.0-only
"""decisions.reachable() (indexed by field unions) against the plain definition it replaces: a
rule is unreachable iff one of the first MAX_COVERERS broad (<= 2 fields) live terminal rules since
the last CONTINUE target covers it."""
import random

import pytest

from ipt2xdp import decisions
from ipt2xdp.classifier import ACCEPT, CONTINUE, DROP, ClassifierRule, IntervalSet, Match, Verdict
from ipt2xdp.decisions import _covers, reachable


def reference(rules, max_coverers):
    coverers, targets, out = [], set(), []
    for index, rule in enumerate(rules):
        if index in targets:
            coverers = []
        live = not any(_covers(c, rule.match) for c in coverers)
        out.append(live)
        if not live:
            continue
        if rule.action.verdict == Verdict.CONTINUE:
            targets.add(rule.action.target)
        elif len(rule.match.constrained()) <= 2 and len(coverers) < max_coverers:
            coverers.append(rule.match)
    return out


def random_intervals(rng, top):
    ranges = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        lo = rng.randrange(0, top)
        ranges.append((lo, min(top, lo + rng.choice((0, 0, 1, 3, 15, 255)))))
    return IntervalSet.of(ranges)


def random_match(rng):
    values = {}
    if rng.random() < 0.6:
        values["src"] = random_intervals(rng, 300)
    if rng.random() < 0.3:
        values["dst"] = random_intervals(rng, 50)
    if rng.random() < 0.4:
        values["proto"] = frozenset(rng.sample((1, 6, 17), rng.choice((1, 1, 2))))
    if rng.random() < 0.3:
        values["dport"] = random_intervals(rng, 40)
    if rng.random() < 0.1:
        values["ct"] = frozenset(rng.sample((0, 1, 2), rng.choice((1, 2))))
    return Match(**values)


@pytest.mark.parametrize("seed", range(40))
def test_indexed_reachable_equals_the_plain_definition(seed, monkeypatch):
    rng = random.Random(seed)
    max_coverers = rng.choice((4, 16, 512))
    monkeypatch.setattr(decisions, "MAX_COVERERS", max_coverers)
    n = rng.randrange(1, 300)
    rules = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.05 and i + 2 < n:
            action = CONTINUE(rng.randrange(i + 1, n))
        else:
            action = DROP if kind < 0.6 else ACCEPT
        rules.append(ClassifierRule(random_match(rng), action, i))
    got = reachable(rules)
    assert got == reference(rules, max_coverers)
    if seed == 0:
        assert not all(got) and any(got)  # the generator makes both kinds


def test_rule_inside_the_union_but_no_single_coverer_stays_reachable():
    rules = [ClassifierRule(Match(src=IntervalSet.range(0, 9)), DROP, 0),
             ClassifierRule(Match(src=IntervalSet.range(10, 19)), DROP, 1),
             ClassifierRule(Match(src=IntervalSet.range(5, 15)), DROP, 2),
             ClassifierRule(Match(src=IntervalSet.range(12, 13), dport=IntervalSet.single(80)), DROP, 3)]
    assert reachable(rules) == [True, True, True, False]
