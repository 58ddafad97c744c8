# SPDX-License-Identifier: GPL-2.0-only
"""What the fast paths decide leaves the classifier (fastpath.py's last step, apart: fastpath.py
proves the fast paths, this module proves what the classifier beside them may forget)."""
from __future__ import annotations

import bisect
import heapq
import itertools
import operator
from typing import Dict, List, Optional, Sequence, Tuple

from ipt2xdp.classifier import CONTINUE, ClassifierRule, IntervalSet, Match, Verdict
from ipt2xdp.fastpath import U32_MAX, FastPath, _only_destination


def reduce_classifier(rules: Sequence[ClassifierRule], fast: FastPath) -> Optional[List[ClassifierRule]]:
    """The classifier to hold beside the fast path: each rule's source less the prefixes the program
    probes for it, where that is exact (a rule left without a source goes; CONTINUE targets follow
    the rules that stay), so a source not on the list is classified against the rest only. None
    when nothing can go.

    A probed exact-tuple box is its rule's whole match (tuplefast.box_of), so the rule goes under
    the same condition as a prefix that is a rule's whole source (the argument below, with the box
    in place of P: before r its packets meet only rules on the destination alone).

    A packet from a probed prefix P of rule r is classified only when the fast path does not apply
    to its destination (outside fast.dsts: the program passes a packet whose src_fast map is
    missing rather than classify it). Before r it meets only rules on the destination alone
    (analyse), so whether it reaches r depends on its destination: r loses P only if those rules
    decide every destination outside fast.dsts before r, or jump it past r (a CONTINUE landing
    before r keeps it walking). Then a classified packet never reaches a rule from a part that
    rule lost, so the reduced classifier decides it as the full one (same rule, same counter);
    the other packets from P take the fast path, which decides as the full one. Prefixes of
    lengths the program does not probe (left_out) stay, as does everything without a fast path.
    """
    if not fast.plens and not fast.shapes:
        return None
    plens, every_length = fast.plens, not fast.left_out
    last = max(max(fast.rule_index, default=0), max(fast.tuple_index, default=0))
    starts, unreached = _unreached_outside(rules, fast.dsts, last, fast.destination_only)
    everywhere = all(unreached)
    gone = set()
    if not fast.tuple_left_out and _ascending(fast.tuple_index):
        # every entry's rule goes where its stretch is unreached: slices of the ascending indices
        for first, after in _unreached_slices(fast.tuple_index, starts, unreached):
            gone.update(fast.tuple_index[first:after])
    else:
        for (box, _, _), index in zip(fast.tuples, fast.tuple_index):
            # an entry's rule is its box alone (tuplefast.box_of): the rule goes with it
            if box[0] in fast.shapes and (everywhere or unreached[bisect.bisect_right(starts, index) - 1]):
                gone.add(index)
    probed: Dict[int, List[Tuple[int, int]]] = {}  # the other rules: their probed blocks
    for (net, plen, _, _), index in zip(fast.entries, fast.rule_index):
        if not every_length and plen not in plens:
            continue
        if not everywhere and not unreached[bisect.bisect_right(starts, index) - 1]:
            continue
        intervals = rules[index].match.src.intervals
        if plen == 32 and len(intervals) == 1 and intervals[0][0] == net == intervals[0][1]:
            gone.add(index)  # the common case, one address: kept inline for 100k-address blocklists
        else:
            probed.setdefault(index, []).append((net, net + (1 << (32 - plen)) - 1))
    replaced: Dict[int, ClassifierRule] = {}
    for index, blocks in probed.items():
        rule = rules[index]
        src = rule.match.src
        if sum(hi - lo + 1 for lo, hi in blocks) == src.size():
            gone.add(index)  # the probed prefixes are the whole source (they never overlap)
        else:  # a source-only DROP (analyse): the rest of its source is all its match
            rest = src.intersection(IntervalSet.of(blocks).complement(U32_MAX))
            replaced[index] = ClassifierRule(Match(src=rest), rule.action, rule.rule_id)
    if not gone and not replaced:
        return None
    if replaced:
        out = [replaced.get(index, rule) for index, rule in enumerate(rules) if index not in gone]
    else:  # the indices that stay, picked in C: most of a 10k-rule list goes
        out = list(map(rules.__getitem__, itertools.filterfalse(gone.__contains__, range(len(rules)))))
    cont = Verdict.CONTINUE
    if not any(rule.action.verdict is cont for rule in out):  # a rule that goes is a DROP
        return out
    new_index: List[int] = []  # old index -> the new index of the first rule that stays from it on
    out: List[ClassifierRule] = []
    for index, rule in enumerate(rules):
        new_index.append(len(out))
        if index not in gone:
            out.append(replaced.get(index, rule))
    new_index.append(len(out))
    return [ClassifierRule(r.match, CONTINUE(new_index[r.action.target]), r.rule_id)
            if r.action.verdict is cont else r for r in out]


def _ascending(indices: List[int]) -> bool:
    return all(map(operator.le, indices, itertools.islice(indices, 1, None)))


def _unreached_slices(indices: List[int], starts: List[int], unreached: List[bool]):
    """(first, after) per unreached stretch: the positions in the ascending indices of the rules in it."""
    for stretch, flag in enumerate(unreached):
        if flag:
            first = bisect.bisect_left(indices, starts[stretch])
            after = bisect.bisect_left(indices, starts[stretch + 1]) if stretch + 1 < len(starts) else len(indices)
            yield first, after


def _unreached_outside(rules: Sequence[ClassifierRule], dsts: IntervalSet, last: int,
                       destination_only: Optional[Sequence[int]] = None) -> Tuple[List[int], List[bool]]:
    """Cut the classifier indices 0..last into stretches (their first indices) and say per stretch
    whether no packet from a probed prefix to a destination outside dsts reaches a rule in it.
    Up to an entry's rule such a packet meets only the rules on the destination alone (analyse):
    a terminal one decides the destinations it holds, a CONTINUE moves them to its target.
    destination_only: those rules' indices, ascending (FastPath.destination_only), if known: the
    others are skipped without looking at them."""
    walking = dsts.complement(U32_MAX)  # destinations still on their way at index i
    starts, unreached = [0], [not walking]
    landing: Dict[int, IntervalSet] = {}  # CONTINUE target -> destinations that land there
    targets: List[int] = []

    def mark(index: int) -> None:
        if starts[-1] == index:
            unreached[-1] = not walking
        else:
            starts.append(index)
            unreached.append(not walking)

    for i in range(last) if destination_only is None else [i for i in destination_only if i < last]:
        rule = rules[i]
        if rule.match.src is not None or not _only_destination(rule.match):
            continue  # misses every probed prefix and box (analyse, tuplefast.analyse)
        while targets and targets[0] <= i:
            target = heapq.heappop(targets)
            walking = walking.union(landing.pop(target))
            mark(target)
        met = walking.intersection(rule.match.dst)
        if not met:
            continue
        walking = walking.intersection(rule.match.dst.complement(U32_MAX))
        if rule.action.verdict is Verdict.CONTINUE and rule.action.target <= last:
            target = rule.action.target
            if target in landing:
                landing[target] = landing[target].union(met)
            else:
                landing[target] = met
                heapq.heappush(targets, target)
        mark(i + 1)
    while targets and targets[0] <= last:
        target = heapq.heappop(targets)
        walking = walking.union(landing.pop(target))
        mark(target)
    return starts, unreached
