# SPDX-License-Identifier: GPL-2.0-only
"""Which rule of the new plan each rule XDP counted for in the old plan is, after one change.

Netfilter's counters belong to rule objects: inserting or deleting other rules moves a rule's
counters with it, and what a command replaces, flushes or restores starts again from zero (or
from the `-c` values given). XDP's share of each counter must do exactly the same, and rule text
alone cannot say which of two identical rules moved. So the wrapper describes the command it ran
(a Change) and follow() replays it on positions; a change it cannot describe (an `import`, the
watcher seeing an edit made behind its back, `iptables-restore --noflush`) falls back to matching
rules by text, the n-th of identical rules by its rank.

Policy counters, as iptables 1.8.9 treats them (observed in namespaces, see
tests/test_counters_kernel.py): legacy zeroes every builtin policy counter of a table on every
commit to it (-A, -P, -Z CHAIN N, a restore --noflush...); nf_tables zeroes a chain's policy
counter when its policy is set (-P, a restore's `:CHAIN` line) and every one of a table a restore
replaces, and keeps them otherwise.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

Key = Tuple[str, str, int]          # (table, chain, index); index 0 is the chain's policy
Counts = Dict[Key, Tuple[int, int]]


@dataclass(frozen=True)
class Change:
    """What one successful command did to the kernel's rule objects."""
    table: str = "filter"
    command: str = ""                   # iptables command letter (A I D R F X N E P), "restore" or "" (unknown)
    chain: Optional[str] = None
    rulenum: Optional[int] = None       # -I / -D / -R N
    new_chain: Optional[str] = None     # -E OLD NEW
    legacy: bool = False
    replaced_tables: FrozenSet[str] = frozenset()   # restore without --noflush: every counter starts again
    touched_tables: FrozenSet[str] = frozenset()    # restore --noflush: tables committed to
    set_chains: FrozenSet[Tuple[str, str]] = frozenset()  # restore --noflush `:CHAIN` lines (flush, policy)

    def to_json(self) -> dict:
        return {"table": self.table, "command": self.command, "chain": self.chain, "rulenum": self.rulenum,
                "new_chain": self.new_chain, "legacy": self.legacy, "replaced_tables": sorted(self.replaced_tables),
                "touched_tables": sorted(self.touched_tables), "set_chains": sorted(self.set_chains)}

    @classmethod
    def from_json(cls, data: dict) -> "Change":
        return cls(data["table"], data["command"], data["chain"], data["rulenum"], data["new_chain"],
                   data["legacy"], frozenset(data["replaced_tables"]), frozenset(data["touched_tables"]),
                   frozenset(tuple(x) for x in data["set_chains"]))


UNKNOWN = Change()
BUILTIN = frozenset(("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"))


def _chains(plan: Optional[dict], tables: FrozenSet[str]) -> Dict[Tuple[str, str], List[str]]:
    """(table, chain) -> rule texts in order (position n at [n - 1]) of these tables; policies
    left out. (A plan's decisions come in ruleset order, ten thousand of them at times.)"""
    out: Dict[Tuple[str, str], List[str]] = {}
    for d in (plan or {}).get("decisions", []):
        if d["index"] > 0 and d["table"] in tables:
            rules = out.setdefault((d["table"], d["chain"]), [])
            if d["index"] != len(rules) + 1:  # not in order after all: place it by its number
                rules.extend([""] * (d["index"] - len(rules) - 1))
                rules[d["index"] - 1:d["index"]] = [d["text"]]
            else:
                rules.append(d["text"])
    return out


def _policy_reset(change: Change, table: str, chain: str) -> bool:
    if change.command == "guess":
        return table in change.touched_tables or (table, chain) in change.set_chains
    if change.command == "restore":
        if table in change.replaced_tables:
            return True
        if change.legacy:
            return table in change.touched_tables
        return (table, chain) in change.set_chains
    if change.command == "Z":
        return False
    if table != change.table:
        return False
    return change.legacy or (change.command == "P" and chain == change.chain)


def _deleted_by_spec(old: List[str], new: List[str]) -> List[int]:
    """Positions (1-based) `-D CHAIN rulespec` removed: the first rule equal to each removed text,
    as the kernel deletes the first match (a rulespec with `-s a,b` removes one rule per address)."""
    removed = Counter(old) - Counter(new)
    gone: List[int] = []
    for position, text in enumerate(old, start=1):
        if removed[text]:
            removed[text] -= 1
            gone.append(position)
    return gone


def _edited_chain(change: Change, old: List[str], new: List[str]) -> List[Optional[int]]:
    """For the chain the command named: old position n -> new position (index n - 1), or None."""
    n = len(old)
    if change.command == "A":
        return list(range(1, n + 1))
    if change.command == "I":
        at, added = change.rulenum or 1, len(new) - n
        return [p if p < at else p + added for p in range(1, n + 1)]
    if change.command == "R":
        return [None if p == change.rulenum else p for p in range(1, n + 1)]
    if change.command == "D":
        gone = [change.rulenum] if change.rulenum else _deleted_by_spec(old, new)
        out: List[Optional[int]] = []
        shift = 0
        for p in range(1, n + 1):
            if p in gone:
                out.append(None)
                shift += 1
            else:
                out.append(p - shift)
        return out
    if change.command in ("F", "X"):
        return [None] * n
    return list(range(1, n + 1))


def _by_text(old: List[str], new: List[str]) -> List[Optional[int]]:
    """Old position -> new position of the rule with the same text and rank among equals."""
    where: Dict[Tuple[str, int], int] = {}
    seen: Counter = Counter()
    for p, text in enumerate(new, start=1):
        where[(text, seen[text])] = p
        seen[text] += 1
    seen = Counter()
    out: List[Optional[int]] = []
    for text in old:
        out.append(where.get((text, seen[text])))
        seen[text] += 1
    return out


def _renamed(text: str, change: Change) -> str:
    """A rule's text as it reads after `-E OLD NEW`: its chain and its jumps to OLD say NEW."""
    if change.command != "E" or not change.chain or not change.new_chain:
        return text
    return re.sub(rf"(^|\s)(-A|-j|-g) {re.escape(change.chain)}(?=\s|$)", rf"\1\2 {change.new_chain}", text)


def _rule_map(change: Change, table: str, chain: str, old: List[str],
              new_chains: Dict[Tuple[str, str], List[str]]) -> Tuple[str, List[Optional[int]]]:
    """(the chain's name in the new plan, old position -> new position)."""
    if change.command == "restore" and table in change.replaced_tables:
        return chain, [None] * len(old)
    if change.command == "restore" and (table, chain) in change.set_chains and chain not in BUILTIN:
        return chain, [None] * len(old)  # with --noflush a user chain's `:CHAIN` line flushes it
    named = table == change.table and change.command not in ("", "guess", "restore")
    if named and change.command == "F" and change.chain is None:
        return chain, [None] * len(old)
    target = change.new_chain if named and change.command == "E" and chain == change.chain else chain
    new = new_chains.get((table, target), [])
    if named and change.command == "E":
        old = [_renamed(text, change) for text in old]
    if named and chain == change.chain and change.command in ("A", "I", "D", "R", "F", "X"):
        mapping = _edited_chain(change, old, new)
    else:
        mapping = list(range(1, len(old) + 1))
    # A position map must land on the same rule text; if it does not (the kernel changed by more
    # than this command, or the command was not understood), identify rules by text instead.
    if change.command in ("", "guess", "restore") or any(
            p is not None and (p > len(new) or new[p - 1] != text) for p, text in zip(mapping, old)):
        mapping = _by_text(old, new)
    return target, mapping


def _guessed(change: Change, old_plan: Optional[dict], new_plan: Optional[dict],
             old_chains, new_chains) -> Change:
    """For a change made around the wrapper: the policies whose counters the kernel must have
    reset, from what the two plans show. A policy set anew (-P) restarts its counter; with legacy,
    a table whose rules differ was committed to, which restarts all its policy counters."""
    if change.command:
        return change
    old_policies, new_policies = (old_plan or {}).get("policies", {}), (new_plan or {}).get("policies", {})
    set_chains = {tuple(name.split("/", 1)) for name, policy in new_policies.items()
                  if old_policies.get(name, policy) != policy}
    touched = set()
    if change.legacy or (new_plan or {}).get("backend") == "legacy":
        for table in {t for t, _ in old_chains} | {t for t, _ in new_chains}:
            if {k: v for k, v in old_chains.items() if k[0] == table} != \
                    {k: v for k, v in new_chains.items() if k[0] == table}:
                touched.add(table)
    return Change(command="guess", legacy=bool(touched), touched_tables=frozenset(touched),
                  set_chains=frozenset(set_chains))


def follow(counts: Counts, old_plan: Optional[dict], new_plan: Optional[dict], change: Change = UNKNOWN) -> Counts:
    """counts (XDP's share per rule of old_plan) moved to the same rules of new_plan; rules the
    change replaced, flushed or deleted, and policies whose counters it reset, drop out."""
    tables = frozenset(table for table, _, _ in counts)
    old_chains, new_chains = _chains(old_plan, tables), _chains(new_plan, tables)
    change = _guessed(change, old_plan, new_plan, old_chains, new_chains)
    maps: Dict[Tuple[str, str], Tuple[str, List[Optional[int]]]] = {}
    out: Counts = {}
    for (table, chain, index), value in counts.items():
        if index == 0:
            if not _policy_reset(change, table, chain):
                out[(table, chain, 0)] = value
            continue
        if (table, chain) not in maps:
            maps[(table, chain)] = _rule_map(change, table, chain, old_chains.get((table, chain), []), new_chains)
        target, mapping = maps[(table, chain)]
        if index <= len(mapping) and mapping[index - 1] is not None:
            out[(table, target, mapping[index - 1])] = value
    return out
