# SPDX-License-Identifier: GPL-2.0-only
"""The plan store's record of a plan (import_._Prepared.plan_record) and the canonical text its
key is the digest of, made from what the plan holds: the rules' texts from its decisions, and
what a long-lived planner (`ipt2xdp watch`, plan.TERM_MEMO set) made for the last record where
the new plan holds the very same objects (a re-plan takes most of them over: planprefix)."""
from __future__ import annotations

import operator

from ipt2xdp.identitymemo import other_positions  # a name of this module: tests break it here


def made(prepared, backend_name: str, devices, ruleset) -> tuple:
    """(the record of prepared's plan, its JSON) for planstore.save()."""
    from ipt2xdp import drift, planstore, report
    from ipt2xdp import plan as planner

    host, result, text = prepared.host, prepared.result, prepared.text
    # a long-lived planner (TERM_MEMO set) reuses the parts of the last record its plan kept
    warm = RECORD_PARTS if planner.TERM_MEMO is not None else None
    record = {
        "backend": backend_name,
        "ipsets": prepared.ipset_mode,
        "ruleset_text": text,                  # with "host": what `explain --loaded` plans again
        "host": planstore.host_record(host),
        "devices": list(devices),
        "decisions": report.decision_records(result, None if warm is None else warm["decisions"]),
        "actions": verdict_names(result.rules, None if warm is None else warm["actions"]),
        "counter_paths": path_records(result.counter_paths, None if warm is None else warm["paths"]),
        "summary": report.summary(result),
        # The plan's other input, and the policies the decisions omit: `status` tells drift by them.
        "host_digest": drift.host_digest(host),
        "policies": drift.policies(ruleset),
    }
    return record, planstore.encoded(record, None if warm is None else warm["json"])


def canonical_text(ruleset, result) -> str:
    """render(ruleset.without_positions()), reusing the rule texts the plan's decisions hold."""
    from ipt2xdp.render import canonical

    return canonical(ruleset, chain_texts(ruleset, result.decisions))


def chain_texts(ruleset, decisions) -> dict:
    """(table, chain) -> its rules' texts, from the decisions: decide() makes one per rule, chain
    by chain in the ruleset's order (and filter/INPUT's policy first), so a chain's are a slice.
    A chain whose slice does not start and end with its first and last rule is left out (rendered
    then); so is every chain after it."""
    texts = list(map(operator.attrgetter("text"), decisions))
    out, at = {}, 0
    for table in ruleset.tables:
        for chain in table.chains:
            if at < len(decisions) and decisions[at].ref.index == 0 and \
                    (decisions[at].ref.table, decisions[at].ref.chain) == (table.name, chain.name):
                at += 1  # a policy's decision
            n = len(chain.rules)
            if not n:
                continue
            if at + n > len(decisions):
                return out
            head, tail = decisions[at].ref, decisions[at + n - 1].ref
            if (head.table, head.chain, head.index, tail.table, tail.chain, tail.index) != \
                    (table.name, chain.name, 1, table.name, chain.name, n):
                return out
            out[(table.name, chain.name)] = texts[at:at + n]
            at += n
    return out


# What plan records made by a long-lived planner share with the next (report.decision_records'
# kept, path_records' kept, planstore.encoded's kept). Only used while plan.TERM_MEMO is set: a one-shot import keeps nothing.
RECORD_PARTS: dict = {"decisions": {}, "paths": {}, "json": {}, "actions": {}}


def verdict_names(rules, kept=None) -> list:
    """kept: what the last call left in it: the name at a position whose classifier rule (frozen)
    is the very object of the last call's there (a re-plan takes most over from the last plan,
    planprefix; the guards before them are new) is the last one. The names are the same str
    objects every time, which planstore.encoded's reuse compares."""
    from ipt2xdp.classifier import Verdict

    # Enum.name is a property, and an Enum member hashes in Python: the members (singletons) are
    # looked up by id, in C-level passes
    names = {id(verdict): verdict.name for verdict in Verdict}
    other = other_positions(kept["rules"], rules) if kept else None
    if other is not None and len(other) < len(rules) // 4:
        out = kept["names"][:len(rules)]
        out += rules[len(out):]  # placeholders, each named below
        for index in other:
            out[index] = names[id(rules[index].action.verdict)]
    else:
        out = list(map(names.__getitem__, map(id, map(operator.attrgetter("action.verdict"), rules))))
    if kept is not None:
        kept["rules"], kept["names"] = rules, out[:]
    return out


def path_records(paths, kept=None) -> list:
    """Each counter path as [[table, chain, index], ...]. kept: as report.decision_records' (the
    path tuples a re-plan takes from the last plan, planprefix, are the same objects); the lists
    are read-only."""
    from ipt2xdp.identitymemo import common_prefix

    start, out = 0, []
    if kept:
        start = common_prefix(kept["paths"], paths)
        out = kept["records"][:start]
    out += [[[r.table, r.chain, r.index] for r in path] for path in paths[start:]]
    if kept is not None:
        kept["paths"], kept["records"] = paths, out[:]
    return out
