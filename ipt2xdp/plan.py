# SPDX-License-Identifier: GPL-2.0-only
"""Plan what XDP may decide: IR ruleset + host context -> classifier rules + a decision per rule.

XDP runs before every netfilter hook, so a filter/INPUT verdict is only used for packets that reach
filter/INPUT unchanged. The classifier therefore starts with guard rules that defer (guards.py):
  1. packets not addressed to this host (they are forwarded, or dropped by the stack: not INPUT's);
  2. packets any rule of raw/mangle/nat PREROUTING or mangle INPUT may touch (DNAT, marks, drops),
     or a hook outside the planned ruleset may touch (ipt2xdp.foreign).
Then filter/INPUT is flattened: user chains are inlined with the caller's conditions conjoined,
RETURN becomes CONTINUE to the end of the inlined block, and a rule whose outcome XDP cannot know
(unmodelled match, or a target with side effects such as LOG or REJECT) becomes DEFER wherever its
modelled part matches. The chain policy closes the classifier as an explicit rule, so that its
packets are counted too. Each classifier rule has a counter path, the iptables rules its packets
matched on their way; a DROP rule that packets may reach by several ways (back out of a conditional
jump, past a rule without a target) is split into one classifier rule per way (ipt2xdp.jumppaths).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

from ipt2xdp import ir, irtargets, jumppaths, planprefix, splitmemo
from ipt2xdp.classifier import (ACCEPT, CONTINUE, DEFER, DROP, GUARD_ADDITIONS, GUARD_REMOVALS, Action,
                                ClassifierRule, Match)
from ipt2xdp.decisions import _covers
from ipt2xdp.fastinit import fast_constructor
from ipt2xdp.guards import (datapath_guards, earlier_chain_guards, foreign_guards, foreign_ruleset, guard_set_drops,
                            local_guard, nat_flows, nat_new, raw_ct_targets)
from ipt2xdp.hostinfo import HostContext
from ipt2xdp.hostmatch import nf_interface_names
from ipt2xdp.jumppaths import History, Way
from ipt2xdp.planmodel import EARLIER_CHAINS, Decision, Plan, RuleRef, chain_of
from ipt2xdp.terms import SetUse, Term, conjoin
from ipt2xdp.translate import translate

__all__ = ["EARLIER_CHAINS", "Decision", "Plan", "RuleRef", "TERM_MEMO", "nat_new", "plan"]

DEFAULT_MAX_RULES = 100_000
# Set to {"host": HostContext, "terms": {}} by a long-lived planner (`ipt2xdp watch`) to keep each
# rule's Term between plans: a Term is a pure function of the rule (ir.Rule equality leaves its
# position out) and of the host object it was translated for, so it is reused only for that object.
# While it is set, plan() also keeps in it ("prefix") where the next plan may start (planprefix),
# and each rule its conjunctions with the conditions of the jumps to its chain (_conjoined).
TERM_MEMO: Optional[dict] = None
# Unknown parts of a DROP rule that read the packet or conntrack without changing any state. XDP
# may then go on past the rule as if it did not match ("maybe-drop"): netfilter drops the packet
# either way when a later rule does, so a later DROP stays exact; a later ACCEPT (or an ACCEPT
# policy) becomes DEFER for the packets the maybe-drop rule may match. Matches with side effects
# (-m recent --set/--update, -m limit and -m hashlimit tokens, set counters) are not skipped, nor
# an ambiguous input device (the packet may be bridged and never reach INPUT).
SKIPPABLE_UNKNOWN = frozenset({"match.ctstate-unsure", "match.conntrack", "match.state", "match.length", "match.ttl",
                               "match.addrtype", "match.mac", "match.mark", "match.connmark", "match.tcp-option",
                               "match.string", "match.u32", "match.port-protocol", "match.out-interface"})
MAX_MAYBE_DROPS = 16
# Targets in the raw table that change conntrack handling (helpers, NOTRACK, zones, templates).
CT_RAW_TARGETS = ("CT", "NOTRACK")

# One of each per rule: without the frozen __init__'s setattrs.
_new_classifier_rule, _new_ref = fast_constructor(ClassifierRule), fast_constructor(RuleRef)

TARGET_WHY = {
    "LOG": "LOG must see the packet; XDP defers wherever this rule may match",
    "NFLOG": "NFLOG must see the packet; XDP defers wherever this rule may match",
    "REJECT": "REJECT answers with an ICMP error or a TCP reset; only netfilter sends it",
}


@dataclass
class _Emitter:
    host: HostContext
    ruleset: ir.Ruleset
    max_rules: int
    # Three parallel lists, indexed by classifier position (== rule_id): the rule, the iptables
    # rules its packets traverse, and the reason code the report shows for it.
    rules: List[ClassifierRule] = field(default_factory=list)
    paths: List[Tuple[RuleRef, ...]] = field(default_factory=list)
    codes: List[str] = field(default_factory=list)
    terms: Dict[Tuple[str, str, int], Term] = field(default_factory=dict)
    # iptables rules that produce no classifier rule of their own: inlined jumps, never-matching rules
    # (code, classifier position the rule would act at, a jump's range of them, or None)
    remarks: Dict[RuleRef, Tuple[str, Union[int, range, None]]] = field(default_factory=dict)
    # matches of the DROP rules XDP steps past (see SKIPPABLE_UNKNOWN); later ACCEPTs defer for them
    maybe_drops: List[Match] = field(default_factory=list)
    maybe_drop_refs: set = field(default_factory=set)
    # the -i names netfilter sees for the attached devices: the same for every rule
    interfaces: Optional[Tuple[Dict[int, str], FrozenSet[int]]] = None
    # (classifier position, GUARD_* bits): from that position on, a DROP relies on the mirrored
    # sets of an earlier rule not changing that way (see guard_set_drops)
    set_events: List[Tuple[int, int]] = field(default_factory=list)
    set_expiries: List[int] = field(default_factory=list)  # of the copies some DROP relies on

    def __post_init__(self) -> None:
        self.interfaces = nf_interface_names(self.host)
        # Earlier chains are guarded by a superset of what their rules touch: a set match there
        # stays unknown (its copy could grow stale unnoticed by the filter rules' guards).
        self.guard_host = replace(self.host, ipsets=None)

    def emit_accept(self, match: Match, path: Tuple[RuleRef, ...], code: str) -> None:
        for dropped in self.maybe_drops:
            narrowed = conjoin(match, dropped)
            if narrowed is not None:
                self.emit(narrowed, DEFER, path, "after.maybe-drop")
        self.emit(match, ACCEPT, path, code)

    def emit_drop(self, match: Match, action: Action, path: Tuple[RuleRef, ...], ref: RuleRef, code: str,
                  history: History) -> None:
        """A DROP rule's classifier rules, one per way its packets may have come (jumppaths)."""
        for part, refs, _ in jumppaths.split(history, match):
            if refs is None:
                self.emit(part, DEFER, path + (ref,), jumppaths.DEFER_CODE)
            else:
                self.emit(part, action, path + refs + (ref,), code)

    def emit_drops(self, pending: List[Tuple[Match, RuleRef]], path: Tuple[RuleRef, ...], history: History) -> None:
        """The plain DROP rules of pending (consecutive, one history), grouped by way; pending empties."""
        if not pending:
            return
        if TERM_MEMO is not None:  # a long-lived planner: the splits of the rules after an unchanged jump
            splits = splitmemo.splits(history, [match for match, _ in pending], [ref for _, ref in pending])
        else:
            splits = [[part + (ref,) for part in jumppaths.split(history, match)] for match, ref in pending]
        for part, refs, _, ref in jumppaths.grouped(splits):
            if refs is None:
                self.emit(part, DEFER, path + (ref,), jumppaths.DEFER_CODE)
            else:
                self.emit(part, DROP, path + refs + (ref,), "ok.drop")
        pending.clear()

    def emit(self, match: Match, action: Action, path: Tuple[RuleRef, ...], code: str) -> None:
        self.rules.append(_new_classifier_rule(match, action, len(self.rules)))
        self.paths.append(path)
        self.codes.append(code)

    def truncate(self, length: int) -> None:
        del self.rules[length:], self.paths[length:], self.codes[length:]

    def term(self, table: str, chain: str, index: int, rule: ir.Rule, source: str = "") -> Term:
        host = self.host if table == "filter" else self.guard_host
        memo = TERM_MEMO if TERM_MEMO is not None and TERM_MEMO["host"] is host else None
        kept = rule.__dict__.get(ir.DERIVED) if memo is not None else None
        if kept is not None:  # the translation kept with the rule object and its re-read copies
            found = kept.get("term")
            if found is None or found[0] is not host:
                found = kept["term"] = (host, translate(rule, host, self.interfaces))
            return found[1]
        # a rule of a chain inlined more than once is translated once
        key = (f"{source}:{table}" if source else table, chain, index)
        found = self.terms.get(key)
        if found is None:
            if memo is not None:
                found = memo["terms"].get(rule)
                if found is None:
                    found = memo["terms"][rule] = translate(rule, host, self.interfaces)
            else:
                found = translate(rule, host, self.interfaces)
            self.terms[key] = found
        return found

    def note_sets(self, uses: Tuple[SetUse, ...], bits: int) -> int:
        """Record what set changes matter from here on (and their expiry); returns bits."""
        if any(u.forceadd for u in uses) and bits & GUARD_REMOVALS:
            bits |= GUARD_ADDITIONS  # an add to a full forceadd set evicts a member
        if bits & GUARD_REMOVALS:
            self.set_expiries.extend(u.expiry_ns for u in uses if u.expiry_ns is not None)
        return bits


# the targets _side_effect_code() answers None for, by exact type (the others go through it)
_MODELLED_TARGETS = frozenset({type(None), irtargets.Accept, irtargets.Drop, irtargets.Return, irtargets.Jump,
                               irtargets.Goto})


def _side_effect_code(target) -> Optional[str]:
    if target is None or isinstance(target, (irtargets.Accept, irtargets.Drop, irtargets.Return, irtargets.Jump,
                                             irtargets.Goto)):
        return None
    return f"target.{target.name.lower()}"


def _inline(em: _Emitter, table: str, chain_name: str, cond: Match, path: Tuple[RuleRef, ...],
            returns: List[int], depth: int, history: History = (), exits: Optional[List[Way]] = None,
            start: int = 0, recorder: Optional[planprefix.Recorder] = None) -> Optional[History]:
    """Emit the rules of chain_name under `cond`; RETURNs append their rule index to `returns`.
    Returns the history (jumppaths) at the chain's end, None when its last rule leaves no packet
    to fall off the end.

    `returns` holds the positions of CONTINUE placeholders that the caller patches to the end of
    its block once it is known (RETURN resumes after the jump that entered this chain). `history`:
    the ways a packet entering the chain may have come by; `exits` gathers the ways of the packets
    that leave it early (RETURN, the end of a goto'd chain), in rule order. filter/INPUT only: `start`
    rules were taken from the last plan (planprefix.resume), and `recorder` notes the checkpoints.
    """
    if exits is None:
        exits = []
    chain = chain_of(em.ruleset, table, chain_name)
    # conjoin(cond, m) is m itself when cond constrains nothing (a Term's disjuncts have no empty field)
    unconditional = all(value is None for value in vars(cond).values())
    last, closed = len(chain.rules), False
    pending: List[Tuple[Match, RuleRef]] = []  # consecutive DROP rules after a jump, split together
    uniform = jumppaths.uniform(history, cond)
    # em.term()'s answer read here when the rule keeps it (TERM_MEMO), without the call
    host = em.host if table == "filter" else em.guard_host
    memo_on = TERM_MEMO is not None and TERM_MEMO["host"] is host
    derived_key, emit_rule, emit_path, emit_code = ir.DERIVED, em.rules.append, em.paths.append, em.codes.append
    for index, rule in enumerate(islice(chain.rules, start, None) if start else chain.rules, start=start + 1):
        ref = _new_ref(table, chain_name, index)
        kept = rule.__dict__.get(derived_key) if memo_on else None
        found = kept.get("term") if kept is not None else None
        term = found[1] if found is not None and found[0] is host else em.term(table, chain_name, index, rule)
        if term.set_uses:
            em.emit_drops(pending, path, history)
            em.set_events.append((len(em.rules), em.note_sets(term.set_uses, _earlier_set_bits(rule, term))))
        if not term.disjuncts:
            em.remarks.setdefault(ref, (term.never, None))
        target = rule.target
        for disjunct in term.disjuncts:
            match = disjunct.match
            if not unconditional:
                match = conjoin(cond, match) if kept is None else _conjoined(kept, cond, match)
                if match is None:
                    continue
            if type(target) is irtargets.Drop and not disjunct.unknown and not term.set_uses:
                if uniform is not None:  # every packet here came one way (an unconditional jump)
                    em.emit(match, DROP, path + uniform + (ref,), "ok.drop")
                elif history:
                    pending.append((match, ref))
                else:  # the common case: em.emit(match, DROP, path + (ref,), "ok.drop") inlined
                    emit_rule(_new_classifier_rule(match, DROP, len(em.rules)))
                    emit_path(path + (ref,))
                    emit_code("ok.drop")
                closed = closed or (index == last and _covers(match, cond))
                continue
            if pending:
                em.emit_drops(pending, path, history)
            side_effect = None if type(target) in _MODELLED_TARGETS else _side_effect_code(target)
            if (disjunct.unknown and not side_effect and isinstance(rule.target, irtargets.Drop)
                    and set(disjunct.unknown.split(",")) <= SKIPPABLE_UNKNOWN and len(em.maybe_drops) < MAX_MAYBE_DROPS):
                em.maybe_drops.append(match)
                em.maybe_drop_refs.add(ref)
                em.remarks.setdefault(ref, ("skip.maybe-drop", None))
            elif disjunct.unknown or side_effect:  # em.emit(match, DEFER, ...) inlined
                emit_rule(_new_classifier_rule(match, DEFER, len(em.rules)))
                emit_path(path + (ref,))
                emit_code(disjunct.unknown or side_effect)
            elif rule.target is None:
                # a counting-only rule: no effect on the packet's fate, but netfilter counts it
                history = jumppaths.went_on(jumppaths.after_rule(history, match, ref), history, cond)
                uniform = jumppaths.uniform(history, cond)
            elif isinstance(rule.target, irtargets.Accept):
                em.emit_accept(match, path + (ref,), "ok.accept")
            elif isinstance(rule.target, irtargets.Drop) and term.set_uses:
                em.emit_drop(match, Action(DROP.verdict, guard=em.note_sets(term.set_uses, _own_set_bits(term))),
                             path, ref, "ok.set-drop", history)
            elif isinstance(rule.target, irtargets.Drop):
                em.emit_drop(match, DROP, path, ref, "ok.drop", history)
            elif isinstance(rule.target, irtargets.Return):
                returns.append(len(em.rules))
                em.emit(match, CONTINUE(0), path + (ref,), "ok.return")  # patched by the caller
                exits.extend(jumppaths.after_rule(history, match, ref))
            else:
                start = len(em.rules)
                came_back = _call(em, table, rule.target, match, path + (ref,), returns, depth, history, exits)
                # where it acts: the block of its chain (a split rule's first part may be unreachable)
                earlier = em.remarks.get(ref, ("", None))[1]
                em.remarks[ref] = ("ok.jump", range(earlier.start if isinstance(earlier, range) else start,
                                                    len(em.rules)))
                if came_back:
                    history = jumppaths.went_on(came_back, history, cond)
                    uniform = jumppaths.uniform(history, cond)
                if not isinstance(rule.target, irtargets.Goto):
                    continue
            if (index == last and rule.target is not None and ref not in em.maybe_drop_refs
                    and _covers(match, cond)):
                closed = True  # every packet is decided or leaves by this last rule: none falls off the end
        if recorder is not None:  # a checkpoint while the state stays plain (planprefix)
            if history or pending or index >= last or isinstance(target, planprefix.NOT_PLAIN):
                recorder = None
            else:
                recorder.rules.append(rule)
                recorder.lengths.append((len(em.rules), len(em.maybe_drops), len(em.set_events),
                                         len(em.set_expiries), len(em.remarks)))
    em.emit_drops(pending, path, history)
    return None if closed else history


# How many conjunctions a rule keeps (_conjoined): one per place its chain is inlined from, until
# the jumps' conditions change; then the oldest go.
CONJOINED_KEPT = 4


def _conjoined(kept: dict, cond: Match, match: Match) -> Optional[Match]:
    """conjoin(cond, match), kept with the rule (kept: its ir.DERIVED dict, present while TERM_MEMO
    serves its host) for the same two Match objects. A conjunction is a function of the two values
    alone; both objects are held by the entry, so their ids are not reused while it lives. Under an
    unchanged jump, cond is the jump rule's own memoised match (or a conjunction kept the same way),
    so a re-plan meets the same objects again."""
    memo = kept.get("conjoined")
    if memo is None:
        memo = kept["conjoined"] = {}
    key = (id(cond), id(match))
    found = memo.get(key)
    if found is not None and found[0] is cond and found[1] is match:
        return found[2]
    if len(memo) >= CONJOINED_KEPT:
        del memo[next(iter(memo))]
    narrowed = memo[key] = (cond, match, conjoin(cond, match))
    return narrowed[2]


def _call(em: _Emitter, table: str, target, match: Match, path: Tuple[RuleRef, ...],
          returns: List[int], depth: int, history: History, exits: List[Way]) -> List[Way]:
    """Inline a -j or -g; degrade to DEFER when the ruleset would blow up the classifier.
    Returns the ways of the packets that come back after a -j (none for a -g: they leave our
    chain, and join `exits`)."""
    start = len(em.rules)
    inner_returns: List[int] = []
    inner_exits: List[Way] = []
    end_history: Optional[History] = ()
    if depth < 64 and start < em.max_rules:
        end_history = _inline(em, table, target.chain, match, path, inner_returns, depth + 1,
                              jumppaths.entered(history, match), inner_exits)
    if depth >= 64 or len(em.rules) > em.max_rules:
        em.truncate(start)
        em.emit(match, DEFER, path, "chain.too-large")
        return []
    came_back = jumppaths.returned(inner_exits, end_history, match, path[-1])
    if isinstance(target, irtargets.Goto):
        # RETURN in, or falling off the end of, a goto'd chain returns to *our* caller: route both
        # through one rule that continues where our caller's RETURN would.
        end = len(em.rules)
        returns.append(end)
        em.emit(match, CONTINUE(0), path, "ok.goto-end")
        exits.extend(came_back)
        came_back = []
    else:
        end = len(em.rules)
    for position in inner_returns:
        _patch(em, position, end)
    return came_back


def _patch(em: _Emitter, position: int, target_index: int) -> None:
    rule = em.rules[position]
    em.rules[position] = ClassifierRule(rule.match, CONTINUE(target_index), rule.rule_id)


def _own_set_bits(term: Term) -> int:
    """A DROP that matched by membership stops matching when members go (or, negated, come)."""
    return sum({GUARD_ADDITIONS if u.negated else GUARD_REMOVALS for u in term.set_uses})


def _earlier_set_bits(rule: ir.Rule, term: Term) -> int:
    """What changes of this rule's sets can alter the fate of a packet a later DROP decides.

    The later DROP is only reached when XDP saw this rule not match (or jump past it). A change
    that makes it match a packet it did not (an added member, a removed one when negated) lets
    an ACCEPT, a side effect or an unknown act first. A DROP rule fully decided in XDP, or one
    it steps past, can only drop such a packet too, and a rule without a target does nothing.
    Jumps, gotos and RETURN also change what follows when they *stop* matching: both ways.
    """
    if rule.target is None:
        return 0
    if isinstance(rule.target, (irtargets.Jump, irtargets.Goto, irtargets.Return)):
        return GUARD_REMOVALS | GUARD_ADDITIONS
    exact = all(d.unknown is None or set(d.unknown.split(",")) <= SKIPPABLE_UNKNOWN for d in term.disjuncts)
    if isinstance(rule.target, irtargets.Drop) and exact:
        return 0
    return sum({GUARD_REMOVALS if u.negated else GUARD_ADDITIONS for u in term.set_uses})


def plan(ruleset: ir.Ruleset, host: HostContext, max_rules: int = DEFAULT_MAX_RULES) -> Plan:
    """Plan filter/INPUT of `ruleset` for packets arriving on host.attached devices."""
    from ipt2xdp.decisions import decide

    other = None if host.foreign is None else foreign_ruleset(host)
    if not host.ct_external_helpers and (raw_ct_targets(ruleset) or (other is not None and raw_ct_targets(other))):
        host = replace(host, ct_external_helpers=True)  # expectations (RELATED) or UNTRACKED possible
    em = _Emitter(host, ruleset, max_rules)
    local_guard(em)
    notes = datapath_guards(em) + foreign_guards(em) + earlier_chain_guards(em)
    guards = len(em.rules)
    input_chain = chain_of(ruleset, "filter", "INPUT")
    policy = input_chain.policy if input_chain is not None else "ACCEPT"
    history: History = ()
    # a long-lived planner's TERM_MEMO also keeps where this plan may start the next (planprefix)
    memo = TERM_MEMO if TERM_MEMO is not None and TERM_MEMO["host"] is em.host else None
    recorder = previous = None
    start = 0
    if memo is not None and input_chain is not None:
        splitmemo.trim(sum(len(chain.rules) for table in ruleset.tables for chain in table.chains))
        guard_state = planprefix.guard_state(em)
        previous = memo.pop("prefix", None)
        start = planprefix.resume(previous, em, max_rules, guard_state, input_chain)
        recorder = planprefix.carried(previous, em, start) if start else planprefix.Recorder(em)
    if input_chain is not None:
        top_returns: List[int] = []
        top_exits: List[Way] = []
        history = _inline(em, "filter", "INPUT", Match(), (), top_returns, 0, (), top_exits, start, recorder) or ()
        policy_position = len(em.rules)
        for position in top_returns:  # RETURN in a builtin chain: the policy decides
            _patch(em, position, policy_position)
        # those packets reach the policy too (a goto'd chain's end included)
        history = jumppaths.went_on(top_exits, history, Match())
    if policy == "DROP":
        em.emit_drop(Match(), DROP, (), RuleRef("filter", "INPUT", 0), "ok.policy", history)
    else:
        em.emit_accept(Match(), (RuleRef("filter", "INPUT", 0),), "ok.policy")
    prefix = None
    if recorder is not None:
        prefix = planprefix.Prefix(em.host, max_rules, guard_state, recorder, em, tuple(em.rules))
    if em.set_events:
        guard_set_drops(em)
    reuse = None
    if start:  # INPUT's rules 1..start are those of the last plan, at the same classifier positions
        reuse = (start, previous.recorder.lengths[start - 1][0], previous.decisions)
    decisions = decide(ruleset, em.rules, em.paths, em.codes, guards, em.remarks, reuse, prefix)
    if prefix is not None:
        memo["prefix"] = prefix
    if previous is not None:
        planprefix.drop(previous)  # freed by the caller when it has time (planprefix.DROPPED)
    deadline = min(em.set_expiries) if em.set_expiries else None
    counting_nat = nat_new(ruleset, host)
    if counting_nat:
        notes.append("counters.nat-prerouting: with iptables-legacy, XDP looks up in conntrack each packet it "
                     "drops, to count on the nat PREROUTING policy those that would have made an entry; it "
                     "passes to netfilter the ones it cannot place (ICMP requests, other protocols, TCP/UDP "
                     "whose checksum it could not verify)")
    flows = nat_flows(ruleset, host)
    if flows:
        notes.append("nat.flows: conntrack may hold NATed flows here (a nat table or a native nat chain): a packet "
                     "of one is rewritten before filter/INPUT (a masqueraded connection's reply goes to the "
                     "container), so XDP drops only TCP/UDP without a conntrack entry and passes the rest")
    expectations = flows and host.ct_external_helpers
    if expectations:
        notes.append("nat.expectations: conntrack helpers may be assigned here too (raw CT --helper, an nftables "
                     "ct helper, automatic assignment): the first packet of a connection a helper expects (FTP "
                     "data, TFTP, SIP media) has no entry yet and is NATed like its master connection before "
                     "filter/INPUT, whatever the nat rules say, so XDP drops no TCP or UDP packet")
    return Plan(tuple(em.rules), DEFER, decisions, tuple(em.paths), tuple(notes), tuple(em.codes),
                deadline, counting_nat, flows, expectations)
