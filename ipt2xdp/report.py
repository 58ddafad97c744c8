# SPDX-License-Identifier: GPL-2.0-only
"""The dry-run report: every rule with what XDP does with it and why, a summary, and a diff.

A coloured table on a terminal, plain text when piped, JSON with --json.
"""
from __future__ import annotations

import json
import os
from itertools import compress, repeat
from operator import attrgetter, eq
from typing import Dict, List, Optional, Sequence

from ipt2xdp.identitymemo import common_prefix
from ipt2xdp.plan import Decision, Plan

KIND_LABEL = {"xdp": "XDP", "partial": "XDP (some)", "netfilter": "netfilter"}
KIND_COLOUR = {"xdp": "\033[32m", "partial": "\033[33m", "netfilter": "\033[2m"}
RESET = "\033[0m"


def _ref_label(decision: Decision) -> str:
    ref = decision.ref
    where = "policy" if ref.index == 0 else f"#{ref.index}"
    return f"{ref.table}/{ref.chain} {where}"


def summary(plan: Plan) -> Dict[str, object]:
    # plan.summary() and the counts below in C-level passes (10k decisions on every re-plan)
    decisions = plan.decisions
    kinds = list(map(attrgetter("kind"), decisions))
    counts = {k: kinds.count(k) for k in ("xdp", "partial", "netfilter")}
    codes = list(map(attrgetter("code"), decisions))
    policies = compress(decisions, map(eq, codes, repeat("ok.policy")))
    drops = codes.count("ok.drop") + sum("DROP" in d.text for d in policies)
    total = len(decisions)
    return {
        "rules": total,
        "xdp": counts["xdp"],
        "partial": counts["partial"],
        "netfilter": counts["netfilter"],
        "xdp_share": round((counts["xdp"] + counts["partial"]) / total, 3) if total else 0.0,
        "xdp_drop_rules": drops,
        "filter_rules": list(map(attrgetter("ref.table"), decisions)).count("filter"),
        "classifier_rules": len(plan.rules),
    }


# Guards that defer every packet of a device (or of all) whatever the rules say: an import names them
# beside its summary, which counts rules, so that "XDP decides 12" does not hide them.
WHOLE_DEVICE_CODES = ("foreign.tc", "foreign.ovs", "foreign.unreadable")


def whole_device_notes(plan: Plan) -> List[str]:
    return [note for note in plan.notes if note.split(":", 1)[0] in WHOLE_DEVICE_CODES]


def diff(old: Optional[Sequence[dict]], plan: Plan) -> Dict[str, List[str]]:
    """Rules added, removed and changed (decision) against the loaded plan's decisions."""
    if old is None:
        return {"loaded": False, "added": [], "removed": [], "changed": []}
    before = {(d["table"], d["chain"], d["text"]): d for d in old}
    after = {(d.ref.table, d.ref.chain, d.text): d for d in plan.decisions}
    added = [k[2] for k in after if k not in before]
    removed = [k[2] for k in before if k not in after]
    changed = [f"{k[2]}: {before[k]['kind']} -> {after[k].kind}" for k in after
               if k in before and (before[k]["kind"], before[k]["code"]) != (after[k].kind, after[k].code)]
    return {"loaded": True, "added": added, "removed": removed, "changed": changed}


def decision_records(plan: Plan, kept: Optional[dict] = None) -> List[dict]:
    """kept: what an earlier call left in it ("decisions", "records"): when this plan's decisions
    start with the same Decision objects (a re-plan takes those of the rules before a change,
    planprefix), their records are taken as they were; then this call's are left in it. A record
    is a function of its (immutable) Decision alone. The records are shared by the plan records
    holding them: read-only, as planstore's records are."""
    decisions = plan.decisions
    start, out = 0, []
    if kept:  # a Decision's record is a function of its value
        start = common_prefix(kept["decisions"], decisions)
        out = kept["records"][:start]
    out += [{"table": d.ref.table, "chain": d.ref.chain, "index": d.ref.index, "kind": d.kind,
             "code": d.code, "why": d.why, "text": d.text} for d in decisions[start:]]
    if kept is not None:
        kept["decisions"], kept["records"] = decisions, out[:]
    return out



def as_json(plan: Plan, loaded: Optional[Sequence[dict]] = None, extra: Optional[dict] = None,
            map_diff: Optional[dict] = None) -> str:
    """map_diff: mapdiff.map_diff()'s result, shown as "map_diff" when given."""
    document = {"summary": summary(plan), "decisions": decision_records(plan),
                "diff": diff(loaded, plan), "notes": list(plan.notes)}
    if map_diff is not None:
        document["map_diff"] = map_diff
    document.update(extra or {})
    return json.dumps(document, indent=2)


def as_table(plan: Plan, loaded: Optional[Sequence[dict]] = None, colour: Optional[bool] = None,
             map_diff: Optional[dict] = None) -> str:
    if colour is None:
        colour = False
    lines = []
    width = max((len(_ref_label(d)) for d in plan.decisions), default=10)
    lines.append(f"{'rule':<{width}}  {'decided by':<10}  {'reason':<22}  rule text / why")
    for d in plan.decisions:
        label = KIND_LABEL[d.kind]
        if colour:
            label = f"{KIND_COLOUR[d.kind]}{label:<10}{RESET}"
        else:
            label = f"{label:<10}"
        lines.append(f"{_ref_label(d):<{width}}  {label}  {d.code:<22}  {d.text}")
        lines.append(f"{'':<{width}}  {'':<10}  {'':<22}    {d.why}")
    s = summary(plan)
    lines.append("")
    lines.append(f"{s['rules']} rules: XDP decides {s['xdp']}, some packets of {s['partial']}, "
                 f"netfilter alone {s['netfilter']} ({s['xdp_share']:.0%} of rules involve XDP); "
                 f"{s['classifier_rules']} classifier rules")
    for note in plan.notes:
        lines.append(f"note: {note}")
    d = diff(loaded, plan)
    if d["loaded"]:
        lines.append(f"against the loaded plan: {len(d['added'])} rules added, {len(d['removed'])} removed, "
                     f"{len(d['changed'])} changed decision")
        lines += [f"  + {t}" for t in d["added"]] + [f"  - {t}" for t in d["removed"]]
        lines += [f"  ~ {t}" for t in d["changed"]]
    else:
        lines.append("nothing is loaded now: every rule above is new to XDP")
    if map_diff is not None:
        from ipt2xdp.mapdiff import table_lines

        lines += table_lines(map_diff, colour)
    return "\n".join(lines)


def use_colour(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty() and os.environ.get("NO_COLOR") is None
