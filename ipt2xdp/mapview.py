# SPDX-License-Identifier: GPL-2.0-only
"""One generation's maps read back in iptables' terms, so two generations can be compared.

Slot numbers, class rows and set ids are internal numbering that shifts whenever a rule is added;
what they mean does not. So each map is decoded into what it says about rules:
  - rule actions: per classifier rule that owns a slot, what XDP does (drop, accept, defer, jump);
  - exact-match sets: per hashed 5-tuple (or prefix) key, the rule it stands for;
  - the blocklist fast path: per source prefix, the rule whose DROP it takes (the class bitmaps
    no longer hold those prefixes), and the destinations it applies to; the exact-tuple fast
    path likewise, per box (its text, as tuplefast.describe writes it);
  - per field (source and destination addresses, protocols, ports, ICMP types, TCP flags, input
    devices): the field's values cut into ranges, each with the rules that single those values out.
A rule is named by the iptables rules its packets traverse (their text, not their numbers, so that
inserting a rule does not rename every later one) plus which instance of that path it is. A rule
that every range of a field carries (it leaves the field open but shares a group with rules that
constrain it) says nothing about the field and is left out of that field's ranges.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Hashable, List, Sequence, Tuple

from ipt2xdp import abi
from ipt2xdp.mapencode import MapContents

Identity = Tuple[Hashable, ...]
Ranges = List[Tuple[int, FrozenSet[Identity]]]  # (first value, rules) in increasing order

# field name -> (bit in field_mask, value_class base or None, domain size incl. the "absent" value)
FIELDS = {
    "src": (abi.F_SRC, None, 1 << 32), "dst": (abi.F_DST, None, 1 << 32),
    "proto": (abi.F_PROTO, abi.VC_PROTO, abi.CT_CLASSES * 256), "sport": (abi.F_SPORT, abi.VC_SPORT, 65537),
    "dport": (abi.F_DPORT, abi.VC_DPORT, 65537), "icmp": (abi.F_ICMP, abi.VC_ICMP, 65537),
    "tcp_flags": (abi.F_TCP_FLAGS, abi.VC_TCP_FLAGS, 65),
}
ACTION_NAMES = {abi.ACT_DROP: "drop", abi.ACT_ACCEPT: "accept", abi.ACT_DEFER: "to netfilter",
                abi.ACT_CONTINUE: "continue"}
OVERFLOW = ("catch-all beyond capacity",)
END = ("end",)


@dataclass
class RuleNames:
    """rule_id -> a name stable across generations, and the label the report shows for it."""

    identity: Dict[int, Identity] = field(default_factory=dict)
    label: Dict[int, str] = field(default_factory=dict)


def _ref_label(table: str, chain: str, index: int) -> str:
    return f"{table}/{chain} " + ("policy" if index == 0 else f"#{index}")


def rule_names(counter_paths: Sequence[Sequence[Sequence]], decisions: Sequence[dict]) -> RuleNames:
    """From a plan's counter paths and decision records (report.decision_records or the stored ones)."""
    texts = {(d["table"], d["chain"], d["index"]): d["text"] for d in decisions}
    names, seen = RuleNames(), {}
    for rule_id, path in enumerate(counter_paths):
        path_id = tuple((t, c, "policy" if i == 0 else texts.get((t, c, i), i)) for t, c, i in path)
        occurrence = seen.get(path_id, 0)
        seen[path_id] = occurrence + 1
        names.identity[rule_id] = path_id + (occurrence,)
        label = " > ".join(_ref_label(*ref) for ref in path) if path else "guard: not addressed to this host"
        names.label[rule_id] = label + (f" (part {occurrence + 1})" if occurrence else "")
    return names


@dataclass
class View:
    actions: Dict[Identity, Tuple[int, Identity, int]]   # (ACT_*, next rule or END, set members)
    exact: Dict[Tuple, Identity]                          # set key -> rule
    fields: Dict[str, Ranges]                             # see FIELDS; "proto" folds the ct class in
    iif: Dict[object, FrozenSet[Identity]]                # ifindex, or "other" -> rules
    labels: Dict[Identity, str]
    uses_ct: bool
    default_action: int
    fast: Dict[Tuple[int, int], Identity] = field(default_factory=dict)  # (network, plen) -> rule
    fast_dsts: Tuple[Tuple[int, int], ...] = ()  # destinations the fast path applies to (none: off)
    # tuplefast.Box -> rule: described (tuplefast.describe) only for the entries a report shows,
    # not for every one of 100k
    tuple_fast: Dict[Tuple, Identity] = field(default_factory=dict)


def _entries(contents: MapContents, struct_format: str) -> List[Tuple]:
    size = contents.value_size
    return [struct.unpack_from(struct_format, contents.values, i * size) for i in range(contents.count)]


def _identities(bitmap: int, slot_ids: Sequence[Identity]) -> FrozenSet[Identity]:
    out = []
    while bitmap:
        low = bitmap & -bitmap
        index = low.bit_length() - 1
        if index < len(slot_ids):
            out.append(slot_ids[index])
        bitmap ^= low
    return frozenset(out)


def _runs(rows: Sequence[int]) -> List[Tuple[int, int]]:
    out = []
    for value, row in enumerate(rows):
        if not out or out[-1][1] != row:
            out.append((value, row))
    return out


def decode(maps: Dict[str, MapContents], names: RuleNames) -> View:
    """A generation's maps (compile.Tables.maps, or mapread's copy of the kernel's) in rule terms."""
    cfg = abi.GenConfig.from_buffer_copy(maps["cfg"].values[:ctypes.sizeof(abi.GenConfig)])
    slot_size = maps["slots"].value_size
    slots = [abi.Slot.from_buffer_copy(maps["slots"].values, i * slot_size) for i in range(cfg.nslots)]
    labels: Dict[Identity, str] = {}

    rules = maps.get("counter_rules")  # a copy from before it: counters were the rule ids
    rule_of = (struct.unpack(f"={len(rules.values) // 4}I", rules.values) if rules is not None  # kernel: padded
               else range(cfg.default_counter))

    def identity(rule_id: int) -> Identity:
        ident = names.identity.get(rule_id, ("classifier rule", rule_id))
        labels.setdefault(ident, names.label.get(rule_id, f"classifier rule {rule_id}"))
        return ident

    def counted(counter: int) -> Identity:
        """The rule a slot's or a set member's counter counts (compile numbers them densely)."""
        if counter == cfg.default_counter + 1:
            labels.setdefault(OVERFLOW, OVERFLOW[0])
            return OVERFLOW
        if counter >= min(len(rule_of), cfg.default_counter):
            labels.setdefault(("counter", counter), f"counter {counter} of no rule")
            return ("counter", counter)
        return identity(rule_of[counter])

    slot_ids = [counted(s.counter) for s in slots]
    set_sizes: Dict[int, int] = {}
    exact: Dict[Tuple, Identity] = {}
    set_shape = {s.set_id: (s.key_fields, s.src_plen, s.dst_plen) for s in slots if s.kind == abi.SLOT_SET}
    for key, (counter,) in zip(_keys(maps["exact_set"]), _entries(maps["exact_set"], "=I")):
        src, dst, sport, dport, set_id, proto = struct.unpack("!IIHH", key[:12]) + struct.unpack("=HB", key[12:15])
        set_sizes[set_id] = set_sizes.get(set_id, 0) + 1
        key_fields, src_plen, dst_plen = set_shape.get(set_id, (0, 0, 0))
        exact_key = (key_fields, src_plen, dst_plen, src, dst, proto, sport, dport)
        occurrence = 0
        while (exact_key + (occurrence,)) in exact:  # the same key in two sets
            occurrence += 1
        exact[exact_key + (occurrence,)] = counted(counter)
    actions = {}
    for s, ident in zip(slots, slot_ids):
        nxt = END
        if s.action == abi.ACT_CONTINUE:
            nxt = slot_ids[s.next] if s.next < len(slot_ids) else END
        actions[ident] = (s.action, nxt, set_sizes.get(s.set_id, 0) if s.kind == abi.SLOT_SET else 0)
    fast, fast_dsts = _fast_path(maps, cfg, identity)
    tuple_fast = _tuple_fast_path(maps, cfg, identity)
    if tuple_fast and not fast_dsts:
        fast_dsts = tuple((cfg.src_fast_dst_lo[i], cfg.src_fast_dst_hi[i]) for i in range(cfg.src_fast_ndst))
    for ident, action in list(fast.values()) + list(tuple_fast.values()):
        actions.setdefault(ident, (action, END, 0))  # a rule a fast path alone holds

    row_size = maps["class_rows"].value_size
    rows = maps["class_rows"].values
    bitmaps: Dict[int, int] = {}

    def bitmap(row: int) -> int:
        if row not in bitmaps:
            start = row * row_size + abi.SUMMARY_WORDS * 8
            bitmaps[row] = int.from_bytes(rows[start:(row + 1) * row_size], "little")
        return bitmaps[row]

    def sets_of(rows_of_ranges: List[Tuple[object, int]]) -> List[Tuple[object, FrozenSet[Identity]]]:
        common = -1
        for row in {row for _, row in rows_of_ranges}:
            common &= bitmap(row)
        rules = {row: _identities(bitmap(row) & ~common, slot_ids) for row in {row for _, row in rows_of_ranges}}
        return [(start, rules[row]) for start, row in rows_of_ranges]

    fields: Dict[str, Ranges] = {}
    vc = maps["value_class"].values
    for name, (bit, base, size) in FIELDS.items():
        if not cfg.field_mask & (1 << bit):
            fields[name] = [(0, frozenset())]
        elif base is not None:
            fields[name] = sets_of(_runs(struct.unpack_from(f"={size}I", vc, base * 4)))
        else:
            fields[name] = sets_of(_address_runs(maps, bit))
    iif: Dict[object, FrozenSet[Identity]] = {}
    if cfg.field_mask & (1 << abi.F_IIF):
        named = [(struct.unpack("=I", k)[0], v[0]) for k, v in zip(_keys(maps["iif_class"]), _entries(maps["iif_class"], "=I"))]
        iif = dict(sets_of(named + [("other", cfg.iif_default_row)]))
    return View(actions, exact, fields, iif, labels, bool(cfg.field_mask & (1 << abi.F_CT_STATE)), cfg.default_action,
                {key: ident for key, (ident, _) in fast.items()}, fast_dsts,
                {key: ident for key, (ident, _) in tuple_fast.items()})


def _fast_path(maps: Dict[str, MapContents], cfg, identity):
    """src_fast as {(network, plen): (rule, action code)} and the destinations it applies to (a
    generation from before the fast path has no such map)."""
    if "src_fast" not in maps or not cfg.src_fast_plens[0]:
        return {}, ()
    contents = maps["src_fast"]
    fast = {}
    for key, (counter, action) in zip(_keys(contents), _entries(contents, "=II")):
        network, plen = struct.unpack("!I", key[:4])[0], struct.unpack("=I", key[4:])[0]
        fast[(network, plen)] = (identity(counter), action)
    return fast, tuple((cfg.src_fast_dst_lo[i], cfg.src_fast_dst_hi[i]) for i in range(cfg.src_fast_ndst))


def _tuple_fast_path(maps: Dict[str, MapContents], cfg, identity):
    """tuple_fast as {box: (rule, action code)} (a generation from before it has no such map)."""
    if "tuple_fast" not in maps or not cfg.tuple_fast_fields[0]:
        return {}
    shapes = [(cfg.tuple_fast_fields[i], cfg.tuple_fast_src_plen[i], cfg.tuple_fast_dst_plen[i])
              for i in range(abi.TUPLE_FAST_SHAPES)]
    contents = maps["tuple_fast"]
    out = {}
    for key, (counter, action) in zip(_keys(contents), _entries(contents, "=II")):
        src, dst, sport, dport = struct.unpack("!IIHH", key[:12])
        shape_index, proto = struct.unpack("=HB", key[12:15])
        if shape_index < len(shapes):
            out[(shapes[shape_index], src, dst, proto, sport, dport)] = (identity(counter), action)
    return out


def _keys(contents: MapContents) -> List[bytes]:
    size = contents.key_size
    return [contents.keys[i * size:(i + 1) * size] for i in range(contents.count)]


def _address_runs(maps: Dict[str, MapContents], bit: int) -> List[Tuple[int, int]]:
    """The (start, row) bounds of src (bit 0) or dst (bit 1): the directory says where they lie."""
    directory = maps["addr_dir"].values
    first, _ = struct.unpack_from("=II", directory, bit * 65536 * 8)
    last_first, last_count = struct.unpack_from("=II", directory, (bit * 65536 + 65535) * 8)
    bounds = maps["addr_bounds"].values
    return [struct.unpack_from("=II", bounds, i * 8) for i in range(first, last_first + last_count + 1)]
