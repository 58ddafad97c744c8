# SPDX-License-Identifier: GPL-2.0-only
"""plain_term(): translate() of the commonest rule shape (addresses, a protocol, at most one
-m tcp/udp with ports) without translate's builder, and the exact classifier values of addresses
and ports that translate shares with it.

Separate from translate.py: it runs once per rule of a 100k-rule list, so it is written for speed
(fields read from the instance dict, helpers written out inline) and kept apart from the general
path it must agree with.
"""
from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Optional, Tuple

from ipt2xdp import ir, irmatches
from ipt2xdp.classifier import U16_MAX, U32_MAX, IntervalSet, Match
from ipt2xdp.fastinit import fast_constructor
from ipt2xdp.terms import Disjunct, Term

ALL_PROTOCOLS = frozenset(range(256))
TCP, UDP = frozenset({6}), frozenset({17})

# One of each per rule of the commonest shape (plain_term): without the frozen __init__'s setattrs.
_new_interval, _new_match = fast_constructor(IntervalSet), fast_constructor(Match)
_new_disjunct, _new_term = fast_constructor(Disjunct), fast_constructor(Term)


def address_interval(address: Optional[ir.Address]) -> Optional[IntervalSet]:
    if address is None:
        return None
    net = address.network
    # int(net.network_address) and net.prefixlen, read without their two Python-level calls
    low = net.network_address._ip
    interval = _new_interval(((low, low | U32_MAX >> net._prefixlen),))  # (network, broadcast address)
    return interval.complement(U32_MAX) if address.negated else interval


def ports_interval(ranges: Iterable[Tuple[int, int]], negated: bool) -> IntervalSet:
    interval = IntervalSet.of(ranges)
    return interval.complement(U16_MAX) if negated else interval


def port_interval(port: irmatches.PortMatch) -> IntervalSet:
    """ports_interval([port.range], port.negated): one range needs no sorting or merging."""
    lo, hi = port.range
    if not 0 <= lo <= hi:
        return ports_interval([port.range], port.negated)  # IntervalSet.of's error
    interval = _new_interval(((int(lo), int(hi)),))
    return interval.complement(U16_MAX) if port.negated else interval


def plain_term(rule: ir.Rule) -> Optional[Term]:
    """translate() of the commonest rule shape, or None for any other: addresses, a protocol and at
    most one -m tcp/udp with ports (for that protocol), nothing else. The host plays no part: every
    field is exact and no field ends up empty (those cases take the general path).

    It runs once per rule of a 100k-rule list: the fields are read from the instance dict and
    address_interval() and _plain_port() are written out inline (same values, fewer Python calls)."""
    fields = rule.__dict__
    if fields["in_interface"] is not None or fields["out_interface"] is not None or fields["fragment"] is True:
        return None
    matches = fields["matches"]
    if len(matches) > 1:
        return None
    src = dst = proto = sport = dport = None
    address = fields["source"]
    if address is not None:
        net = address.network
        low = net.network_address._ip  # as address_interval() reads it
        src = _new_interval(((low, low | U32_MAX >> net._prefixlen),))
        if address.negated:
            src = src.complement(U32_MAX)
            if not src:
                return None
    address = fields["destination"]
    if address is not None:
        net = address.network
        low = net.network_address._ip
        dst = _new_interval(((low, low | U32_MAX >> net._prefixlen),))
        if address.negated:
            dst = dst.complement(U32_MAX)
            if not dst:
                return None
    protocol = fields["protocol"]
    if protocol is not None:
        proto = _PROTOCOL_SETS.get((protocol.number, protocol.negated)) or _protocols(protocol.number,
                                                                                        protocol.negated)
        if not proto:
            return None
    if matches:
        match = matches[0]
        kind = type(match)
        if kind is irmatches.UdpMatch:
            only = UDP
        elif kind is irmatches.TcpMatch and match.flags is None and match.option is None:
            only = TCP
        else:
            return None
        if proto != only:  # else the port-protocol unknown or an empty protocol
            return None
        if match.sport is not None:
            sport = _plain_port(match.sport)
            if sport is None:
                return None
        port = match.dport
        if port is not None:  # _plain_port(port)
            lo, hi = port.range
            if not 0 <= lo <= hi:
                return None
            dport = _new_interval(((int(lo), int(hi)),))
            if port.negated:
                dport = dport.complement(U16_MAX)
                if not dport:
                    return None
    return _new_term((_new_disjunct(_new_match(src, dst, proto, sport, dport)),))


_PROTOCOL_SETS: Dict[Tuple[int, bool], FrozenSet[int]] = {}


def _protocols(number: int, negated: bool) -> FrozenSet[int]:
    """The proto field of `[!] -p number` (0: any protocol); one shared frozenset per spelling."""
    numbers = _PROTOCOL_SETS.get((number, negated))
    if numbers is None:
        numbers = frozenset({number}) if number else ALL_PROTOCOLS
        numbers = _PROTOCOL_SETS[(number, negated)] = ALL_PROTOCOLS - numbers if negated else numbers
    return numbers


def _plain_port(port: irmatches.PortMatch) -> Optional[IntervalSet]:
    """port_interval(port), or None where plain_term leaves the rule to the general path."""
    if not 0 <= port.range[0] <= port.range[1]:
        return None
    return port_interval(port) or None
