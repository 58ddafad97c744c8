# SPDX-License-Identifier: GPL-2.0-only
"""compile(): classifier rules -> the bytes of one generation of maps. Pure: never touches the kernel.

Steps (each a small function below):
  1. slots: rules become bitmap slots; long runs of consecutive rules with the same action that
     differ only in exact values (a blocklist of /32s or /24s, exact 5-tuples) merge into one SET
     slot backed by a hash set whose value is the rule's counter, so 100k such rules cost one
     hash lookup per packet and their counters stay per rule (counters are numbered densely over
     the rules the class bitmaps hold, counted_rules; the counter_rules map names their rules);
  2. classes: per field, the value domain is cut into intervals with the same set of matching
     slots; equal sets share a class row; each row owns a bitmap of slots and a summary bitmap;
  3. encode: rows, slots, sets, the address directory and bounds become key/value bytes.
Beyond IPT2XDP_MAX_SLOTS slots compile raises CapacityError, or with overflow="defer" keeps the
first slots and ends with a catch-all DEFER slot, so the rest is left to netfilter.
"""
from __future__ import annotations

import ctypes
import hashlib
import operator
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ipt2xdp import abi, fastpath, matchmemo, tuplefast
from ipt2xdp.classifier import Action, ClassifierRule, Match, Verdict, validate
from ipt2xdp.errors import CapacityError
from ipt2xdp.mapencode import (ACT_CODES, VALUE_REGIONS, MapContents, action_code, dense_array, dump,
                               encode_addresses, encode_iif, encode_rows, encode_slot, encode_value_class,
                               pack_array)
from ipt2xdp.slots import FIELDS, MERGE_MIN_RUN, Slot, build_slots

__all__ = ["MapContents", "Tables", "build_slots", "compile", "field_classes", "group_slots", "MERGE_MIN_RUN",
           "MAX_SETS"]

MAX_SETS = 0xFFFF
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
class Tables:
    """One generation's map contents plus what status/tests need to interpret them."""

    maps: Dict[str, MapContents]
    rule_count: int
    slot_count: int
    set_count: int
    rule_ids: List[int]               # the rules' ids, in classifier order (maps["counter_rules"]:
                                      # the ids of those with a counter, by counter)
    default_action: Verdict
    overflowed_rules: int = 0         # rules replaced by the catch-all DEFER slot
    field_mask: int = 0
    notes: List[str] = field(default_factory=list)
    fast_path: Optional[fastpath.FastPath] = None  # the fast paths (maps src_fast, tuple_fast)
    # What guarded DROPs compare with (setguard.Expectation); set by the importer, not by compile:
    # it is a fact about the host's sets when they were read, not about the ruleset.
    set_guard: Optional[object] = None

    @property
    def digest(self) -> str:
        """A hash of every map's contents, kept with the buffers it was made from: a plan made ahead
        (`ipt2xdp watch`'s prediction) has it made ahead too, and its flip does not hash the maps
        again (a few ms at 10k rules). Made again unless every buffer is the very object hashed."""
        made_from = [(name, self.maps[name].keys, self.maps[name].values) for name in sorted(self.maps)]
        kept = self.__dict__.get("_digest")
        if kept is not None and len(kept[0]) == len(made_from) and all(
                a[0] == b[0] and a[1] is b[1] and a[2] is b[2] for a, b in zip(kept[0], made_from)):
            return kept[1]
        h = hashlib.sha256()
        for name, keys, values in made_from:
            h.update(name.encode() + _map_hash(name, keys, values))
        digest = h.hexdigest()[:16]
        self.__dict__["_digest"] = (made_from, digest)
        return digest

    def dump(self) -> str:
        return dump(self)


# map name -> (keys, values, their sha256) of the last Tables.digest made: a re-plan's maps are
# mostly the same bytes (the 1.5 MB address directory and value classes of a 10k-rule blocklist
# stay as they were when a rule is appended), which compare in a fraction of hashing them.
_MAP_HASHES: Dict[str, Tuple[bytes, bytes, bytes]] = {}


def _map_hash(name: str, keys: bytes, values: bytes) -> bytes:
    last = _MAP_HASHES.get(name)
    if last is not None and last[0] == keys and last[1] == values:
        return last[2]
    h = hashlib.sha256(keys)
    h.update(b"|")
    h.update(values)
    _MAP_HASHES[name] = (keys, values, h.digest())
    return _MAP_HASHES[name][2]


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
    if name in VALUE_REGIONS:
        return VALUE_REGIONS[name][1] - 1
    return 0xFFFFFFFF  # iif: ifindexes


def field_classes(name: str, slots: Sequence[Slot],
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


def _match_fields(match: Match) -> int:
    return sum(1 << f for f, name in enumerate(FIELDS) if _constraint(match, name) is not None)


def _slot_fields(slot: Slot) -> int:
    return _match_fields(slot.match)


def group_slots(slots: Sequence[Slot], max_groups: int = abi.MAX_GROUPS) -> List[Tuple[int, List[int]]]:
    """Group slots by the set of fields they constrain: [(field bits, slot indexes)].

    Beyond max_groups shapes the smallest are merged into one group over the union of their
    fields; there a slot that leaves one of those fields open is a wildcard in its rows.
    """
    by_shape: Dict[int, List[int]] = {}
    # a slot's fields are its match's, kept with the Match object (matchmemo: watch's re-plans)
    for index, fields in enumerate(matchmemo.field_bits(list(map(operator.attrgetter("match"), slots)), _match_fields)):
        by_shape.setdefault(fields, []).append(index)
    shapes = sorted(by_shape.items(), key=lambda item: (-len(item[1]), item[0]))
    if len(shapes) <= max_groups:
        return shapes
    kept, rest = shapes[:max_groups - 1], shapes[max_groups - 1:]
    merged_fields = 0
    for fields, _ in rest:
        merged_fields |= fields
    return kept + [(merged_fields, sorted(i for _, members in rest for i in members))]


def counted_rules(slots: Sequence[Slot]) -> List[int]:
    """The rule ids the class bitmaps can decide, ascending: each gets a counter, numbered densely
    (the counters array is sized by them). A rule only a fast path holds counts in its entry
    (ipt2xdp/fastcount.py), so a 100k-address blocklist takes no counters at all; a set member
    shadowed by an identical earlier one never decides, and a CONTINUE slot's counter only names
    it (mapview)."""
    rules = {slot.counter for slot in slots if slot.counter != abi.OVERFLOW_COUNTER}
    for slot in slots:
        if slot.set_members is not None:
            rules.update(map(operator.itemgetter(-1), slot.set_members))
    return sorted(rules)


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
            have seen on counter abi.NAT_NEW_COUNTER, and pass those XDP cannot place; with
            abi.NAT_FLOWS (plan.Plan.nat_flows), pass every drop that may belong to a NATed flow.
    Returns:
        Tables, whose maps are keyed by the logical names of abi.GEN_MAPS.
    """
    validate(rules, default_action)
    matchmemo.trim(len(rules))  # the boxes of matches since gone (kept by tuplefast.analyse)
    fast = fastpath.analyse(rules, action_code) if reduce else None
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
    whole classifier), or None to analyse it here."""
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
        kept.append(Slot(match=Match(), action=Action(Verdict.DEFER), counter=abi.OVERFLOW_COUNTER,
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
    for f, name in enumerate(FIELDS):
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

    maps = {"class_rows": encode_rows(rows_bitmaps)}
    maps["value_class"] = encode_value_class(field_intervals, row_base)
    maps["addr_dir"], maps["addr_bounds"] = encode_addresses(field_intervals, row_base)
    named_ifindexes = set().union(*(s.match.iif for s in slots if s.match.iif is not None))
    maps["iif_class"], iif_default_row = encode_iif(field_intervals, row_base, named_ifindexes)

    rule_ids = list(map(operator.attrgetter("rule_id"), all_rules))
    counter_rules = counted_rules(slots)
    counter_of = dict(zip(counter_rules, range(len(counter_rules))))
    default_counter = len(counter_rules)
    counter_of[abi.OVERFLOW_COUNTER] = default_counter + 1
    # + the default action and the overflow catch-all (and the drops nat PREROUTING would see)
    stride = default_counter + (3 if nat_new & abi.NAT_NEW_ON else 2)
    if stride > abi.MAX_COUNTER_STRIDE:
        raise CapacityError(f"{default_counter} rules the classifier decides need a counter each, XDP holds "
                            f"{abi.MAX_COUNTER_STRIDE - 3}; leave the rest to netfilter or shorten the ruleset")
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
                set_values.append(struct.pack("=I", counter_of[rule_id]))
        next_slot = slot_of_rule(slot.action.target) if slot.action.verdict == Verdict.CONTINUE else 0
        slot_values.append(encode_slot(slot, counter_of[slot.counter], set_id, next_slot))
    maps["slots"] = pack_array("slots", slot_values, ctypes.sizeof(abi.Slot))
    maps["slots"].max_entries = abi.MAX_SLOTS
    maps["exact_set"] = MapContents("exact_set", max(1, len(set_keys)), ctypes.sizeof(abi.ExactKey), 4,
                                    b"".join(set_keys), b"".join(set_values))

    # counters start at zero: only the size is data (the loader multiplies it by the CPUs)
    maps["counters"] = MapContents("counters", stride, 4, ctypes.sizeof(abi.Counter))
    maps["counter_rules"] = dense_array("counter_rules", struct.pack(f"={len(counter_rules)}I", *counter_rules), 4)
    cfg = abi.GenConfig(generation=0, field_mask=field_mask, nslots=nslots, counter_stride=stride,
                        default_action=ACT_CODES[default_action.verdict], default_counter=default_counter,
                        iif_default_row=iif_default_row, ngroups=len(groups), nat_new=nat_new)
    for g, (fields, row) in enumerate(zip(group_fields, group_rows)):
        cfg.group_fields[g] = fields
        cfg.group_row[g] = row
    # the blocklist fast path, proven on the rules the program holds (before any overflow cut)
    if fast is None or overflowed:
        fast = fastpath.analyse(rules[:slots[-1].first_rule] if overflowed else rules, action_code)
    fast_keys, fast_values, fast_count = fastpath.encode(fast)
    for i, plen in enumerate(fast.plens):
        cfg.src_fast_plens[i] = plen
    for i, shape in enumerate(fast.shapes):
        cfg.tuple_fast_fields[i], cfg.tuple_fast_src_plen[i], cfg.tuple_fast_dst_plen[i] = shape
        (cfg.tuple_fast_src_mask[i], cfg.tuple_fast_dst_mask[i], cfg.tuple_fast_port_mask[i],
         cfg.tuple_fast_proto_mask[i]) = tuplefast.masks(shape)
    if fast.plens or fast.shapes:
        cfg.src_fast_ndst = len(fast.dsts.intervals)
        for i, (lo, hi) in enumerate(fast.dsts):
            cfg.src_fast_dst_lo[i], cfg.src_fast_dst_hi[i] = lo, hi
    maps["src_fast"] = MapContents("src_fast", max(1, fast_count), ctypes.sizeof(abi.SrcFastKey),
                                   ctypes.sizeof(abi.SrcFastValue), fast_keys, fast_values)
    tuple_keys, tuple_values, tuple_count = tuplefast.encode(fast.tuples, fast.shapes)
    maps["tuple_fast"] = MapContents("tuple_fast", max(1, tuple_count), ctypes.sizeof(abi.ExactKey),
                                     ctypes.sizeof(abi.SrcFastValue), tuple_keys, tuple_values)
    maps["cfg"] = pack_array("cfg", [bytes(cfg)], ctypes.sizeof(abi.GenConfig))
    for name, shape in abi.GEN_MAPS.items():
        m = maps[name]
        assert (m.key_size, m.value_size) == (shape.key_size, shape.value_size), name
    return Tables(maps=maps, rule_count=len(all_rules), slot_count=nslots, set_count=set_count, rule_ids=rule_ids,
                  default_action=default_action.verdict, overflowed_rules=overflowed, field_mask=field_mask,
                  notes=notes, fast_path=fast)
