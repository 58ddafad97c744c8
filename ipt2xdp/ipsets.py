# SPDX-License-Identifier: GPL-2.0-only
"""The ipsets a ruleset's `-m set --match-set` rules read, as values the planner can fold into XDP.

A set is *mirrored* when XDP can test membership exactly from a copy of its members: hash:ip
(with or without netmask) and hash:net of family inet, without nomatch entries. Its members
become an address interval set, which translate.py intersects with the rule's src or dst like
any address list. Anything else stays unknown to XDP (the rule defers where it may match), with
the reason code below.

The copy is only exact while the set does not change: setguard.py counts changes in the kernel,
and the planner (guards.guard_set_drops) marks every DROP that relies on the copy. Element timeouts
are covered by `expiry_ns`: a monotonic-clock bound before which no listed element can expire.
Reading needs the ipset tool (`ipset save NAME`, the format `ipset restore` reads).
"""
from __future__ import annotations

import shlex
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from itertools import chain as chained
from operator import attrgetter
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

from ipt2xdp import ir, irmatches
from ipt2xdp.classifier import IntervalSet

IPSET = "/usr/sbin/ipset"
MIRRORED_TYPES = ("hash:ip", "hash:net")
NS = 1_000_000_000
_U32 = struct.Struct("!I")
# ipset lists a timeout as whole seconds left, rounded down (1 when under a second): an element
# listed with T may expire T - 1 s after the listing began. One more second covers jiffies
# granularity and the clock XDP reads (bpf_ktime_get_ns, CLOCK_MONOTONIC) versus jiffies.
TIMEOUT_MARGIN_S = 2
# create options that do not change which packets match
_HARMLESS_OPTIONS = {"family": 1, "hashsize": 1, "maxelem": 1, "bucketsize": 1, "initval": 1, "timeout": 1,
                     "comment": 0, "skbinfo": 0, "counters": 0, "forceadd": 0, "netmask": 1}
# `-m set` options that make a match depend on more than membership
_COUNTER_OPTIONS = ("--packets-eq", "--packets-lt", "--packets-gt", "--bytes-eq", "--bytes-lt", "--bytes-gt")

# reason codes (translate.py gives them as match.<code>) and their sentences for the report
WHY = {
    "set-missing": "the ipset does not exist on this host (or could not be read); netfilter decides",
    "set-type": "only hash:ip and hash:net ipsets are mirrored into XDP",
    "set-family": "the ipset holds IPv6 addresses; XDP mirrors inet sets",
    "set-nomatch": "the ipset has nomatch entries (exceptions); XDP does not mirror them",
    "set-counters": "matching updates the ipset's packet counters (add ! --update-counters to offload)",
    "set-options": "--return-nomatch, --packets-* and --bytes-* depend on more than membership",
    "set-guard": "the ipset change guard is not attached or ipset changes were in flight, so a mirror "
                 "could not be kept exact",
    "set-target": "a -j SET rule changes this ipset as packets pass; XDP cannot follow it",
    "set-off": "ipset mirroring is turned off (import --ipsets defer), so netfilter decides set matches",
}


@dataclass(frozen=True)
class IpSet:
    """One ipset as read at import. `addresses` is None unless the set can be mirrored."""

    name: str
    type: str = ""
    family: str = "inet"
    addresses: Optional[IntervalSet] = None
    members: int = 0
    unsupported: str = ""           # a WHY code when the set cannot be mirrored
    counters: bool = False          # the counters extension: matching updates them
    forceadd: bool = False          # a full set evicts a random member on add
    expiry_ns: Optional[int] = None  # monotonic ns before which no member can time out; None: none can


def _member_interval(text: str, netmask: int) -> Tuple[int, int]:
    address, _, plen = text.partition("/")
    length = int(plen) if plen else netmask
    try:
        value = _U32.unpack(socket.inet_aton(address))[0]
    except OSError:
        raise ValueError(f"not an IPv4 member: {text!r}") from None
    span = 1 << (32 - length)
    low = value & ~(span - 1) & 0xFFFFFFFF
    return low, low + span - 1


def _words(line: str) -> List[str]:
    return shlex.split(line) if '"' in line else line.split()


class _Builder:
    def __init__(self, words: List[str], read_at_ns: int):
        self.name, self.type = words[1], words[2]
        options = words[3:]
        self.flags: Dict[str, str] = {}
        self.unsupported = ""
        i = 0
        while i < len(options):
            word = options[i]
            arity = _HARMLESS_OPTIONS.get(word)
            if arity is None:
                self.unsupported = self.unsupported or "set-type"  # bitmask, markmask, ...: not modelled
                arity = 1 if i + 1 < len(options) and not options[i + 1].isalpha() else 0
            self.flags[word] = options[i + 1] if arity else ""
            i += 1 + arity
        self.family = self.flags.get("family", "inet")
        if self.type not in MIRRORED_TYPES:
            self.unsupported = "set-type"
        elif self.family != "inet":
            self.unsupported = "set-family"
        self.netmask = int(self.flags.get("netmask", "32"))
        self.read_at_ns = read_at_ns
        self.intervals: List[Tuple[int, int]] = []
        self.members = 0
        self.min_timeout: Optional[int] = None

    def add(self, words: List[str]) -> None:
        self.members += 1
        if len(words) == 3 and not self.unsupported:  # the common line: no extensions
            self.intervals.append(_member_interval(words[2], self.netmask))
            return
        rest = words[3:]
        if "nomatch" in rest:
            self.unsupported = self.unsupported or "set-nomatch"
        if "timeout" in rest:
            seconds = int(rest[rest.index("timeout") + 1])
            if seconds and (self.min_timeout is None or seconds < self.min_timeout):
                self.min_timeout = seconds  # 0: a permanent member of a set with timeouts
        if not self.unsupported:
            self.intervals.append(_member_interval(words[2], self.netmask))

    def build(self) -> IpSet:
        expiry = None
        if self.min_timeout is not None:
            expiry = self.read_at_ns + (self.min_timeout - TIMEOUT_MARGIN_S) * NS
        return IpSet(self.name, self.type, self.family,
                     None if self.unsupported else IntervalSet.of(self.intervals), self.members,
                     self.unsupported, "counters" in self.flags, "forceadd" in self.flags, expiry)


def parse_save(text: str, read_at_ns: int) -> Dict[str, IpSet]:
    """`ipset save` text -> {name: IpSet}. read_at_ns: CLOCK_MONOTONIC before the listing began."""
    sets: Dict[str, _Builder] = {}
    for line in text.splitlines():
        if line.startswith("add "):
            words = _words(line)
            sets[words[1]].add(words)
        elif line.startswith("create "):
            words = _words(line)
            sets[words[1]] = _Builder(words, read_at_ns)
    return {name: builder.build() for name, builder in sets.items()}


def referenced_sets(ruleset: ir.Ruleset) -> List[str]:
    """Names of the sets `-m set` matches of the filter table read, in first-use order."""
    table = ruleset.table("filter")
    names: Dict[str, None] = {}
    for chain in (table.chains if table is not None else ()):
        names.update(dict.fromkeys(_chain_sets(chain.name, chain.rules)))
    return list(names)


# chain name -> (its rules as _chain_sets() last read them, a copy: they keep their ids while held;
# [(position, set name)] of their set matches). `ipt2xdp watch` asks after every change, of 10k-rule
# chains that start with the very rules they had before (the parse memo's).
_CHAIN_SETS: Dict[str, Tuple[list, List[Tuple[int, str]]]] = {}


def _chain_sets(name: str, rules) -> List[str]:
    """The set names of a chain's set matches, in order (repeated as often as they are)."""
    from ipt2xdp.identitymemo import identical_prefix

    before, found = _CHAIN_SETS.get(name, ([], []))
    same = identical_prefix(before, rules)
    found = [(position, set_name) for position, set_name in found if position < same]
    fresh = rules[same:]
    # the match types first, in C-level passes: most tables have no set match at all
    matches = chained.from_iterable(map(attrgetter("matches"), fresh))
    if irmatches.SetMatch in set(map(type, matches)):
        for offset, rule in enumerate(fresh, same):
            for match in rule.matches:
                if isinstance(match, irmatches.SetMatch):
                    found.append((offset, match.set_name))
    _CHAIN_SETS[name] = (list(rules), found)
    return [set_name for _, set_name in found]


def changed_by_rules(ruleset: ir.Ruleset) -> FrozenSet[str]:
    """Sets some `-j SET --add-set/--del-set` rule (any table) changes from the packet path."""
    names = set()
    for table in ruleset.tables:
        for chain in table.chains:
            for rule in chain.rules:
                if getattr(rule.target, "name", "") == "SET":
                    names.update(o.args[0] for o in rule.target.options
                                 if o.name in ("--add-set", "--del-set") and o.args)
    return frozenset(names)


def read_sets(names: Iterable[str], changed: FrozenSet[str] = frozenset(), ipset: str = IPSET) -> Tuple[IpSet, ...]:
    """Read the named sets of the current network namespace. A set that cannot be read is
    returned as unsupported ("set-missing"), so its rules defer; so is a set in `changed`
    ("set-target")."""
    out = []
    for name in names:
        if name in changed:
            out.append(IpSet(name, unsupported="set-target"))
            continue
        read_at = time.monotonic_ns()
        try:
            result = subprocess.run([ipset, "save", name], capture_output=True, text=True)
        except OSError:
            result = None
        parsed = parse_save(result.stdout, read_at) if result is not None and result.returncode == 0 else {}
        out.append(parsed.get(name, IpSet(name, unsupported="set-missing")))
    return tuple(out)


def match_problem(match: irmatches.SetMatch, ipset: Optional[IpSet]) -> str:
    """The WHY code that keeps this match from being evaluated in XDP, or "" when it can be."""
    if ipset is None:
        return "set-missing"
    if ipset.unsupported:
        return ipset.unsupported
    names = {o.name for o in match.options}
    if "--return-nomatch" in names or names.intersection(_COUNTER_OPTIONS):
        return "set-options"
    skips_counters = any(o.name == "--update-counters" and o.negated for o in match.options)
    if ipset.counters and not skips_counters:
        return "set-counters"
    return ""
