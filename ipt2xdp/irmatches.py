# SPDX-License-Identifier: GPL-2.0-only
"""The matches of an ir.Rule (its `-m` extensions, ir.Rule.matches) and the values they hold:
frozen dataclasses, no behaviour.

Separate from ir.py (the rule, chain and table containers and the rule header fields) because the
matches are most of the IR and grow as extensions are modelled; irtargets.py holds the targets.

Port ranges, code ranges, lengths: `Range = tuple[int, int]`, inclusive (lo, hi), lo <= hi.

Matches (each has a class attribute `name`, the `-m` name):
    TcpMatch(sport: PortMatch|None, dport: PortMatch|None, flags: TcpFlags|None,
             option: TcpOption|None)                                     -m tcp
    UdpMatch(sport: PortMatch|None, dport: PortMatch|None)               -m udp
        PortMatch(range: Range, negated)
        TcpFlags(mask: frozenset[str], comp: frozenset[str], negated)  flag names from TCP_FLAGS;
            `--syn` is mask {FIN,SYN,RST,ACK} comp {SYN}. `.mask_bits`/`.comp_bits` give ints
            (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20).
        TcpOption(number: int, negated)
    MultiportMatch(kind: "sports"|"dports"|"ports", ranges: tuple[Range, ...], negated)
        "ports" matches if the source OR the destination port is in the list.
    IcmpMatch(type: int|None, code: Range, negated)   type None = "any" (every type, codes 0..255)
    ConntrackMatch(states: StateSet|None, options: tuple[Option, ...])  other ct options generic
    StateMatch(states: StateSet)
        StateSet(states: frozenset[str], negated); names from CT_STATES
        (INVALID NEW RELATED ESTABLISHED UNTRACKED SNAT DNAT).
    SetMatch(set_name, directions: tuple["src"|"dst", ...], negated, options: tuple[Option, ...])
    IprangeMatch(src: AddressRange|None, dst: AddressRange|None)
        AddressRange(lo: IPv4Address, hi: IPv4Address, negated)
    LengthMatch(range: Range, negated)                    total IP length
    TtlMatch(op: "eq"|"lt"|"gt", value: int, negated)     only "eq" can be negated (ttl != value)
    AddrtypeMatch(src: AddrTypes|None, dst: AddrTypes|None, limit_iface_in: bool, limit_iface_out: bool)
        AddrTypes(types: frozenset[str], negated)        names from ADDR_TYPES
    CommentMatch(text)
    MacMatch(address: str "aa:bb:cc:dd:ee:ff" lower case, negated)
    LimitMatch(avg: int, burst: int)   avg in kernel units (1/10000 s per packet);
        `.rate_per_second` as a float; printed back as iptables does (e.g. "3/min").
    RecentMatch(mode: "set"|"rcheck"|"update"|"remove", negated, seconds: int|None, reap: bool,
                hitcount: int|None, rttl: bool, set_name: str, mask: IPv4Address,
                side: "rsource"|"rdest")
    MarkMatch(value: int, mask: int, negated)             mask 0xffffffff when not given
    GenericMatch(name, options: tuple[Option, ...])   any other match; `GenericMatch.name` is the
        instance field (the `-m` name), every option and argument kept in order.
        Option(name: "--opt", negated: bool, args: tuple[str, ...]) with args unquoted.

Every match class is frozen, hashable and compared by value. Names listed here are stable; new
optional fields may be added with defaults at the end of a class.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Optional, Tuple, Union

Range = Tuple[int, int]

# Canonical (kernel bit) orders, used by the printer.
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG")
TCP_FLAG_BITS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20}
CT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
ADDR_TYPES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
              "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")


@dataclass(frozen=True)
class Option:
    """One option of a match or target kept generically: `! --name arg1 arg2`."""

    name: str
    negated: bool = False
    args: Tuple[str, ...] = ()


@dataclass(frozen=True)
class PortMatch:
    range: Range
    negated: bool = False


@dataclass(frozen=True)
class TcpFlags:
    mask: frozenset
    comp: frozenset
    negated: bool = False

    @property
    def mask_bits(self) -> int:
        return sum(TCP_FLAG_BITS[f] for f in self.mask)

    @property
    def comp_bits(self) -> int:
        return sum(TCP_FLAG_BITS[f] for f in self.comp)


@dataclass(frozen=True)
class TcpOption:
    number: int
    negated: bool = False


@dataclass(frozen=True)
class TcpMatch:
    sport: Optional[PortMatch] = None
    dport: Optional[PortMatch] = None
    flags: Optional[TcpFlags] = None
    option: Optional[TcpOption] = None
    name = "tcp"


@dataclass(frozen=True)
class UdpMatch:
    sport: Optional[PortMatch] = None
    dport: Optional[PortMatch] = None
    name = "udp"


@dataclass(frozen=True)
class MultiportMatch:
    kind: str  # "sports" | "dports" | "ports"
    ranges: Tuple[Range, ...]
    negated: bool = False
    name = "multiport"


@dataclass(frozen=True)
class IcmpMatch:
    type: Optional[int]  # None = any
    code: Range = (0, 255)
    negated: bool = False
    name = "icmp"


@dataclass(frozen=True)
class StateSet:
    states: frozenset
    negated: bool = False


@dataclass(frozen=True)
class ConntrackMatch:
    states: Optional[StateSet] = None
    options: Tuple[Option, ...] = ()
    name = "conntrack"


@dataclass(frozen=True)
class StateMatch:
    states: StateSet
    name = "state"


@dataclass(frozen=True)
class SetMatch:
    set_name: str
    directions: Tuple[str, ...]
    negated: bool = False
    options: Tuple[Option, ...] = ()
    name = "set"


@dataclass(frozen=True)
class AddressRange:
    lo: IPv4Address
    hi: IPv4Address
    negated: bool = False


@dataclass(frozen=True)
class IprangeMatch:
    src: Optional[AddressRange] = None
    dst: Optional[AddressRange] = None
    name = "iprange"


@dataclass(frozen=True)
class LengthMatch:
    range: Range
    negated: bool = False
    name = "length"


@dataclass(frozen=True)
class TtlMatch:
    op: str  # "eq" | "lt" | "gt"
    value: int
    negated: bool = False
    name = "ttl"


@dataclass(frozen=True)
class AddrTypes:
    types: frozenset
    negated: bool = False


@dataclass(frozen=True)
class AddrtypeMatch:
    src: Optional[AddrTypes] = None
    dst: Optional[AddrTypes] = None
    limit_iface_in: bool = False
    limit_iface_out: bool = False
    name = "addrtype"


@dataclass(frozen=True)
class CommentMatch:
    text: str
    name = "comment"


@dataclass(frozen=True)
class MacMatch:
    address: str
    negated: bool = False
    name = "mac"


LIMIT_SCALE = 10000


@dataclass(frozen=True)
class LimitMatch:
    avg: int = LIMIT_SCALE * 3600 // 3  # iptables' default, 3/hour
    burst: int = 5
    name = "limit"

    @property
    def rate_per_second(self) -> float:
        return LIMIT_SCALE / self.avg


@dataclass(frozen=True)
class RecentMatch:
    mode: str  # "set" | "rcheck" | "update" | "remove"
    negated: bool = False
    seconds: Optional[int] = None
    reap: bool = False
    hitcount: Optional[int] = None
    rttl: bool = False
    set_name: str = "DEFAULT"
    mask: IPv4Address = IPv4Address("255.255.255.255")
    side: str = "rsource"
    name = "recent"


@dataclass(frozen=True)
class MarkMatch:
    value: int
    mask: int = 0xFFFFFFFF
    negated: bool = False
    name = "mark"


@dataclass(frozen=True)
class GenericMatch:
    name: str
    options: Tuple[Option, ...] = ()


Match = Union[TcpMatch, UdpMatch, MultiportMatch, IcmpMatch, ConntrackMatch, StateMatch, SetMatch,
              IprangeMatch, LengthMatch, TtlMatch, AddrtypeMatch, CommentMatch, MacMatch, LimitMatch,
              RecentMatch, MarkMatch, GenericMatch]
