# SPDX-License-Identifier: GPL-2.0-only
"""Which jumps a packet matched on its way to a rule, as first-match alternatives ("ways").

Netfilter counts a packet on every rule it matches: the jump into a user chain it later returned
from (by falling off the end, or by a RETURN rule, which counts too), and a rule without a target,
not only the rules of the path that finally decides. A packet XDP drops is counted in XDP, on the
counter of the classifier rule that dropped it; the wrapper adds that counter to every iptables
rule of the rule's counter path. So a DROP rule reached after such a jump is compiled as several
classifier rules, one per way the packet may have come:

    S and way 1   counts S, and the rules way 1 matched
    S and way 2   ...        (only packets that did not take way 1 reach this one)
    S             counts S alone: packets that matched none of the ways

A history is the tuple of ways, in first-match order, that a packet reaching some point of an
inlined chain may have taken since the chain was entered; its refs are the rules matched beyond the
chain's own path. The order is what makes it exact without negation: a packet that matched the
conditions of way 1 and reached S did take way 1 (its conditions are the jump's conditions, and a
packet matching them that was not decided inside the chain came back out), so later ways only ever
see the packets that did not. A way whose conditions cover every packet of the scope ends the
history (an unconditional jump); a way disjoint from S's match costs no rule.

Bounds: a history keeps at most MAX_WAYS ways; beyond that its tail becomes one way with unknown
refs, and a DROP rule defers (XDP passes, netfilter decides and counts) the packets that may have
come that way. A DROP rule splits into at most MAX_SPLITS classifier rules; the packets of the ways
beyond that are deferred the same way. Counters never miss a packet: at worst netfilter counts it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ipt2xdp.classifier import IntervalSet, Match
from ipt2xdp.decisions import _covers
from ipt2xdp.terms import conjoin

MAX_WAYS = 32
MAX_SPLITS = 8
DEFER_CODE = "counters.ways"  # the reason a DROP rule's packets that came a way beyond the bounds go to netfilter


@dataclass(frozen=True)
class Way:
    match: Match                 # the packets that took this way (every condition on it, conjoined)
    refs: Optional[tuple]        # the iptables rules (plan.RuleRef) they matched; None: unknown (beyond the bounds)


History = Tuple[Way, ...]


def _hull(matches: Sequence[Match]) -> Match:
    """A match that holds every packet any of matches holds (per field, the union)."""
    fields = {}
    for name, first in vars(matches[0]).items():
        values = [vars(m)[name] for m in matches]
        if any(value is None for value in values):
            fields[name] = None
        elif isinstance(first, frozenset):
            fields[name] = frozenset().union(*values)
        else:
            fields[name] = IntervalSet.of(i for value in values for i in value.intervals)
    return Match.from_fields(fields)


def _ended(ways: Sequence[Way], scope: Match) -> History:
    """ways up to the first that holds every packet of the scope (no later one is ever taken),
    at most MAX_WAYS of them: a longer tail becomes one way of unknown refs."""
    out: List[Way] = []
    for index, way in enumerate(ways):
        out.append(way)
        if _covers(way.match, scope):
            break
        if len(out) == MAX_WAYS - 1 and index + 1 < len(ways):
            out.append(Way(_hull([w.match for w in ways[index + 1:]]), None))
            break
    return tuple(out)


def entered(history: History, cond: Match) -> History:
    """The history at the start of a chain entered under cond (the jump's conditions, conjoined)."""
    ways = []
    for way in history:
        match = conjoin(cond, way.match)
        if match is not None:
            ways.append(Way(match, way.refs))
    return _ended(ways, cond)


def after_rule(history: History, match: Match, ref) -> List[Way]:
    """The ways of the packets that matched a rule under match and went on (a RETURN rule, a rule
    without a target): its own ref added to each way they may have come by."""
    ways = []
    for way in history:
        both = conjoin(match, way.match)
        if both is None:
            continue
        ways.append(Way(both, None if way.refs is None else way.refs + (ref,)))
        if _covers(way.match, match):
            return ways
    ways.append(Way(match, (ref,)))
    return ways


def returned(exits: Sequence[Way], end: Optional[History], cond: Match, jump) -> List[Way]:
    """The ways, seen from the caller, of the packets that matched a jump under cond and came back
    out of its chain: exits (RETURNs, in rule order), then falling off the end (the chain's history
    there, then no further way; end None: no packet falls off); the jump's ref comes first in each."""
    ways = []
    for way in list(exits) + ([] if end is None else list(end) + [Way(cond, ())]):
        ways.append(Way(way.match, None if way.refs is None else (jump,) + way.refs))
        if _covers(way.match, cond):
            break
    return ways


def went_on(ways: Sequence[Way], history: History, scope: Match) -> History:
    """The history after a rule whose matching packets went on by ways; the others by history."""
    return _ended(list(ways) + list(history), scope)


def uniform(history: History, scope: Match) -> Optional[tuple]:
    """The refs every packet of the scope came by when there is one way for all (an unconditional
    jump): a DROP rule then needs no split. None otherwise."""
    if len(history) == 1 and history[0].refs is not None and _covers(history[0].match, scope):
        return history[0].refs
    return None


def split(history: History, match: Match) -> List[Tuple[Match, Optional[tuple], Optional[int]]]:
    """The classifier rules a DROP rule under match becomes, in order: (match, refs of the way, the
    way's index in history), the last with refs () and index len(history) (no way) when the ways
    leave some packets; refs None: defer these (index None: past MAX_SPLITS, the rest of match)."""
    out: List[Tuple[Match, Optional[tuple], Optional[int]]] = []
    for index, way in enumerate(history):
        both = conjoin(match, way.match)
        if both is None:
            continue
        if len(out) == MAX_SPLITS:
            out.append((match, None, None))
            return out
        covered = _covers(way.match, match)
        out.append((match if covered else both, way.refs, index))
        if covered:
            return out
    out.append((match, (), len(history)))
    return out


def grouped(splits: Sequence[List[Tuple[Match, Optional[tuple], Optional[int]]]]):
    """The classifier rules of consecutive DROP rules that share a history, in an order that keeps a
    run of them (a blocklist) one run per way, so compile can still merge it into a set: by way,
    then rule order. First match picks the same rule for every packet as rule-by-rule order: a
    packet that came by way w meets no part of an earlier way, and the first of these rules it
    matches has a part for w. Not so for a rule split past MAX_SPLITS (its deferred rest holds
    packets of any way): such a rule keeps its place, between the groups before and after it."""
    batch: List[Tuple[int, int, tuple]] = []
    for number, parts in enumerate(splits):
        if parts[-1][2] is None:
            yield from (entry for _, _, entry in sorted(batch, key=lambda e: e[:2]))
            batch = []
            yield from parts
            continue
        batch += [(group, number, part) for part in parts for group in (part[2],)]
    yield from (entry for _, _, entry in sorted(batch, key=lambda e: e[:2]))
