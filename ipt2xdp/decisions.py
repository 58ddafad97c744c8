# SPDX-License-Identifier: GPL-2.0-only
"""One decision per iptables rule, with a reason code and a sentence, from the planned classifier.

A rule is "xdp" when every classifier instance of it that a packet can reach decides in XDP,
"partial" when some instances defer, and "netfilter" when XDP never decides its packets.
"""
from __future__ import annotations

import bisect
from itertools import islice
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

from ipt2xdp import ir
from ipt2xdp.classifier import ALL_CT, FIELD_NAMES, ClassifierRule, CtClass, Match, Verdict
from ipt2xdp.identitymemo import common_prefix
from ipt2xdp.terms import unknown_why

OK_WHY = {
    "ok.drop": "XDP drops matching packets in the driver",
    "ok.set-drop": "XDP drops members of the mirrored ipset in the driver; once a member may have left "
                   "the set (ipset del, flush, swap, a timeout) it passes them to netfilter until the next import",
    "ok.accept": "XDP passes matching packets on; netfilter accepts them",
    "ok.return": "RETURN is modelled: XDP resumes after the jump",
    "ok.goto-end": "the end of a goto'd chain is modelled",
    "ok.policy": "the chain policy decides what no rule matched",
    "ok.jump": "XDP inlines the user chain with this rule's conditions",
}
OTHER_WHY = {
    "chain.not-input": "XDP only judges packets arriving for this host; this chain stays in netfilter",
    "chain.unreached": "not reached from filter/INPUT",
    "chain.too-large": "inlining this user chain would exceed the classifier's capacity",
    "iface.not-attached": "XDP is not attached to this rule's input device; netfilter sees its packets",
    "never.empty": "no packet satisfies this rule's matches",
    "fragment": "XDP passes every fragment to netfilter, so this rule never matches what XDP judges",
    "shadowed": "an earlier rule defers every packet to netfilter before this one",
    "earlier": "runs before filter/INPUT: XDP defers every packet this rule may touch",
    "foreign.nft": "a native nftables chain (not iptables-nft's) on a hook before filter/INPUT may change, "
                   "log or count these packets: XDP defers them (all packets when the rule's matches cannot "
                   "bound them)",
    "foreign.legacy": "a rule in the iptables-legacy tables (the backend the plan does not read) runs before or "
                      "beside filter/INPUT and may touch these packets: XDP defers them",
    "foreign.nft-xtables": "a rule in iptables-nft's tables (the backend the plan does not read) runs before or "
                           "beside filter/INPUT and may touch these packets: XDP defers them",
    "foreign.tc": "a tc ingress filter or program runs after XDP and before netfilter on these packets' way "
                  "and may redirect or rewrite them: XDP defers every packet arriving on that device",
    "foreign.ovs": "the device is an Open vSwitch port: OVS's flows handle its packets before the stack and "
                   "may rewrite or redirect them: XDP defers every packet arriving on it",
    "foreign.unreadable": "the hooks outside the planned ruleset (nftables, the other iptables backend, tc "
                          "ingress) could not be read: XDP defers everything",
    "target.log": "LOG must see the packet; XDP defers wherever this rule may match",
    "target.nflog": "NFLOG must see the packet; XDP defers wherever this rule may match",
    "target.reject": "REJECT answers with an ICMP error or a TCP reset; only netfilter sends it",
    "skip.maybe-drop": "XDP cannot tell whether this DROP rule matches; it goes on past it and only drops "
                       "where a later rule drops too (later ACCEPTs defer for these packets)",
    "after.maybe-drop": "an earlier DROP rule XDP cannot evaluate may drop some of these packets; "
                        "netfilter decides those",
    "counters.ways": "these packets may have matched more conditional jumps, RETURNs or rules without a "
                     "target on their way than XDP's counters tell apart; netfilter decides and counts them",
    "ctstate.lookup": "XDP's conntrack lookup tells which packets this rule cannot match (for a "
                      "state like ESTABLISHED: TCP and UDP without a conntrack entry) and goes on past "
                      "it for those; the packets it may match go to netfilter",
}


def why(code: str) -> str:
    if code in OK_WHY:
        return OK_WHY[code]
    if code in OTHER_WHY:
        return OTHER_WHY[code]
    if code.startswith("earlier."):
        return OTHER_WHY["earlier"]
    if code.startswith("target."):
        return f"-j {code.split('.', 1)[1].upper()} has effects only netfilter performs"
    return unknown_why(code.split(",")[0])


def _covers(a: Match, b: Match) -> bool:
    """Whether every packet matching b also matches a."""
    for name in FIELD_NAMES:
        outer, inner = getattr(a, name), getattr(b, name)
        if outer is None:
            continue
        if inner is None:
            return False
        if isinstance(outer, frozenset):
            if not inner <= outer:
                return False
        elif inner.intersection(outer) != inner:
            return False
    return True


MAX_COVERERS = 512


class _Union:
    """The union of some IntervalSets (sorted disjoint [lo, hi] lists) or frozensets of one field."""

    def __init__(self) -> None:
        self.starts: List[int] = []
        self.ends: List[int] = []
        self.members: set = set()

    def add(self, value) -> None:
        if isinstance(value, frozenset):
            self.members |= value
            return
        starts, ends = self.starts, self.ends
        for lo, hi in value.intervals:
            # merge with every stored interval that overlaps or touches [lo, hi]
            first = bisect.bisect_left(ends, lo - 1)
            last = bisect.bisect_right(starts, hi + 1)
            if first < last:
                lo, hi = min(lo, starts[first]), max(hi, ends[last - 1])
            starts[first:last] = [lo]
            ends[first:last] = [hi]

    def holds(self, value) -> bool:
        """Whether value lies inside the union."""
        if isinstance(value, frozenset):
            return value <= self.members
        starts, ends = self.starts, self.ends
        for lo, hi in value.intervals:
            i = bisect.bisect_right(starts, lo) - 1
            if i < 0 or ends[i] < hi:
                return False
        return True


class _Coverers:
    """Earlier broad terminal rules, grouped by the fields they constrain, for "does any of them
    cover this match" in about one union test per group instead of one _covers() per rule.

    A group can cover a match only if the match constrains every field of the group and each of
    its values lies inside the union of the group's values for that field; only then are the
    group's members tried one by one. The answer is exactly `any(_covers(c, m) for c in all)`.
    """

    def __init__(self) -> None:
        self.count = 0
        # fields -> (the fields as a set, members, (field name, its union) per field)
        self.groups: Dict[Tuple[str, ...], Tuple[FrozenSet[str], List[Match], List[Tuple[str, _Union]]]] = {}

    def add(self, match: Match, fields: Tuple[str, ...]) -> None:
        group = self.groups.get(fields)
        if group is None:
            group = self.groups[fields] = (frozenset(fields), [], [(name, _Union()) for name in fields])
        group[1].append(match)
        for name, union in group[2]:
            union.add(getattr(match, name))
        self.count += 1

    def cover(self, match: Match, present: FrozenSet[str]) -> bool:
        """present: the fields match constrains."""
        values = None
        for group_fields, members, unions in self.groups.values():
            if not group_fields <= present:
                continue
            if values is None:
                values = vars(match)
            for name, union in unions:
                if not union.holds(values[name]):
                    break
            else:
                for c in members:
                    if _covers(c, match):
                        return True
        return False


def _constrained(match: Match) -> Tuple[Tuple[str, ...], FrozenSet[str]]:
    values = vars(match)
    fields = tuple([name for name in FIELD_NAMES if values[name] is not None])
    return fields, frozenset(fields)


# _constrained() of the last reachable()'s matches, by id(match): (match, fields, their set). A
# long-lived planner hands the same Match objects again for the rules that did not change; the
# entry holds its match, so the id is not reused meanwhile. Each reachable() replaces it with its own.
_CONSTRAINED: Dict[int, Tuple[Match, Tuple[str, ...], FrozenSet[str]]] = {}


# The last remembered reachable()'s rules, answers and coverer history (see reachable).
_LAST: Optional[tuple] = None


def reachable(rules: Sequence[ClassifierRule], remember: bool = False) -> List[bool]:
    """Which classifier positions some packet can reach.

    A rule is unreachable when an earlier terminal rule matches every packet it matches. Only broad
    earlier rules (at most two constrained fields, the first MAX_COVERERS of them) are checked; a
    rule it misses is reported as reachable, which only makes the report optimistic, never XDP unsafe.

    This is a left fold: the answer at a position and the state after it (the coverers, the CONTINUE
    targets seen) depend only on the rules up to it. remember: keep this call's rules, answers and
    the history of its state, so that the next remembering call, whose rules start with equal ones
    (a long-lived planner's re-plan), takes the answers of that common prefix and rebuilds the state
    after it from the history (only the adds since the last reset, at most MAX_COVERERS).
    """
    global _CONSTRAINED, _LAST
    last, _LAST = _LAST, None
    known = _CONSTRAINED
    start = common_prefix(last[0], rules) if remember and last is not None and len(known) <= 2 * len(rules) + 1000 else 0
    if start:
        _, answers, adds, resets, continues = last
        out = answers[:start]
        adds = [event for event in adds if event[0] < start]
        resets = [index for index in resets if index < start]
        continues = [event for event in continues if event[0] < start]
        targets = {target for _, target in continues}
        coverers = _Coverers()
        since = resets[-1] if resets else 0
        for index, match, fields in adds:
            if index >= since:
                coverers.add(match, fields)
        kept = known  # the prefix's entries are in it; only new matches are added
    else:
        out, adds, resets, continues = [], [], [], []
        targets, coverers, kept = set(), _Coverers(), {}
    resume = Verdict.CONTINUE
    for index in range(start, len(rules)):
        rule = rules[index]
        if index in targets:
            coverers = _Coverers()  # packets arriving here skipped some earlier rules
            resets.append(index)
        match = rule.match
        entry = known.get(id(match))
        if entry is None or entry[0] is not match:
            entry = (match, *_constrained(match))
        kept[id(match)] = entry
        live = not (coverers.groups and coverers.cover(match, entry[2]))
        out.append(live)
        if not live:
            continue
        action = rule.action
        if action.verdict == resume:
            targets.add(action.target)
            continues.append((index, action.target))
        elif len(entry[1]) <= 2 and coverers.count < MAX_COVERERS:
            coverers.add(match, entry[1])
            adds.append((index, match, entry[1]))
    _CONSTRAINED = kept
    if remember:
        _LAST = (tuple(rules), out[:], adds, resets, continues)
    return out


def decide(ruleset: ir.Ruleset, rules, paths, codes, guards: int, remarks, reuse=None, prefix=None):
    """reuse: (k, p, the last plan's decisions of filter/INPUT's rules 1..k or more): rules 1..k
    are those of the last plan with the same classifier instances, all before position p, and none
    after (planprefix); their decisions are taken as they were. prefix: a planprefix.Prefix to keep
    this plan's decisions of INPUT's rules in, for the next plan."""
    from ipt2xdp.fastinit import fast_constructor
    from ipt2xdp.plan import EARLIER_CHAINS, Decision, RuleRef
    from ipt2xdp.render import render_rule

    new_ref, new_decision = fast_constructor(RuleRef), fast_constructor(Decision)  # one per rule
    derived_key, deferred = ir.DERIVED, Verdict.DEFER
    live = reachable(rules, remember=prefix is not None)
    taken, first = (reuse[0], max(guards, reuse[1])) if reuse else (0, guards)
    instances = _instances(rules, paths, codes, first, live)
    found = instances.get
    maybe_drops = {(ref.table, ref.chain, ref.index) for ref, (code, _) in remarks.items() if code == "skip.maybe-drop"}
    sentences: Dict[str, str] = {}
    decisions = []
    add = decisions.append
    run = None  # where the decisions of filter/INPUT's rules start
    for table in ruleset.tables:
        for chain in table.chains:
            if chain.builtin and (table.name, chain.name) == ("filter", "INPUT"):
                ref = RuleRef(table.name, chain.name, 0)
                kind = "xdp" if instances.get((table.name, chain.name, 0)) else "netfilter"
                code = "ok.policy" if kind == "xdp" else "shadowed"
                add(Decision(ref, kind, code, why(code), f"-P INPUT {chain.policy}"))
                run, skip = len(decisions), taken
                decisions.extend(reuse[2][:taken] if taken else ())
            else:
                skip = 0
            # _classify's answer for every rule of a chain XDP never judges
            fixed = _chain_outcome(table.name, chain.name, EARLIER_CHAINS)
            table_name, chain_name = table.name, chain.name
            for index, rule in enumerate(islice(chain.rules, skip, None) if skip else chain.rules, start=skip + 1):
                ref = new_ref(table_name, chain_name, index)
                if fixed is not None:
                    kind, code = fixed
                else:
                    key = (table_name, chain_name, index)
                    outcomes = found(key)
                    if not outcomes or (maybe_drops and key in maybe_drops):
                        kind, code = _unjudged(ref, outcomes, remarks, live)
                    elif len(outcomes) == 1:  # _judged's answer for one instance, without its lists
                        verdict, code, match = outcomes[0]
                        if verdict != deferred:
                            kind = "xdp"
                        elif match.ct is not None and _lookup_rules_out_some(match):
                            kind, code = "partial", "ctstate.lookup" if code == "match.ctstate-unsure" else code
                        else:
                            kind = "netfilter"
                    else:
                        kind, code = _judged(outcomes)
                sentence = sentences.get(code)
                if sentence is None:
                    sentence = sentences[code] = why(code)
                # render_rule(rule), its memo read here: the parse gave most rules their text
                derived = rule.__dict__.get(derived_key)
                text = derived.get("text") if derived is not None else None
                add(new_decision(ref, kind, code, sentence, text or render_rule(rule)))
    if prefix is not None and run is not None:
        prefix.decisions = tuple(decisions[run:run + len(prefix.recorder.rules)])
    return tuple(decisions)


def _instances(rules, paths, codes, guards: int, live) -> Dict[Tuple[str, str, int], List[Tuple[Verdict, str, Match]]]:
    """iptables rule -> (verdict, code, match) of its reachable classifier instances; a rule with
    instances, none reachable, has an empty list (it was emitted: shadowed). Keyed by (table,
    chain, index): a tuple hashes and compares in C, a RuleRef in Python."""
    instances: Dict[Tuple[str, str, int], List[Tuple[Verdict, str, Match]]] = {}
    found = instances.get
    tail = slice(guards, None)
    for rule, path, code, alive in zip(rules[tail], paths[tail], codes[tail], live[tail]):
        if path:
            last = path[-1]
            key = (last.table, last.chain, last.index)
            outcomes = found(key)
            if outcomes is None:
                outcomes = instances[key] = []
            if alive:
                outcomes.append((rule.action.verdict, code, rule.match))
    return instances


def _lookup_rules_out_some(match: Match) -> bool:
    """Whether the rule's state match leaves out a conntrack class some packet of the rule's other
    matches can be in: XDP then knows, from its lookup, that the rule does not match those packets.
    The lookup classes TCP and UDP (entry or none); every other packet is "not looked up"."""
    if match.ct is None:
        return False
    may_be_tcp_udp = match.proto is None or bool(match.proto & {6, 17})
    may_be_other = match.proto is None or bool(match.proto - {6, 17})
    for excluded in ALL_CT - match.ct:
        if excluded == CtClass.NOT_LOOKED_UP and may_be_other:
            return True
        if excluded != CtClass.NOT_LOOKED_UP and may_be_tcp_udp:
            return True
    return False


def _chain_outcome(table, chain, earlier) -> Optional[Tuple[str, str]]:
    """The decision of every rule of a chain XDP does not judge (None for the others)."""
    if (table, chain) in earlier:
        return "netfilter", f"earlier.{table}-{chain.lower()}"
    if table != "filter" or chain in ("FORWARD", "OUTPUT"):
        return "netfilter", "chain.not-input"
    return None


def _judged(outcomes) -> Tuple[str, str]:
    """The decision of a rule with reachable classifier instances (not a maybe-drop)."""
    deferred = [code for verdict, code, _ in outcomes if verdict == Verdict.DEFER]
    if not deferred:
        return "xdp", outcomes[0][1]
    if len(deferred) < len(outcomes):
        return "partial", deferred[0]
    if any(_lookup_rules_out_some(match) for _, _, match in outcomes):
        unsure_state_only = all(code == "match.ctstate-unsure" for code in deferred)
        return "partial", "ctstate.lookup" if unsure_state_only else deferred[0]
    return "netfilter", deferred[0]


def _unjudged(ref, outcomes, remarks, live) -> Tuple[str, str]:
    """The decision of a rule without reachable instances (outcomes: None when it has none at all,
    [] when every one is shadowed), or of a maybe-drop rule."""
    if outcomes:
        return "partial", "skip.maybe-drop"  # a maybe-drop rule with instances of its own
    if outcomes is not None:
        return "netfilter", "shadowed"
    if ref in remarks:
        code, position = remarks[ref]
        if isinstance(position, range):  # an inlined jump's block: shadowed when none of it is reachable
            if position and not any(live[i] for i in position):
                return "netfilter", "shadowed"
            position = None if position else position.start  # an empty chain: where it would act
        if position is not None and position < len(live) and not live[position]:
            return "netfilter", "shadowed"
        if code == "skip.maybe-drop":
            return "partial", code
        return ("xdp" if code.startswith("ok.") else "netfilter"), code
    return "netfilter", "chain.unreached"
