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

A checkpoint after rule k holds the lengths of the emitter's lists then (classifier rules, paths,
codes, maybe-drops, set events and expiries are only appended to; the remarks dict only gets new
keys, in order, and the run's are never assigned over: only a jump's remark is, and the run has
none). The maybe-drop refs the run added are those of its "skip.maybe-drop" remarks. The classifier
rules are kept as they were before guards.guard_set_drops rewrote some (it only reads events at or
before a position, and runs again on the whole list). The decisions of rules 1..k are those of the
last plan too: each depends on its own classifier instances (all emitted within the run, at the
same positions), their reachability (decisions.reachable is a prefix fold), its remark and
maybe-drop mark, and its text (see decisions.decide's reuse).

Two limits are wider than needed, kept for simplicity of the argument: at the top level `closed`
only chooses between () and the history, which is () in a plain state; and the run's remarks and
maybe-drop refs are only read for the run's own rules, whose decisions are taken: they are restored
all the same, so that the emitter's state is exactly the fresh plan's.
tests/test_plan_prefix.py plans each kind of edit both ways and compares.
"""
from __future__ import annotations

from collections import deque
from itertools import islice
from typing import List, Optional, Tuple

from ipt2xdp import irtargets
from ipt2xdp.identitymemo import identical_prefix

# The Prefix objects plans have replaced, waiting to be freed: at 10k rules one holds a whole plan
# (10-20 ms to free), which plan() should not spend. import_._offload hands them to its caller with
# the plan (args.planned), which `ipt2xdp watch` frees after its answer (warm.release()).
DROPPED: "deque[Prefix]" = deque()
DROPPED_KEPT = 4  # more are freed at once: a caller that never takes them does not grow without end


def drop(previous: "Prefix") -> None:
    DROPPED.append(previous)
    while len(DROPPED) > DROPPED_KEPT:
        DROPPED.popleft()


def take_dropped() -> list:
    """The replaced prefixes so far (thread-safe: a predicted plan may be made in a thread)."""
    return [DROPPED.popleft() for _ in range(len(DROPPED))]


# targets whose rule leaves the run: they depend on another chain, or are patched later
NOT_PLAIN = (irtargets.Jump, irtargets.Goto, irtargets.Return)


def guard_state(em) -> tuple:
    """The emitter's state after the guards, compared by value with the last plan's."""
    return (tuple(em.rules), tuple(em.paths), tuple(em.codes), tuple(em.remarks.items()), tuple(em.maybe_drops),
            frozenset(em.maybe_drop_refs), tuple(em.set_events), tuple(em.set_expiries))


class Recorder:
    """Checkpoints after each rule of INPUT's leading plain run (see the module docstring).
    plan._inline appends to rules and lengths itself, without a call: a warm re-plan that takes
    nothing (an insert first) notes every rule. A rule's lengths: of the emitter's rules, maybe_drops,
    set_events, set_expiries and remarks after it."""

    def __init__(self, em) -> None:
        self.rules: List[object] = []  # INPUT's rule objects 1..k
        self.lengths: List[Tuple[int, ...]] = []
        self.remarks_start = len(em.remarks)


class Prefix:
    """What a plan leaves for the next one to start from."""

    def __init__(self, host, max_rules: int, guards: tuple, recorder: Recorder, em, rules: tuple) -> None:
        self.host, self.max_rules, self.guards = host, max_rules, guards
        self.recorder = recorder
        self.rules = rules  # classifier rules before guard_set_drops
        self.paths, self.codes, self.remarks = em.paths, em.codes, em.remarks
        self.maybe_drops, self.set_events, self.set_expiries = em.maybe_drops, em.set_events, em.set_expiries
        self.decisions: tuple = ()  # of INPUT's rules 1..len(decisions), set by decide


def resume(previous: Optional[Prefix], em, max_rules: int, guards: tuple, chain) -> int:
    """How many leading rules of INPUT (chain) the plan may take from `previous`, restoring the
    emitter to its state after them (0: none, em untouched)."""
    if previous is None or previous.host is not em.host or previous.max_rules != max_rules:
        return 0
    old, new = previous.recorder.rules, chain.rules
    # the new chain's last rule is planned afresh (closed); the first other object ends the run
    limit = min(len(old), len(new) - 1)
    k = identical_prefix(old, new, limit)
    if k == 0 or guards != previous.guards:
        return 0
    start = len(em.rules)
    rules, drops, events, expiries, remarks = previous.recorder.lengths[k - 1]
    em.rules.extend(previous.rules[start:rules])
    em.paths.extend(previous.paths[start:rules])
    em.codes.extend(previous.codes[start:rules])
    em.maybe_drops.extend(previous.maybe_drops[len(em.maybe_drops):drops])
    em.set_events.extend(previous.set_events[len(em.set_events):events])
    em.set_expiries.extend(previous.set_expiries[len(em.set_expiries):expiries])
    run = list(islice(previous.remarks.items(), previous.recorder.remarks_start, remarks))
    em.remarks.update(run)
    em.maybe_drop_refs.update(ref for ref, (code, _) in run if code == "skip.maybe-drop")
    return k


def carried(previous: Prefix, em, k: int) -> Recorder:
    """A recorder holding the k checkpoints taken over from previous, to go on from."""
    recorder = Recorder(em)
    recorder.rules = previous.recorder.rules[:k]
    recorder.lengths = previous.recorder.lengths[:k]
    recorder.remarks_start = previous.recorder.remarks_start
    return recorder
