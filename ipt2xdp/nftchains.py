# SPDX-License-Identifier: GPL-2.0-only
"""Native nftables base chains (firewalld's `inet firewalld`, a hand-written /etc/nftables.conf,
kube-proxy's nftables mode, netdev ingress chains) that see a packet before filter/INPUT, and
what each may do to it. foreign.py reads them (`nft -j list`, nftlist.py); this module judges them.

A chain matters if its hook is ingress (netdev/inet, on a device the packet passes: an attached
device or a master or upper device of one), prerouting, or input at a priority <= 0 (the planned
filter/INPUT is at 0; chains after it never see what it drops), in family ip, inet, netdev or
bridge. Such a chain is *neutral* when every rule, and every chain it jumps or goes to, holds
only `match` expressions (reads of the packet, conntrack, sets, routes) and the verdicts accept,
drop, continue and return: it neither changes a packet nor leaves a trace, and a packet XDP drops
(dropped by filter/INPUT anyway) meets the same fate with or without it. Every other statement
(counter, log, limit, quota, nat, mark/ct/meta set, notrack, queue, dup, fwd, reject, set
updates, xt compat expressions, anything unknown) and every read that changes state (`numgen
inc`, a lookup in a set that counts) is an *effect*: XDP defers the IPv4 packets it may act on,
bounded by the matches on its path (ipt2xdp.nftbound; every packet when they bound nothing), code
foreign.nft.

Named sets and verdict maps bound what they lead to by their elements (kube-proxy's nftables mode
keeps every service in `ip daddr . meta l4proto . th dport vmap @service-ips`): a lookup `ip daddr
@nodeport-ips` narrows like the literal set it holds, and a chain a verdict map jumps to is walked
once per element, under that element's key. Elements count only for sets and maps nothing in the
data path changes (no `flags dynamic`, no `add`/`update`/`delete @set` statement): those change
without a ruleset generation, and are left out (widening) as before. An element added from user
space (kube-proxy creating a service) is a change of the native table like any other: `ipt2xdp
watch` replans on its notification, and until then XDP may still drop the new element's packets
where filter/INPUT drops them (before, such a table made XDP defer every packet, so there was no
such window for it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Set, Tuple

from ipt2xdp import nftbound
from ipt2xdp.classifier import Match
from ipt2xdp.terms import conjoin

XTABLES_TABLES = ("filter", "mangle", "raw", "nat", "security")
BEFORE_INPUT_HOOKS = ("ingress", "prerouting", "input")
RELEVANT_FAMILIES = ("ip", "inet", "netdev", "bridge")
FILTER_PRIORITY = 0  # NF_IP_PRI_FILTER: the planned filter/INPUT
NEUTRAL_VERDICTS = ("accept", "drop", "continue", "return")
MAX_JUMP_DEPTH = 16
MAX_EFFECTS = 16384  # per base chain; beyond, one unbounded effect (XDP defers everything)


@dataclass(frozen=True)
class Effect:
    """A statement with an effect in (or reached from) a native base chain, and the IPv4 packets
    it may act on (nftbound: a superset; () = every packet)."""

    where: str          # "rule handle 4: jump a: rule handle 6: mangle" (no counter values)
    bound: tuple = ()


@dataclass(frozen=True)
class NativeChain:
    """A base chain outside the iptables backends on a hook before (or at) filter/INPUT."""

    family: str
    table: str
    chain: str
    hook: str
    priority: int
    devices: Tuple[str, ...] = ()
    effects: Tuple[Effect, ...] = ()   # empty: neutral

    @property
    def blocker(self) -> str:
        """The first statement that is not neutral ("" = neutral)."""
        return self.effects[0].where if self.effects else ""

    def label(self) -> str:
        where = f" device {','.join(self.devices)}" if self.devices else ""
        return f"table {self.family} {self.table} chain {self.chain} (hook {self.hook} priority {self.priority}{where})"

    @property
    def xtables_named(self) -> bool:
        return self.family == "ip" and self.table in XTABLES_TABLES


class _Walk:
    """Effects of the chains of one nft document, each bounded by the matches on its path."""

    def __init__(self, chains: dict, stateful_sets: Set = frozenset(), elements: Optional[dict] = None,
                 numgen_inc: bool = True):
        self.chains = chains
        self.stateful_sets = stateful_sets  # (family, table, name) of sets whose lookups count
        # Whether any read may change state; else no statement is walked for one (a fifth of the
        # classification of a kube-proxy table).
        self.stateful_reads = bool(stateful_sets) or numgen_inc
        self.elements = elements or {}      # (family, table, name) -> the elements of a fixed set or map
        self.effects: List[Effect] = []
        self.analysed: dict = {}

    def add(self, where: str, context: Optional[Match]) -> None:
        if context is None:
            return  # no IPv4 packet gets here
        self.effects.append(Effect(where, nftbound.to_bound(context)))

    def chain(self, key, context: Match, prefix: str, depth: int, seen: frozenset) -> None:
        chain, rules = self.chains[key]
        policy = chain.get("policy", "accept")
        if policy not in ("accept", "drop"):
            self.add(f"{prefix}policy {policy}", context)
        for rule in rules:
            if len(self.effects) > MAX_EFFECTS:
                return
            self.rule(rule, context, f"{prefix}rule handle {rule.get('handle')}: ", depth, seen | {key})

    def rule(self, rule: dict, context: Match, prefix: str, depth: int, seen: frozenset) -> None:
        key = id(rule)  # the rule dicts live as long as the walk; one rule is reached under many keys
        if key not in self.analysed:
            self.analysed[key] = self.analyse(rule)
        kind, name, value, bound = self.analysed[key]
        if kind == "unrecognised":
            return self.add(prefix + "an unrecognised expression", context)
        if kind == "neutral":
            return None
        here = None if bound is None or context is None else conjoin(context, bound)
        if kind == "stateful":  # a read that changes state: numgen inc, a set lookup that counts
            return self.add(prefix + name, here)
        if here is None:
            return None  # no IPv4 packet reaches this statement
        if name in ("jump", "goto") and isinstance(value, dict):
            return self.jump(rule, name, value.get("target"), here, prefix, depth, seen)
        if name == "vmap" and isinstance(value, dict):
            return self.vmap(rule, value, here, prefix, depth, seen)
        # Everything after the first statement with an effect acts on a subset of its packets.
        return self.add(prefix + name, here)

    def analyse(self, rule: dict) -> tuple:
        """(kind, statement name, its value, bound of the matches before it) of a rule's first
        statement that is not a match: what the rule does whatever path leads to it."""
        matches = []
        for stmt in rule.get("expr", []):
            if not isinstance(stmt, dict) or len(stmt) != 1:
                return "unrecognised", None, None, None
            (name, value), = stmt.items()
            stateful = self.stateful_reads and _stateful_read(stmt, self.stateful_sets,
                                                              (rule.get("family"), rule.get("table")))
            if stateful:
                return "stateful", stateful, None, nftbound.statement_bound(matches)
            if name == "match":
                matches.append(self.literal(rule, value))
                continue
            if name in NEUTRAL_VERDICTS:
                return "neutral", name, value, None
            return "statement", name, value, nftbound.statement_bound(matches)
        return "neutral", None, None, None

    def jump(self, rule, name, target, context, prefix, depth, seen) -> None:
        key = (rule.get("family"), rule.get("table"), target)
        if key not in self.chains:
            return self.add(f"{prefix}{name} to unknown chain {target}", context)
        if depth >= MAX_JUMP_DEPTH:
            return self.add(f"{prefix}{name} nested deeper than {MAX_JUMP_DEPTH}", context)
        if key in seen:
            return None  # nft rejects loops; a chain already on this path adds nothing new
        return self.chain(key, context, f"{prefix}{name} {target}: ", depth + 1, seen)

    def literal(self, rule: dict, match: dict) -> dict:
        """The match with a fixed named set (`@name`) replaced by its elements."""
        right = match.get("right") if isinstance(match, dict) else None
        elements = self.named(rule, right)
        return match if elements is None else {**match, "right": {"set": elements}}

    def named(self, rule: dict, reference) -> Optional[list]:
        if not (isinstance(reference, str) and reference.startswith("@")):
            return None
        return self.elements.get((rule.get("family"), rule.get("table"), reference[1:]))

    def vmap(self, rule, vmap: dict, context, prefix, depth, seen) -> None:
        """A verdict map: each chain it may jump to is walked under the key of the element that
        leads there; every regular chain of the table, under no key, when the map's elements are
        not known (a map the data path changes)."""
        data = vmap.get("data")
        items = data["set"] if isinstance(data, dict) and "set" in data else self.named(rule, data)
        if items is None:
            table = (rule.get("family"), rule.get("table"))
            pairs = [(None, {"jump": {"target": k[2]}}) for k, (c, _) in self.chains.items()
                     if k[:2] == table and "hook" not in c]
        elif all(isinstance(item, list) and len(item) == 2 for item in items):
            pairs = [(key, verdict) for key, verdict in items]
        else:
            return self.add(prefix + "vmap of an unrecognised form", context)
        for key, verdict in pairs:
            if not isinstance(verdict, dict) or len(verdict) != 1:
                return self.add(prefix + "vmap of an unrecognised form", context)
            (name, value), = verdict.items()
            if name in NEUTRAL_VERDICTS:
                continue
            here = context
            if key is not None:
                bound = nftbound.statement_bound([{"op": "==", "left": vmap.get("key"), "right": key}])
                here = None if bound is None else conjoin(context, bound)
                if here is None:
                    continue  # no IPv4 packet has this key
            if name in ("jump", "goto") and isinstance(value, dict):
                self.jump(rule, f"vmap {name}", value.get("target"), here, prefix, depth, seen)
            else:
                self.add(f"{prefix}vmap {name}", here)
        return None


def _stateful_read(node, stateful_sets: Set, table: Tuple[str, str]) -> Optional[str]:
    """Whether an expression changes state when evaluated: `numgen inc` (a counter each packet
    advances), or a lookup in a set declared with a statement (element counters, quotas)."""
    if isinstance(node, dict):
        numgen = node.get("numgen")
        if isinstance(numgen, dict) and numgen.get("mode") == "inc":
            return "numgen inc"
        for value in node.values():
            found = _stateful_read(value, stateful_sets, table)
            if found:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _stateful_read(value, stateful_sets, table)
            if found:
                return found
    elif isinstance(node, str) and node.startswith("@") and (table[0], table[1], node[1:]) in stateful_sets:
        return f"lookup in {node}, whose elements count"
    return None


def stateful_sets(items) -> Set[Tuple[str, str, str]]:
    """Sets and maps whose lookups change state: declared with statements (`counter`, `quota`) or
    holding elements with their own."""
    out = set()
    for item in items:
        declared = item.get("set") or item.get("map")
        if not isinstance(declared, dict):
            continue
        elements = declared.get("elem") or []
        if declared.get("stmt") or any(isinstance(e, dict) and isinstance(e.get("elem"), dict)
                                       and set(e["elem"]) - {"val", "timeout", "expires", "comment"}
                                       for e in elements):
            out.add((declared.get("family"), declared.get("table"), declared.get("name")))
    return out


def fixed_elements(items) -> dict:
    """(family, table, name) -> elements of each set and map whose elements only user space
    changes: not `flags dynamic`, and named by no `add`/`update`/`delete` statement of a rule.
    An element with options ({"elem": {"val": ...}}) stands for its value."""
    changed = set()
    for item in items:
        rule = item.get("rule")
        if isinstance(rule, dict):
            changed |= {(rule.get("family"), rule.get("table"), ref[1:]) for ref in _updated_sets(rule.get("expr") or ())}
    out = {}
    for item in items:
        declared = item.get("set") or item.get("map")
        if not isinstance(declared, dict):
            continue
        key = (declared.get("family"), declared.get("table"), declared.get("name"))
        if key in changed or "dynamic" in (declared.get("flags") or ()):
            continue
        out[key] = [_element_value(e) for e in declared.get("elem") or []]
    return out


def _element_value(element):
    if isinstance(element, list):  # a map's [key, value]
        return [_element_value(element[0]), element[1]] if len(element) == 2 else element
    if isinstance(element, dict) and isinstance(element.get("elem"), dict):
        return element["elem"].get("val")
    return element


def _updated_sets(statements) -> Iterable[str]:
    """Names (`@name`) of sets and maps a rule's statements add to, updates or deletes from (a
    `meter` fills the set it names). Statements are the rule's top-level expressions."""
    for statement in statements:
        if not isinstance(statement, dict):
            continue
        meter = statement.get("meter")
        if isinstance(meter, dict) and isinstance(meter.get("name"), str):
            yield "@" + meter["name"]
        for name in ("set", "map"):
            update = statement.get(name)
            if isinstance(update, dict) and "op" in update and isinstance(update.get(name), str):
                yield update[name]


def chain_effects(chains: dict, key, sets: Set = frozenset(), elements: Optional[dict] = None,
                  numgen_inc: bool = True) -> Tuple[Effect, ...]:
    """The statements with effects a packet in base chain `key` may reach, bounded. numgen_inc:
    False when the listing holds no `numgen inc` (classify())."""
    walk = _Walk(chains, sets, elements, numgen_inc)
    walk.chain(key, Match(), "", 0, frozenset())
    if len(walk.effects) > MAX_EFFECTS:
        return (Effect(f"more than {MAX_EFFECTS} statements with effects"),)
    return tuple(dict.fromkeys(walk.effects))


def _devices(chain: dict) -> Tuple[str, ...]:
    dev = chain.get("dev")
    if dev is None:
        return ()
    return (dev,) if isinstance(dev, str) else tuple(dev)


def relevant(chain: dict, passed_devices: Optional[Set[str]]) -> bool:
    """Whether packets XDP may drop pass this base chain before filter/INPUT has dropped them."""
    hook, family = chain.get("hook"), chain.get("family")
    if family not in RELEVANT_FAMILIES or hook not in BEFORE_INPUT_HOOKS:
        return False
    if hook == "input" and family in ("ip", "inet") and chain.get("prio", 0) > FILTER_PRIORITY:
        return False  # after filter/INPUT: never sees what it drops
    if hook == "ingress" and passed_devices is not None:
        devices = _devices(chain)
        return not devices or bool(set(devices) & passed_devices)
    return True


def classify(document: dict, passed_devices: Optional[Set[str]] = None, text: Optional[str] = None
             ) -> Tuple[NativeChain, ...]:
    """The base chains of an `nft -j list ruleset` document that act before filter/INPUT.

    passed_devices: the devices a packet arriving on an attached device passes (None: any); text:
    the document's JSON text, when at hand (without `"inc"` in it, no `numgen inc` is either)."""
    items = document.get("nftables", [])
    chains = {}
    for item in items:
        if "chain" in item:
            c = item["chain"]
            chains[(c.get("family"), c.get("table"), c.get("name"))] = (c, [])
    for item in items:
        if "rule" in item:
            r = item["rule"]
            key = (r.get("family"), r.get("table"), r.get("chain"))
            if key in chains:
                chains[key][1].append(r)
    counting, elements = stateful_sets(items), fixed_elements(items)
    numgen_inc = text is None or '"inc"' in text
    out = []
    for key, (chain, _) in chains.items():
        if "hook" not in chain or not relevant(chain, passed_devices):
            continue
        out.append(NativeChain(key[0], key[1], key[2], chain["hook"], int(chain.get("prio", 0)),
                               _devices(chain), chain_effects(chains, key, counting, elements, numgen_inc)))
    return tuple(sorted(out, key=lambda c: (c.family, c.table, c.chain)))


def passed_devices(devices: Sequence, attached: Iterable[str]) -> Optional[Set[str]]:
    """Attached devices and every device above them (bridge or bond masters, vlan/macvlan uppers):
    their ingress hooks see the packet too. None when nothing is attached (then every device)."""
    names = set(attached)
    if not names:
        return None
    by_index = {d.ifindex: d for d in devices}
    indexes = {d.ifindex for d in devices if d.name in names}
    while True:
        above = {by_index[i].master for i in indexes if by_index[i].master in by_index}
        above |= {d.ifindex for d in devices if d.link in indexes}  # vlan, macvlan (and a veth peer: harmless)
        if above <= indexes:
            break
        indexes |= above
    return names | {by_index[i].name for i in indexes}
