# SPDX-License-Identifier: GPL-2.0-only
"""A re-plan that starts where the last plan's filter/INPUT pass and the new one stop agreeing.

`ipt2xdp watch` re-plans after every change, and most changes append or delete a rule near the
end of INPUT: the rules before it are the same objects (parse.ParseMemo), on the same host object
(plan.TERM_MEMO). plan._inline is a left fold over INPUT's rules; for a rule without a jump, goto
or RETURN, what it emits and the emitter state after it depend only on the state before it, on the
rule object (its translation is a function of the rule and host, and of nothing in other chains),
and on its index, save for the chain's last rule (`closed`). So after rule k of such a run the
state is the same in both plans when the state after the guards is equal, the host is the same
object and rules 1..k are the same objects. The run recorded here is further limited to
"plain" states: no jump paths (history), no DROP waiting to be split (pending), no RETURN
placeholder waiting for its patch (top_returns), never the chain's last rule, in which state
_inline's other locals (uniform, closed) take the values they start with. Checkpoints are only
recorded while every earlier rule was plain too.

A checkpoint after rule k holds the lengths of the emitter's append-only lists then (classifier
rules, paths, codes, maybe-drops, set events and expiries) and of two logs: the remarks and the
maybe-drop refs the run added (only its own rules' refs; a later rule never rewrites them: only a
jump's remark is assigned over, and the run has none). The classifier rules are kept as they
were before guards.guard_set_drops rewrote some (it only reads events at or before a position,
and runs again on the whole list). The decisions of rules 1..k are those of the last plan too:
each depends on its own classifier instances (all emitted within the run, at the same positions),
their reachability (decisions.reachable is a prefix fold), its remark and maybe-drop mark, and
its text (see decisions.decide's reuse).
"""
from __future__ import annotations

from itertools import islice
from typing import List, Optional, Tuple

from ipt2xdp import irtargets

# targets whose rule leaves the run: they depend on another chain, or are patched later
_NOT_PLAIN = (irtargets.Jump, irtargets.Goto, irtargets.Return)


def guard_state(em) -> tuple:
    """The emitter's state after the guards, compared by value with the last plan's."""
    return (tuple(em.rules), tuple(em.paths), tuple(em.codes), tuple(em.remarks.items()), tuple(em.maybe_drops),
            frozenset(em.maybe_drop_refs), tuple(em.set_events), tuple(em.set_expiries))


class Recorder:
    """Checkpoints after each rule of INPUT's leading plain run (see the module docstring)."""

    def __init__(self, em) -> None:
        self.rules: List[object] = []      # INPUT's rule objects 1..k
        self.checkpoints: List[Tuple[int, ...]] = []
        self.remark_log: List[tuple] = []  # (ref, remark) as the run added them
        self.drop_ref_log: List[object] = []
        self.remarks_seen = len(em.remarks)
        self.drop_refs_seen = len(em.maybe_drop_refs)

    def note(self, em, index: int, rule, ref, history, pending, last: int) -> bool:
        """After rule `index` of INPUT: record its checkpoint; False when the run ends here."""
        if history or pending or index >= last or isinstance(rule.target, _NOT_PLAIN):
            return False
        grew = len(em.remarks) - self.remarks_seen
        if grew:
            self.remark_log.extend(reversed(list(islice(reversed(em.remarks.items()), grew))))
            self.remarks_seen += grew
        if len(em.maybe_drop_refs) != self.drop_refs_seen:  # only this rule's own ref is added
            self.drop_ref_log.append(ref)
            self.drop_refs_seen = len(em.maybe_drop_refs)
        self.rules.append(rule)
        self.checkpoints.append((len(em.rules), len(em.maybe_drops), len(em.set_events), len(em.set_expiries),
                                 len(self.remark_log), len(self.drop_ref_log)))
        return True


class Prefix:
    """What a plan leaves for the next one to start from."""

    def __init__(self, host, max_rules: int, guards: tuple, recorder: Recorder, em, rules: tuple) -> None:
        self.host, self.max_rules, self.guards = host, max_rules, guards
        self.recorder = recorder
        self.rules = rules  # classifier rules before guard_set_drops
        self.paths, self.codes = em.paths, em.codes
        self.maybe_drops, self.set_events, self.set_expiries = em.maybe_drops, em.set_events, em.set_expiries
        self.decisions: tuple = ()  # of INPUT's rules 1..len(decisions), set by decide


def resume(previous: Optional[Prefix], em, max_rules: int, guards: tuple, chain) -> int:
    """How many leading rules of INPUT (chain) the plan may take from `previous`, restoring the
    emitter to its state after them (0: none, em untouched)."""
    if previous is None or previous.host is not em.host or previous.max_rules != max_rules:
        return 0
    old, new = previous.recorder.rules, chain.rules
    limit = min(len(old), len(new) - 1)  # the new chain's last rule is planned afresh (closed)
    k = 0
    while k < limit and new[k] is old[k]:
        k += 1
    if k == 0 or guards != previous.guards:
        return 0
    start = len(em.rules)
    rules, drops, events, expiries, remarks, drop_refs = previous.recorder.checkpoints[k - 1]
    em.rules.extend(previous.rules[start:rules])
    em.paths.extend(previous.paths[start:rules])
    em.codes.extend(previous.codes[start:rules])
    em.maybe_drops.extend(previous.maybe_drops[len(em.maybe_drops):drops])
    em.set_events.extend(previous.set_events[len(em.set_events):events])
    em.set_expiries.extend(previous.set_expiries[len(em.set_expiries):expiries])
    em.remarks.update(previous.recorder.remark_log[:remarks])
    em.maybe_drop_refs.update(previous.recorder.drop_ref_log[:drop_refs])
    return k


def carried(previous: Prefix, em, k: int) -> Recorder:
    """A recorder holding the k checkpoints taken over from previous, to go on from."""
    recorder = Recorder(em)
    old = previous.recorder
    recorder.rules = old.rules[:k]
    recorder.checkpoints = old.checkpoints[:k]
    _, _, _, _, remarks, drop_refs = recorder.checkpoints[-1]
    recorder.remark_log = old.remark_log[:remarks]
    recorder.drop_ref_log = old.drop_ref_log[:drop_refs]
    return recorder
