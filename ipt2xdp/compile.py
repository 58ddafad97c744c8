# SPDX-License-Identifier: GPL-2.0-only
"""compile(): classifier rules -> the bytes of one generation of maps. Pure: never touches the kernel.

Steps (each a small function below):
  1. slots: rules become bitmap slots; long runs of consecutive rules with the same action that
     differ only in exact values (a blocklist of /32s or /24s, exact 5-tuples) merge into one SET
     slot backed by a hash set whose value is the original rule_id, so 100k such rules cost one
     hash lookup per packet and their counters stay per rule;
  2. classes: per field, the value domain is cut into intervals with the same set of matching
     slots; equal sets share a class row; each row owns a bitmap of slots and a summary bitmap;
  3. encode: rows, slots, sets, the address directory and bounds become key/value bytes.
Beyond IPT2XDP_MAX_SLOTS slots compile raises CapacityError, or with overflow="defer" keeps the
first slots and ends with a catch-all DEFER slot, so the rest is left to netfilter.
"""
from __future__ import annotations

import bisect
import ctypes
import hashlib
import operator
import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ipt2xdp import abi, fastpath
from ipt2xdp.classifier import Action, ClassifierRule, IntervalSet, Match, Verdict, validate
from ipt2xdp.errors import CapacityError

MERGE_MIN_RUN = 4  # shorter runs stay plain slots: a set probe costs more than a bit test
MAX_SETS = 0xFFFF

_ACT = {Verdict.DROP: abi.ACT_DROP, Verdict.ACCEPT: abi.ACT_ACCEPT, Verdict.DEFER: abi.ACT_DEFER,
        Verdict.CONTINUE: abi.ACT_CONTINUE}
_FIELDS = ("src", "dst", "proto", "sport", "dport", "iif", "icmp", "tcp_flags")  # index = abi.F_*
_KEYABLE = ("src", "dst", "proto", "sport", "dport")
_KEY_BITS = {"src": abi.K_SRC, "dst": abi.K_DST, "proto": abi.K_PROTO, "sport": abi.K_SPORT, "dport": abi.K_DPORT}
# Domains of the small fields as value_class regions: (base, size incl. the "absent" value).
_VALUE_REGIONS = {"proto": (abi.VC_PROTO, abi.CT_CLASSES * 256), "sport": (abi.VC_SPORT, 65537), "dport": (abi.VC_DPORT, 65537),
                  "icmp": (abi.VC_ICMP, 65537), "tcp_flags": (abi.VC_TCP_FLAGS, 65)}
_CT_CLASSES = tuple(range(abi.CT_CLASSES))


def _constraint(match: Match, name: str):
    """A slot's constraint on a bitmap field. The conntrack class shares the protocol's class index
    (ct_class * 256 + proto), so "proto" is the product of the two constraints."""
    value = getattr(match, name)
    if name != "proto" or (value is None and match.ct is None):
        return value
    protocols = sorted(value) if value is not None else range(256)
    classes = sorted(match.ct) if match.ct is not None else _CT_CLASSES
    return frozenset(ct * 256 + p for ct in classes for p in protocols)


@dataclass
class MapContents:
    """One inner map of a generation: contiguous key and value buffers (batch-update ready)."""

    name: str
    max_entries: int
    key_size: int
    value_size: int
    keys: bytes = b""
    values: bytes = b""

    @property
    def count(self) -> int:
        return len(self.keys) // self.key_size

    def entries(self) -> Iterator[Tuple[bytes, bytes]]:
        ks, vs = self.key_size, self.value_size
        for i in range(self.count):
            yield self.keys[i * ks:(i + 1) * ks], self.values[i * vs:(i + 1) * vs]


@dataclass
class Tables:
    """One generation's map contents plus what status/tests need to interpret them."""

    maps: Dict[str, MapContents]
    rule_count: int
    slot_count: int
    set_count: int
    rule_ids: List[int]               # counter keys of the rules, in classifier order
    default_action: Verdict
    overflowed_rules: int = 0         # rules replaced by the catch-all DEFER slot
    field_mask: int = 0
    notes: List[str] = field(default_factory=list)
    fast_path: Optional[fastpath.FastPath] = None  # the blocklist fast path (map src_fast)
    # What guarded DROPs compare with (setguard.Expectation); set by the importer, not by compile:
    # it is a fact about the host's sets when they were read, not about the ruleset.
    set_guard: Optional[object] = None

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.maps):
            m = self.maps[name]
            h.update(name.encode() + m.keys + b"|" + m.values)
        return h.hexdigest()[:16]

    def dump(self) -> str:
        return dump(self)


# --- step 1: slots -------------------------------------------------------------------------------

@dataclass
class _Slot:
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
    """The _field_shape of each field, then ("s", ct); None when no field can go in a set key."""
    values = vars(match)
    shape = []
    keyed = False
    for name in ("src", "dst"):
        value = values[name]
        if value is None:
            shape.append(_ANY)
            continue
        intervals = value.intervals  # (IntervalSet.as_prefix, inline: one call per rule less)
        if len(intervals) == 1:
            lo, hi = intervals[0]
            span = hi - lo + 1
            if not (span & (span - 1) or lo % span):
                shape.append(_KEYED[32 - (span.bit_length() - 1)])
                keyed = True
                continue
        shape.append(("s", value))
    value = values["proto"]
    if value is None:
        shape.append(_ANY)
    elif len(value) == 1:
        shape.append(_KEYED[8])
        keyed = True
    else:
        shape.append(("s", value))
    for name in ("sport", "dport"):
        value = values[name]
        if value is None:
            shape.append(_ANY)
        elif len(value.intervals) == 1 and value.intervals[0][0] == value.intervals[0][1]:
            shape.append(_KEYED[16])
            keyed = True
        else:
            shape.append(("s", value))
    if not keyed:
        return None
    for name in ("iif", "icmp", "tcp_flags", "ct"):
        value = values[name]
        shape.append(_ANY if value is None else ("s", value))
    return tuple(shape)


# What compile derives from a Match object alone, kept from one build_slots() to the next: a
# long-lived planner (`ipt2xdp watch`) hands the same Match objects again for the rules that did
# not change. By id(match), each entry holding its match (so that the id is not reused meanwhile):
#   _MATCH_SHAPES: (match, _match_shape(match))     _SET_KEYS: (match, key_fields, _exact_key)
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


def _exact_key(rule: ClassifierRule, key_fields: int) -> bytes:
    match = rule.match
    entry = _SET_KEYS.get(id(match))
    if entry is None or entry[0] is not match or entry[1] != key_fields:
        entry = (match, key_fields, _make_exact_key(match, key_fields))
    _NEXT_SET_KEYS[id(match)] = entry
    return entry[2]


def _make_exact_key(m: Match, key_fields: int) -> bytes:
    src = m.src.intervals[0][0] if key_fields & abi.K_SRC else 0
    dst = m.dst.intervals[0][0] if key_fields & abi.K_DST else 0
    sport = m.sport.intervals[0][0] if key_fields & abi.K_SPORT else 0
    dport = m.dport.intervals[0][0] if key_fields & abi.K_DPORT else 0
    proto = next(iter(m.proto)) if key_fields & abi.K_PROTO else 0
    # network byte order, as the program reads them from the packet
    return struct.pack("!IIHH", src, dst, sport, dport), proto


def _union_match(rules: Sequence[ClassifierRule], shape: Tuple) -> Match:
    """The union of the rules' matches, field by field; all of them have this _shape(), so a field
    it does not key ("s") holds one and the same value in every rule: the union of one is enough."""
    kinds = dict(zip(_FIELDS + ("ct",), (kind for kind, _ in shape[1:])))

    def union(name):
        values = [getattr(r.match, name) for r in (rules if kinds[name] == "k" else rules[:1])]
        if any(v is None for v in values):
            return None
        if name == "ct" or isinstance(values[0], frozenset):
            return frozenset().union(*values)
        # the union is the same without the repeats; in rule order, a blocklist's ascending
        # addresses stay one sorted run (cheap to sort again)
        return IntervalSet.of(dict.fromkeys(i for v in values for i in v.intervals))
    return Match(**{n: union(n) for n in _FIELDS + ("ct",)})


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


def _make_set_slot(run: Sequence[ClassifierRule], first_index: int) -> _Slot:
    shape = _shape(run[0])
    key_fields = 0
    plens = {}
    for name, (kind, width) in zip(_FIELDS, shape[1:1 + len(_FIELDS)]):
        if kind == "k":
            key_fields |= _KEY_BITS[name]
            plens[name] = width
    members, seen = [], set()
    for rule in run:
        key, proto = _exact_key(rule, key_fields)
        if (key, proto) in seen:
            continue  # an identical earlier rule shadows it (first match wins)
        seen.add((key, proto))
        members.append((key, proto, rule.rule_id))
    return _Slot(match=_kept_union(run, shape), action=run[0].action, counter=run[0].rule_id, first_rule=first_index,
                 set_members=members, key_fields=key_fields,
                 src_plen=plens.get("src", 0), dst_plen=plens.get("dst", 0))


def build_slots(rules: Sequence[ClassifierRule], merge_min_run: int = MERGE_MIN_RUN) -> Tuple[List[_Slot], Dict[int, int]]:
    """Rules -> slots, and classifier index -> slot index for every rule that starts a slot."""
    global _UNIONS, _NEXT_UNIONS, _SET_KEYS, _NEXT_SET_KEYS
    targets = {r.action.target for r in rules if r.action.verdict == Verdict.CONTINUE}
    shapes = _shapes(rules)
    slots: List[_Slot] = []
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
            slots.append(_Slot(match=rule.match, action=rule.action, counter=rule.rule_id, first_rule=i))
        i = j
    _UNIONS, _NEXT_UNIONS = _NEXT_UNIONS, {}
    _SET_KEYS, _NEXT_SET_KEYS = _NEXT_SET_KEYS, {}
    return slots, rule_to_slot


# --- step 2: classes -----------------------------------------------------------------------------

def _constraint_intervals(name: str, value) -> Optional[List[Tuple[int, int]]]:
    if value is None:
        return None
    if isinstance(value, frozenset):
        return [(v, v) for v in sorted(value)]
    return list(value.intervals)


def _domain_max(name: str) -> int:
    if name in ("src", "dst"):
        return 0xFFFFFFFF
    if name in _VALUE_REGIONS:
        return _VALUE_REGIONS[name][1] - 1
    return 0xFFFFFFFF  # iif: ifindexes


def field_classes(name: str, slots: Sequence[_Slot],
                  participants: Optional[Sequence[int]] = None) -> Optional[Tuple[List[Tuple[int, int]], List[int]]]:
    """Cut the field's domain into intervals with equal slot sets.

    Only participant slots (those whose group uses the field; default all) get bits; a participant
    that leaves the field open gets its bit everywhere. Returns (intervals as (start, class), class
    bitmaps as ints) or None if no slot constrains the field. Absent values (no port, not ICMP,
    not TCP) sit at the top of the domain and only slots that leave the field open match them.
    """
    wildcard = 0
    events: Dict[int, int] = {0: 0}
    constrained = False
    for index in (range(len(slots)) if participants is None else participants):
        slot = slots[index]
        intervals = _constraint_intervals(name, _constraint(slot.match, name))
        if intervals is None:
            wildcard |= 1 << index
            continue
        constrained = True
        for lo, hi in intervals:
            events[lo] = events.get(lo, 0) ^ (1 << index)
            events[hi + 1] = events.get(hi + 1, 0) ^ (1 << index)
    if not constrained:
        return None
    top = _domain_max(name)
    classes: Dict[int, int] = {}
    bitmaps: List[int] = []
    intervals: List[Tuple[int, int]] = []
    current = 0
    for point in sorted(events):
        current ^= events[point]
        if point > top:
            break
        bitmap = wildcard | current
        cls = classes.setdefault(bitmap, len(bitmaps))
        if cls == len(bitmaps):
            bitmaps.append(bitmap)
        if not intervals or intervals[-1][1] != cls:
            intervals.append((point, cls))
    return intervals, bitmaps


def _slot_fields(slot: _Slot) -> int:
    return sum(1 << f for f, name in enumerate(_FIELDS) if _constraint(slot.match, name) is not None)


def group_slots(slots: Sequence[_Slot], max_groups: int = abi.MAX_GROUPS) -> List[Tuple[int, List[int]]]:
    """Group slots by the set of fields they constrain: [(field bits, slot indexes)].

    Beyond max_groups shapes the smallest are merged into one group over the union of their
    fields; there a slot that leaves one of those fields open is a wildcard in its rows.
    """
    by_shape: Dict[int, List[int]] = {}
    for index, slot in enumerate(slots):
        by_shape.setdefault(_slot_fields(slot), []).append(index)
    shapes = sorted(by_shape.items(), key=lambda item: (-len(item[1]), item[0]))
    if len(shapes) <= max_groups:
        return shapes
    kept, rest = shapes[:max_groups - 1], shapes[max_groups - 1:]
    merged_fields = 0
    for fields, _ in rest:
        merged_fields |= fields
    return kept + [(merged_fields, sorted(i for _, members in rest for i in members))]


# --- step 3: encode ------------------------------------------------------------------------------

def _pack_array(name: str, values: Sequence[bytes], value_size: int) -> MapContents:
    n = max(1, len(values))
    keys = b"".join(struct.pack("=I", i) for i in range(len(values)))
    return MapContents(name, n, 4, value_size, keys, b"".join(values))


def _dense_array(name: str, blob: bytes, value_size: int) -> MapContents:
    n = len(blob) // value_size
    keys = struct.pack(f"={n}I", *range(n))
    return MapContents(name, max(1, n), 4, value_size, keys, blob)


def _action_code(action: Action) -> int:
    """A DROP guarded by ipset copies is IPT2XDP_ACT_SET_GUARDED | bits: a program without the
    guard passes such slots, as it passes every action it does not know."""
    if action.guard:
        return abi.ACT_SET_GUARDED | action.guard
    return _ACT[action.verdict]


def _encode_slot(slot: _Slot, set_id: int, next_slot: int) -> bytes:
    s = abi.Slot(counter=slot.counter, next=next_slot, set_id=set_id, action=_action_code(slot.action),
                 kind=abi.SLOT_SET if slot.set_members is not None else abi.SLOT_RULE,
                 key_fields=slot.key_fields, src_plen=slot.src_plen, dst_plen=slot.dst_plen)
    return bytes(s)


def compile(rules: Sequence[ClassifierRule], default_action: Action, *, overflow: str = "raise",
            max_slots: int = abi.MAX_SLOTS, merge_min_run: int = MERGE_MIN_RUN,
            reduce: bool = True, nat_new: int = 0) -> Tables:  # noqa: A001
    """Compile a first-match classifier into one generation of map contents.

    Args:
        rules: classifier rules in first-match order (see ipt2xdp.classifier).
        default_action: DROP, ACCEPT or DEFER when no rule matches (the chain policy outcome).
        overflow: "raise" -> CapacityError beyond max_slots; "defer" -> keep what fits and DEFER
            everything the remaining rules would have decided.
        max_slots: capacity in bitmap slots (at most abi.MAX_SLOTS).
        merge_min_run: shortest run of exact-valued rules merged into one hash-set slot.
        reduce: leave out of the class bitmaps what the blocklist fast path decides
            (fastpath.reduce_classifier), so a source not on the list is not classified against
            it; False keeps the whole classifier beside the fast path (the form before).
        nat_new: abi.NAT_NEW_* bits (plan.Plan.nat_new): count the drops nat PREROUTING would
            have seen on counter abi.NAT_NEW_COUNTER, and pass those XDP cannot place.
    Returns:
        Tables, whose maps are keyed by the logical names of abi.GEN_MAPS.
    """
    validate(rules, default_action)
    fast = fastpath.analyse(rules, _action_code) if reduce else None
    held = fastpath.reduce_classifier(rules, fast) if fast else None
    if held is not None:
        try:
            return _compile(held, default_action, overflow="raise", max_slots=max_slots,
                            merge_min_run=merge_min_run, fast=fast, all_rules=rules, nat_new=nat_new)
        except CapacityError:
            pass  # the reduction split merged runs: the whole classifier, cut where it overflows
    return _compile(rules, default_action, overflow=overflow, max_slots=max_slots, merge_min_run=merge_min_run,
                    fast=fast, all_rules=rules, nat_new=nat_new)


def _compile(rules: Sequence[ClassifierRule], default_action: Action, *, overflow: str, max_slots: int,
             merge_min_run: int, fast: Optional[fastpath.FastPath], all_rules: Sequence[ClassifierRule],
             nat_new: int = 0) -> Tables:
    """compile() of the rules the class bitmaps hold; fast: the fast path of all_rules (the
    whole classifier, whose rule ids size the counters), or None to analyse it here."""
    max_slots = min(max_slots, abi.MAX_SLOTS)
    slots, rule_to_slot = build_slots(rules, merge_min_run)
    overflowed = 0
    notes = []
    if len(slots) > max_slots:
        if overflow != "defer":
            raise CapacityError(f"the ruleset needs {len(slots)} classifier slots, XDP holds {max_slots}; "
                                "leave the rest to netfilter (overflow=defer) or shorten the ruleset")
        kept = slots[:max_slots - 1]
        first_dropped = slots[max_slots - 1].first_rule
        overflowed = len(rules) - first_dropped
        kept.append(_Slot(match=Match(), action=Action(Verdict.DEFER), counter=abi.OVERFLOW_COUNTER,
                          first_rule=first_dropped))
        notes.append(f"{overflowed} rules beyond capacity left to netfilter (catch-all DEFER)")
        slots = kept
    nslots = len(slots)

    def slot_of_rule(index: int) -> int:
        if index >= len(rules):
            return nslots
        return min(rule_to_slot.get(index, nslots - 1), nslots - 1 if overflowed else nslots)

    groups = group_slots(slots)
    # per-field classes -> rows, then one member row per group
    field_mask, row_base, rows_bitmaps, field_intervals = 0, {}, [], {}
    for f, name in enumerate(_FIELDS):
        participants = sorted(i for fields, members in groups if fields & (1 << f) for i in members)
        result = field_classes(name, slots, participants) if participants else None
        if result is None:
            continue
        intervals, bitmaps = result
        field_mask |= 1 << f
        row_base[name] = len(rows_bitmaps)
        rows_bitmaps.extend(bitmaps)
        field_intervals[name] = intervals
    if any(slot.match.ct is not None for slot in slots):
        field_mask |= 1 << abi.F_CT_STATE  # the program looks the class up (folded into "proto")
    group_fields, group_rows = [], []
    for fields, members in groups:
        group_fields.append(fields & field_mask)
        group_rows.append(len(rows_bitmaps))
        rows_bitmaps.append(sum(1 << i for i in members))

    maps = {"class_rows": _encode_rows(rows_bitmaps)}
    maps["value_class"] = _encode_value_class(field_intervals, row_base)
    maps["addr_dir"], maps["addr_bounds"] = _encode_addresses(field_intervals, row_base)
    named_ifindexes = set().union(*(s.match.iif for s in slots if s.match.iif is not None))
    maps["iif_class"], iif_default_row = _encode_iif(field_intervals, row_base, named_ifindexes)

    rule_ids = [r.rule_id for r in all_rules]
    default_counter = max(rule_ids, default=-1) + 1
    # + the default action and the overflow catch-all (and the drops nat PREROUTING would see)
    stride = default_counter + (3 if nat_new else 2)
    if stride > abi.MAX_COUNTER_STRIDE:
        raise CapacityError(f"rule id {default_counter - 1} is too large for the counters "
                            f"(ids must stay below {abi.MAX_COUNTER_STRIDE - 2}); number rules densely")
    for slot in slots:
        if slot.counter == abi.OVERFLOW_COUNTER:
            slot.counter = default_counter + 1
    slot_values, set_keys, set_values, set_count = [], [], [], 0
    for slot in slots:
        set_id = 0
        if slot.set_members is not None:
            set_count += 1
            if set_count > MAX_SETS:
                raise CapacityError(f"more than {MAX_SETS} merged rule sets")
            set_id = set_count
            for key, proto, rule_id in slot.set_members:
                set_keys.append(key + struct.pack("=HBB", set_id, proto, 0))
                set_values.append(struct.pack("=I", rule_id))
        next_slot = slot_of_rule(slot.action.target) if slot.action.verdict == Verdict.CONTINUE else 0
        slot_values.append(_encode_slot(slot, set_id, next_slot))
    maps["slots"] = _pack_array("slots", slot_values, ctypes.sizeof(abi.Slot))
    maps["slots"].max_entries = abi.MAX_SLOTS
    maps["exact_set"] = MapContents("exact_set", max(1, len(set_keys)), ctypes.sizeof(abi.ExactKey), 4,
                                    b"".join(set_keys), b"".join(set_values))

    # counters start at zero: only the size is data (the loader multiplies it by the CPUs)
    maps["counters"] = MapContents("counters", stride, 4, ctypes.sizeof(abi.Counter))
    cfg = abi.GenConfig(generation=0, field_mask=field_mask, nslots=nslots, counter_stride=stride,
                        default_action=_ACT[default_action.verdict], default_counter=default_counter,
                        iif_default_row=iif_default_row, ngroups=len(groups), nat_new=nat_new)
    for g, (fields, row) in enumerate(zip(group_fields, group_rows)):
        cfg.group_fields[g] = fields
        cfg.group_row[g] = row
    # the blocklist fast path, proven on the rules the program holds (before any overflow cut)
    if fast is None or overflowed:
        fast = fastpath.analyse(rules[:slots[-1].first_rule] if overflowed else rules, _action_code)
    fast_keys, fast_values, fast_count = fastpath.encode(fast)
    for i, plen in enumerate(fast.plens):
        cfg.src_fast_plens[i] = plen
    if fast.plens:
        cfg.src_fast_ndst = len(fast.dsts.intervals)
        for i, (lo, hi) in enumerate(fast.dsts):
            cfg.src_fast_dst_lo[i], cfg.src_fast_dst_hi[i] = lo, hi
    maps["src_fast"] = MapContents("src_fast", max(1, fast_count), ctypes.sizeof(abi.SrcFastKey),
                                   ctypes.sizeof(abi.SrcFastValue), fast_keys, fast_values)
    maps["cfg"] = _pack_array("cfg", [bytes(cfg)], ctypes.sizeof(abi.GenConfig))
    for name, shape in abi.GEN_MAPS.items():
        m = maps[name]
        assert (m.key_size, m.value_size) == (shape.key_size, shape.value_size), name
    return Tables(maps=maps, rule_count=len(all_rules), slot_count=nslots, set_count=set_count, rule_ids=rule_ids,
                  default_action=default_action.verdict, overflowed_rules=overflowed, field_mask=field_mask,
                  notes=notes, fast_path=fast)


def _encode_rows(rows_bitmaps: List[int]) -> MapContents:
    """Each row: summary (bit w: word w nonzero), then the bitmap words, little-endian u64s."""
    values = []
    rows_bitmaps = rows_bitmaps or [0]  # an empty ruleset still gets a (never read) row
    full = (1 << abi.MAX_SLOTS) - 1
    for bitmap in rows_bitmaps:
        raw = (bitmap & full).to_bytes(abi.MAX_WORDS * 8, "little")
        values.append(_summary(raw).to_bytes(abi.SUMMARY_WORDS * 8, "little") + raw)
    return _pack_array("class_rows", values, ctypes.sizeof(abi.ClassRow))


_NONZERO_DIGIT = bytes([ord("0")] + [ord("1")] * 255)


def _summary(raw: bytes) -> int:
    """Bit w set iff the little-endian u64 word w of raw is nonzero (bytewise, no loop per word):
    OR the eight byte lanes of the words, then read one '0'/'1' digit per word."""
    lanes = 0
    for lane in range(8):
        lanes |= int.from_bytes(raw[lane::8], "big")
    digits = lanes.to_bytes(len(raw) // 8, "big").translate(_NONZERO_DIGIT)
    return int(digits[::-1], 2)


def _encode_value_class(field_intervals, row_base) -> MapContents:
    rows = [0] * abi.VC_ENTRIES
    for name, (base, size) in _VALUE_REGIONS.items():
        if name not in field_intervals:
            continue
        intervals = field_intervals[name]
        for i, (start, cls) in enumerate(intervals):
            end = intervals[i + 1][0] if i + 1 < len(intervals) else size
            rows[base + start:base + end] = [row_base[name] + cls] * (end - start)
    return _dense_array("value_class", struct.pack(f"={len(rows)}I", *rows), 4)


def _encode_addresses(field_intervals, row_base) -> Tuple[MapContents, MapContents]:
    bounds: List[Tuple[int, int]] = []
    directory = bytearray(abi.ADDR_DIR_ENTRIES * 8)
    for f, name in ((0, "src"), (1, "dst")):
        if name not in field_intervals:
            continue
        base = len(bounds)
        starts = [start for start, _ in field_intervals[name]]
        bounds.extend((start, row_base[name] + cls) for start, cls in field_intervals[name])
        directory[f * 65536 * 8:(f + 1) * 65536 * 8] = _directory_blocks(starts, base)
    if len(bounds) > abi.MAX_BOUNDS:
        raise CapacityError(f"the address constraints need {len(bounds)} interval bounds, XDP holds "
                            f"{abi.MAX_BOUNDS}; leave some address rules to netfilter")
    blob = b"".join(struct.pack("=II", s, r) for s, r in bounds)
    bounds_map = _dense_array("addr_bounds", blob, 8)
    bounds_map.max_entries = abi.MAX_BOUNDS
    return (_dense_array("addr_dir", bytes(directory), 8), bounds_map)


def _directory_blocks(starts: List[int], base: int) -> bytes:
    """One (first bound, bounds after it) entry per /16 block: the interval containing the block's
    first address and how many more start inside the block. A run of blocks inside one interval
    is written at once (starts[0] is 0: the first interval begins at the domain's start)."""
    out = []
    block, count = 0, len(starts)
    while block < 65536:
        lo = block << 16
        first = bisect.bisect_right(starts, lo) - 1          # interval containing lo
        last = bisect.bisect_right(starts, lo + 0xFFFF) - 1  # interval containing the block's end
        if last == first:  # every block before the one holding the next start is inside it too
            end = starts[first + 1] >> 16 if first + 1 < count else 65536
            out.append(struct.pack("=II", base + first, 0) * (end - block))
            block = end
        else:
            out.append(struct.pack("=II", base + first, last - first))
            block += 1
    return b"".join(out)


def _encode_iif(field_intervals, row_base, named: Sequence[int]) -> Tuple[MapContents, int]:
    """Named ifindexes -> their rows; every other ifindex takes iif_default_row."""
    keys, values, default_row = [], [], 0
    if "iif" in field_intervals:
        intervals = field_intervals["iif"]
        starts = [start for start, _ in intervals]

        def row_of(value: int) -> int:
            return row_base["iif"] + intervals[bisect.bisect_right(starts, value) - 1][1]
        for ifindex in sorted(named):
            keys.append(struct.pack("=I", ifindex))
            values.append(struct.pack("=I", row_of(ifindex)))
        unnamed = next(v for v in range(len(named) + 1) if v not in named)
        default_row = row_of(unnamed)
    return MapContents("iif_class", max(1, len(keys)), 4, 4, b"".join(keys), b"".join(values)), default_row


# --- dump ----------------------------------------------------------------------------------------

def dump(tables: Tables) -> str:
    """Human-readable, deterministic rendering of the tables (golden files compare against it)."""
    out = [f"# rules {tables.rule_count} slots {tables.slot_count} sets {tables.set_count} "
           f"default {tables.default_action.name} field_mask {tables.field_mask:#x} digest {tables.digest}"]
    out.extend(f"# note: {n}" for n in tables.notes)
    cfg = abi.GenConfig.from_buffer_copy(tables.maps["cfg"].values)
    out.append(f"cfg nslots={cfg.nslots} counter_stride={cfg.counter_stride} default_action={cfg.default_action} "
               f"default_counter={cfg.default_counter} iif_default_row={cfg.iif_default_row}")
    for g in range(cfg.ngroups):
        out.append(f"group {g}: fields={cfg.group_fields[g]:#x} members=row {cfg.group_row[g]}")
    for i, (_, value) in enumerate(tables.maps["slots"].entries()):
        s = abi.Slot.from_buffer_copy(value)
        out.append(f"slot {i}: counter={s.counter} action={s.action} kind={s.kind} next={s.next} set={s.set_id} "
                   f"key_fields={s.key_fields:#x} plen={s.src_plen}/{s.dst_plen}")
    for key, value in sorted(tables.maps["exact_set"].entries()):
        if tables.set_count:
            out.append(f"set {key.hex()} -> rule {struct.unpack('=I', value)[0]}")
    bounds = tables.maps["addr_bounds"]
    for i, (_, value) in enumerate(bounds.entries()):
        start, row = struct.unpack("=II", value)
        out.append(f"addr_bound {i}: start={start:#010x} row={row}")
    vc = tables.maps["value_class"].values
    for name, (base, size) in _VALUE_REGIONS.items():
        rows = struct.unpack_from(f"={size}I", vc, base * 4)
        runs, start = [], 0
        for v in range(1, size + 1):
            if v == size or rows[v] != rows[start]:
                runs.append(f"{start}" + (f"-{v - 1}" if v - 1 > start else "") + f":{rows[start]}")
                start = v
        if len(runs) > 1:
            out.append(f"{name}: " + " ".join(runs))
    if cfg.src_fast_plens[0]:
        out.append("src_fast plens " + " ".join(str(p) for p in cfg.src_fast_plens if p) + " dsts " +
                   " ".join(f"{cfg.src_fast_dst_lo[i]:#010x}-{cfg.src_fast_dst_hi[i]:#010x}" for i in range(cfg.src_fast_ndst)))
        for key, value in sorted(tables.maps["src_fast"].entries()):
            counter, action = struct.unpack("=II", value)
            out.append(f"src_fast {key[:4].hex()}/{struct.unpack('=I', key[4:])[0]} -> rule {counter} action {action:#x}")
    for key, value in sorted(tables.maps["iif_class"].entries()):
        if tables.field_mask & (1 << abi.F_IIF):
            out.append(f"iif {struct.unpack('=I', key)[0]} -> row {struct.unpack('=I', value)[0]}")
    for i, (_, value) in enumerate(tables.maps["class_rows"].entries()):
        bitmap = int.from_bytes(value[abi.SUMMARY_WORDS * 8:], "little")
        out.append(f"row {i}: slots {[b for b in range(bitmap.bit_length()) if bitmap >> b & 1]}")
    return "\n".join(out) + "\n"
