# SPDX-License-Identifier: GPL-2.0-only
"""Address types as `-m addrtype` sees them, from the routes read at import.

xt_addrtype asks inet_addr_type() (inet_dev_addr_type() with --limit-iface-in): BROADCAST for
0.0.0.0/8 and 255.255.255.255 and MULTICAST for 224.0.0.0/4 whatever the routes; otherwise the type
of the longest-prefix route in table local, or UNICAST when there is none or the route is an error
route (blackhole, unreachable, prohibit, throw: the lookup fails). With --limit-iface-in the route
counts only when its device is the packet's input device, else UNICAST. Table local is merged with
table main until a policy rule is added (and stays unmerged after), which this cannot see: an
address whose type differs between the two readings is uncertain.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

from ipt2xdp.classifier import U32_MAX, IntervalSet
from ipt2xdp.hostinfo import RT_TABLE_LOCAL, RouteType

ERROR_ROUTES = frozenset({"BLACKHOLE", "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE"})
INTRINSIC = (("BROADCAST", IntervalSet.cidrs(["0.0.0.0/8", "255.255.255.255/32"])),
             ("MULTICAST", IntervalSet.cidr("224.0.0.0/4")))
INTRINSIC_ALL = IntervalSet.cidrs(["0.0.0.0/8", "255.255.255.255/32", "224.0.0.0/4"])
# Types a route lookup can give an address outside the intrinsic ranges.
ROUTED_TYPES = frozenset({"UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST"})
EMPTY = IntervalSet()


def _effective(route: RouteType, device: Optional[int]) -> Optional[str]:
    """The type the lookup reports when this route wins; None when that cannot be known."""
    if route.kind in ERROR_ROUTES:
        return "UNICAST"
    if device is None:
        return route.kind
    if route.oif < 0:
        return None
    return route.kind if route.oif == device else "UNICAST"


def _paint(routes: Iterable[RouteType], device: Optional[int]) -> Tuple[Dict[str, IntervalSet], IntervalSet]:
    """Type per address by longest prefix; rival routes of one prefix make their span uncertain."""
    by_network: Dict = {}
    for route in routes:
        by_network.setdefault(route.network, set()).add(_effective(route, device))
    painted: Dict[str, IntervalSet] = {}
    uncertain = EMPTY
    for network in sorted(by_network, key=lambda n: n.prefixlen):
        span = IntervalSet.range(int(network.network_address), int(network.broadcast_address))
        rest = span.complement(U32_MAX)
        painted = {k: v.intersection(rest) for k, v in painted.items()}
        uncertain = uncertain.intersection(rest)
        kinds = by_network[network]
        if len(kinds) == 1 and None not in kinds:
            kind = next(iter(kinds))
            painted[kind] = painted.get(kind, EMPTY).union(span)
        else:
            uncertain = uncertain.union(span)
    other = EMPTY
    for kind, addresses in painted.items():
        if kind != "UNICAST":
            other = other.union(addresses)
    painted["UNICAST"] = other.union(uncertain).complement(U32_MAX)
    return painted, uncertain


def address_types(routes: Tuple[RouteType, ...], device: Optional[int] = None) -> Tuple[Dict[str, IntervalSet], IntervalSet]:
    """(addresses of each type, addresses whose type is uncertain), for inet_(dev_)addr_type(device)."""
    local, uncertain_local = _paint((r for r in routes if r.table == RT_TABLE_LOCAL), device)
    merged, uncertain_merged = _paint(routes, device)
    uncertain = uncertain_local.union(uncertain_merged)
    for kind in set(local) | set(merged):
        a, b = local.get(kind, EMPTY), merged.get(kind, EMPTY)
        uncertain = uncertain.union(a.intersection(b.complement(U32_MAX))).union(b.intersection(a.complement(U32_MAX)))
    certain = uncertain.union(INTRINSIC_ALL).complement(U32_MAX)
    types = {kind: addresses.intersection(certain) for kind, addresses in merged.items()}
    for kind, addresses in INTRINSIC:
        types[kind] = types.get(kind, EMPTY).union(addresses)
    return types, uncertain.intersection(INTRINSIC_ALL.complement(U32_MAX))


def selected(types: Dict[str, IntervalSet], names: frozenset, negated: bool) -> IntervalSet:
    """Addresses whose type is (or, negated, is not) in names, among those whose type is known."""
    chosen = EMPTY
    for kind, addresses in types.items():
        if (kind in names) != negated:
            chosen = chosen.union(addresses)
    return chosen
