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
# NAT hosts (nat=True): DNAT/SNAT addresses are local to the receiver (packets.scan installs every
# --to-destination/--to-source address on it), so a rewritten packet still ends in filter/INPUT: a
# DNAT to a forwarded or absent address would meet ip_error()'s per-peer rate limit, which no run resets.
NAT_ADDRS = ("198.51.100.10", "198.51.100.20", "198.51.100.30")
NAT_PORTS = ("22", "53", "80", "443", "2222", "8080", "5353")
NAT_BUILTINS = {"PREROUTING": "ACCEPT", "INPUT": "ACCEPT", "OUTPUT": "ACCEPT", "POSTROUTING": "ACCEPT"}


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
    # The nat table (nat=True): PREROUTING, POSTROUTING, then nat user chains; empty: no *nat at all.
    nat_chains: Dict[str, List[Rule]] = field(default_factory=dict)
    nat_policies: Dict[str, str] = field(default_factory=dict)


def _table(name: str, policies: Dict[str, str], chains: Dict[str, List[Rule]]) -> List[str]:
    lines = [f"*{name}", *(f":{c} {p} [0:0]" for c, p in policies.items())]
    lines += [f":{c} - [0:0]" for c in chains if c not in policies]
    lines += [r.render(c) for c, rules in chains.items() for r in rules]
    return lines + ["COMMIT"]


def render(rs: GenRuleset) -> str:
    lines = _table("filter", rs.policies, rs.chains)
    if rs.nat_policies:
        lines += _table("nat", rs.nat_policies, rs.nat_chains)
    return "\n".join(lines + [""])


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


def _nat_rule(rng: random.Random, chain_index: int, chains: List[str], in_user_chain: bool) -> Rule:
    """A nat/PREROUTING (or nat user chain) rule: DNAT, REDIRECT, ACCEPT, RETURN, jumps, counters."""
    atoms, proto = [], None
    if rng.random() < 0.3:
        source = rng.choice(SOURCES)
        atoms.append(f"{_neg(rng) if source != '0.0.0.0/0' else ''}-s {source}")
    if rng.random() < 0.45:  # what the probes are sent to, and the DNAT addresses themselves
        atoms.append(f"{_neg(rng, 0.15)}-d {rng.choice(DESTS[:4] + NAT_ADDRS)}")
    if rng.random() < 0.15:
        atoms.append(f"{_neg(rng)}-i {rng.choice(IFACES)}")
    # Mostly narrow rules: the guards defer whatever a nat rule may match, so catch-alls would leave
    # XDP nothing to decide and the conntrack check (NAT_FLOWS) nothing to prove.
    if rng.random() < 0.85:
        proto = rng.choice(("tcp", "tcp", "udp", "udp", "icmp", "47"))
        atoms.append(f"-p {proto}")
        if proto in ("tcp", "udp") and rng.random() < 0.85:
            if rng.random() < 0.75:
                atoms.append(f"-m {proto} {_neg(rng, 0.1)}--dport {rng.choice(PORTS + NAT_PORTS)}")
            else:
                atoms.append(f"-m multiport --dports {','.join(rng.sample(NAT_PORTS, rng.randint(2, 3)))}")
        if proto == "tcp" and rng.random() < 0.3:  # later segments are rewritten by conntrack alone
            atoms.append("-m tcp --syn")
        if proto == "icmp" and rng.random() < 0.6:
            atoms.append(f"-m icmp --icmp-type {rng.choice(('echo-request', 'echo-request', '8', 'echo-reply', 'any'))}")
    if not any("dport" in a or "-d " in a for a in atoms) and rng.random() < 0.9:
        atoms.insert(0, f"-d {rng.choice(DESTS[1:3] + NAT_ADDRS[1:])}")  # one address, not all
    if rng.random() < 0.1:  # the guards must cover what they cannot model as well
        atoms.append(rng.choice(("-m conntrack --ctstate NEW", f"-m mark {_neg(rng, 0.3)}--mark 0x1",
                                 "-m comment --comment \"nat\"", f"-m limit --limit 2/hour --limit-burst {rng.randint(1, 4)}")))
    ports = proto in ("tcp", "udp")
    later = chains[chain_index + 1:]
    roll = rng.random()
    if roll < 0.45:
        address = rng.choice(NAT_ADDRS)
        to = rng.choice((f"{address}:{rng.choice(NAT_PORTS)}", f"{address}:{rng.choice(NAT_PORTS)}", address,
                         f":{rng.choice(NAT_PORTS)}")) if ports else address
        target = f"-j DNAT --to-destination {to}"
    elif roll < 0.62:
        target = f"-j REDIRECT --to-ports {rng.choice(NAT_PORTS)}" if ports and rng.random() < 0.7 else "-j REDIRECT"
    elif roll < 0.7:
        target = "-j ACCEPT"
    elif roll < 0.8 and in_user_chain:
        target = "-j RETURN"
    elif roll < 0.95 and later:
        target = f"{rng.choice(('-j', '-j', '-g'))} {rng.choice(later)}"
    else:
        target = ""
    return Rule(atoms, target)


def _postrouting_rule(rng: random.Random) -> Rule:
    """Source NAT of the receiver's own flows: harmless for filter/INPUT, but a NAT host's mark."""
    atoms = [f"-o {RECEIVER_IF}"] if rng.random() < 0.5 else []
    if rng.random() < 0.4:
        atoms.append(f"-p {rng.choice(('udp', 'icmp', 'tcp'))}")
    if rng.random() < 0.4:
        return Rule(atoms, "-j MASQUERADE")
    return Rule(atoms, f"-j SNAT --to-source {rng.choice(NAT_ADDRS)}")


def generate_nat(seed: int, max_rules: int = 8, max_chains: int = 2):
    """The nat table of a NAT host: (policies, chains, [(position, filter/INPUT rule to insert)]). Its own random
    stream, so a seed's filter table is the one it has without nat plus the rules returned."""
    rng = random.Random(f"nat:{seed}")
    user = [f"nat{i}" for i in range(rng.randint(0, max_chains))]
    order = ["PREROUTING"] + user
    chains = {name: [_nat_rule(rng, index, order, name != "PREROUTING")
                     for _ in range(rng.randint(1, max_rules) if name == "PREROUTING" else rng.randint(0, 4))]
              for index, name in enumerate(order)}
    input_rules = [(rng.randint(0, 2), _nat_input_rule(rng)) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.6:  # first in both chains, so no random rule before them hides the motif
        forward, accept, drop = _port_forward(rng)
        chains["PREROUTING"].insert(0, forward)
        input_rules += [(0, accept), (0, drop)]
    chains["POSTROUTING"] = [_postrouting_rule(rng) for _ in range(rng.choice((0, 1, 1, 2)))]
    # A DROP policy in nat drops new flows before filter/INPUT (iptables forbids -j DROP there).
    policies = {**NAT_BUILTINS, "PREROUTING": "DROP" if rng.random() < 0.04 else "ACCEPT"}
    return policies, chains, input_rules


def _port_forward(rng: random.Random):
    """A published port: nat/PREROUTING rewrites port P to P2 (DNAT or REDIRECT, often for the SYN
    only: conntrack rewrites the rest of the connection), filter/INPUT drops P and accepts P2. XDP
    sees P on every packet; only the guards (the SYN) and the conntrack lookup (the rest, NAT_FLOWS)
    keep it from dropping what netfilter accepts."""
    proto = "tcp" if rng.random() < 0.75 else "udp"
    port, to = rng.choice(("22", "53", "80", "443", "3306")), rng.choice(NAT_PORTS)
    atoms = [f"-p {proto}", f"-m {proto} --dport {port}"] + (["-m tcp --syn"] if proto == "tcp" and
                                                             rng.random() < 0.6 else [])
    if rng.random() < 0.4:
        atoms.insert(0, f"-d {rng.choice(DESTS[1:3])}")
    target = f"-j REDIRECT --to-ports {to}" if rng.random() < 0.35 else \
        f"-j DNAT --to-destination {rng.choice(NAT_ADDRS)}:{to}"
    return (Rule(atoms, target), Rule([f"-p {proto}", f"-m {proto} --dport {to}"], "-j ACCEPT"),
            Rule([f"-p {proto}", f"-m {proto} --dport {port}"], "-j DROP"))


def generate(seed: int, max_rules: int = 12, max_chains: int = 3, forwarding: bool = False,
             nat: bool = False) -> GenRuleset:
    """A random filter-table ruleset; the same seed always gives the same ruleset.

    forwarding: FORWARD gets rules as well (forwarded destinations, -o), for runs where the receiver
    forwards (harness.Testbed(forwarding=True)); user chains may then be reached from both.
    nat: a nat table too (generate_nat): DNAT/REDIRECT in PREROUTING and its user chains, sometimes
    MASQUERADE/SNAT in POSTROUTING; the filter table is the one the seed gives without it, plus one
    to three INPUT rules about the NAT addresses and ports (_nat_input_rule).
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
    if not nat:
        return GenRuleset(seed, policies, chains)
    nat_policies, nat_chains, input_rules = generate_nat(seed)
    for position, rule in input_rules:
        chains["INPUT"].insert(min(position, len(chains["INPUT"])), rule)
    return GenRuleset(seed, policies, chains, nat_chains, nat_policies)


def _nat_input_rule(rng: random.Random) -> Rule:
    """A filter/INPUT rule of a NAT host: accept what DNAT/REDIRECT deliver to (a published port),
    or drop what they rewrite away from. Where the two differ, a verdict taken on the packet as XDP
    sees it (before nat/PREROUTING) would be wrong: the planner's guards must defer those packets."""
    proto = rng.choice(("tcp", "udp"))
    roll = rng.random()
    if roll < 0.35:
        atoms = [f"-d {rng.choice(NAT_ADDRS)}", f"-p {proto}", f"-m {proto} --dport {rng.choice(NAT_PORTS)}"]
    elif roll < 0.55:
        atoms = [f"-p {proto}", f"-m {proto} --dport {rng.choice(NAT_PORTS)}"]
    elif roll < 0.7:
        atoms = [f"-d {rng.choice(NAT_ADDRS)}"]
    elif roll < 0.72:
        return Rule([f"-p {proto}", f"-m {proto} --dport {rng.choice(PORTS)}"], "-j DROP")
    elif roll < 0.8:  # firewalld's "accept what was DNATed" (and its opposites)
        states = rng.choice(("DNAT", "DNAT", "SNAT", "DNAT,SNAT", "NEW,DNAT"))
        return Rule([f"-m conntrack {_neg(rng, 0.3)}--ctstate {states}"], rng.choice(("-j ACCEPT", "-j DROP")))
    else:  # also the SNAT addresses, at which the replies of the receiver's flows arrive
        return Rule([f"-d {rng.choice(DESTS[:4] + NAT_ADDRS)}"], "-j DROP")
    return Rule(atoms, "-j ACCEPT")


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
    """Smaller variants of rs, biggest cuts first (the filter table's, then the nat table's)."""
    for key, builtins in (("chains", rs.policies), ("nat_chains", rs.nat_policies)):
        for candidate in _table_candidates(getattr(rs, key), builtins):
            yield replace(rs, **{key: candidate})
    for chain, policy in rs.policies.items():
        if policy != "ACCEPT":
            yield replace(rs, policies={**rs.policies, chain: "ACCEPT"})
    for chain, policy in rs.nat_policies.items():
        if policy != "ACCEPT":
            yield replace(rs, nat_policies={**rs.nat_policies, chain: "ACCEPT"})


def _table_candidates(chains: Dict[str, List[Rule]], builtins: Dict[str, str]):
    for name in [c for c in chains if c not in builtins]:
        yield {c: [r for r in rules if name not in r.target.split()] for c, rules in chains.items() if c != name}
    for name, rules in chains.items():
        for i in reversed(range(len(rules))):
            yield {**chains, name: rules[:i] + rules[i + 1:]}
    for name, rules in chains.items():
        for i, rule in enumerate(rules):
            for j in range(len(rule.atoms)):
                smaller = Rule(rule.atoms[:j] + rule.atoms[j + 1:], rule.target)
                yield {**chains, name: rules[:i] + [smaller] + rules[i + 1:]}
            if rule.target and " --" in rule.target:  # e.g. drop "--reject-with X", "--to-ports P"
                simpler = Rule(rule.atoms, rule.target.split(" --")[0])
                yield {**chains, name: rules[:i] + [simpler] + rules[i + 1:]}


def rule_count(rs: GenRuleset) -> int:
    return sum(len(rules) for rules in rs.chains.values()) + sum(len(rules) for rules in rs.nat_chains.values())
