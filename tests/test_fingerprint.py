# SPDX-License-Identifier: GPL-2.0-only
"""Every stage of an import (IR, render, plan, report, compiled maps) of the shared rulesets, the
bench shapes and 150 random rulesets, on two hosts, is exactly what tests/fingerprints.json recorded
before the speed work (see tests/fingerprint.py)."""
import json

import pytest

from tests.fingerprint import GOLDEN, cases, fingerprint

CASES = cases()
RECORDED = json.loads(GOLDEN.read_text())


def test_every_case_was_recorded():
    assert sorted(CASES) == sorted(RECORDED)
    planned = [r for r in RECORDED.values() if "tables" in r]
    assert len(planned) >= 200  # most cases get through every stage, not just a parse error


@pytest.mark.parametrize("name", sorted(CASES))
def test_fingerprint_unchanged(name):
    text, host = CASES[name]
    assert fingerprint(text, host) == RECORDED[name]


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.endswith("@receiver") or n.startswith("rulegen seed 1")))
def test_canonical_text_from_the_plans_rule_texts_is_the_rendered_copy(name):
    """What an import digests and stores (render.canonical with the decisions' texts) is
    render(ruleset.without_positions()), which `status` and drift compute from scratch."""
    from ipt2xdp.planrecord import canonical_text
    from ipt2xdp.errors import ParseError
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan
    from ipt2xdp.render import render
    from tests.fingerprint import HOSTS

    text, host = CASES[name]
    try:
        ruleset = parse(text, "x.rules")
    except ParseError:
        pytest.skip("not a ruleset")
    result = plan(ruleset, HOSTS[host])
    assert canonical_text(ruleset, result) == render(ruleset.without_positions())
    assert len(result.decisions) >= sum(len(c.rules) for t in ruleset.tables for c in t.chains)
