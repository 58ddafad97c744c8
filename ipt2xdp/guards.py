# SPDX-License-Identifier: GPL-2.0-only
"""The guard rules that open the classifier, and what else the plan asks of the chains before
filter/INPUT: XDP defers packets not addressed to this host, packets a rule of raw/mangle/nat
PREROUTING or mangle INPUT may touch, and what hooks outside the planned ruleset may touch
(ipt2xdp.foreign); every DROP that relies on ipset copies gets its guard bits; nat_new() says
whether XDP can count its drops on the nat PREROUTING policy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ipt2xdp import ir, irtargets
from ipt2xdp.classifier import DEFER, U32_MAX, Action, ClassifierRule, IntervalSet, Match, Verdict
from ipt2xdp.hostinfo import HostContext
from ipt2xdp.planmodel import EARLIER_CHAINS, FOREIGN_CHAINS, NO_OP_TARGETS, RuleRef, chain_of
from ipt2xdp.render import render_rule
from ipt2xdp.terms import conjoin

ICMP = 1


MAX_NOTED_EFFECTS = 5  # per native chain, in the report's notes


def guard_set_drops(em) -> None:
    """Give every DROP the guard bits of its own sets and of every set rule before it."""
    events = sorted(em.set_events)
    earlier, e = 0, 0
    for index, rule in enumerate(em.rules):
        while e < len(events) and events[e][0] <= index:
            earlier |= events[e][1]
            e += 1
        if rule.action.verdict == Verdict.DROP and (earlier | rule.action.guard) != rule.action.guard:
            em.rules[index] = ClassifierRule(rule.match, Action(Verdict.DROP, guard=earlier | rule.action.guard),
                                             rule.rule_id)


def earlier_chain_guards(em) -> List[str]:
    """Defer every packet a rule in raw/mangle/nat PREROUTING or mangle INPUT may touch."""
    notes = []
    for table, chain_name in EARLIER_CHAINS:
        chain = chain_of(em.ruleset, table, chain_name)
        if chain is None:
            continue
        if chain.policy not in (None, "ACCEPT"):
            em.emit(Match(), DEFER, (RuleRef(table, chain_name, 0),), f"earlier.{table}-policy")
            notes.append(f"{table}/{chain_name} policy {chain.policy}: XDP defers everything")
        seen: set = set()
        _guardchain_of(em, table, chain_name, Match(), seen, 0)
    return notes


@dataclass
class _ForeignSource:
    """The other iptables backend's ruleset, guarded like the earlier chains (ipt2xdp.foreign)."""

    ruleset: ir.Ruleset
    name: str                 # "legacy" | "nft"
    notes: List[str]

    @property
    def code(self) -> str:
        return "foreign.legacy" if self.name == "legacy" else "foreign.nft-xtables"


def _guardchain_of(em, table: str, chain_name: str, cond: Match, seen: set, depth: int,
                 foreign: Optional[_ForeignSource] = None) -> None:
    chain = chain_of(foreign.ruleset if foreign else em.ruleset, table, chain_name)
    if chain is None:
        return  # a jump to a chain the other backend's text lacks cannot happen; nothing to guard
    for index, rule in enumerate(chain.rules, start=1):
        ref = RuleRef(table, chain_name, index)
        for disjunct in em.term(table, chain_name, index, rule, foreign.name if foreign else "").disjuncts:
            match = conjoin(cond, disjunct.match)
            if match is None or rule.target is None or isinstance(rule.target, NO_OP_TARGETS):
                continue
            if (isinstance(rule.target, (irtargets.Jump, irtargets.Goto)) and depth < 16
                    and (rule.target.chain, match) not in seen):
                seen.add((rule.target.chain, match))
                _guardchain_of(em, table, rule.target.chain, match, seen, depth + 1, foreign)
            elif foreign:
                em.emit(match, DEFER, (), foreign.code)
                if table == "nat":
                    _icmp_flow_guard(em, match, (), foreign.code)
                note = (f"{foreign.code}: iptables-{foreign.name} {table}/{chain_name} #{index} `{render_rule(rule)}` "
                        "(not in the planned ruleset) may touch packets first: XDP defers those")
                if note not in foreign.notes:
                    foreign.notes.append(note)
            else:
                # Superset of the packets this rule may change: its modelled match, unknowns ignored.
                code = f"earlier.{table}-{chain_name.lower()}"
                em.emit(match, DEFER, (ref,), code)
                if table == "nat":
                    _icmp_flow_guard(em, match, (ref,), code)


def _icmp_flow_guard(em, match: Match, refs, code: str) -> None:
    """A nat rule's NAT binds the flow: conntrack rewrites every later packet of it, whatever the
    rule's per-packet matches (input device, length, TTL, ICMP type, state) say of that packet. A
    later TCP/UDP packet has an entry, which NAT_FLOWS passes; an ICMP echo request does not look
    NATed to the program (may_be_natted), so defer ICMP on the flow's own fields, the addresses,
    wherever it arrives (a ping whose first request came in on another device, or was shorter)."""
    if match.proto is not None and ICMP not in match.proto:
        return
    flow = Match(src=match.src, dst=match.dst, proto=frozenset({ICMP}))
    if flow != match:
        em.emit(flow, DEFER, refs, code)


def foreign_guards(em) -> List[str]:
    """Defer what hooks outside the planned ruleset may touch (ipt2xdp.foreign): the IPv4 packets a
    statement with an effect in a native nftables chain may act on (everything when they cannot be
    bounded, or when something could not be read), and the packets a rule of the other iptables
    backend's chains before (or beside) filter/INPUT may touch."""
    from ipt2xdp import foreign as hooks
    from ipt2xdp import nftbound

    found = em.host.foreign
    if found is None:
        return []
    notes = [f"foreign.unreadable: {text}; XDP defers every packet" for text in found.unreadable]
    if found.unreadable:
        em.emit(Match(), DEFER, (), "foreign.unreadable")
        return notes
    notes += _tc_guards(em, found.tc_ingress)
    bounds = []
    for chain in hooks.native_chains(found, [t.name for t in em.ruleset.tables], found.other_tables):
        if not chain.effects:
            notes.append(f"nftables {chain.label()}: neutral (only matches and accept/drop), XDP ignores it")
        for effect in chain.effects[:MAX_NOTED_EFFECTS]:
            notes.append(f"foreign.nft: nftables {chain.label()}, {effect.where}: may change, log or count "
                         f"{nftbound.describe(effect.bound)} before filter/INPUT; XDP defers those")
        if len(chain.effects) > MAX_NOTED_EFFECTS:
            notes.append(f"foreign.nft: nftables {chain.label()}: {len(chain.effects) - MAX_NOTED_EFFECTS} more "
                         "statements with effects, deferred the same way")
        bounds += [effect.bound for effect in chain.effects]
    if any(not bound for bound in bounds):
        em.emit(Match(), DEFER, (), "foreign.nft")  # one unbounded statement: every packet
        return notes
    for bound in dict.fromkeys(bounds):
        em.emit(nftbound.to_match(bound), DEFER, (), "foreign.nft")
    other = hooks.other_ruleset(found)
    if other is None:
        return notes
    source = _ForeignSource(other, found.other, [])
    for table, chain_name in FOREIGN_CHAINS:
        chain = chain_of(other, table, chain_name)
        if chain is None:
            continue
        if chain.policy not in (None, "ACCEPT") and (table, chain_name) != ("filter", "INPUT"):
            em.emit(Match(), DEFER, (), source.code)
            source.notes.append(f"{source.code}: iptables-{found.other} {table}/{chain_name} policy "
                                f"{chain.policy}; XDP defers every packet")
            continue
        _guardchain_of(em, table, chain_name, Match(), set(), 0, source)
    return notes + source.notes


def _tc_guards(em, hooks) -> List[str]:
    """Defer every packet arriving on an attached device whose way to netfilter passes a non-empty
    tc ingress hook (ipt2xdp.tcingress): what runs there may redirect or rewrite it."""
    notes = []
    for hook in hooks:
        device = em.host.device(hook.attached) if hook.attached else None
        em.emit(Match(iif=frozenset({device.ifindex})) if device is not None else Match(), DEFER, (), "foreign.tc")
        arriving = f" arriving on {hook.attached}" if hook.attached else ""
        notes.append(f"foreign.tc: {hook.describe()} may redirect, rewrite or drop packets after XDP and before "
                     f"netfilter; XDP defers every packet{arriving}")
    return notes


def raw_ct_targets(ruleset: ir.Ruleset) -> bool:
    """Whether a raw-table rule assigns a conntrack helper: its expectations may make packets of
    other flows RELATED. NOTRACK (or CT --notrack, --zone) changes only the packets the rule
    matches: in PREROUTING those are deferred by the earlier-chain guards, in OUTPUT they are
    locally generated (a reply to an untracked packet gets an entry of its own)."""
    raw = ruleset.table("raw")
    return raw is not None and any(
        isinstance(rule.target, irtargets.GenericTarget) and rule.target.name.upper() == "CT"
        and any(option.name == "--helper" for option in rule.target.options)
        for chain in raw.chains for rule in chain.rules)


def foreign_ruleset(host: HostContext) -> Optional[ir.Ruleset]:
    from ipt2xdp.foreign import other_ruleset

    return other_ruleset(host.foreign)


def local_guard(em) -> None:
    local = IntervalSet.of((int(n.network_address), int(n.broadcast_address)) for n in em.host.local_destinations)
    em.emit(Match(dst=local.complement(U32_MAX)), DEFER, (), "guard.not-local")


def datapath_guards(em) -> List[str]:
    """Defer every packet arriving on an attached Open vSwitch port (or on a slave of a bond that is
    one): the frame goes to OVS's datapath (the port's rx handler) before the stack, and its flows
    may rewrite it (set_field, ct(nat)) or send it anywhere; what reaches netfilter is not what XDP
    saw."""
    notes = []
    for name in em.host.attached:
        device = em.host.device(name)
        if device is not None and any(m is not None and m.kind == "openvswitch" for m in em.host.masters(device)):
            em.emit(Match(iif=frozenset({device.ifindex})), DEFER, (), "foreign.ovs")
            notes.append(f"foreign.ovs: {name} hands its packets to Open vSwitch: OVS's flows handle them before the "
                         "stack and may rewrite or redirect them; XDP defers every packet arriving on it")
    return notes


def nat_flows(ruleset: ir.Ruleset, host: HostContext) -> bool:
    """Whether conntrack may hold NATed flows: a nat table (the planned backend's or the other's)
    or a native nftables chain of type nat. A packet of such a flow is rewritten in PREROUTING
    whatever the rules say (the reply to a masqueraded connection leaves it addressed to the
    container behind this host), so XDP drops only TCP/UDP without a conntrack entry (abi.NAT_FLOWS).
    Unknown foreign hooks count as NAT."""
    if ruleset.table("nat") is not None:
        return True
    found = host.foreign
    return found is not None and bool("nat" in found.other_tables or found.nat_hooks or found.unreadable)


def nat_new(ruleset: ir.Ruleset, host: HostContext) -> int:
    """Whether XDP can count, exactly, its drops on the nat PREROUTING policy (abi.NAT_NEW_* bits).

    Netfilter runs nat PREROUTING only for a packet that makes a new conntrack entry (every packet
    of a flow netfilter keeps dropping, none of a flow it knows). A packet XDP drops matches no rule
    with an effect there (their packets are deferred by the earlier-chain guards), so its traversal
    ends at the policy unless a rule without an effect may match it: a jump, ACCEPT, RETURN, or a
    rule without a target (those would count it). With such a rule, 0: not counted."""
    from ipt2xdp import abi

    chain = chain_of(ruleset, "nat", "PREROUTING")
    if chain is None or chain.policy != "ACCEPT":
        return 0
    if any(rule.target is None or isinstance(rule.target, NO_OP_TARGETS + (irtargets.Jump, irtargets.Goto))
           for rule in chain.rules):
        return 0
    return abi.NAT_NEW_ON | (abi.NAT_NEW_TCP_LOOSE if host.ct_tcp_loose else 0)
