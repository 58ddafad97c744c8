# SPDX-License-Identifier: GPL-2.0-only
"""Ruleset versions for the update test: a chain of changes, every version accepting the probe streams.

The update test (test_update_under_traffic.py) streams three kinds of probes from the sender while
`ipt2xdp import` applies one version after another:
  udp_new  UDP sender:41000 -> receiver:5555, never answered, so conntrack calls it NEW;
  udp_est  UDP sender:41001 -> receiver:5556, a flow the receiver opened first (ESTABLISHED);
  echo     ICMP echo requests with one identifier, answered by the receiver (ESTABLISHED after the first).
and a canary stream (UDP sender:41002 -> receiver:7777) that some versions drop and some accept, so
XDP really has drops in force for traffic between the probes.

Each change applies one to three mutations to the previous version (a rule added, removed or moved, a
policy flipped, a user chain with jumps, gotos and RETURNs added or removed, conntrack rules, or a fresh
ruleset) and is kept only if every probe stream is still accepted. Which rule matches which stream is
written next to each rule template, and `verdict` walks the chains with iptables' jump/goto/RETURN
semantics. That is this generator's bookkeeping, not a judge of ipt2xdp: the kernel check in the test
(netfilter alone, every version) proves the bookkeeping right.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Dict, FrozenSet, List, Optional, Tuple

PROBES = ("udp_new", "udp_est", "echo")
CANARY = "canary"
PORT_NEW, PORT_EST, PORT_CANARY = 5555, 5556, 7777
SPORT_NEW, SPORT_EST, SPORT_CANARY = 41000, 41001, 41002
ECHO_ID = 0x1D2D
MAX_RULES = 45
UDP = frozenset({"udp_new", "udp_est", CANARY})
EVERY = frozenset(PROBES) | {CANARY}


@dataclass(frozen=True)
class Rule:
    matches: str  # iptables match text, with {S} (sender address), {NET} (the veth /24), {IF} placeholders
    target: str  # ACCEPT, DROP, REJECT, RETURN, LOG, "" (counts only), "jump:CHAIN" or "goto:CHAIN"
    hits: FrozenSet[str]  # which streams the match text matches

    def render(self, chain: str, names: Dict[str, str]) -> str:
        target = self.target
        if target.startswith(("jump:", "goto:")):
            target = ("-j " if target.startswith("jump:") else "-g ") + target[5:]
        elif target == "LOG":
            target = '-j LOG --log-prefix "upd "'
        elif target:
            target = "-j " + target
        return " ".join(p for p in (f"-A {chain}", self.matches.format(**names), target) if p)


def _r(matches: str, target: str, hits) -> Rule:
    return Rule(matches, target, frozenset(hits))


# Rules that match none of the probes (the canary sometimes): the drops XDP decides between the probes.
OTHER = (
    lambda rng: _r(f"-s 10.{rng.randrange(78, 250)}.{rng.randrange(256)}.0/24", "DROP", ()),
    lambda rng: _r(f"-p udp -m udp --dport {rng.choice([p for p in range(1, 65536, 97) if p not in (5555, 5556, 7777)])}",
                   "DROP", ()),
    lambda rng: _r(f"-i {{IF}} -p tcp -m tcp --dport {rng.randrange(1, 1024)}", "DROP", ()),
    lambda rng: _r("-p tcp -m multiport --dports 22,80,443", rng.choice(("DROP", "REJECT")), ()),
    lambda rng: _r("! -s {NET} -p udp", "DROP", ()),
    lambda rng: _r("-m conntrack --ctstate INVALID", "DROP", ()),
    lambda rng: _r(f"-p udp -m conntrack --ctstate NEW -m udp --dport {PORT_EST}", "DROP", ()),
    lambda rng: _r("-p icmp -m icmp --icmp-type timestamp-request", "DROP", ()),
    lambda rng: _r("-p icmp -m state --state NEW", "DROP", ()),  # the echo flow is ESTABLISHED
    lambda rng: _r("-p 47", "DROP", ()),
    lambda rng: _r("-p tcp -m tcp --tcp-flags ALL NONE", "DROP", ()),
    lambda rng: _r(f"-p udp -m udp --dport {PORT_CANARY}", rng.choice(("DROP", "DROP", "REJECT")), (CANARY,)),
    lambda rng: _r(f"-s {{S}}/32 -p udp -m udp --sport {SPORT_CANARY}", "DROP", (CANARY,)),
    lambda rng: _r("-p udp -m udp --dport 7000:8000", "DROP", (CANARY,)),
    lambda rng: _r(f"-s {{S}}/32 -p udp -m udp --dport {PORT_CANARY}", "ACCEPT", (CANARY,)),
)
# Rules that drop probes: valid only behind an ACCEPT that takes those probes first.
SHADOWED = (
    lambda rng: _r("-p udp", "DROP", UDP),
    lambda rng: _r("-s {NET}", "DROP", EVERY),
    lambda rng: _r("", "DROP", EVERY),
    lambda rng: _r("-p icmp", "DROP", ("echo",)),
    lambda rng: _r("-m conntrack --ctstate NEW", "DROP", ("udp_new", CANARY)),
    lambda rng: _r("-m conntrack --ctstate ESTABLISHED", "DROP", ("udp_est", "echo")),
    lambda rng: _r(f"-p udp -m udp --dport {PORT_NEW}", "DROP", ("udp_new",)),
    lambda rng: _r("-i {IF} -p udp -m udp --dport 5000:6000", "REJECT", ("udp_new", "udp_est")),
)
ACCEPTS = (
    lambda rng: _r(f"-s {{S}}/32 -p udp -m udp --dport {PORT_NEW}", "ACCEPT", ("udp_new",)),
    lambda rng: _r(f"-p udp -m multiport --dports {PORT_NEW},{PORT_EST}", "ACCEPT", ("udp_new", "udp_est")),
    lambda rng: _r("-m conntrack --ctstate RELATED,ESTABLISHED", "ACCEPT", ("udp_est", "echo")),
    lambda rng: _r("-m state --state ESTABLISHED", "ACCEPT", ("udp_est", "echo")),
    lambda rng: _r("-p icmp -m icmp --icmp-type echo-request", "ACCEPT", ("echo",)),
    lambda rng: _r("-s {NET}", "ACCEPT", EVERY),
    lambda rng: _r(f"-i {{IF}} -p udp -m udp --sport {SPORT_EST}", "ACCEPT", ("udp_est",)),
    lambda rng: _r("-p udp -m udp --dport 5000:6000", "ACCEPT", ("udp_new", "udp_est")),
    lambda rng: _r("-p udp -m conntrack --ctstate NEW", "ACCEPT", ("udp_new", CANARY)),
    lambda rng: _r('-s {S}/32 -m comment --comment "upd"', "ACCEPT", EVERY),
    lambda rng: _r("-p udp -m mark --mark 0x0", "ACCEPT", UDP),  # unmodelled: XDP must defer
)
NEUTRAL = (
    lambda rng: _r("-p udp", "", UDP),
    lambda rng: _r("-s {S}/32", "LOG", EVERY),
    lambda rng: _r("-p icmp -m icmp --icmp-type echo-request", "", ("echo",)),
)
RETURNS = (  # only in user chains
    lambda rng: _r("-s {S}/32 -p icmp", "RETURN", ("echo",)),
    lambda rng: _r(f"-p udp -m udp --dport {PORT_EST}", "RETURN", ("udp_est",)),
    lambda rng: _r("", "RETURN", EVERY),
    lambda rng: _r("-m conntrack --ctstate NEW", "RETURN", ("udp_new", CANARY)),
)


@dataclass
class Version:
    policy: str
    chains: Dict[str, List[Rule]]  # INPUT first, then user chains; a chain jumps only to later ones
    next_chain: int = 1
    changes: Tuple[str, ...] = ()  # the mutations that made this version from the previous one

    def render(self, names: Dict[str, str]) -> str:
        lines = ["*filter", f":INPUT {self.policy} [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]"]
        lines += [f":{c} - [0:0]" for c in self.chains if c != "INPUT"]
        lines += [r.render(c, names) for c, rules in self.chains.items() for r in rules]
        # Conntrack runs in a namespace only while some rule needs it; this no-op rule keeps it on in
        # every version, so the flows primed at the start stay ESTABLISHED.
        lines.append("-A OUTPUT -m conntrack --ctstate INVALID -j ACCEPT")
        return "\n".join(lines + ["COMMIT", ""])

    def rule_count(self) -> int:
        return sum(len(rules) for rules in self.chains.values())


def verdict(version: Version, stream: str) -> str:
    """ACCEPT or DROP for one stream (REJECT counts as DROP), as netfilter walks the chains."""
    def walk(chain: str) -> str:
        for rule in version.chains[chain]:
            if stream not in rule.hits:
                continue
            if rule.target in ("ACCEPT", "DROP", "REJECT", "RETURN"):
                return rule.target
            if rule.target.startswith(("jump:", "goto:")):
                result = walk(rule.target[5:])
                if result != "RETURN":
                    return result
                if rule.target.startswith("goto:"):  # back to the caller of this chain
                    return "RETURN"
        return "RETURN"
    result = walk("INPUT")
    return "ACCEPT" if result in ("ACCEPT", "RETURN") and (result == "ACCEPT" or version.policy == "ACCEPT") \
        else "DROP"


def accepts_probes(version: Version) -> bool:
    return all(verdict(version, s) == "ACCEPT" for s in PROBES)


def initial() -> Version:
    return Version("DROP", {"INPUT": [ACCEPTS[0](None), ACCEPTS[6](None), ACCEPTS[4](None), SHADOWED[2](None)]})


def _pick(rng: random.Random, pools) -> Rule:
    pool = rng.choice(pools)
    return rng.choice(pool)(rng)


def _insert(rng: random.Random, v: Version, rule: Rule, chain: Optional[str] = None) -> Version:
    chain = chain or rng.choice(list(v.chains))
    rules = list(v.chains[chain])
    rules.insert(rng.randint(0, len(rules)), rule)
    return replace(v, chains={**v.chains, chain: rules})


def _add(pools):
    def mutate(rng: random.Random, v: Version) -> Version:
        chain = rng.choice(list(v.chains))
        extra = (RETURNS,) if chain != "INPUT" else ()
        return _insert(rng, v, _pick(rng, pools + extra), chain)
    return mutate


def _remove_rule(rng: random.Random, v: Version) -> Optional[Version]:
    chain = rng.choice(list(v.chains))
    rules = list(v.chains[chain])
    if not rules:
        return None
    del rules[rng.randrange(len(rules))]
    return replace(v, chains={**v.chains, chain: rules})


def _move_rule(rng: random.Random, v: Version) -> Optional[Version]:
    chain = rng.choice(list(v.chains))
    rules = list(v.chains[chain])
    if len(rules) < 2:
        return None
    rule = rules.pop(rng.randrange(len(rules)))
    rules.insert(rng.randint(0, len(rules)), rule)
    return replace(v, chains={**v.chains, chain: rules})


def _flip_policy(rng: random.Random, v: Version) -> Version:
    return replace(v, policy="ACCEPT" if v.policy == "DROP" else "DROP")


def _add_chain(rng: random.Random, v: Version) -> Optional[Version]:
    if len(v.chains) > 4:
        return None
    name = f"upd{v.next_chain}"
    body = [_pick(rng, (OTHER, ACCEPTS, SHADOWED, NEUTRAL, RETURNS)) for _ in range(rng.randint(1, 5))]
    callers = list(v.chains)  # every existing chain comes earlier than the new one: no loops
    caller = rng.choice(callers)
    hits = rng.choice((EVERY, UDP, frozenset({"echo"}), frozenset({"udp_est", "echo"})))
    matches = {EVERY: "", UDP: "-p udp", frozenset({"echo"}): "-p icmp",
               frozenset({"udp_est", "echo"}): "-m conntrack --ctstate ESTABLISHED"}[hits]
    kind = "goto" if rng.random() < 0.3 else "jump"
    out = replace(v, chains={**v.chains, name: body}, next_chain=v.next_chain + 1)
    return _insert(rng, out, Rule(matches, f"{kind}:{name}", hits), caller)


def _remove_chain(rng: random.Random, v: Version) -> Optional[Version]:
    user = [c for c in v.chains if c != "INPUT"]
    if not user:
        return None
    name = rng.choice(user)
    chains = {c: [r for r in rules if r.target[5:] != name or not r.target.startswith(("jump:", "goto:"))]
              for c, rules in v.chains.items() if c != name}
    return replace(v, chains=chains)


def _fresh(rng: random.Random, v: Version) -> Version:
    """A new ruleset: accepts for the probes somewhere, drops of other traffic around them."""
    rules = [_pick(rng, (OTHER, OTHER, ACCEPTS, NEUTRAL)) for _ in range(rng.randint(1, 25))]
    for accept in (ACCEPTS[0], ACCEPTS[2], ACCEPTS[1], ACCEPTS[4]):
        rules.insert(rng.randint(0, len(rules)), accept(rng))
    rules.insert(rng.randint(len(rules) // 2, len(rules)), _pick(rng, (SHADOWED,)))
    return Version(rng.choice(("ACCEPT", "DROP")), {"INPUT": rules}, v.next_chain)


MUTATIONS = {
    "add other": _add((OTHER,)), "add accept": _add((ACCEPTS,)), "add shadowed drop": _add((SHADOWED,)),
    "add neutral": _add((NEUTRAL,)), "remove rule": _remove_rule, "move rule": _move_rule,
    "flip policy": _flip_policy, "add chain": _add_chain, "remove chain": _remove_chain, "fresh ruleset": _fresh,
}
WEIGHTS = {"add other": 6, "add accept": 3, "add shadowed drop": 4, "add neutral": 1, "remove rule": 7,
           "move rule": 5, "flip policy": 2, "add chain": 2, "remove chain": 1, "fresh ruleset": 1}


def change(rng: random.Random, v: Version, names: Dict[str, str]) -> Version:
    """The next version: one to three mutations, every probe stream still accepted, text changed."""
    before = v.render(names)
    while True:
        out, done = v, []
        for _ in range(rng.choice((1, 1, 2, 3))):
            kind = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
            candidate = MUTATIONS[kind](rng, out)
            if candidate is not None:
                out, done = candidate, done + [kind]
        if done and accepts_probes(out) and out.rule_count() <= MAX_RULES and out.render(names) != before:
            return replace(out, changes=tuple(done))


def versions(seed: int, count: int, names: Dict[str, str]):
    """initial() then `count` changed versions, deterministic for a seed."""
    rng = random.Random(seed)
    v = initial()
    yield v
    for _ in range(count):
        v = change(rng, v, names)
        yield v


@dataclass
class Coverage:
    """What a sequence of versions exercised, for the test's assertions and the README figures."""

    changes: Dict[str, int] = field(default_factory=dict)
    canary_dropped: int = 0
    versions: int = 0
    with_user_chains: int = 0
    with_conntrack: int = 0
    drop_policy: int = 0

    def add(self, v: Version, text: str) -> None:
        self.versions += 1
        for kind in v.changes:
            self.changes[kind] = self.changes.get(kind, 0) + 1
        self.canary_dropped += verdict(v, CANARY) == "DROP"
        self.with_user_chains += len(v.chains) > 1
        self.with_conntrack += any("-m conntrack" in r.matches or "-m state" in r.matches
                                   for rules in v.chains.values() for r in rules)
        self.drop_policy += v.policy == "DROP"
