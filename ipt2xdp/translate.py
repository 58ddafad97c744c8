# SPDX-License-Identifier: GPL-2.0-only
"""Translate one IR rule's matches into classifier terms (terms.Term), exactly or not at all.

Only XDP_DROP needs proof, so the one rule here is: a field is either translated exactly, or the
whole disjunct becomes unknown, which can only make XDP defer more. The commonest rule shape takes
plainterm.plain_term(); every other goes through a _Builder here.
"""
from __future__ import annotations

from typing import Dict, FrozenSet, List, Optional, Tuple

from ipt2xdp import ipsets, ir, irmatches
from ipt2xdp.classifier import U16_MAX, U32_MAX, IntervalSet, Match
from ipt2xdp.ctstate import CtAtom, ct_cases, ct_outcomes, ct_test
from ipt2xdp.hostinfo import HostContext
from ipt2xdp.hostmatch import addrtype_alternatives, interface_match, nf_interface_names
from ipt2xdp.plainterm import ALL_PROTOCOLS, TCP, UDP, address_interval, plain_term, port_interval, ports_interval
from ipt2xdp.terms import Disjunct, SetUse, Term, conjoin, narrowed_fields

PORT_PROTOCOLS = frozenset({6, 17})  # the only protocols whose ports the XDP program parses
ICMP_MAX = 0xFFFF  # type*256+code


def _and3(a: str, b: str) -> str:
    if "nomatch" in (a, b):
        return "nomatch"
    return "unknown" if "unknown" in (a, b) else "match"


def _flags(flags: irmatches.TcpFlags) -> FrozenSet[int]:
    mask, comp = flags.mask_bits, flags.comp_bits
    return frozenset(v for v in range(64) if ((v & mask) == comp) != flags.negated)


def _icmp(match: irmatches.IcmpMatch) -> IntervalSet:
    if match.type is None:
        interval = IntervalSet.range(0, ICMP_MAX)
    else:
        interval = IntervalSet.range(match.type * 256 + match.code[0], match.type * 256 + match.code[1])
    return interval.complement(ICMP_MAX) if match.negated else interval


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
        narrowed = narrowed_fields(self.fields, constraint)
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
        values = address_interval(address)
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
                builder.narrow("sport", port_interval(match.sport))
            if match.dport is not None:
                builder.narrow("dport", port_interval(match.dport))
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
            ports = ports_interval(match.ranges, match.negated)
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
    plain = plain_term(rule)
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
