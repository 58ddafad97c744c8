# SPDX-License-Identifier: GPL-2.0-only
"""What compile derives from one classifier Match alone, kept between compiles.

`ipt2xdp watch` re-plans and recompiles the whole ruleset after every change, and the new
classifier differs from the previous one by a rule or two. The planner hands back the *same* Match
object for every rule whose translation it reused (plan.TERM_MEMO; the classifier rules themselves
are new objects, their ids are positions), so what compile derives from a match alone need not be
derived again: here, its exact-tuple box (tuplefast.box_of), a few microseconds per rule.

Why an entry can never be stale: a Match is a frozen dataclass whose fields are frozen IntervalSets
and frozensets, so what is derived from it is a function of the object. Entries are keyed by the
object's identity (hashing a Match hashes every field, as slow as deriving the box) and hold the
object itself: while an entry holds it, no other object can have its id, and a lookup serves an
entry only if it holds the very object asked about. A Match equal to a kept one but another object
is derived anew (the same value). Nothing here depends on the rule's position, action or id, nor
on the other rules.

The memo only grows by the matches compiled; trim() empties it before it holds far more than the
ruleset (matches of rules since removed), as warm.py does with the planner's memo. Dict updates are
atomic, and `watch` never compiles in two threads at once (predict.py) anyway.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

# id(match) -> (match, tuplefast.box_of(match)); tuplefast.analyse reads and fills it inline
BOXES: Dict[int, Tuple[object, Optional[tuple]]] = {}


def trim(rules: int) -> None:
    """Forget every match once far more are kept than a ruleset of `rules` rules uses."""
    if len(BOXES) > 2 * rules + 1000:
        BOXES.clear()

