# SPDX-License-Identifier: GPL-2.0-only
"""Which IPv4 packets an nftables rule's statement may act on: a superset, as classifier fields.

A statement with an effect (counter, log, dnat, mark, set update...) acts on the packets that
satisfy the `match` expressions before it in its rule. Each match understood here narrows the
bound exactly (address prefixes, ranges and literal sets; protocols; TCP/UDP ports); every other
one (named sets, concatenations, interfaces, conntrack, negations, comparisons...) is left out,
which only widens it. The rule's position (earlier verdicts, the conditions of the jump that led
to its chain) is left out too: the bound holds for every path to the statement. A match that only
IPv6 packets satisfy (ip6/icmpv6 payload, `meta nfproto ipv6`) leaves no IPv4 packet: XDP passes
IPv6 to netfilter anyway, so such a statement never needs a deferral.

`th sport`/`th dport` (the transport header of whatever protocol: kube-proxy's `meta l4proto . th
dport`) narrow the ports only where the same conjunction limits the protocol to TCP and UDP: the
classifier reads ports of those two alone, so a port bound on, say, SCTP would leave its packets
out of the bound. A concatenation (`ip daddr . tcp dport @set`) is bounded field by field by the
hull of its elements: a superset of their union.

A bound is stored as a tuple of (field, values) pairs: intervals ((lo, hi), ...) for src, dst,
sport and dport, protocol numbers for proto; no pair for a field means any value.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Tuple

from ipt2xdp.classifier import IntervalSet, Match
from ipt2xdp.terms import conjoin

Bound = Tuple[Tuple[str, tuple], ...]
NO_IPV4 = "no-ipv4"  # a rule no IPv4 packet satisfies

PROTOCOLS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "sctp": 132}
PORT_PROTOCOLS = {"tcp": 6, "udp": 17}
IPV6_PAYLOADS = ("ip6", "icmpv6", "ip6nexthdr")


def _ints(right, parse) -> Optional[IntervalSet]:
    """A literal value, range, prefix or anonymous set as intervals; None when not literal."""
    if isinstance(right, dict) and "set" in right:
        parts = [_ints(item, parse) for item in right["set"]]
        if any(p is None for p in parts):
            return None
        return IntervalSet.of(i for p in parts for i in p.intervals)
    if isinstance(right, dict) and "range" in right:
        lo, hi = (parse(v) for v in right["range"])
        return None if lo is None or hi is None else IntervalSet.range(lo, hi)
    if isinstance(right, dict) and "prefix" in right:
        try:
            return IntervalSet.cidr(f"{right['prefix']['addr']}/{right['prefix']['len']}")
        except (KeyError, ValueError):
            return None
    value = parse(right)
    return None if value is None else IntervalSet.single(value)


def _port(value) -> Optional[int]:
    return value if isinstance(value, int) and 0 <= value <= 0xFFFF else None


def _address(value) -> Optional[int]:
    if isinstance(value, str):  # the common dotted quad without ipaddress's cost (kube-proxy: tens of thousands)
        parts = value.split(".")
        if len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 3 and (p == "0" or p[0] != "0")
                                   and int(p) <= 255 for p in parts):
            return int.from_bytes(bytes(int(p) for p in parts), "big")
    try:
        return int(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        return None


def _protocol(value) -> Optional[int]:
    if isinstance(value, int):
        return value
    return PROTOCOLS.get(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class TransportPorts:
    """`th sport`/`th dport` values: they bound only a conjunction whose protocols are TCP/UDP."""

    field: str
    ports: IntervalSet


def match_bound(match: dict):
    """A Match this expression implies (a superset of the packets satisfying it), NO_IPV4, a
    TransportPorts, or None (no constraint understood)."""
    left, right, op = match.get("left"), match.get("right"), match.get("op", "==")
    exact = op in ("==", "in")
    if not isinstance(left, dict):
        return None
    if "concat" in left:
        return _concat_bound(left["concat"], right) if exact else None
    payload, meta = left.get("payload"), left.get("meta")
    if isinstance(payload, dict):
        protocol, field = payload.get("protocol"), payload.get("field")
        if protocol in IPV6_PAYLOADS:
            return NO_IPV4
        if protocol == "th" and exact and field in ("sport", "dport"):
            ports = _ints(right, _port)
            return None if ports is None else TransportPorts(field, ports)
        if protocol in PORT_PROTOCOLS:
            proto = frozenset({PORT_PROTOCOLS[protocol]})
            ports = _ints(right, _port) if exact and field in ("sport", "dport") else None
            return Match(proto=proto, **({field: ports} if ports is not None else {}))
        if protocol in PROTOCOLS:
            return Match(proto=frozenset({PROTOCOLS[protocol]}))
        if protocol == "ip" and exact and field in ("saddr", "daddr"):
            addresses = _ints(right, _address)
            return None if addresses is None else Match(**{"src" if field == "saddr" else "dst": addresses})
        if protocol == "ip" and exact and field == "protocol":
            protos = _ints(right, _protocol)
            return None if protos is None else Match(proto=frozenset(v for lo, hi in protos for v in range(lo, hi + 1)))
        return None
    if isinstance(meta, dict):
        key = meta.get("key")
        if key == "nfproto" and exact and right in ("ipv6", 10):
            return NO_IPV4
        if key == "l4proto" and exact:
            protos = _ints(right, _protocol)
            if protos is not None and sum(hi - lo + 1 for lo, hi in protos) <= 256:
                return Match(proto=frozenset(v for lo, hi in protos for v in range(lo, hi + 1)))
    return None


def _concat_bound(parts, right):
    """`a . b . c == {x . y . z, ...}` (or one element): each part bounded by the hull of its
    position's values; a NO_IPV4 part still means no IPv4 packet."""
    elements = right["set"] if isinstance(right, dict) and "set" in right else [right]
    columns = [[] for _ in parts]
    for element in elements:
        values = element.get("concat") if isinstance(element, dict) else None
        if not isinstance(values, list) or len(values) != len(parts):
            return None
        for column, value in zip(columns, values):
            column.append(value)
    return [match_bound({"op": "==", "left": part, "right": {"set": column}})
            for part, column in zip(parts, columns)]


def statement_bound(conjuncts) -> Optional[Match]:
    """The conjunction of the rule's matches before a statement; None when no IPv4 packet fits."""
    bound, transport = Match(), []
    pending = [match_bound(match) for match in conjuncts]
    while pending:
        implied = pending.pop()
        if isinstance(implied, list):  # a concatenation: its parts
            pending += implied
        elif implied == NO_IPV4:
            return None
        elif isinstance(implied, TransportPorts):
            transport.append(implied)
        elif implied is not None:
            bound = conjoin(bound, implied)
            if bound is None:
                return None
    if transport and bound.proto is not None and bound.proto <= frozenset(PORT_PROTOCOLS.values()):
        for ports in transport:
            bound = conjoin(bound, Match(**{ports.field: ports.ports}))
            if bound is None:
                return None
    return bound


def to_bound(match: Match) -> Bound:
    out = []
    for name in ("src", "dst", "proto", "sport", "dport"):
        value = getattr(match, name)
        if value is not None:
            out.append((name, tuple(sorted(value)) if isinstance(value, frozenset) else value.intervals))
    return tuple(out)


def to_match(bound: Bound) -> Match:
    fields = {}
    for name, values in bound:
        fields[name] = frozenset(values) if name == "proto" else IntervalSet(tuple(tuple(v) for v in values))
    return Match(**fields)


def describe(bound: Bound) -> str:
    if not bound:
        return "every packet"
    parts = []
    for name, values in bound:
        if name == "proto":
            parts.append("proto " + ",".join(str(v) for v in values))
        elif name in ("src", "dst"):
            nets = (n for lo, hi in values for n in ipaddress.summarize_address_range(ipaddress.IPv4Address(lo),
                                                                                     ipaddress.IPv4Address(hi)))
            parts.append(f"{name} " + ",".join(str(n.network_address) if n.prefixlen == 32 else str(n) for n in nets))
        else:
            parts.append(f"{name} " + ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in values))
    return " ".join(parts)
