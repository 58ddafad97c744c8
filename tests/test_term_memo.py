# SPDX-License-Identifier: GPL-2.0-only
"""plan.TERM_MEMO, the per-rule translations `ipt2xdp watch` keeps between plans: a plan made with
the memo filled by an earlier plan (rules moved, added and removed since) equals a plan made
without it, rule decisions and classifier rules alike; a different host object is not served
from it."""
from dataclasses import replace
from pathlib import Path

import pytest

from ipt2xdp import plan as planner
from ipt2xdp import report
from ipt2xdp.parse import parse
from tests.test_plan import HOST

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "rulesets"
RULESETS = ["fail2ban__generated_by_action_templates.iptables-save",
            "real/IPPartEval__config_home_user__typical_home_user_iptables-save",
            "real/Ringofsaturn_com__iptables-save", "real/IPPartEval__sargon__iptables-save.txt",
            "real/IPPartEval__openwrt.org__iptables-save-AA.txt_fixed_newline"]


def outcome(result):
    return report.decision_records(result), [(r.match, r.action) for r in result.rules], result.default


def shifted(text: str) -> str:
    """The same ruleset with a rule inserted first in INPUT and the last -A line removed: every
    later rule of INPUT moves, one disappears."""
    lines = text.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("-A "))
    del lines[last]
    first = next(i for i, line in enumerate(lines) if line.startswith("-A INPUT "))
    lines.insert(first, "-A INPUT -s 192.0.2.77/32 -p udp -m udp --dport 53 -j DROP")
    return "\n".join(lines) + "\n"


@pytest.fixture
def memo():
    planner.TERM_MEMO = {"host": HOST, "terms": {}}
    yield planner.TERM_MEMO
    planner.TERM_MEMO = None


@pytest.mark.parametrize("name", RULESETS)
def test_a_plan_from_the_memo_equals_a_fresh_plan(memo, name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not in ../shared")
    text = path.read_text()
    if "*filter" not in text:
        pytest.skip("no filter table")
    planner.plan(parse(text, name), HOST)  # fills the memo
    filled = len(memo["terms"])
    assert filled > 0
    changed = parse(shifted(text), name)
    with_memo = outcome(planner.plan(changed, HOST))
    assert len(memo["terms"]) <= filled + 1  # only the inserted rule was translated anew
    planner.TERM_MEMO = None
    assert with_memo == outcome(planner.plan(changed, HOST))


def test_another_host_object_is_not_served_from_the_memo(memo):
    text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -i veth0 -s 10.0.0.0/8 -j DROP\nCOMMIT\n"
    other = replace(HOST, attached=("eth1",))  # the rule now never sees a packet XDP judges
    planner.TERM_MEMO = None
    fresh = outcome(planner.plan(parse(text, "a"), other))
    assert fresh != outcome(planner.plan(parse(text, "a"), HOST))  # else this test shows nothing
    planner.TERM_MEMO = memo
    planner.plan(parse(text, "a"), HOST)
    assert len(memo["terms"]) == 1
    assert outcome(planner.plan(parse(text, "a"), other)) == fresh
    assert len(memo["terms"]) == 1
