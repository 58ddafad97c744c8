# SPDX-License-Identifier: GPL-2.0-only
"""jumppaths.split() of the DROP rules after a jump, kept between a long-lived planner's plans.

fail2ban puts `-A INPUT -p tcp --dport 22 -j f2b-sshd` first, so every later DROP rule of INPUT
is split by the ways packets may have come back from f2b-sshd (plan._Emitter.emit_drops): 10k
conjunctions on every re-plan, although a ban (`-I f2b-sshd 1 ...`) changes neither the rules
after the jump nor the conditions of the ways, only the ways' refs (the RETURN moves down).

What split() answers is, for each part, a Match and the index of the way it came by (or None past
MAX_SPLITS, or len(history) for no way), and the refs of that way: the Matches and indices are a
function of the rule's match and of the ways' matches alone (conjoin and _covers are functions of
values), the refs are read from the history of this call. So the refs-free answer is kept, keyed
by the identity of the ways' matches and of the rule's match, and the refs are attached anew.

Why an entry can never be stale: the keys are ids, and each entry holds the objects they are the
ids of (the ways' matches with the table, the rule's match with its entry), so no other object
can have them while it lives; a lookup serves an entry only if the objects are the very ones
asked about (Match objects are frozen). An equal Match that is another object is split anew.
A planner that keeps no TERM_MEMO (a one-shot import) does not use this (plan.py).
"""
from __future__ import annotations

import operator
from typing import Dict, List, Sequence, Tuple

from ipt2xdp import identitymemo, jumppaths

# tuple of id(way.match) -> (the ways' matches, {id(match): (match, ((part, way index), ...))})
SPLITS: Dict[tuple, Tuple[tuple, dict]] = {}


def splits(history: jumppaths.History, matches: Sequence, rule_refs: Sequence) -> List[list]:
    """[[part + (ref,) for part in jumppaths.split(history, match)] for match, ref in zip(matches,
    rule_refs)], as plan._Emitter.emit_drops asks: the refs-free part kept."""
    way_matches = _ways_of(history)
    key = tuple(map(id, way_matches))
    table = SPLITS.get(key)
    if table is None or not all(map(operator.is_, table[0], way_matches)):
        table = SPLITS[key] = (way_matches, {})
    found = identitymemo.kept(table[1], matches, lambda match: (
        match, tuple((part, way) for part, _, way in jumppaths.split(history, match))))
    # the refs of the way each part came by: None past MAX_SPLITS (the deferred rest), () for no way
    refs = {index: way.refs for index, way in enumerate(history)}
    refs[len(history)], refs[None] = (), None
    return [[(part, refs[way], way, ref) for part, way in parts] for (_, parts), ref in zip(found, rule_refs)]


def _ways_of(history: jumppaths.History) -> tuple:
    """What a split depends on besides the rule's match (tests break it to see the test fail)."""
    return tuple(way.match for way in history)


def trim(rules: int) -> None:
    """Forget every split once far more are kept than a ruleset of `rules` rules makes."""
    if sum(len(table[1]) for table in SPLITS.values()) > 2 * rules + 1000:
        SPLITS.clear()
