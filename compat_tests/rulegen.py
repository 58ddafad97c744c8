# SPDX-License-Identifier: GPL-2.0-only
"""Seeded random rulesets over the subset ipt2xdp models (plus a few matches it must leave alone),
and a shrinker that cuts a failing ruleset down to a small reproducer.

A generated ruleset is data (`GenRuleset`), rendered to iptables-save text by `render()`; each rule is a
list of removable match atoms plus a target, which is what the shrinker removes piece by piece.
Jumps only go from a chain to a later one, so there are no loops. Limits and recent lists use slow
rates, so their outcome depends on the packet order only, never on timing.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List

from compat_tests.harness import FORWARD_IF, RECEIVER_IF

SOURCES = ("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "192.168.0.0/16", "192.168.1.128/25",
           "172.16.0.0/12", "100.64.0.0/10", "192.0.2.0/24", "192.0.2.1", "0.0.0.0/0")
DESTS = ("198.51.100.0/24", "198.51.100.10", "198.51.100.20", "198.51.100.128/26", "203.0.113.77")
PORTS = ("22", "53", "80", "443", "1000:2000", "8080", "0:1023", "1024:65535", "3306", "65535", "1")
ICMP = ("echo-request", "echo-reply", "destination-unreachable", "port-unreachable", "time-exceeded",
        "8", "0", "3/3", "11/0", "13", "any")
IFACES = (RECEIVER_IF, "rcv+", "lo", "eth0", "rcv1")
# Forwarding runs: FORWARD rules name the forwarded block and the device towards it.
FORWARD_DESTS = ("203.0.113.0/24", "203.0.113.77", "203.0.113.64/26", "203.0.113.128/25", "198.51.100.0/24")
OUT_IFACES = (FORWARD_IF, RECEIVER_IF, "fwd+", "eth1")
STATES = ("NEW", "ESTABLISHED", "RELATED", "INVALID", "ESTABLISHED,RELATED", "NEW,INVALID", "UNTRACKED")
FLAGS = (("SYN,RST,ACK,FIN", "SYN"), ("ALL", "NONE"), ("ALL", "FIN,URG,PSH"), ("SYN,FIN", "SYN,FIN"),
         ("ACK,RST", "RST"), ("ALL", "ALL"), ("SYN", "SYN"))
REJECTS = ("icmp-port-unreachable", "icmp-host-unreachable", "icmp-net-prohibited", "icmp-admin-prohibited")


@dataclass
class Rule:
    atoms: List[str]  # each one removable, e.g. "-s 10.0.0.0/8", "-p tcp", "-m tcp --dport 22"
    target: str = ""  # "-j DROP", "-g chain1", or "" (no target: counts only)

    def render(self, chain: str) -> str:
        return " ".join([f"-A {chain}", *self.atoms, *([self.target] if self.target else [])])


@dataclass
class GenRuleset:
    seed: int
    policies: Dict[str, str]  # INPUT/FORWARD/OUTPUT -> ACCEPT|DROP
    chains: Dict[str, List[Rule]] = field(default_factory=dict)  # INPUT first, then user chains


def render(rs: GenRuleset) -> str:
    lines = ["*filter", *(f":{c} {p} [0:0]" for c, p in rs.policies.items())]
    lines += [f":{c} - [0:0]" for c in rs.chains if c not in rs.policies]
    lines += [r.render(c) for c, rules in rs.chains.items() for r in rules]
    return "\n".join(lines + ["COMMIT", ""])


def _neg(rng: random.Random, p: float = 0.2) -> str:
    return "! " if rng.random() < p else ""


def _protocol_atoms(rng: random.Random, target_hint: List[str]) -> List[str]:
    proto = rng.choice(("tcp", "tcp", "udp", "udp", "icmp", "47", "132", "!tcp"))
    if proto == "!tcp":
        return ["! -p tcp"]
    atoms = [f"-p {proto}"]
    if proto in ("tcp", "udp"):
        roll = rng.random()
        if roll < 0.45:
            atoms.append(f"-m {proto} {_neg(rng)}--dport {rng.choice(PORTS)}")
        elif roll < 0.6:
            atoms.append(f"-m {proto} {_neg(rng)}--sport {rng.choice(PORTS)}")
        elif roll < 0.8:
            ports = ",".join(rng.sample(PORTS, rng.randint(1, 4)))
            atoms.append(f"-m multiport {_neg(rng, 0.1)}--{rng.choice(('dports', 'sports', 'ports'))} {ports}")
        if proto == "tcp" and rng.random() < 0.3:
            if rng.random() < 0.5:
                atoms.append(f"-m tcp {_neg(rng, 0.3)}--syn")
            else:
                mask, comp = rng.choice(FLAGS)
                atoms.append(f"-m tcp {_neg(rng)}--tcp-flags {mask} {comp}")
        if proto == "tcp":
            target_hint.append("tcp")
    elif proto == "icmp" and rng.random() < 0.7:
        atoms.append(f"-m icmp {_neg(rng)}--icmp-type {rng.choice(ICMP)}")
    return atoms


def _rule(rng: random.Random, chain_index: int, chains: List[str], in_user_chain: bool,
          forward: bool = False) -> Rule:
    atoms, hint = [], []
    if rng.random() < 0.45:
        source = rng.choice(SOURCES)
        # iptables-nft 1.8.9 refuses "! -s 0.0.0.0/0" (RULE_APPEND: Invalid argument); legacy takes it.
        atoms.append(f"{_neg(rng) if source != '0.0.0.0/0' else ''}-s {source}")
    if rng.random() < (0.5 if forward else 0.3):
        atoms.append(f"{_neg(rng)}-d {rng.choice(FORWARD_DESTS if forward else DESTS)}")
    if rng.random() < 0.15:
        atoms.append(f"{_neg(rng)}-i {rng.choice(IFACES)}")
    if forward and rng.random() < 0.3:
        atoms.append(f"{_neg(rng)}-o {rng.choice(OUT_IFACES)}")
    if rng.random() < 0.6:
        atoms += _protocol_atoms(rng, hint)
    if rng.random() < 0.05:
        atoms.append(f"{_neg(rng, 0.5)}-f")
    if rng.random() < 0.2:
        kind = rng.choice(("conntrack", "state"))
        flag = "--ctstate" if kind == "conntrack" else "--state"
        states = rng.choice(STATES if kind == "conntrack" else STATES[:-1])
        atoms.append(f"-m {kind} {_neg(rng, 0.15) if kind == 'conntrack' else ''}{flag} {states}")
    if rng.random() < 0.1:  # unmodelled matches: ipt2xdp must leave these rules to netfilter
        atoms.append(rng.choice((
            f"-m limit --limit {rng.randint(1, 5)}/hour --limit-burst {rng.randint(1, 8)}",
            f"-m recent --name r{rng.randint(0, 1)} --set",
            f"-m recent --name r{rng.randint(0, 1)} --rcheck",
            f"-m mark {_neg(rng, 0.3)}--mark 0x{rng.randint(0, 2):x}",
            "-m comment --comment \"generated\"")))
    return Rule(atoms, _target(rng, chain_index, chains, in_user_chain, hint))


def _target(rng: random.Random, chain_index: int, chains: List[str], in_user_chain: bool, hint: List[str]) -> str:
    later = [c for c in chains[chain_index + 1:] if c != "FORWARD"]  # jumps go to user chains only
    options = ["-j ACCEPT"] * 4 + ["-j DROP"] * 4 + ["-j REJECT", "-j LOG --log-prefix \"i2x \"", ""]
    if in_user_chain:
        options += ["-j RETURN"] * 2
    if later:
        options += [f"-j {rng.choice(later)}"] * 3 + [f"-g {rng.choice(later)}"]
    target = rng.choice(options)
    if target == "-j REJECT":
        with_ = rng.choice(REJECTS + (("tcp-reset",) if "tcp" in hint else ()))
        target += f" --reject-with {with_}"
    return target


def generate(seed: int, max_rules: int = 12, max_chains: int = 3, forwarding: bool = False) -> GenRuleset:
    """A random filter-table ruleset; the same seed always gives the same ruleset.

    forwarding: FORWARD gets rules as well (forwarded destinations, -o), for runs where the receiver
    forwards (harness.Testbed(forwarding=True)); user chains may then be reached from both.
    """
    rng = random.Random(seed)
    user = [f"chain{i}" for i in range(rng.randint(0, max_chains))]
    order = ["INPUT"] + (["FORWARD"] if forwarding else []) + user
    policies = {"INPUT": rng.choice(("ACCEPT", "DROP")), "FORWARD": rng.choice(("ACCEPT", "DROP")),
                "OUTPUT": "ACCEPT"}
    chains = {}
    for index, name in enumerate(order):
        count = rng.randint(1, max_rules) if name in ("INPUT", "FORWARD") else rng.randint(0, max(1, max_rules // 2))
        chains[name] = [_rule(rng, index, order, name not in policies, name == "FORWARD") for _ in range(count)]
    return GenRuleset(seed, policies, chains)


def shrink(rs: GenRuleset, fails: Callable[[str], bool], budget: int = 200) -> GenRuleset:
    """Greedily drop chains, rules and atoms, and relax policies, while `fails(render(candidate))` holds.

    Candidates iptables refuses simply do not fail, so they are never kept.
    """
    calls = 0

    def still_fails(candidate: GenRuleset) -> bool:
        nonlocal calls
        calls += 1
        return calls <= budget and fails(render(candidate))

    changed = True
    while changed and calls < budget:
        changed = False
        for candidate in _candidates(rs):
            if still_fails(candidate):
                rs, changed = candidate, True
                break
    return rs


def _candidates(rs: GenRuleset):
    """Smaller variants of rs, biggest cuts first."""
    for name in [c for c in rs.chains if c not in rs.policies]:
        chains = {c: [r for r in rules if name not in r.target.split()] for c, rules in rs.chains.items() if c != name}
        yield replace(rs, chains=chains)
    for name, rules in rs.chains.items():
        for i in reversed(range(len(rules))):
            yield replace(rs, chains={**rs.chains, name: rules[:i] + rules[i + 1:]})
    for name, rules in rs.chains.items():
        for i, rule in enumerate(rules):
            for j in range(len(rule.atoms)):
                smaller = Rule(rule.atoms[:j] + rule.atoms[j + 1:], rule.target)
                yield replace(rs, chains={**rs.chains, name: rules[:i] + [smaller] + rules[i + 1:]})
            if rule.target and " --" in rule.target:  # e.g. drop "--reject-with X"
                simpler = Rule(rule.atoms, rule.target.split(" --")[0])
                yield replace(rs, chains={**rs.chains, name: rules[:i] + [simpler] + rules[i + 1:]})
    for chain, policy in rs.policies.items():
        if policy != "ACCEPT":
            yield replace(rs, policies={**rs.policies, chain: "ACCEPT"})


def rule_count(rs: GenRuleset) -> int:
    return sum(len(rules) for rules in rs.chains.values())
