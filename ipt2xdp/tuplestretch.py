# SPDX-License-Identifier: GPL-2.0-only
"""tuplefast.analyse() of long stretches of rules that each name one source address, in C-level
passes: the leading stretch (most of a list of exact tuples, the shape `ipt2xdp watch`
re-analyses at 10k rules after every change), kept for the next call where a re-plan takes its
rules over; and a stretch after rules on a destination port alone (fail2ban's jump and RETURN).
Each gives what analyse's rule-by-rule loop gives (tests/test_tuplefast.py compares them); the
proof is tuplefast's. meets and MAX_SCAN are read from tuplefast when called (tests replace them).
"""
from __future__ import annotations

import bisect
import itertools
import operator
from operator import itemgetter
from typing import List, Optional, Sequence

from ipt2xdp import tuplefast
from ipt2xdp.classifier import Verdict

K_SRC, K_DPORT = tuplefast.K_SRC, tuplefast.K_DPORT


def port_stretch(rules, facts, start, skip, action_code, earlier, entries, rule_index) -> int:
    """analyse's loop over the rules from start on that each name one source address (up to the
    first other rule, or a skipped one), while only single sources and destination ports are
    indexed (the rules after fail2ban's jump on port 22 and its chain's RETURN): in C-level passes
    where a box has no earlier namesake and no earlier rule on its port (then nothing before it
    meets it: clear), the loop's own test for the others. Adds to entries, rule_index and earlier's
    index as the loop does; returns where the loop goes on."""
    end = start
    while end < len(rules) and end not in skip and facts[end][2] is not None:
        end += 1
    by_src, by_dport, all_dport = earlier.by_src, earlier.by[K_DPORT], earlier.all[K_DPORT]
    held, stretch = range(start, end), facts[start:end]
    addresses, boxes = list(map(itemgetter(2), stretch)), list(map(itemgetter(4), stretch))
    actions = list(map(operator.attrgetter("action"), rules[start:end]))
    candidate = list(map(operator.and_, map(operator.is_not, boxes, itertools.repeat(None)),
                         map(operator.is_, map(operator.attrgetter("verdict"), actions), itertools.repeat(Verdict.DROP))))
    first = dict(zip(reversed(addresses), reversed(held)))  # address -> its first index here
    alone = list(map(operator.and_, map(operator.eq, map(first.__getitem__, addresses), held),
                     map(operator.not_, map(by_src.__contains__, addresses))))  # no earlier namesake
    # the index as the loop leaves it: each rule under its address, in order (the first of a new
    # address makes its list)
    by_src.update(zip(itertools.compress(addresses, alone), map(list, zip(itertools.compress(held, alone)))))
    for position in itertools.compress(range(len(addresses)), map(operator.not_, alone)):
        by_src[addresses[position]].append(held[position])
    earlier.all_src.extend(held)
    for position in itertools.compress(range(len(boxes)), candidate):
        box = boxes[position]
        fields, index = box[0][0], held[position]
        ports = by_dport.get(box[5], ()) if fields & K_DPORT else all_dport
        if alone[position] and not ports:
            continue  # nothing before it meets it
        named = by_src[box[1]]
        named = named[:bisect.bisect_left(named, index)]  # the earlier ones
        candidate[position] = (len(named) <= tuplefast.MAX_SCAN and len(named) + len(ports) <= tuplefast.MAX_SCAN
                               and not any(tuplefast.meets(rules[i].match, box) for i in itertools.chain(named, ports)))
    taken = list(itertools.compress(held, candidate))
    actions = list(itertools.compress(actions, candidate))
    code_of = {key: action_code(action) for key, action in dict(zip(map(id, actions), actions)).items()}
    entries.extend(zip(itertools.compress(boxes, candidate), map(operator.attrgetter("rule_id"), map(rules.__getitem__, taken)),
                       map(code_of.__getitem__, map(id, actions))))
    rule_index.extend(taken)
    return end


_SKIPPED = object()


class _Leading:
    """What the last _leading_single_sources computed, for the next call to take over (see there)."""

    def __init__(self, action_code, held: List[int], held_rules: list, entries: list, rule_index: List[int]) -> None:
        self.action_code, self.held, self.held_rules = action_code, held, held_rules
        self.entries, self.rule_index = tuple(entries), tuple(rule_index)


LAST: Optional[_Leading] = None


def _same_rules(old: Sequence, new: Sequence) -> int:
    """How many leading items of new are the very objects of old (tests break it)."""
    return next(itertools.compress(itertools.count(), map(operator.is_not, old, new)), min(len(old), len(new)))


def leading_single_sources(rules, facts, skip, action_code, earlier):
    """analyse() of the leading rules that each name one source address (the skipped ones
    aside: up to the first other rule), in C-level passes; the 10k-rule lists of exact tuples
    `ipt2xdp watch` re-analyses after every change are all such rules. Returns (entries, rule
    indices, the index analyse goes on from) and leaves those rules in earlier's index, unless no
    later rule looks it up (none has a box): then it is built only where namesakes need it.

    The same proof as analyse's loop: with only single sources before it, the rules that may meet
    a box with a /32 source are the earlier ones naming that address; a rule whose address comes
    first has none, the few others are compared (meets) with their earlier namesakes.

    A rule's entry depends on its box, action and id, and on the earlier rules of the stretch
    alone: where this call's stretch starts with the very ClassifierRule objects (frozen) of the
    last call's, at the same indices, with the same action_code, their entries are the last ones
    (a re-plan of `ipt2xdp watch` takes them over, planprefix). LAST holds those rule objects, so
    their ids are not reused while it lives."""
    global LAST
    points = list(map(itemgetter(2), facts))
    for index in skip:
        points[index] = _SKIPPED
    try:
        stop = points.index(None)
    except ValueError:
        stop = len(points)
    held, held_rules = list(range(stop)), list(rules[:stop])
    for index in sorted((i for i in skip if i < stop), reverse=True):
        del held[index], held_rules[index]  # held[i] == i below every deleted index
    # the index is read for a box after these rules (a skipped rule has none: the destination alone)
    indexed = not all(map(operator.is_, map(itemgetter(4), itertools.islice(facts, stop, None)), itertools.repeat(None)))
    addresses = list(map(points.__getitem__, held))
    first = dict(zip(reversed(addresses), reversed(held)))  # address -> the first index naming it
    last, LAST, taken = LAST, None, 0
    if last is not None and last.action_code is action_code:
        taken = _same_rules(last.held_rules, held_rules)
        taken = next(itertools.compress(itertools.count(), map(operator.ne, last.held[:taken], held)), taken)
    tail, tail_rules = held[taken:], held_rules[taken:]
    boxes = list(map(itemgetter(4), map(facts.__getitem__, tail)))
    actions = list(map(operator.attrgetter("action"), tail_rules))
    candidate = list(map(operator.and_, map(operator.is_not, boxes, itertools.repeat(None)),
                         map(operator.is_, map(operator.attrgetter("verdict"), actions), itertools.repeat(Verdict.DROP))))
    by_src = None
    if len(first) < len(held) or indexed:
        by_src = dict(zip(addresses, map(list, zip(held))))  # address -> [its indices], namesakes below
    if len(first) < len(held):  # some address is named twice: its namesakes are compared
        for position in itertools.compress(range(len(held)), map(operator.ne, map(first.__getitem__, addresses), held)):
            address = addresses[position]
            named = by_src[address] if by_src[address][0] == first[address] else [first[address]]
            at = position - taken
            if at >= 0 and candidate[at] and any(tuplefast.meets(rules[i].match, boxes[at]) for i in named):
                candidate[at] = False
            by_src[address] = named
            named.append(held[position])
    rule_index = list(itertools.compress(tail, candidate))
    actions = list(itertools.compress(actions, candidate))
    code_of = {key: action_code(action) for key, action in dict(zip(map(id, actions), actions)).items()}
    codes = (itertools.repeat(next(iter(code_of.values())), len(actions)) if len(code_of) == 1
             else map(code_of.__getitem__, map(id, actions)))  # the planner shares Action objects
    entries = list(zip(itertools.compress(boxes, candidate),
                       map(operator.attrgetter("rule_id"), itertools.compress(tail_rules, candidate)), codes))
    if taken:  # the last call's entries of the rules before `taken`
        kept = bisect.bisect_right(last.rule_index, held[taken - 1])
        entries[:0], rule_index[:0] = last.entries[:kept], last.rule_index[:kept]
    LAST = _Leading(action_code, held[:], held_rules, entries, rule_index)  # held grows in analyse
    if by_src is not None:
        earlier.by[K_SRC] = earlier.by_src = by_src
    earlier.all[K_SRC] = earlier.all_src = held
    return entries, rule_index, stop
