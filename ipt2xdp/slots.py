# SPDX-License-Identifier: GPL-2.0-only
"""compile() step 1: classifier rules become bitmap slots. Long runs of consecutive rules with the
same action that differ only in exact values (a blocklist of /32s or /24s, exact 5-tuples) merge
into one SET slot backed by a hash set whose value is the rule's counter (compile.py numbers the
counters; here a slot and its members carry rule ids), so 100k such rules cost one hash lookup per
packet and their counters stay per rule."""
from __future__ import annotations

import operator
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ipt2xdp import abi
from ipt2xdp.classifier import Action, ClassifierRule, IntervalSet, Match, Verdict

MERGE_MIN_RUN = 4  # shorter runs stay plain slots: a set probe costs more than a bit test
FIELDS = ("src", "dst", "proto", "sport", "dport", "iif", "icmp", "tcp_flags")  # index = abi.F_*
_KEYABLE = ("src", "dst", "proto", "sport", "dport")
_KEY_BITS = {"src": abi.K_SRC, "dst": abi.K_DST, "proto": abi.K_PROTO, "sport": abi.K_SPORT, "dport": abi.K_DPORT}

@dataclass
class Slot:
    match: Match                       # what the bitmaps encode (for a SET: a superset)
    action: Action
    counter: int
    first_rule: int                    # classifier index of its first rule
    set_members: Optional[List[Tuple[bytes, int]]] = None  # SET: (exact key sans set_id, rule_id)
    key_fields: int = 0
    src_plen: int = 0
    dst_plen: int = 0


def _field_shape(name: str, value) -> Tuple:
    """('k', width) if the field is one exact value or prefix (it can go in a set key), else ('s', value)."""
    if value is None:
        return ("s", None)
    if name in ("src", "dst"):
        prefix = value.as_prefix()
        return ("k", prefix[1]) if prefix else ("s", value)
    if name == "proto":
        return ("k", 8) if len(value) == 1 else ("s", value)
    if name in ("sport", "dport"):
        return ("k", 16) if len(value.intervals) == 1 and value.intervals[0][0] == value.intervals[0][1] else ("s", value)
    return ("s", value)


_ANY = ("s", None)  # _field_shape of an unconstrained field


def _shape(rule: ClassifierRule) -> Optional[Tuple]:
    """(action, _field_shape of each field, ("s", ct)), or None when no field can go in a set key."""
    if rule.action.verdict == Verdict.CONTINUE:
        return None
    fields = _match_shape(rule.match)
    return None if fields is None else (rule.action,) + fields


_KEYED = {width: ("k", width) for width in range(33)}  # the ("k", width) shapes, made once


def _match_shape(match: Match) -> Optional[Tuple]:
    """The _field_shape of each field, then ("s", ct); None when no field can go in a set key.
    (Written out field by field, without calls: it runs once per classifier rule.)"""
    values = vars(match)
    keyed = False
    shapes = []
    for name in ("src", "dst"):
        value = values[name]
        if value is None:
            shapes.append(_ANY)
            continue
        intervals = value.intervals  # (IntervalSet.as_prefix, inline)
        if len(intervals) == 1:
            lo, hi = intervals[0]
            span = hi - lo + 1
            if not (span & (span - 1) or lo % span):
                shapes.append(_KEYED[33 - span.bit_length()])
                keyed = True
                continue
        shapes.append(("s", value))
    src_shape, dst_shape = shapes
    proto = values["proto"]
    if proto is None:
        proto_shape = _ANY
    elif len(proto) == 1:
        proto_shape, keyed = _KEYED[8], True
    else:
        proto_shape = ("s", proto)
    sport, dport = values["sport"], values["dport"]
    if sport is None:
        sport_shape = _ANY
    elif len(sport.intervals) == 1 and sport.intervals[0][0] == sport.intervals[0][1]:
        sport_shape, keyed = _KEYED[16], True
    else:
        sport_shape = ("s", sport)
    if dport is None:
        dport_shape = _ANY
    elif len(dport.intervals) == 1 and dport.intervals[0][0] == dport.intervals[0][1]:
        dport_shape, keyed = _KEYED[16], True
    else:
        dport_shape = ("s", dport)
    if not keyed:
        return None
    iif, icmp, tcp_flags, ct = values["iif"], values["icmp"], values["tcp_flags"], values["ct"]
    return (src_shape, dst_shape, proto_shape, sport_shape, dport_shape,
            _ANY if iif is None else ("s", iif), _ANY if icmp is None else ("s", icmp),
            _ANY if tcp_flags is None else ("s", tcp_flags), _ANY if ct is None else ("s", ct))


# What compile derives from a Match object alone, kept from one build_slots() to the next: a
# long-lived planner (`ipt2xdp watch`) hands the same Match objects again for the rules that did
# not change. By id(match), each entry holding its match (so that the id is not reused meanwhile):
#   _MATCH_SHAPES: (match, _match_shape(match))     _SET_KEYS: (match, key_fields, _make_exact_key)
# Each build_slots() replaces them with the entries of its own rules.
_MATCH_SHAPES: Dict[int, Tuple] = {}
_SET_KEYS: Dict[int, Tuple] = {}
_NEXT_SET_KEYS: Dict[int, Tuple] = {}


def _shapes(rules: Sequence[ClassifierRule]) -> List[Optional[Tuple]]:
    """[_shape(rule) for rule in rules], each Match's part taken from the last build_slots'."""
    global _MATCH_SHAPES
    known, kept, shapes = _MATCH_SHAPES, {}, []
    for rule in rules:
        if rule.action.verdict == Verdict.CONTINUE:
            shapes.append(None)
            continue
        match = rule.match
        entry = known.get(id(match))
        if entry is None or entry[0] is not match:
            entry = (match, _match_shape(match))
        kept[id(match)] = entry
        shapes.append(None if entry[1] is None else (rule.action,) + entry[1])
    _MATCH_SHAPES = kept
    return shapes


def _make_exact_key(m: Match, key_fields: int) -> bytes:
    src = m.src.intervals[0][0] if key_fields & abi.K_SRC else 0
    dst = m.dst.intervals[0][0] if key_fields & abi.K_DST else 0
    sport = m.sport.intervals[0][0] if key_fields & abi.K_SPORT else 0
    dport = m.dport.intervals[0][0] if key_fields & abi.K_DPORT else 0
    proto = next(iter(m.proto)) if key_fields & abi.K_PROTO else 0
    # network byte order, as the program reads them from the packet
    return struct.pack("!IIHH", src, dst, sport, dport), proto


_MATCH_OF, _INTERVALS, _FIRST = operator.attrgetter("match"), operator.attrgetter("intervals"), operator.itemgetter(0)


def _union_match(rules: Sequence[ClassifierRule], shape: Tuple) -> Match:
    """The union of the rules' matches, field by field; all of them have this _shape(), so a field
    it does not key ("s") holds one and the same value in every rule: the union of one is enough."""
    kinds = dict(zip(FIELDS + ("ct",), (kind for kind, _ in shape[1:])))
    # the size of each value of a keyed field: a prefix of `width` bits for an address, one port
    spans = {name: 1 << (32 - width) if name in ("src", "dst") else 1
             for name, (kind, width) in zip(FIELDS, shape[1:]) if kind == "k"}

    matches = list(map(_MATCH_OF, rules))

    def union(name):
        if kinds[name] != "k":  # one and the same value in every rule
            values = [getattr(matches[0], name)]
        else:  # every rule has a value (C-level loops: a set slot can hold 100k rules)
            values = list(map(operator.attrgetter(name), matches))
        if values[0] is None:
            return None
        if name == "ct" or isinstance(values[0], frozenset):
            return frozenset().union(*values)
        if kinds[name] == "k":  # one interval each, all of the shape's width: merged by their starts
            return _merged(sorted(set(map(_FIRST, map(_FIRST, map(_INTERVALS, values))))), spans[name])
        return IntervalSet.of(values[0].intervals)
    return Match(**{n: union(n) for n in FIELDS + ("ct",)})


def _merged(starts: List[int], span: int) -> IntervalSet:
    """IntervalSet.of() of the intervals of a keyed field's values: `span` values from each of
    the sorted distinct `starts`."""
    merged: List[Tuple[int, int]] = []
    first = last = None
    for start in starts:
        if last is not None and start <= last + span:  # adjacent or overlapping: one interval
            last = start
            continue
        if first is not None:
            merged.append((first, last + span - 1))
        first = last = start
    if first is not None:
        merged.append((first, last + span - 1))
    return IntervalSet(tuple(merged))


# The last build_slots()' set unions, by (length, first and last match's id, shape): [matches, union].
_UNIONS: Dict[Tuple, list] = {}
_NEXT_UNIONS: Dict[Tuple, list] = {}


def _kept_union(run: Sequence[ClassifierRule], shape: Tuple) -> Match:
    """_union_match(run, shape), the same Match as the last build_slots' when the run has the same
    Match objects (a function of them and the shape alone; the kept list holds their ids)."""
    matches = [rule.match for rule in run]
    key = (len(matches), id(matches[0]), id(matches[-1]), shape)
    kept = _UNIONS.get(key)
    if kept is None or not all(map(operator.is_, kept[0], matches)):
        kept = [matches, _union_match(run, shape)]
    _NEXT_UNIONS[key] = kept
    return kept[1]


def _make_set_slot(run: Sequence[ClassifierRule], first_index: int) -> Slot:
    shape = _shape(run[0])
    key_fields = 0
    plens = {}
    for name, (kind, width) in zip(FIELDS, shape[1:1 + len(FIELDS)]):
        if kind == "k":
            key_fields |= _KEY_BITS[name]
            plens[name] = width
    members, seen = [], set()
    known, kept = _SET_KEYS, _NEXT_SET_KEYS
    for rule in run:
        match = rule.match
        entry = known.get(id(match))
        if entry is None or entry[0] is not match or entry[1] != key_fields:
            entry = (match, key_fields, _make_exact_key(match, key_fields))
        kept[id(match)] = entry
        key_proto = entry[2]
        if key_proto in seen:
            continue  # an identical earlier rule shadows it (first match wins)
        seen.add(key_proto)
        members.append((*key_proto, rule.rule_id))
    return Slot(match=_kept_union(run, shape), action=run[0].action, counter=run[0].rule_id, first_rule=first_index,
                 set_members=members, key_fields=key_fields,
                 src_plen=plens.get("src", 0), dst_plen=plens.get("dst", 0))


def build_slots(rules: Sequence[ClassifierRule], merge_min_run: int = MERGE_MIN_RUN) -> Tuple[List[Slot], Dict[int, int]]:
    """Rules -> slots, and classifier index -> slot index for every rule that starts a slot."""
    global _UNIONS, _NEXT_UNIONS, _SET_KEYS, _NEXT_SET_KEYS
    targets = {r.action.target for r in rules if r.action.verdict == Verdict.CONTINUE}
    shapes = _shapes(rules)
    slots: List[Slot] = []
    rule_to_slot: Dict[int, int] = {}
    i = 0
    while i < len(rules):
        shape = shapes[i]
        j = i + 1
        if shape is not None:
            while j < len(rules) and j not in targets and shapes[j] == shape:
                j += 1
        rule_to_slot[i] = len(slots)
        if j - i >= merge_min_run:
            slots.append(_make_set_slot(rules[i:j], i))
        else:
            j = i + 1
            rule = rules[i]
            slots.append(Slot(match=rule.match, action=rule.action, counter=rule.rule_id, first_rule=i))
        i = j
    _UNIONS, _NEXT_UNIONS = _NEXT_UNIONS, {}
    _SET_KEYS, _NEXT_SET_KEYS = _NEXT_SET_KEYS, {}
    return slots, rule_to_slot
