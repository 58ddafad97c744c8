# SPDX-License-Identifier: GPL-2.0-only
"""What conntrack would say of a packet at filter/INPUT, from what XDP knows of it.

XDP knows the class bpf_xdp_ct_lookup gave the packet (classifier.CtClass), its protocol and its
TCP flags. For a packet without an entry that is enough to tell NEW from INVALID wherever the
kernel's rules allow (nf_conntrack_proto_tcp.c, nf_conntrack_proto_udp.c); a state match
(xt_state, xt_conntrack's --ctstate and --ctproto) is then MATCH, NO-MATCH or UNKNOWN per class
and kind of packet, and translate.py turns those outcomes into classifier constraints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

from ipt2xdp import irmatches, options
from ipt2xdp.classifier import ALL_CT, CtClass, Match
from ipt2xdp.hostinfo import HostContext

# --- connection state ------------------------------------------------------------------------------
# What bpf_xdp_ct_lookup's class (and the packet's protocol and TCP flags) says about the state
# xt_conntrack/xt_state would see at filter/INPUT. A state match tests "statebits & mask", statebits
# being one base state plus, with -m conntrack, SNAT/DNAT when the connection is NATed.
BASE_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED")
TRACKED_STATES = frozenset({"NEW", "RELATED", "ESTABLISHED"})  # the packet carries a conntrack entry
NAT_BITS = (frozenset(), frozenset({"SNAT"}), frozenset({"DNAT"}), frozenset({"SNAT", "DNAT"}))

# TCP flag bytes (the classifier's six low bits) by what conntrack does with a packet that has no
# entry (nf_conntrack_proto_tcp.c): tcp_error() masks PSH (and ECE/CWR, which XDP does not see)
# and rejects combinations outside tcp_valid_flags; tcp_new() then starts a connection on SYN
# (SYN|URG), picks one up mid-stream on ACK (ACK|URG) only when nf_conntrack_tcp_loose is set, and
# refuses every other valid combination (SYN|ACK, RST, RST|ACK, FIN|ACK...: sIV from sNO).
_PSH = 0x08
TCP_SYN_FLAGS = frozenset(v for v in range(64) if v & ~_PSH in (0x02, 0x22))
TCP_PICKUP_FLAGS = frozenset(v for v in range(64) if v & ~_PSH in (0x10, 0x30))
TCP_REFUSED_FLAGS = frozenset(range(64)) - TCP_SYN_FLAGS - TCP_PICKUP_FLAGS
NO_ENTRY = (CtClass.NONE, CtClass.NONE_VERIFIED)

# The parts of a conntrack class a state match is judged on: (kind, protocol, TCP flags).
_KINDS = {
    CtClass.NONE: (("udp", 17, None), ("tcp-syn", 6, TCP_SYN_FLAGS), ("tcp-pickup", 6, TCP_PICKUP_FLAGS),
                   ("tcp-refused", 6, TCP_REFUSED_FLAGS)),
    CtClass.FOUND: (("udp", 17, None), ("tcp", 6, None)),
    # ICMP errors carry the conntrack entry of the flow they report (RELATED, of its protocol)
    CtClass.NOT_LOOKED_UP: (("any", None, None),),
}
_KINDS[CtClass.NONE_VERIFIED] = _KINDS[CtClass.NONE]
CtAtom = Tuple[CtClass, str]


@dataclass(frozen=True)
class CtTest:
    """The modelled part of one -m state / -m conntrack match."""

    states: Optional[irmatches.StateSet]
    with_nat: bool                        # -m conntrack: SNAT/DNAT bits are part of the state
    proto: Optional[Tuple[int, bool]] = None  # --ctproto N (negated)

    def holds(self, bits: FrozenSet[str], protonum: Optional[int]) -> Optional[bool]:
        """conntrack_mt()/state_mt() for one state; None when it depends on what XDP cannot see."""
        if self.states is not None and bool(bits & self.states.states) == self.states.negated:
            return False
        if not bits & TRACKED_STATES:
            # no conntrack entry (INVALID, UNTRACKED): only --ctstate is tested, other options
            # make the match fail (`if (ct == NULL) return match_flags & XT_CONNTRACK_STATE`)
            return self.states is not None
        if self.proto is not None:
            if protonum is None:
                return None
            number, negated = self.proto
            return (protonum == number) != negated  # nf_ct_protonum(ct): the packet's own for TCP/UDP
        return True


def ct_base_states(cls: CtClass, kind: str, host: HostContext) -> FrozenSet[str]:
    """The base states a packet of this class and kind may have at filter/INPUT.

    No entry (NONE, NONE_VERIFIED): conntrack creates one (NEW) or refuses the packet (INVALID):
    tcp_error/udp_error reject bad lengths, bad checksums (when nf_conntrack_checksum is on) and
    invalid TCP flag combinations; tcp_new refuses all but SYN, and ACK unless tcp_loose.
    NONE_VERIFIED means XDP checked what those functions check of a packet's length and checksum
    (the TCP flags are the kind), so only the flags decide; for NONE the checksum may be bad
    (INVALID possible unless nf_conntrack_checksum is off; a UDP length may be bad regardless).
    An expectation (a helper's) would make it RELATED, and raw NOTRACK UNTRACKED: possible only
    when host.ct_external_helpers (the planner sets it when raw assigns helpers or skips tracking).
    FOUND and NOT_LOOKED_UP: anything (a found flow may be ESTABLISHED, RELATED, still NEW (a
    retransmitted SYN) or INVALID (out of window); ICMP errors may be RELATED).
    """
    if cls not in NO_ENTRY:
        return frozenset(BASE_STATES)
    if kind == "tcp-refused" or (kind == "tcp-pickup" and not host.ct_tcp_loose):
        bases = {"INVALID"}
    elif cls == CtClass.NONE_VERIFIED or (kind != "udp" and not host.ct_checksum):
        bases = {"NEW"}
    else:
        bases = {"NEW", "INVALID"}
    if host.ct_external_helpers:
        bases |= {"RELATED", "UNTRACKED"}
    return frozenset(bases)


def ct_possible_states(cls: CtClass, kind: str, host: HostContext, with_nat: bool) -> List[FrozenSet[str]]:
    """Every set of state bits a packet of this class and kind may carry at filter/INPUT. NAT
    bits come from the entry's status: a found flow's, or (with helpers) an expectation's NAT; a
    packet's own new entry is not NATed yet at INPUT (a DNAT in nat/PREROUTING is deferred by the
    planner's guards, SNAT comes after INPUT)."""
    out = []
    for base in sorted(ct_base_states(cls, kind, host)):
        nat_ok = with_nat and base in TRACKED_STATES and (cls not in NO_ENTRY or base == "RELATED")
        out += [frozenset({base}) | nat for nat in (NAT_BITS if nat_ok else NAT_BITS[:1])]
    return out


def ct_outcomes(test: CtTest, host: HostContext) -> Dict[CtAtom, str]:
    """Per (class, kind): "match", "nomatch" or "unknown" for a state match."""
    out = {}
    for cls in CtClass:
        for kind, protonum, _ in _KINDS[cls]:
            results = {test.holds(bits, protonum) for bits in ct_possible_states(cls, kind, host, test.with_nat)}
            out[(cls, kind)] = "unknown" if len(results) > 1 or None in results else \
                ("match" if results.pop() else "nomatch")
    return out


def ct_test(match) -> Optional[CtTest]:
    """The CtTest of a -m state/-m conntrack match, or None when an option is not modelled."""
    if isinstance(match, irmatches.StateMatch):
        return CtTest(match.states, with_nat=False)
    proto = None
    for option in match.options:
        number = options.protocol_number(option.args[0]) if option.name == "--ctproto" and option.args else None
        if number is None:
            return None
        proto = (number, option.negated)
    return CtTest(match.states, with_nat=True, proto=proto)


def ct_cases(outcomes: Dict[CtAtom, str]) -> List[Tuple[Match, str]]:
    """The outcomes as few disjoint classifier constraints: a class whose kinds agree is one case;
    otherwise UDP and the TCP flag sets of each outcome; equal constraints merge across classes."""
    merged: Dict[Tuple[str, Optional[FrozenSet[int]], Optional[FrozenSet[int]]], set] = {}
    for cls in CtClass:
        kinds = _KINDS[cls]
        results = {outcomes[(cls, kind)] for kind, _, _ in kinds}
        if len(results) == 1:
            parts = [(results.pop(), None, None)]
        else:
            parts, tcp = [], {}
            for kind, protonum, flags in kinds:
                result = outcomes[(cls, kind)]
                if protonum == 17:
                    parts.append((result, frozenset({17}), None))
                else:
                    tcp.setdefault(result, set()).update(flags if flags is not None else range(64))
            parts += [(r, frozenset({6}), None if len(f) == 64 else frozenset(f)) for r, f in tcp.items()]
        for part in parts:
            merged.setdefault(part, set()).add(cls)
    return [(Match(ct=frozenset(classes) if frozenset(classes) != ALL_CT else None, proto=proto, tcp_flags=flags),
             result) for (result, proto, flags), classes in merged.items()]
