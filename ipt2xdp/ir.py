# SPDX-License-Identifier: GPL-2.0-only
"""The intermediate representation of an iptables (IPv4) ruleset: frozen dataclasses, no behaviour.

Produced by `ipt2xdp.parse.parse()` (and the live readers in `ipt2xdp.live`), printed back by
`ipt2xdp.render`, consumed by the planner. Everything is immutable and hashable; compare two
rulesets with `Ruleset.without_positions()` to ignore counters and source spans.

Contract
--------
Ruleset(tables: tuple[Table, ...])                 tables in file order; `ruleset.table("filter")`
Table(name, chains: tuple[Chain, ...])
    name is one of filter, nat, mangle, raw, security. `table.chain("INPUT")` looks one up.
    chains: all builtin chains of the table first (kernel order; undeclared ones get ACCEPT),
    then user chains sorted by name (the order the kernel and iptables-save use).
    `table.rules` is every rule of the table, chain after chain.
Chain(name, policy: str | None, counters: Counters, rules: tuple[Rule, ...])
    policy is "ACCEPT"/"DROP" for builtin chains, None for user chains (`chain.builtin`).
    rules in kernel order (`-I` lines already applied).
Counters(packets: int, bytes: int)                 [0:0] when absent.
Rule(chain, source, destination, protocol, in_interface, out_interface, fragment,
     matches, target, counters, span)
    source/destination: Address | None. None means "any" (0.0.0.0/0 not negated).
        Address(network: IPv4Network, negated: bool); host bits are already cleared,
        dotted masks converted. `-s a,b` has already been expanded into one Rule per address
        (the source loop outside, destination inside), exactly as iptables does.
    protocol: Protocol | None. None means all protocols. Protocol(number: int 1..255, negated).
        `protocol.name` gives "tcp"/"udp"/"icmp"/... or the number as a string.
    in_interface/out_interface: Interface | None. Interface(name, negated); a name ending in
        "+" is a prefix wildcard (`iface.wildcard`, `iface.prefix`). "+" alone is folded to None.
    fragment: bool | None. None = not given, True = `-f` (second and later fragments only),
        False = `! -f` (unfragmented packets and first fragments).
    matches: tuple[Match, ...] in rule order (an implicit `-p tcp --dport 22` becomes an explicit
        TcpMatch at the position of its first option, as iptables does).
    target: Target | None (None: a rule with no -j, which only counts).
    counters: Counters from a `[p:b]` prefix (zero when absent).
    span: SourceSpan of the rule line (errors.SourceSpan), or None for live rules read without text.

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

Targets (each has `name`, the `-j` word):
    Accept(), Drop(), Return()        name "ACCEPT" / "DROP" / "RETURN"
    Jump(chain)                       -j USERCHAIN          (name == chain)
    Goto(chain)                       -g USERCHAIN          (name == chain, printed with -g)
    Reject(reject_with: str)          always the full name, default "icmp-port-unreachable"
    Log(prefix: str, level: int, flags: frozenset[str])  level 0..7 (default 4); flags from
        LOG_FLAGS (tcp-sequence tcp-options ip-options uid macdecode)
    Nflog(group: int, prefix: str, size: int|None, range: int|None, threshold: int)
    GenericTarget(name, options: tuple[Option, ...])  any other target (DNAT, MARK, CT, ...)

Every match and target class is frozen, hashable and compared by value. Names listed here are
stable; new optional fields may be added with defaults at the end of a class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Optional, Tuple, Union

from ipt2xdp.errors import SourceSpan

Range = Tuple[int, int]

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

# Canonical (kernel bit) orders, used by the printer.
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG")
TCP_FLAG_BITS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20}
CT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
ADDR_TYPES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
              "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")
LOG_FLAGS = ("tcp-sequence", "tcp-options", "ip-options", "uid", "macdecode")
PROTOCOL_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 50: "esp",
                  51: "ah", 58: "ipv6-icmp", 132: "sctp", 136: "udplite", 4: "ipencap", 41: "ipv6",
                  89: "ospf", 103: "pim", 112: "vrrp", 115: "l2tp", 94: "ipip", 108: "ipcomp",
                  0: "all"}


@dataclass(frozen=True)
class Counters:
    packets: int = 0
    bytes: int = 0


ZERO = Counters()


# ----------------------------------------------------------------------------- rule header fields

@dataclass(frozen=True)
class Address:
    network: IPv4Network
    negated: bool = False


@dataclass(frozen=True)
class Protocol:
    number: int
    negated: bool = False

    @property
    def name(self) -> str:
        return PROTOCOL_NAMES.get(self.number, str(self.number))


@dataclass(frozen=True)
class Interface:
    name: str
    negated: bool = False

    @property
    def wildcard(self) -> bool:
        return self.name.endswith("+")

    @property
    def prefix(self) -> str:
        """The name without its trailing "+" (the whole name when not a wildcard)."""
        return self.name[:-1] if self.wildcard else self.name


# ----------------------------------------------------------------------------- matches

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


# ----------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Accept:
    name = "ACCEPT"


@dataclass(frozen=True)
class Drop:
    name = "DROP"


@dataclass(frozen=True)
class Return:
    name = "RETURN"


@dataclass(frozen=True)
class Jump:
    chain: str

    @property
    def name(self) -> str:
        return self.chain


@dataclass(frozen=True)
class Goto:
    chain: str

    @property
    def name(self) -> str:
        return self.chain


@dataclass(frozen=True)
class Reject:
    reject_with: str = "icmp-port-unreachable"
    name = "REJECT"


@dataclass(frozen=True)
class Log:
    prefix: str = ""
    level: int = 4
    flags: frozenset = frozenset()
    name = "LOG"


@dataclass(frozen=True)
class Nflog:
    group: int = 0
    prefix: str = ""
    size: Optional[int] = None
    range: Optional[int] = None
    threshold: int = 1
    name = "NFLOG"


@dataclass(frozen=True)
class GenericTarget:
    name: str
    options: Tuple[Option, ...] = ()


Target = Union[Accept, Drop, Return, Jump, Goto, Reject, Log, Nflog, GenericTarget]


# ----------------------------------------------------------------------------- structure

@dataclass(frozen=True)
class Rule:
    chain: str
    source: Optional[Address] = None
    destination: Optional[Address] = None
    protocol: Optional[Protocol] = None
    in_interface: Optional[Interface] = None
    out_interface: Optional[Interface] = None
    fragment: Optional[bool] = None
    matches: Tuple[Match, ...] = ()
    target: Optional[Target] = None
    counters: Counters = ZERO
    span: Optional[SourceSpan] = field(default=None, compare=False)

    def without_positions(self) -> "Rule":
        if self.span is None and (self.counters is ZERO or self.counters == ZERO):
            return self
        memo = self.__dict__.get(DERIVED)
        bare = memo.get("bare") if memo is not None else None
        if bare is None:
            fields = self.__dict__.copy()  # the derived values too: the copy has the same ones
            fields["counters"], fields["span"] = ZERO, None
            bare = object.__new__(Rule)
            object.__setattr__(bare, "__dict__", fields)
            if memo is not None:
                memo["bare"] = bare
        return bare


# Where a rule keeps the values derived from its fields other than span and counters (its rendered
# text, its position-free copy, its translation for a host object): an instance attribute outside
# the dataclass fields, which equality, hashing and dataclasses.fields() ignore. A long-lived
# planner gives its rules one (keep_derived); parse.ParseMemo's copies of a rule read again at
# another line share it, so each rule is derived once however often it is read. Every entry must
# be a function of the compared fields alone (a translation is stored with its host object).
DERIVED = "_derived"


def keep_derived(rule: Rule) -> dict:
    """The rule's derived values (see DERIVED), from now on kept with it."""
    memo = rule.__dict__.get(DERIVED)
    if memo is None:
        memo = rule.__dict__[DERIVED] = {}
    return memo


@dataclass(frozen=True)
class Chain:
    name: str
    policy: Optional[str] = None
    counters: Counters = ZERO
    rules: Tuple[Rule, ...] = ()

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass(frozen=True)
class Table:
    name: str
    chains: Tuple[Chain, ...] = ()

    def chain(self, name: str) -> Optional[Chain]:
        return next((c for c in self.chains if c.name == name), None)

    @property
    def rules(self) -> Tuple[Rule, ...]:
        return tuple(r for c in self.chains for r in c.rules)


@dataclass(frozen=True)
class Ruleset:
    tables: Tuple[Table, ...] = ()

    def table(self, name: str) -> Optional[Table]:
        return next((t for t in self.tables if t.name == name), None)

    def without_positions(self) -> "Ruleset":
        """The same ruleset with every counter zeroed and every span dropped (for comparisons)."""
        return Ruleset(tuple(
            Table(t.name, tuple(Chain(c.name, c.policy, ZERO, tuple([r.without_positions() for r in c.rules]))
                                for c in t.chains))
            for t in self.tables))
