# SPDX-License-Identifier: GPL-2.0-only
"""XDP's per-classifier-rule counters, expressed per iptables rule.

A packet XDP dropped never reached netfilter, so every iptables rule it would have matched on its
way lost a count: the jumps into user chains (those it came back out of too, and the RETURN it came
back by), rules without a target, and the deciding rule. The plan's counter paths list exactly those
(a DROP rule is split into one classifier rule per way its packets may have come, ipt2xdp.jumppaths),
so XDP's count of one DROP classifier rule is added to each rule of its path.
Packets XDP passes on (ACCEPT, DEFER) are counted by netfilter itself and are not added again.
A dropped packet also passed raw PREROUTING, mangle PREROUTING and mangle INPUT before filter
INPUT; where such a chain holds no rules, its policy counter counts every packet, so XDP's drops
are added there too.
Nat PREROUTING sees only the packets that make a new conntrack entry. Where every rule there has
its packets deferred (plan.Plan.nat_new), XDP tells which of its drops those were, on one more
counter ("nat_new"), added to the nat PREROUTING policy.
(Not yet: earlier chains with rules; nat PREROUTING with rules a dropped packet may match, such as
a jump or an ACCEPT.)
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

RuleKey = Tuple[str, str, int]  # (table, chain, index); index 0 is the chain policy
PASSED_BEFORE = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("mangle", "INPUT"))
NAT_POLICY: RuleKey = ("nat", "PREROUTING", 0)
NAT_NEW = ("nat_new", str(0xFFFFFFFD))  # status()'s name of abi.NAT_NEW_COUNTER, and its number


def _passed_policies(plan: dict) -> List[RuleKey]:
    """The policies of the empty chains every packet XDP dropped would have passed first."""
    policies = plan.get("policies", {})
    ruled = {(d["table"], d["chain"]) for d in plan.get("decisions", []) if d["index"] > 0}
    return [(t, c, 0) for t, c in PASSED_BEFORE if f"{t}/{c}" in policies and (t, c) not in ruled]


def per_rule(counters: Dict[str, dict], plan: Optional[dict]) -> Dict[RuleKey, Tuple[int, int]]:
    """{(table, chain, index): (packets, bytes)} from status()'s counters and the plan record."""
    totals: Dict[RuleKey, List[int]] = {}
    if not plan:
        return {}
    paths, actions = plan.get("counter_paths", []), plan.get("actions", [])
    passed = _passed_policies(plan)
    for rule_id, value in counters.items():
        if rule_id in NAT_NEW:
            entry = totals.setdefault(NAT_POLICY, [0, 0])
            entry[0] += value["packets"]
            entry[1] += value["bytes"]
            continue
        if not rule_id.isdigit() or int(rule_id) >= len(paths) or actions[int(rule_id)] != "DROP":
            continue
        for table, chain, index in [tuple(ref) for ref in paths[int(rule_id)]] + passed:
            entry = totals.setdefault((table, chain, index), [0, 0])
            entry[0] += value["packets"]
            entry[1] += value["bytes"]
    return {key: (p, b) for key, (p, b) in totals.items()}


def dropped(counters: Dict[str, dict], plan: Optional[dict]) -> Tuple[int, int]:
    """(packets, bytes) that XDP dropped in the driver, by rules the plan proved DROP."""
    actions = (plan or {}).get("actions", [])
    packets = bytes_ = 0
    for rule_id, value in counters.items():
        if rule_id.isdigit() and int(rule_id) < len(actions) and actions[int(rule_id)] == "DROP":
            packets += value["packets"]
            bytes_ += value["bytes"]
    return packets, bytes_


def rule_rows(counters: Dict[str, dict], plan: Optional[dict]) -> List[dict]:
    """One row per iptables rule with the packets XDP dropped for it, in ruleset order, with its text."""
    texts = {(d["table"], d["chain"], d["index"]): d["text"] for d in (plan or {}).get("decisions", [])}
    order = {key: i for i, key in enumerate(texts)}
    rows = [{"table": k[0], "chain": k[1], "index": k[2], "packets": p, "bytes": b, "text": texts.get(k, "")}
            for k, (p, b) in per_rule(counters, plan).items()]
    return sorted(rows, key=lambda r: order.get((r["table"], r["chain"], r["index"]), len(order)))
