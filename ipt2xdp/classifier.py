# SPDX-License-Identifier: GPL-2.0-only
"""The classifier contract: what the planner hands to compile.compile().

A classifier is a list of ClassifierRule in first-match order plus a default action (the chain
policy outcome). Each rule is a conjunction of per-field constraints (None = any value). A packet is
judged by the first rule whose every constrained field holds; its action decides:

    DROP      XDP_DROP (netfilter would drop it; proven by the planner)
    ACCEPT    XDP_PASS (netfilter would accept it)
    DEFER     XDP_PASS (unsure: netfilter decides)
    CONTINUE  resume matching at classifier rule *index* k > the current index (RETURN from an
              inlined user chain); k == len(rules) means "fall through to the default action".

Field domains (all host-order integers):
    src, dst     IntervalSet over 0..2**32-1 (negation and CIDR lists are interval sets)
    proto        frozenset of IP protocol numbers
    sport, dport IntervalSet over 0..65535; a packet without ports (not TCP/UDP) never matches a
                 rule that constrains them
    iif          frozenset of ifindexes (ctx->ingress_ifindex)
    icmp         IntervalSet over type*256+code; non-ICMP packets never match when constrained
    tcp_flags    frozenset of 6-bit flag bytes (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32) that match;
                 non-TCP packets never match when constrained
    ct           frozenset of CtClass values: what bpf_xdp_ct_lookup said of the packet. NONE: a TCP
                 or UDP packet without a conntrack entry (NONE_VERIFIED when XDP verified its L4
                 length and checksum as tcp_error/udp_error would, NONE when it could not);
                 FOUND: an entry exists (either direction);
                 NOT_LOOKED_UP: every other protocol (ICMP included) or a lookup error. Every
                 packet has a class, so unlike ports this field is never absent.

`evaluate()` is the reference semantics: the BPF program must give the same verdict and rule for
every packet it does not pass for a structural reason (non-IPv4, fragment, malformed).
"""
from __future__ import annotations

import enum
import ipaddress
import operator
from dataclasses import dataclass, fields as dataclass_fields
from typing import Dict, FrozenSet, Iterable, Iterator, Optional, Sequence, Tuple

U32_MAX = 0xFFFFFFFF
U16_MAX = 0xFFFF


class Field(enum.IntEnum):
    """Classifier fields; the value is the bit in the program's per-generation field mask.

    9..10 are reserved so the BPF ABI already has room for them; nothing produces them yet.
    """

    SRC = 0
    DST = 1
    PROTO = 2
    SPORT = 3
    DPORT = 4
    IIF = 5
    ICMP = 6
    TCP_FLAGS = 7
    CT_STATE = 8   # connection class from bpf_xdp_ct_lookup (CtClass); Match.ct
    PKT_LEN = 9    # reserved: IP total length
    TTL = 10       # reserved


@dataclass(frozen=True)
class IntervalSet:
    """A set of integers as sorted, disjoint, non-adjacent inclusive intervals."""

    intervals: Tuple[Tuple[int, int], ...] = ()

    @staticmethod
    def of(ranges: Iterable[Tuple[int, int]]) -> "IntervalSet":
        merged = []
        for lo, hi in sorted((int(a), int(b)) for a, b in ranges):
            if lo > hi:
                raise ValueError(f"empty interval {lo}..{hi}")
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return IntervalSet(tuple((lo, hi) for lo, hi in merged))

    @staticmethod
    def single(value: int) -> "IntervalSet":
        return IntervalSet(((int(value), int(value)),))

    @staticmethod
    def range(lo: int, hi: int) -> "IntervalSet":
        return IntervalSet.of([(lo, hi)])

    @staticmethod
    def cidr(text: str) -> "IntervalSet":
        """'10.0.0.0/8' -> [167772160, 184549375] (host bits are ignored, as iptables does)."""
        net = ipaddress.IPv4Network(text, strict=False)
        return IntervalSet(((int(net.network_address), int(net.broadcast_address)),))

    @staticmethod
    def cidrs(texts: Iterable[str]) -> "IntervalSet":
        return IntervalSet.of(i for t in texts for i in IntervalSet.cidr(t).intervals)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return iter(self.intervals)

    def __bool__(self) -> bool:
        return bool(self.intervals)

    def __contains__(self, value: int) -> bool:
        import bisect

        i = bisect.bisect_right(self.intervals, (value, float("inf"))) - 1
        return i >= 0 and self.intervals[i][0] <= value <= self.intervals[i][1]

    def union(self, other: "IntervalSet") -> "IntervalSet":
        return IntervalSet.of(self.intervals + other.intervals)

    def intersection(self, other: "IntervalSet") -> "IntervalSet":
        out, i, j = [], 0, 0
        a, b = self.intervals, other.intervals
        while i < len(a) and j < len(b):
            lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return IntervalSet(tuple(out))

    def complement(self, universe_max: int) -> "IntervalSet":
        """Complement within 0..universe_max (U32_MAX for addresses, U16_MAX for ports)."""
        out, next_lo = [], 0
        for lo, hi in self.intervals:
            if lo > next_lo:
                out.append((next_lo, lo - 1))
            next_lo = hi + 1
        if next_lo <= universe_max:
            out.append((next_lo, universe_max))
        return IntervalSet(tuple(out))

    def size(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.intervals)

    def as_prefix(self) -> Optional[Tuple[int, int]]:
        """(network, prefix length) if this set is exactly one CIDR block, else None."""
        if len(self.intervals) != 1:
            return None
        lo, hi = self.intervals[0]
        span = hi - lo + 1
        if span & (span - 1) or lo % span:
            return None
        return lo, 32 - (span.bit_length() - 1)

    def __repr__(self) -> str:
        return "IntervalSet(" + ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in self) + ")"


class CtClass(enum.IntEnum):
    """Conntrack classes; the values are the BPF ABI (IPT2XDP_CT_* in bpf/ipt2xdp_kern_user.h)."""

    NONE = 0           # TCP/UDP without an entry; XDP could not verify its length and checksum
    FOUND = 1
    NOT_LOOKED_UP = 2
    NONE_VERIFIED = 3  # TCP/UDP without an entry whose length and checksum pass conntrack's checks


ALL_CT = frozenset(CtClass)


@dataclass(frozen=True)
class Match:
    """Per-field constraints; None means any value."""

    src: Optional[IntervalSet] = None
    dst: Optional[IntervalSet] = None
    proto: Optional[FrozenSet[int]] = None
    sport: Optional[IntervalSet] = None
    dport: Optional[IntervalSet] = None
    iif: Optional[FrozenSet[int]] = None
    icmp: Optional[IntervalSet] = None
    tcp_flags: Optional[FrozenSet[int]] = None
    ct: Optional[FrozenSet[int]] = None

    def constrained(self) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclass_fields(self) if getattr(self, f.name) is not None)

    @staticmethod
    def from_fields(values: Dict[str, object]) -> "Match":
        """Match(**values) for a dict of *every* field, such as an updated copy of vars(match):
        the planner builds one per classifier rule, and this skips the frozen __init__'s
        per-field setattr."""
        match = object.__new__(Match)
        match.__dict__.update(values)
        return match


class Verdict(enum.IntEnum):
    """Action kinds; the values are the BPF ABI (IPT2XDP_ACT_* in bpf/ipt2xdp_kern_user.h)."""

    DROP = 1
    ACCEPT = 2
    DEFER = 3
    CONTINUE = 4


# Action.guard bits (IPT2XDP_GUARD_* in bpf/ipt2xdp_setguard.h): a DROP proven from a copy of ipset
# members holds only while the sets have not lost (REMOVALS) or gained (ADDITIONS) members.
GUARD_REMOVALS = 1
GUARD_ADDITIONS = 2


@dataclass(frozen=True)
class Action:
    verdict: Verdict
    target: int = 0  # CONTINUE only: the classifier rule index to resume at
    guard: int = 0   # DROP only: GUARD_* bits; XDP passes instead once those set changes happened

    def __repr__(self) -> str:
        if self.verdict == Verdict.CONTINUE:
            return f"CONTINUE({self.target})"
        return self.verdict.name + (f"[set-guard {self.guard}]" if self.guard else "")


DROP = Action(Verdict.DROP)
ACCEPT = Action(Verdict.ACCEPT)
DEFER = Action(Verdict.DEFER)


def CONTINUE(index: int) -> Action:  # noqa: N802 - reads like the other action constants
    return Action(Verdict.CONTINUE, int(index))


@dataclass(frozen=True)
class ClassifierRule:
    match: Match
    action: Action
    rule_id: int  # index of this rule's counters; the planner maps it to an iptables rule position


# --- reference semantics ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PacketKey:
    """What the program extracts from an IPv4 packet; None where the packet has no such field."""

    src: int
    dst: int
    proto: int
    sport: Optional[int] = None
    dport: Optional[int] = None
    iif: int = 0
    icmp: Optional[int] = None       # type*256+code
    tcp_flags: Optional[int] = None  # low 6 bits of the TCP flags byte
    ct: int = CtClass.NOT_LOOKED_UP  # the packet's conntrack class (CtClass)


FIELD_NAMES = ("src", "dst", "proto", "sport", "dport", "iif", "icmp", "tcp_flags", "ct")  # index = Field


def _holds(constraint, value) -> bool:
    if constraint is None:
        return True
    if value is None:
        return False
    return value in constraint


def matches(match: Match, packet: PacketKey) -> bool:
    return all(_holds(getattr(match, name), getattr(packet, name))
               for name in FIELD_NAMES)


def evaluate(rules: Sequence[ClassifierRule], default: Action, packet: PacketKey) -> Tuple[Verdict, Optional[int]]:
    """First-match evaluation: (final verdict, rule_id that decided it, None for the default)."""
    index = 0
    while index < len(rules):
        rule = rules[index]
        if matches(rule.match, packet):
            if rule.action.verdict == Verdict.CONTINUE:
                if rule.action.target <= index:
                    raise ValueError(f"rule {index}: CONTINUE({rule.action.target}) must jump forward")
                index = rule.action.target
                continue
            return rule.action.verdict, rule.rule_id
        index += 1
    return default.verdict, None


# The last classifier that passed validate()'s common case, a copy (its rules keep their ids while
# it is held): a re-plan's classifier starts with the very rules of the last one (planprefix).
_VALIDATED: list = [[]]


def validate(rules: Sequence[ClassifierRule], default: Action) -> None:
    """Raise ValueError for a classifier compile() cannot represent faithfully."""
    from ipt2xdp.identitymemo import other_positions

    if default.verdict == Verdict.CONTINUE:
        raise ValueError("the default action cannot be CONTINUE")
    # the common case, nothing wrong, in C-level passes (compile validates 10k-rule classifiers
    # on every re-plan), over the rules that are not the very ones at the same place in the last
    # classifier that passed (a re-plan makes its guards anew and takes the rest over: reading a
    # rule's fields from memory no pass touched since is about as slow as a Python loop); the
    # rules are walked one by one only to name the first one wrong
    others = other_positions(_VALIDATED[0], rules)
    fresh = [rules[i] for i in others] if len(others) < len(rules) // 4 else rules
    ids = list(map(operator.attrgetter("rule_id"), fresh))
    verdicts = list(map(operator.attrgetter("action.verdict"), fresh))
    if (not ids or min(ids) >= 0) and Verdict.CONTINUE not in verdicts:
        _VALIDATED[0] = list(rules)
        return
    for index, rule in enumerate(rules):
        if rule.rule_id < 0:
            raise ValueError(f"rule {index}: negative rule_id")
        if rule.action.verdict == Verdict.CONTINUE and not index < rule.action.target <= len(rules):
            raise ValueError(f"rule {index}: CONTINUE({rule.action.target}) must jump forward, at most to {len(rules)}")
