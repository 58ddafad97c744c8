# SPDX-License-Identifier: GPL-2.0-only
"""XDP's drops per iptables rule as the wrapper shows them: live map counters plus an adjustment.

The BPF counters start from zero with every generation, while netfilter keeps a rule's counters
across inserts and deletes of other rules. So when the wrapper flips to a new plan it carries each
rule's count over to the rule's new position (rules are identified by table, chain and canonical
text, the n-th of identical rules by its rank), and `-Z` stores minus the live count. The
adjustment lives beside the plan record, keyed by the plan's digest, so a plan flipped in by
something else (`ipt2xdp import`) simply starts with none.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

Key = Tuple[str, str, int]
Counts = Dict[Key, Tuple[int, int]]


def _path(plan_key: str) -> str:
    from ipt2xdp import planstore

    return os.path.join(planstore._directory(), f"adjust-{plan_key}.json")


def load_adjust(plan_key: Optional[str]) -> Counts:
    if not plan_key:
        return {}
    try:
        with open(_path(plan_key)) as f:
            rows = json.load(f)
    except (OSError, ValueError):
        return {}
    return {(t, c, i): (p, b) for t, c, i, p, b in rows}


def save_adjust(plan_key: str, adjust: Counts) -> None:
    path = _path(plan_key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump([[t, c, i, p, b] for (t, c, i), (p, b) in adjust.items() if p or b], f)
    os.replace(tmp, path)


def _status_counters(raw: Dict[int, Tuple[int, int]]) -> Dict[str, dict]:
    """loader.read_counters() in the shape counters.per_rule() takes (status()'s)."""
    return {str(k): {"packets": p, "bytes": b} for k, (p, b) in raw.items() if k >= 0}


def effective(raw: Dict[int, Tuple[int, int]], plan: Optional[dict], plan_key: Optional[str]) -> Counts:
    """{(table, chain, index): (packets, bytes)} XDP dropped, as the wrapper reports them."""
    from ipt2xdp import counters

    total = dict(counters.per_rule(_status_counters(raw), plan))
    for key, (p, b) in load_adjust(plan_key).items():
        old = total.get(key, (0, 0))
        total[key] = (max(old[0] + p, 0), max(old[1] + b, 0))
    return {k: v for k, v in total.items() if v != (0, 0)}


def current() -> Counts:
    """effective() of the generation in force in this namespace ({} if nothing is loaded)."""
    from ipt2xdp import loader, planstore

    info = loader.status()
    if not info.get("loaded"):
        return {}
    key = info.get("ruleset", {}).get("source_digest")
    plan = planstore.load(key)
    raw = {}
    for name, value in info["counters"].items():
        if name.isdigit():
            raw[int(name)] = (value["packets"], value["bytes"])
    return effective(raw, plan, key)


def _identities(plan: Optional[dict]) -> Dict[Key, tuple]:
    """(table, chain, index) -> (table, chain, text, rank) for every rule in the plan record."""
    seen: Dict[tuple, int] = {}
    out: Dict[Key, tuple] = {}
    for d in (plan or {}).get("decisions", []):
        base = (d["table"], d["chain"], d["text"])
        rank = seen.get(base, 0)
        seen[base] = rank + 1
        out[(d["table"], d["chain"], d["index"])] = base + (rank,)
    return out


def carry(old: Counts, old_plan: Optional[dict], new_plan: Optional[dict], new_key: str) -> None:
    """Record old's counts against the same rules' positions in the new plan."""
    old_ids, new_ids = _identities(old_plan), _identities(new_plan)
    where = {ident: key for key, ident in new_ids.items()}
    adjust: Counts = {}
    for key, value in old.items():
        if key[2] == 0:  # a policy stays the policy of its chain
            target = key if any(k[:2] == key[:2] for k in new_ids) or not new_ids else None
        else:
            target = where.get(old_ids.get(key))
        if target is not None:
            adjust[target] = value
    save_adjust(new_key, adjust)


def zero(table: str, chain: Optional[str], rulenum: Optional[int], policy_too: bool) -> None:
    """-Z: make the shown counts of these rules zero by storing minus their current value."""
    from ipt2xdp import loader

    info = loader.status()
    if not info.get("loaded"):
        return
    key = info.get("ruleset", {}).get("source_digest")
    if not key:
        return
    shown = current()
    adjust = load_adjust(key)
    for (t, c, i), (p, b) in shown.items():
        if t != table or (chain is not None and c != chain):
            continue
        if rulenum is not None and i != rulenum and not (policy_too and i == 0):
            continue
        a = adjust.get((t, c, i), (0, 0))
        adjust[(t, c, i)] = (a[0] - p, a[1] - b)
    save_adjust(key, adjust)
