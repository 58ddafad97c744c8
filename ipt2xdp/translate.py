# SPDX-License-Identifier: GPL-2.0-only
"""Translate one IR rule's matches into classifier terms, exactly or not at all.

A rule becomes a Term: a disjunction of classifier Matches, each either *certain* (XDP knows the
packet matches) or *unknown* (the modelled part matches but something XDP cannot see decides, so
the packet must be deferred to netfilter). An empty disjunction means the rule never matches a
packet XDP judges (for example `-f`: XDP passes every fragment before classifying).

Only XDP_DROP needs proof, so the one rule here is: a field is either translated exactly, or the
whole disjunct becomes unknown, which can only make XDP defer more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

from ipt2xdp import ipsets, ir, irmatches
from ipt2xdp.classifier import U16_MAX, U32_MAX, IntervalSet, Match
from ipt2xdp.ctstate import CtAtom, ct_cases, ct_outcomes, ct_test
from ipt2xdp.fastinit import fast_constructor
from ipt2xdp.hostinfo import HostContext
from ipt2xdp.hostmatch import addrtype_alternatives, interface_match, nf_interface_names

ALL_PROTOCOLS = frozenset(range(256))
PORT_PROTOCOLS = frozenset({6, 17})  # the only protocols whose ports the XDP program parses
TCP, UDP = frozenset({6}), frozenset({17})
ICMP_MAX = 0xFFFF  # type*256+code


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


# One of each per rule of the commonest shape (_plain_term): without the frozen __init__'s setattrs.
_new_interval, _new_match = fast_constructor(IntervalSet), fast_constructor(Match)
_new_disjunct, _new_term = fast_constructor(Disjunct), fast_constructor(Term)

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

def _and3(a: str, b: str) -> str:
    if "nomatch" in (a, b):
        return "nomatch"
    return "unknown" if "unknown" in (a, b) else "match"


def unknown_why(code: str) -> str:
    name = code.split(".", 1)[-1]
    return UNMODELLED_WHY.get(name, f"-m {name} is not modelled in XDP")


def _addresses(address: Optional[ir.Address]) -> Optional[IntervalSet]:
    if address is None:
        return None
    net = address.network
    # int(net.network_address) and net.prefixlen, read without their two Python-level calls
    low = net.network_address._ip
    interval = _new_interval(((low, low | U32_MAX >> net._prefixlen),))  # (network, broadcast address)
    return interval.complement(U32_MAX) if address.negated else interval


def _ports(ranges: Iterable[Tuple[int, int]], negated: bool) -> IntervalSet:
    interval = IntervalSet.of(ranges)
    return interval.complement(U16_MAX) if negated else interval


def _port_range(port: irmatches.PortMatch) -> IntervalSet:
    """_ports([port.range], port.negated): one range needs no sorting or merging."""
    lo, hi = port.range
    if not 0 <= lo <= hi:
        return _ports([port.range], port.negated)  # IntervalSet.of's error
    interval = _new_interval(((int(lo), int(hi)),))
    return interval.complement(U16_MAX) if port.negated else interval


def _flags(flags: irmatches.TcpFlags) -> FrozenSet[int]:
    mask, comp = flags.mask_bits, flags.comp_bits
    return frozenset(v for v in range(64) if ((v & mask) == comp) != flags.negated)


def _icmp(match: irmatches.IcmpMatch) -> IntervalSet:
    if match.type is None:
        interval = IntervalSet.range(0, ICMP_MAX)
    else:
        interval = IntervalSet.range(match.type * 256 + match.code[0], match.type * 256 + match.code[1])
    return interval.complement(ICMP_MAX) if match.negated else interval


def conjoin(a: Match, b: Match) -> Optional[Match]:
    """The conjunction of two matches, or None when no packet satisfies both."""
    values = vars(a)
    constrained = False
    for value in values.values():
        if value is not None:
            if not value:
                return None  # a matches no packet
            constrained = True
    narrowed = _narrowed(values, vars(b))
    if narrowed is None:
        return None
    if not constrained:
        return b  # narrowed holds b's constraints as they are
    if not narrowed:
        return a
    out = dict(values)
    out.update(narrowed)
    return Match.from_fields(out)


def _narrowed(values: Dict[str, object], constraint: Dict[str, object]) -> Optional[Dict[str, object]]:
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


class _Builder:
    """Accumulates one rule's constraints; a field XDP cannot decide makes the rule unknown."""

    def __init__(self):
        self.fields: Dict[str, object] = {}  # the constrained fields of the rule's Match so far (never empty)
        self.unknown: List[str] = []
        self.never = ""
        self.either_port: Optional[IntervalSet] = None  # `-m multiport --ports P`: sport or dport in P
        self.iif_split: Optional[Tuple[FrozenSet[int], FrozenSet[int]]] = None  # (exact, ambiguous)
        self.ct: Optional[Dict[CtAtom, str]] = None  # state matches: outcome per conntrack class and kind
        self.set_uses: List[SetUse] = []
        # Per -m addrtype: disjoint (constraint, unknown reason or None) alternatives to conjoin.
        self.alternatives: List[List[Tuple[Match, Optional[str]]]] = []

    def add_ct(self, outcomes: Dict[CtAtom, str]) -> None:
        self.ct = outcomes if self.ct is None else {a: _and3(self.ct[a], outcomes[a]) for a in outcomes}

    def add(self, **constraint) -> None:
        """Conjoin constraints on several fields at once (all of them, or none when one is empty)."""
        narrowed = _narrowed(self.fields, constraint)
        if narrowed is None:
            self.never = self.never or ("iface.not-attached" if "iif" in constraint else "never.empty")
        else:
            self.fields.update(narrowed)

    def narrow(self, name: str, value) -> None:
        """add(**{name: value}) for one field (the common case, without the keyword dicts)."""
        if value is None:
            return
        current = self.fields.get(name)
        if current is not None:
            value = current.intersection(value) if isinstance(current, IntervalSet) else current & value
        if not value:
            self.never = self.never or ("iface.not-attached" if name == "iif" else "never.empty")
        else:
            self.fields[name] = value

    def mark_unknown(self, code: str) -> None:
        if code not in self.unknown:
            self.unknown.append(code)


def _header(builder: _Builder, rule: ir.Rule, names: Dict[int, str], ambiguous: FrozenSet[int]) -> None:
    for field, address in (("src", rule.source), ("dst", rule.destination)):
        values = _addresses(address)
        if values is not None:
            builder.narrow(field, values)
    if rule.protocol is not None:
        numbers = frozenset({rule.protocol.number}) if rule.protocol.number else ALL_PROTOCOLS
        builder.narrow("proto", ALL_PROTOCOLS - numbers if rule.protocol.negated else numbers)
    if rule.in_interface is not None:
        exact = interface_match(rule.in_interface, {i: n for i, n in names.items() if i not in ambiguous})
        if ambiguous:
            # Packets on ambiguous devices: the interface test is unknown for them.
            builder.iif_split = (exact, ambiguous)
        else:
            builder.narrow("iif", exact)
    if rule.out_interface is not None:
        builder.mark_unknown("match.out-interface")
    if rule.fragment is True:
        builder.never = "fragment"  # XDP passes every fragment before classifying; `-f` never matches


def _port_constraints(builder: _Builder, rule: ir.Rule) -> None:
    protocols = builder.fields.get("proto")
    if protocols is None or not protocols <= PORT_PROTOCOLS:
        builder.mark_unknown("match.port-protocol")


def _matches(builder: _Builder, rule: ir.Rule, host: HostContext,
             interfaces: Optional[Tuple[Dict[int, str], FrozenSet[int]]] = None) -> None:
    for match in rule.matches:
        if isinstance(match, (irmatches.TcpMatch, irmatches.UdpMatch)):
            _port_constraints(builder, rule)
            if match.sport is not None:
                builder.narrow("sport", _port_range(match.sport))
            if match.dport is not None:
                builder.narrow("dport", _port_range(match.dport))
            if isinstance(match, irmatches.TcpMatch):
                builder.narrow("proto", TCP)
                if match.flags is not None:
                    builder.narrow("tcp_flags", _flags(match.flags))
                if match.option is not None:
                    builder.mark_unknown("match.tcp-option")
            else:
                builder.narrow("proto", UDP)
        elif isinstance(match, irmatches.MultiportMatch):
            _port_constraints(builder, rule)
            ports = _ports(match.ranges, match.negated)
            if match.kind == "sports":
                builder.narrow("sport", ports)
            elif match.kind == "dports":
                builder.narrow("dport", ports)
            elif match.negated:  # neither port in the list
                builder.add(sport=ports, dport=ports)
            else:
                builder.either_port = ports
        elif isinstance(match, irmatches.IcmpMatch):
            builder.add(proto=frozenset({1}), icmp=_icmp(match))
        elif isinstance(match, irmatches.IprangeMatch):
            for field, span in (("src", match.src), ("dst", match.dst)):
                if span is not None:
                    values = IntervalSet.range(int(span.lo), int(span.hi))
                    builder.narrow(field, values.complement(U32_MAX) if span.negated else values)
        elif isinstance(match, irmatches.CommentMatch):
            continue
        elif isinstance(match, (irmatches.StateMatch, irmatches.ConntrackMatch)) and ct_test(match) is not None:
            builder.add_ct(ct_outcomes(ct_test(match), host))
        elif isinstance(match, irmatches.SetMatch) and host.ipsets is not None:
            _set_match(builder, match, host)
        elif isinstance(match, irmatches.AddrtypeMatch):
            alternatives = addrtype_alternatives(match, host, interfaces or nf_interface_names(host))
            if not alternatives:
                builder.never = builder.never or "never.empty"
            builder.alternatives.append(alternatives)
        else:
            builder.mark_unknown(f"match.{match.name}")


def _set_match(builder: _Builder, match: irmatches.SetMatch, host: HostContext) -> None:
    """Members of a mirrored set as an address list on the first direction (hash:ip and hash:net
    have one dimension: xt_set uses the first flag and ignores the rest)."""
    ipset = host.ipset(match.set_name)
    problem = ipsets.match_problem(match, ipset)
    if problem:
        builder.mark_unknown(f"match.{problem}")
        return
    builder.set_uses.append(SetUse(ipset.name, match.negated, ipset.forceadd, ipset.expiry_ns))
    values = ipset.addresses.complement(U32_MAX) if match.negated else ipset.addresses
    builder.narrow(match.directions[0], values)


def _either_port(base: Match, ports: IntervalSet) -> List[Match]:
    """`--ports P` as two disjoint matches: sport in P, or dport in P with sport not in P."""
    first = conjoin(base, Match(sport=ports))
    second = conjoin(base, Match(sport=ports.complement(U16_MAX), dport=ports))
    return [m for m in (first, second) if m is not None]


def translate(rule: ir.Rule, host: HostContext,
              interfaces: Optional[Tuple[Dict[int, str], FrozenSet[int]]] = None) -> Term:
    """The classifier terms of a rule's matches (its target is the planner's business).

    `interfaces` is nf_interface_names(host), which a caller translating many rules computes once.
    """
    plain = _plain_term(rule)
    if plain is not None:
        return plain
    names, ambiguous = interfaces if interfaces is not None else nf_interface_names(host)
    builder = _Builder()
    _header(builder, rule, names, ambiguous)
    _matches(builder, rule, host, (names, ambiguous))
    uses = tuple(builder.set_uses)
    if builder.never:
        return Term((), never=builder.never, set_uses=uses)
    unknown = ",".join(builder.unknown) or None
    match = Match(**builder.fields)
    bases = [match] if builder.either_port is None else _either_port(match, builder.either_port)
    based: List[Tuple[Match, Optional[str]]] = [(b, unknown) for b in bases]
    for alternatives in builder.alternatives:
        based = [(m, _reasons(r, ar)) for b, r in based for alt, ar in alternatives
                 for m in (conjoin(b, alt),) if m is not None]
    if not based:
        return Term((), never="never.empty", set_uses=uses)
    disjuncts: List[Disjunct] = []
    for base, base_unknown in based:
        if builder.iif_split is None:
            disjuncts.append(Disjunct(base, base_unknown))
            continue
        exact, unsure = builder.iif_split
        for iif, reason in ((exact, base_unknown), (unsure, "match.interface-ambiguous")):
            narrowed = conjoin(base, Match(iif=iif)) if iif else None
            if narrowed is not None:
                disjuncts.append(Disjunct(narrowed, reason))
    never = "iface.not-attached"
    if builder.ct is not None and disjuncts:
        disjuncts = _split_ct(disjuncts, builder.ct)
        never = "never.empty"
    codes = tuple(dict.fromkeys(c for d in disjuncts if d.unknown for c in d.unknown.split(",")))
    return Term(tuple(disjuncts), codes, "" if disjuncts else never, uses)


def _plain_term(rule: ir.Rule) -> Optional[Term]:
    """translate() of the commonest rule shape, or None for any other: addresses, a protocol and at
    most one -m tcp/udp with ports (for that protocol), nothing else. The host plays no part: every
    field is exact and no field ends up empty (those cases take the general path).

    It runs once per rule of a 100k-rule list: the fields are read from the instance dict and
    _addresses() and _plain_port() are written out inline (same values, fewer Python calls)."""
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
        low = net.network_address._ip  # as _addresses() reads it
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
    """_port_range(port), or None where _plain_term leaves the rule to the general path."""
    if not 0 <= port.range[0] <= port.range[1]:
        return None
    return _port_range(port) or None


def _reasons(a: Optional[str], b: Optional[str]) -> Optional[str]:
    codes = [c for r in (a, b) if r for c in r.split(",")]
    return ",".join(dict.fromkeys(codes)) or None


def _split_ct(disjuncts: List[Disjunct], outcomes: Dict[CtAtom, str]) -> List[Disjunct]:
    """Each disjunct once per case where the state match surely matches (as it was) and once,
    unknown, per case where it may; cases where it cannot match are left out."""
    out = []
    cases = ct_cases(outcomes)
    for d in disjuncts:
        for constraint, result in cases:
            if result == "nomatch":
                continue
            m = conjoin(d.match, constraint)
            if m is None:
                continue
            reason = d.unknown if result == "match" else ",".join(filter(None, (d.unknown, "match.ctstate-unsure")))
            out.append(Disjunct(m, reason))
    return out
