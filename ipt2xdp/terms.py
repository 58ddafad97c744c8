# SPDX-License-Identifier: GPL-2.0-only
"""What translate.translate() makes of a rule: a Term, its Disjuncts and the SetUses it relies on;
the reason codes of unknown disjuncts with the sentences the report shows; conjoin() of two
classifier Matches.

A rule becomes a Term: a disjunction of classifier Matches, each either *certain* (XDP knows the
packet matches) or *unknown* (the modelled part matches but something XDP cannot see decides, so
the packet must be deferred to netfilter). An empty disjunction means the rule never matches a
packet XDP judges (for example `-f`: XDP passes every fragment before classifying).

Separate from translate.py because the planner and the chain walkers (jumppaths, guards, nftchains,
nftbound) use these types and conjoin() without translating anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ipt2xdp import ipsets
from ipt2xdp.classifier import IntervalSet, Match


@dataclass(frozen=True)
class Disjunct:
    match: Match
    unknown: Optional[str] = None  # reason code when XDP cannot be sure; None when certain


@dataclass(frozen=True)
class SetUse:
    """A `-m set` match XDP evaluates from a copy of the set's members (see ipsets.py)."""

    name: str
    negated: bool
    forceadd: bool = False           # an add may evict a member: additions count as removals too
    expiry_ns: Optional[int] = None  # the copy is exact until then (member timeouts)


@dataclass(frozen=True)
class Term:
    """No disjunct's match has an empty field (every one is built by narrowing or conjoin, which
    stop at an empty one): the planner takes a disjunct as it is where its chain is unconditional."""

    disjuncts: Tuple[Disjunct, ...]
    unknown_codes: Tuple[str, ...] = ()  # every reason a disjunct is unknown, for the report
    never: str = ""  # why no disjunct is left (the rule never matches a packet XDP judges)
    # mirrored sets the disjuncts rely on, kept even when no disjunct is left (an empty set)
    set_uses: Tuple[SetUse, ...] = ()


# Matches XDP cannot evaluate (yet), with the sentence the dry-run report shows.
UNMODELLED_WHY = {
    "conntrack": "connection state is only known to conntrack",
    "state": "connection state is only known to conntrack",
    "set": "ipset membership is not mirrored into XDP",
    **ipsets.WHY,
    "length": "packet length is not a classifier field yet",
    "ttl": "TTL is not a classifier field yet",
    "addrtype": "the address type may change after the import (a source's type, a destination whose "
                "routes are ambiguous, or an input device ipt2xdp cannot map)",
    "mac": "MAC addresses are not a classifier field",
    "limit": "rate limits keep state XDP does not share",
    "recent": "the recent list keeps state XDP does not share",
    "hashlimit": "rate limits keep state XDP does not share",
    "mark": "packet marks are set inside netfilter",
    "connmark": "connection marks live in conntrack",
    "tcp-option": "TCP options are not parsed by XDP",
    "out-interface": "the output device is not known when a packet arrives",
    "interface-ambiguous": "netfilter may see this packet on another device (bridge, macvlan or ipvlan)",
    "port-protocol": "XDP parses ports of TCP and UDP only",
    "ctstate-unsure": "XDP's conntrack lookup cannot tell this state for these packets "
                      "(a tracked flow, ICMP or another protocol, or NEW versus INVALID)",
}


def unknown_why(code: str) -> str:
    name = code.split(".", 1)[-1]
    return UNMODELLED_WHY.get(name, f"-m {name} is not modelled in XDP")


def conjoin(a: Match, b: Match) -> Optional[Match]:
    """The conjunction of two matches, or None when no packet satisfies both."""
    values = vars(a)
    constrained = False
    for value in values.values():
        if value is not None:
            if not value:
                return None  # a matches no packet
            constrained = True
    narrowed = narrowed_fields(values, vars(b))
    if narrowed is None:
        return None
    if not constrained:
        return b  # narrowed holds b's constraints as they are
    if not narrowed:
        return a
    out = dict(values)
    out.update(narrowed)
    return Match.from_fields(out)


def narrowed_fields(values: Dict[str, object], constraint: Dict[str, object]) -> Optional[Dict[str, object]]:
    """The fields of `constraint` (None: unconstrained) intersected with those in `values`; None
    when one of them becomes empty."""
    out = {}
    for name, value in constraint.items():
        if value is None:
            continue
        current = values.get(name)
        if current is not None:
            value = current.intersection(value) if isinstance(current, IntervalSet) else current & value
        if not value:
            return None
        out[name] = value
    return out
