# SPDX-License-Identifier: GPL-2.0-only
"""What the fast-path analysis derives from one classifier Match alone, kept between compiles.

`ipt2xdp watch` re-plans and recompiles the whole ruleset after every change, and the new
classifier differs from the previous one by a rule or two. The planner hands back the *same* Match
object for every rule whose translation it reused (plan.TERM_MEMO; the classifier rules themselves
are new objects, their ids are positions), so what is derived from a match alone need not be
derived again: its Facts (kind of source constraint, its one address, whether it constrains only
the source, its exact-tuple box), a few microseconds per rule, and looking them up for a whole
classifier takes a few C-level passes; and the fields it constrains (compile.group_slots).

Why an entry can never be stale: a Match is a frozen dataclass whose fields are frozen IntervalSets
and frozensets, so what is derived from it is a function of the object. Entries are keyed by the
object's identity (hashing a Match hashes every field, as slow as deriving the facts) and hold the
object itself: while an entry holds it, no other object can have its id, and a lookup serves an
entry only if it holds the very object asked about. A Match equal to a kept one but another object
is derived anew (the same value). Nothing here depends on the rule's position, action or id, nor
on the other rules.

The memo only grows by the matches compiled; trim() empties it before it holds far more than the
ruleset (matches of rules since removed), as warm.py does with the planner's memo. Dict updates are
atomic, and `watch` never compiles in two threads at once (predict.py) anyway.
"""
from __future__ import annotations

import operator
from typing import Dict, List, Optional, Sequence, Tuple

from ipt2xdp import fastpath, identitymemo, tuplefast

# Facts.kind: how the match constrains the source
SINGLE = 0        # one address (Facts.point)
SOURCE = 1        # any other set of addresses
DESTINATION = 2   # no source; the destination and nothing else (the planner's guards)
UNSOURCED = 3     # no source, and not the destination alone (it meets every source prefix)

# (match, kind, point, only_source, box): point is the one source address (kind SINGLE) or None;
# only_source: nothing but the source is constrained; box: tuplefast.box_of(match) where the
# match constrains the protocol or the destination (else None: a source-only match is a prefix)
Facts = Tuple[object, int, Optional[int], bool, Optional[tuple]]
FACTS: Dict[int, Facts] = {}  # id(match) -> its Facts


def derive(match) -> Facts:
    """The Facts of a match (fastpath's and tuplefast's own predicates)."""
    src = match.src
    if src is None:
        kind = DESTINATION if fastpath._only_destination(match) else UNSOURCED
        point = None
    else:
        intervals = src.intervals
        single = len(intervals) == 1 and intervals[0][0] == intervals[0][1]
        kind, point = (SINGLE, intervals[0][0]) if single else (SOURCE, None)
    box = tuplefast.box_of(match) if match.proto is not None or match.dst is not None else None
    return match, kind, point, src is not None and fastpath._only_source(match), box


_FACTS_AT = identitymemo.Positional()


def facts_of(rules: Sequence) -> List[Facts]:
    """The Facts of each rule's match, in order (identitymemo.kept, by position first)."""
    return _FACTS_AT.kept(FACTS, list(map(operator.attrgetter("match"), rules)), derive)


FIELD_BITS: Dict[int, Tuple[object, int]] = {}  # id(match) -> (match, compile._match_fields(match))
_FIELD_BITS_AT = identitymemo.Positional()


def field_bits(matches: List, derive) -> List[int]:
    """derive(match) of each match (compile's fields a slot constrains), kept as FACTS are."""
    return list(map(operator.itemgetter(1), _FIELD_BITS_AT.kept(FIELD_BITS, matches, lambda m: (m, derive(m)))))


def trim(rules: int) -> None:
    """Forget every match once far more are kept than a ruleset of `rules` rules uses."""
    for table in (FACTS, FIELD_BITS):
        if len(table) > 2 * rules + 1000:
            table.clear()
