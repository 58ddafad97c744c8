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

from ipt2xdp import ir
from ipt2xdp.classifier import ALL_CT, U16_MAX, U32_MAX, CtClass, IntervalSet, Match
from ipt2xdp.hostinfo import HostContext

ALL_PROTOCOLS = frozenset(range(256))
PORT_PROTOCOLS = frozenset({6, 17})  # the only protocols whose ports the XDP program parses
ICMP_MAX = 0xFFFF  # type*256+code


@dataclass(frozen=True)
class Disjunct:
    match: Match
    unknown: Optional[str] = None  # reason code when XDP cannot be sure; None when certain


@dataclass(frozen=True)
class Term:
    disjuncts: Tuple[Disjunct, ...]
    unknown_codes: Tuple[str, ...] = ()  # every reason a disjunct is unknown, for the report
    never: str = ""  # why no disjunct is left (the rule never matches a packet XDP judges)


# Matches XDP cannot evaluate (yet), with the sentence the dry-run report shows.
UNMODELLED_WHY = {
    "conntrack": "connection state is only known to conntrack",
    "state": "connection state is only known to conntrack",
    "set": "ipset membership is not mirrored into XDP",
    "length": "packet length is not a classifier field yet",
    "ttl": "TTL is not a classifier field yet",
    "addrtype": "address types are not modelled yet",
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

# --- connection state ------------------------------------------------------------------------------
# What bpf_xdp_ct_lookup's class says about the state xt_conntrack/xt_state would see at
# filter/INPUT. A state match tests "statebits & mask", statebits being one base state plus, with
# -m conntrack, SNAT/DNAT when the connection is NATed.
BASE_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED")


def ct_possible_states(cls: CtClass, host: HostContext, with_nat: bool) -> List[FrozenSet[str]]:
    """Every set of state bits a packet of this class may carry at filter/INPUT.

    NONE (TCP/UDP, no entry): conntrack creates one (NEW) or refuses the packet (INVALID: bad
    checksum when nf_conntrack_checksum is on, invalid TCP flags, a non-SYN TCP packet when
    nf_conntrack_tcp_loose is 0). XDP does not check L4 checksums, so both stay possible. An
    expectation (a helper's) would make it RELATED, and raw NOTRACK UNTRACKED: possible only when
    host.ct_external_helpers (the planner sets it when raw assigns helpers or skips tracking). No NAT
    yet: a DNAT in nat/PREROUTING is deferred by the planner's guards, SNAT comes after INPUT.
    FOUND and NOT_LOOKED_UP: anything (a found flow may be ESTABLISHED, RELATED, still NEW (a
    retransmitted SYN) or INVALID (out of window); ICMP errors may be RELATED).
    """
    if cls == CtClass.NONE:
        bases = {"NEW", "INVALID"}
        if host.ct_external_helpers:
            bases |= {"RELATED", "UNTRACKED"}
        return [frozenset({b}) for b in sorted(bases)]
    nat = [frozenset(), frozenset({"SNAT"}), frozenset({"DNAT"}), frozenset({"SNAT", "DNAT"})] if with_nat \
        else [frozenset()]
    return [frozenset({b}) | n for b in BASE_STATES for n in nat]


def ct_outcomes(states: ir.StateSet, host: HostContext, with_nat: bool) -> Dict[CtClass, str]:
    """Per class: "match", "nomatch" or "unknown" for a state match."""
    out = {}
    for cls in CtClass:
        results = {bool(bits & states.states) != states.negated for bits in ct_possible_states(cls, host, with_nat)}
        out[cls] = "unknown" if len(results) > 1 else ("match" if results.pop() else "nomatch")
    return out


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
    interval = IntervalSet(((int(net.network_address), int(net.broadcast_address)),))
    return interval.complement(U32_MAX) if address.negated else interval


def _ports(ranges: Iterable[Tuple[int, int]], negated: bool) -> IntervalSet:
    interval = IntervalSet.of(ranges)
    return interval.complement(U16_MAX) if negated else interval


def _flags(flags: ir.TcpFlags) -> FrozenSet[int]:
    mask, comp = flags.mask_bits, flags.comp_bits
    return frozenset(v for v in range(64) if ((v & mask) == comp) != flags.negated)


def _icmp(match: ir.IcmpMatch) -> IntervalSet:
    if match.type is None:
        interval = IntervalSet.range(0, ICMP_MAX)
    else:
        interval = IntervalSet.range(match.type * 256 + match.code[0], match.type * 256 + match.code[1])
    return interval.complement(ICMP_MAX) if match.negated else interval


def conjoin(a: Match, b: Match) -> Optional[Match]:
    """The conjunction of two matches, or None when no packet satisfies both."""
    return _conjoin_fields(a, vars(b))


def _conjoin_fields(a: Match, fields: Dict[str, object]) -> Optional[Match]:
    """conjoin(a, Match(**fields)) without building the second Match (the planner's hot path)."""
    values = dict(vars(a))
    for name, value in values.items():
        if value is not None and not value and fields.get(name) is None:
            return None
    for name, value in fields.items():
        if value is None:
            continue
        current = values[name]
        if current is not None:
            value = current.intersection(value) if isinstance(current, IntervalSet) else current & value
        if not value:
            return None
        values[name] = value
    return Match(**values)


def nf_interface_names(host: HostContext) -> Tuple[Dict[int, str], FrozenSet[int]]:
    """For each attached device: the name netfilter's -i compares against, and the ambiguous ones.

    A bond slave's packets reach netfilter on the bond; a bridge port's on the bridge, unless
    br_netfilter sees them as bridged; a device under macvlan/ipvlan may hand packets to its upper
    device. The first is exact; the others are ambiguous, so -i rules defer for those devices.
    """
    names, ambiguous = {}, set()
    for name in host.attached:
        device = host.device(name)
        if device is None:
            continue
        master = next((d for d in host.devices if d.ifindex == device.master), None)
        names[device.ifindex] = master.name if master is not None and master.kind == "bond" else device.name
        if master is not None and master.kind != "bond":
            ambiguous.add(device.ifindex)
        if any(d.link == device.ifindex and d.kind in ("macvlan", "macvtap", "ipvlan", "ipvtap")
               for d in host.devices):
            ambiguous.add(device.ifindex)
    return names, frozenset(ambiguous)


def _interface_match(iface: ir.Interface, names: Dict[int, str]) -> FrozenSet[int]:
    def hit(name: str) -> bool:
        return name.startswith(iface.prefix) if iface.wildcard else name == iface.name

    return frozenset(ifindex for ifindex, name in names.items() if hit(name) != iface.negated)


class _Builder:
    """Accumulates one rule's constraints; a field XDP cannot decide makes the rule unknown."""

    def __init__(self):
        self.match = Match()
        self.unknown: List[str] = []
        self.never = ""
        self.either_port: Optional[IntervalSet] = None  # `-m multiport --ports P`: sport or dport in P
        self.iif_split: Optional[Tuple[FrozenSet[int], FrozenSet[int]]] = None  # (exact, ambiguous)
        self.ct: Optional[Dict[CtClass, str]] = None  # state matches: outcome per conntrack class

    def add_ct(self, outcomes: Dict[CtClass, str]) -> None:
        self.ct = outcomes if self.ct is None else {c: _and3(self.ct[c], outcomes[c]) for c in CtClass}

    def add(self, **constraint) -> None:
        combined = _conjoin_fields(self.match, constraint)
        if combined is None:
            self.never = self.never or ("iface.not-attached" if "iif" in constraint else "never.empty")
        else:
            self.match = combined

    def mark_unknown(self, code: str) -> None:
        if code not in self.unknown:
            self.unknown.append(code)


def _header(builder: _Builder, rule: ir.Rule, names: Dict[int, str], ambiguous: FrozenSet[int]) -> None:
    for field, address in (("src", rule.source), ("dst", rule.destination)):
        values = _addresses(address)
        if values is not None:
            builder.add(**{field: values})
    if rule.protocol is not None:
        numbers = frozenset({rule.protocol.number}) if rule.protocol.number else ALL_PROTOCOLS
        builder.add(proto=ALL_PROTOCOLS - numbers if rule.protocol.negated else numbers)
    if rule.in_interface is not None:
        exact = _interface_match(rule.in_interface, {i: n for i, n in names.items() if i not in ambiguous})
        if ambiguous:
            # Packets on ambiguous devices: the interface test is unknown for them.
            builder.iif_split = (exact, ambiguous)
        else:
            builder.add(iif=exact)
    if rule.out_interface is not None:
        builder.mark_unknown("match.out-interface")
    if rule.fragment is True:
        builder.never = "fragment"  # XDP passes every fragment before classifying; `-f` never matches


def _port_constraints(builder: _Builder, rule: ir.Rule) -> None:
    protocols = builder.match.proto
    if protocols is None or not protocols <= PORT_PROTOCOLS:
        builder.mark_unknown("match.port-protocol")


def _matches(builder: _Builder, rule: ir.Rule, host: HostContext) -> None:
    for match in rule.matches:
        if isinstance(match, (ir.TcpMatch, ir.UdpMatch)):
            _port_constraints(builder, rule)
            if match.sport is not None:
                builder.add(sport=_ports([match.sport.range], match.sport.negated))
            if match.dport is not None:
                builder.add(dport=_ports([match.dport.range], match.dport.negated))
            if isinstance(match, ir.TcpMatch):
                builder.add(proto=frozenset({6}))
                if match.flags is not None:
                    builder.add(tcp_flags=_flags(match.flags))
                if match.option is not None:
                    builder.mark_unknown("match.tcp-option")
            else:
                builder.add(proto=frozenset({17}))
        elif isinstance(match, ir.MultiportMatch):
            _port_constraints(builder, rule)
            ports = _ports(match.ranges, match.negated)
            if match.kind == "sports":
                builder.add(sport=ports)
            elif match.kind == "dports":
                builder.add(dport=ports)
            elif match.negated:  # neither port in the list
                builder.add(sport=ports, dport=ports)
            else:
                builder.either_port = ports
        elif isinstance(match, ir.IcmpMatch):
            builder.add(proto=frozenset({1}), icmp=_icmp(match))
        elif isinstance(match, ir.IprangeMatch):
            for field, span in (("src", match.src), ("dst", match.dst)):
                if span is not None:
                    values = IntervalSet.range(int(span.lo), int(span.hi))
                    builder.add(**{field: values.complement(U32_MAX) if span.negated else values})
        elif isinstance(match, ir.CommentMatch):
            continue
        elif isinstance(match, ir.StateMatch):
            builder.add_ct(ct_outcomes(match.states, host, with_nat=False))
        elif isinstance(match, ir.ConntrackMatch) and match.states is not None and not match.options:
            builder.add_ct(ct_outcomes(match.states, host, with_nat=True))
        else:
            builder.mark_unknown(f"match.{match.name}")


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
    names, ambiguous = interfaces if interfaces is not None else nf_interface_names(host)
    builder = _Builder()
    _header(builder, rule, names, ambiguous)
    _matches(builder, rule, host)
    if builder.never:
        return Term((), never=builder.never)
    unknown = ",".join(builder.unknown) or None
    bases = [builder.match] if builder.either_port is None else _either_port(builder.match, builder.either_port)
    disjuncts: List[Disjunct] = []
    for base in bases:
        if builder.iif_split is None:
            disjuncts.append(Disjunct(base, unknown))
            continue
        exact, unsure = builder.iif_split
        for iif, reason in ((exact, unknown), (unsure, "match.interface-ambiguous")):
            narrowed = conjoin(base, Match(iif=iif)) if iif else None
            if narrowed is not None:
                disjuncts.append(Disjunct(narrowed, reason))
    never = "iface.not-attached"
    if builder.ct is not None and disjuncts:
        disjuncts = _split_ct(disjuncts, builder.ct)
        never = "never.empty"
    codes = tuple(dict.fromkeys(c for d in disjuncts if d.unknown for c in d.unknown.split(",")))
    return Term(tuple(disjuncts), codes, "" if disjuncts else never)


def _split_ct(disjuncts: List[Disjunct], outcomes: Dict[CtClass, str]) -> List[Disjunct]:
    """Each disjunct once for the classes where the state match surely matches (as it was) and
    once, unknown, for the classes where it may; classes where it cannot match are left out."""
    sure = frozenset(c for c, o in outcomes.items() if o == "match")
    unsure = frozenset(c for c, o in outcomes.items() if o == "unknown")
    out = []
    for d in disjuncts:
        if sure:
            m = conjoin(d.match, Match(ct=sure if sure != ALL_CT else None))
            if m is not None:
                out.append(Disjunct(m, d.unknown))
        if unsure:
            m = conjoin(d.match, Match(ct=unsure if unsure != ALL_CT else None))
            if m is not None:
                reason = ",".join(filter(None, (d.unknown, "match.ctstate-unsure")))
                out.append(Disjunct(m, reason))
    return out
