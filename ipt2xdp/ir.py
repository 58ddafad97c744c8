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

The matches (`-m` extensions, ir.Rule.matches) are in ipt2xdp.irmatches, the targets (-j/-g,
ir.Rule.target) in ipt2xdp.irtargets; this module holds the containers and the rule header fields.

Every class is frozen, hashable and compared by value. Names listed here are stable; new optional
fields may be added with defaults at the end of a class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Optional, Tuple

from ipt2xdp.errors import SourceSpan
from ipt2xdp.irmatches import Match
from ipt2xdp.irtargets import Target

BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

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
