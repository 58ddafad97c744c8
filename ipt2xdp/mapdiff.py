# SPDX-License-Identifier: GPL-2.0-only
"""The dry run's map diff: which map entries importing the new plan would add, remove or change.

The new side is compile()'s output for the new plan (what the loader would write); the old side is
the generation in force, read back from the kernel (mapread), so the diff is against the truth.
Both are decoded into rule terms (mapview) and compared per user-level map; entries are rendered
as CIDRs, port ranges, protocols and iptables rule numbers. A raw comparison of the kernel maps
byte for byte comes with it: zero raw differences means the loaded maps are exactly what the new
plan compiles to (the generation number in cfg and the counters, which are runtime data, aside).
"""
from __future__ import annotations

import array
import ipaddress
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

from ipt2xdp import abi, tuplefast
from ipt2xdp.mapencode import MapContents
from ipt2xdp.mapview import ACTION_NAMES, END, FIELDS, View

ENTRY_LIMIT = 50
TITLES = {"actions": "rule actions", "exact": "exact-match sets", "src": "source addresses",
          "dst": "destination addresses", "proto": "protocols", "sport": "source ports",
          "dport": "destination ports", "icmp": "ICMP types", "tcp_flags": "TCP flags",
          "iif": "input devices", "src_fast": "blocklist fast path",
          "tuple_fast": "exact-tuple fast path"}
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah", 132: "sctp"}
CT_NAMES = {abi.CT_NONE: "no conntrack entry (unverified)", abi.CT_FOUND: "conntrack entry",
            abi.CT_NOT_LOOKED_UP: "not looked up", abi.CT_NONE_VERIFIED: "no conntrack entry"}


# --- rendering of keys ---------------------------------------------------------------------------

def _address(lo: int, hi: int) -> str:
    nets = list(ipaddress.summarize_address_range(ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi)))
    if len(nets) <= 3:
        return ", ".join(str(n) for n in nets)
    return f"{ipaddress.IPv4Address(lo)}-{ipaddress.IPv4Address(hi)}"


def _span(lo: int, hi: int, show=str) -> str:
    return show(lo) if lo == hi else f"{show(lo)}-{show(hi)}"


def _port(lo: int, hi: int) -> str:
    if lo == abi.NO_PORT:
        return "no port (not TCP/UDP)"
    return _span(lo, min(hi, 65535)) + (", no port" if hi == abi.NO_PORT else "")


def _icmp(lo: int, hi: int) -> str:
    if lo == abi.NOT_ICMP:
        return "not ICMP"
    tail = ", not ICMP" if hi == abi.NOT_ICMP else ""
    hi = min(hi, 0xFFFF)
    if lo % 256 == 0 and hi % 256 == 255:
        return "type " + _span(lo >> 8, hi >> 8) + tail
    return f"type {lo >> 8} code {lo & 255}" + ("" if lo == hi else f" - type {hi >> 8} code {hi & 255}") + tail


def _tcp_flags(lo: int, hi: int) -> str:
    if lo == abi.NOT_TCP:
        return "not TCP"
    return "flags " + _span(lo, min(hi, 63), lambda v: f"{v:#04x}") + (", not TCP" if hi == abi.NOT_TCP else "")


def _proto(lo: int, hi: int, with_ct: bool) -> str:
    """A range of the protocol field, which folds in the conntrack class (class * 256 + protocol)."""
    parts = []
    for ct in range(lo >> 8, (hi >> 8) + 1):
        a, b = max(lo, ct * 256) & 255, min(hi, ct * 256 + 255) & 255
        text = "any protocol" if (a, b) == (0, 255) else _span(a, b, lambda p: PROTOCOLS.get(p, str(p)))
        parts.append(f"{text} ({CT_NAMES[ct]})" if with_ct else text)
    return "; ".join(parts)


def _exact_key(key: Tuple) -> str:
    key_fields, src_plen, dst_plen, src, dst, proto, sport, dport, _ = key
    out = []
    if key_fields & abi.K_PROTO:
        out.append(PROTOCOLS.get(proto, str(proto)))
    if key_fields & abi.K_SRC:
        out.append(f"src {ipaddress.IPv4Network((src, src_plen))}")
    if key_fields & abi.K_SPORT:
        out.append(f"sport {sport}")
    if key_fields & abi.K_DST:
        out.append(f"dst {ipaddress.IPv4Network((dst, dst_plen))}")
    if key_fields & abi.K_DPORT:
        out.append(f"dport {dport}")
    return " ".join(out)


# --- comparing -----------------------------------------------------------------------------------

def _range_changes(old, new, size: int):
    """Maximal ranges where the rule sets differ: [(lo, hi, before, after)]."""
    points = sorted({s for s, _ in old} | {s for s, _ in new})
    i = j = 0
    out: List[Tuple[int, int, FrozenSet, FrozenSet]] = []
    for k, start in enumerate(points):
        while i + 1 < len(old) and old[i + 1][0] <= start:
            i += 1
        while j + 1 < len(new) and new[j + 1][0] <= start:
            j += 1
        end = (points[k + 1] if k + 1 < len(points) else size) - 1
        before, after = old[i][1], new[j][1]
        if before == after:
            continue
        if out and out[-1][1] == start - 1 and out[-1][2:] == (before, after):
            out[-1] = (out[-1][0], end, before, after)
        else:
            out.append((start, end, before, after))
    return out


def _op(before, after) -> str:
    return "added" if not before else "removed" if not after else "changed"


class _Section:
    def __init__(self, name: str):
        self.name, self.counts, self.entries = name, {"added": 0, "removed": 0, "changed": 0}, []

    def add(self, before, after, entry: Callable[[], dict]) -> None:
        """entry: makes the entry's description, called only for the first ENTRY_LIMIT (a 100k-rule
        plan against nothing loaded has 100k entries to count, 50 to describe)."""
        op = _op(before, after)
        self.counts[op] += 1
        if len(self.entries) < ENTRY_LIMIT:
            self.entries.append(dict(op=op, **entry()))

    def record(self) -> dict:
        total = sum(self.counts.values())
        return {"map": TITLES[self.name], "name": self.name, **self.counts, "entries": self.entries,
                "truncated": total - len(self.entries)}


def compare_views(old: Optional[View], new: View, ifnames: Optional[Dict[int, str]] = None) -> List[dict]:
    """Per user-level map: counts of entries added, removed, changed, and the first ENTRY_LIMIT."""
    empty = View({}, {}, {name: [(0, frozenset())] for name in FIELDS}, {}, {}, False, 0)
    old = _pair_edited_rules(old, new) if old else empty
    labels = dict(old.labels)
    labels.update(new.labels)

    def names(rules) -> List[str]:
        return sorted(labels.get(r, str(r)) for r in rules)

    def action(value) -> str:
        act, nxt, members = value
        text = _action_text(act, nxt, labels)
        return text + (f" (set of {members})" if members else "")

    sections = []
    s = _Section("actions")
    for ident in list(new.actions) + [i for i in old.actions if i not in new.actions]:
        before, after = old.actions.get(ident), new.actions.get(ident)
        if before != after:
            s.add(before, after, lambda: {"rule": labels.get(ident, str(ident)),
                                          "before": before and action(before), "after": after and action(after)})
    sections.append(s)
    s = _Section("exact")
    for key in sorted(set(new.exact) | set(old.exact)):
        before, after = old.exact.get(key), new.exact.get(key)
        if before != after:
            s.add(before, after, lambda: {"key": _exact_key(key), "before": before and labels.get(before),
                                          "after": after and labels.get(after)})
    sections.append(s)
    with_ct = old.uses_ct or new.uses_ct
    for name, (_, _, size) in FIELDS.items():
        s = _Section(name)
        old_ranges, new_ranges = old.fields[name], new.fields[name]
        if name == "proto":
            allowed = _proto_values(with_ct)
            old_ranges, new_ranges = _restrict(old_ranges, allowed), _restrict(new_ranges, allowed)
        for lo, hi, before, after in _range_changes(old_ranges, new_ranges, size):
            s.add(before, after, lambda: {"key": _render(name, lo, hi, with_ct), "before": names(before),
                                          "after": names(after)})
        sections.append(s)
    s = _Section("iif")
    for key in sorted(set(new.iif) | set(old.iif), key=str):
        before, after = old.iif.get(key, frozenset()), new.iif.get(key, frozenset())
        if before != after:
            device = (ifnames or {}).get(key)
            s.add(before, after, lambda: {"key": "other devices" if key == "other"
                                          else f"{device} (ifindex {key})" if device else f"ifindex {key}",
                                          "before": names(before), "after": names(after)})
    sections.append(s)
    s = _Section("src_fast")
    for network, plen in sorted(set(new.fast) | set(old.fast)):
        before, after = old.fast.get((network, plen)), new.fast.get((network, plen))
        if before != after:
            s.add(before, after, lambda: {"key": f"{ipaddress.IPv4Address(network)}/{plen}",
                                          "before": before and labels.get(before),
                                          "after": after and labels.get(after)})
    if old.fast_dsts != new.fast_dsts:
        def ranges(view):
            return ", ".join(_address(lo, hi) for lo, hi in view.fast_dsts) or None
        s.add(old.fast_dsts, new.fast_dsts,
              lambda: {"key": "to destinations", "before": ranges(old), "after": ranges(new)})
    sections.append(s)
    s = _Section("tuple_fast")
    for key in sorted(set(new.tuple_fast) | set(old.tuple_fast)):
        before, after = old.tuple_fast.get(key), new.tuple_fast.get(key)
        if before != after:
            s.add(before, after, lambda: {"key": tuplefast.describe(key), "before": before and labels.get(before),
                                          "after": after and labels.get(after)})
    sections.append(s)
    return [section.record() for section in sections]


def _pair_edited_rules(old: View, new: View) -> View:
    """Rules are named by their text; a rule edited in place (same number, new text) is one rule
    whose entries changed, not one removed and one added. Pair such names by their label."""
    def by_label(view: View, others: View):
        out: Dict[str, list] = {}
        for ident, label in view.labels.items():
            if ident not in others.labels:
                out.setdefault(label, []).append(ident)
        return out
    old_only, new_only = by_label(old, new), by_label(new, old)
    rename = {idents[0]: new_only[label][0] for label, idents in old_only.items()
              if len(idents) == 1 and len(new_only.get(label, ())) == 1}
    if not rename:
        return old

    def r(ident):
        return rename.get(ident, ident)

    def rs(rules):
        return frozenset(r(i) for i in rules)
    return View({r(i): (act, r(nxt), members) for i, (act, nxt, members) in old.actions.items()},
                {key: r(i) for key, i in old.exact.items()},
                {name: [(start, rs(rules)) for start, rules in ranges] for name, ranges in old.fields.items()},
                {key: rs(rules) for key, rules in old.iif.items()},
                {r(i): label for i, label in old.labels.items()}, old.uses_ct, old.default_action,
                {key: r(i) for key, i in old.fast.items()}, old.fast_dsts,
                {key: r(i) for key, i in old.tuple_fast.items()})


def _action_text(act: int, nxt, labels) -> str:
    if act == abi.ACT_CONTINUE:
        return "continue at " + ("the policy" if nxt == END else labels.get(nxt, str(nxt)))
    return ACTION_NAMES.get(act, f"action {act}")


def _restrict(ranges, allowed: List[Tuple[int, int]]):
    """ranges with every value outside the allowed intervals given no rules."""
    out = []
    for lo, hi in allowed:
        out.append((lo, _rules_at(ranges, lo)))
        out.extend((start, rules) for start, rules in ranges if lo < start <= hi)
        out.append((hi + 1, frozenset()))
    if not out or out[0][0] > 0:
        out.insert(0, (0, frozenset()))
    return out


def _rules_at(ranges, value: int):
    found = ranges[0][1]
    for start, rules in ranges:
        if start > value:
            break
        found = rules
    return found


def _proto_values(with_ct: bool) -> List[Tuple[int, int]]:
    """The protocol-field values a packet can have: the program looks conntrack up only for TCP and
    UDP, and not at all in a generation without conntrack rules (everything is "not looked up")."""
    not_looked_up = [(abi.CT_NOT_LOOKED_UP * 256, abi.CT_NOT_LOOKED_UP * 256 + 255)]
    if not with_ct:
        return not_looked_up
    return [(ct * 256 + p, ct * 256 + p) for ct in (abi.CT_NONE, abi.CT_FOUND, abi.CT_NONE_VERIFIED) for p in (6, 17)] + not_looked_up


def _render(name: str, lo: int, hi: int, with_ct: bool) -> str:
    if name in ("src", "dst"):
        return _address(lo, hi)
    if name == "proto":
        return _proto(lo, hi, with_ct)
    if name in ("sport", "dport"):
        return _port(lo, hi)
    if name == "icmp":
        return _icmp(lo, hi)
    return _tcp_flags(lo, hi)


def raw_differences(old: Dict[str, MapContents], new: Dict[str, MapContents]) -> Dict[str, int]:
    """Kernel map -> number of keys whose value differs or that only one side has, for every map
    read from the kernel (not the counters). An array index past the end of compile's output is
    zeros, as the kernel's array holds it."""
    out = {}
    for name in old:
        a, b = old[name], new[name]
        if abi.GEN_MAPS[name].map_type == abi.BPF_MAP_TYPE_HASH:
            da, db = _as_dict(a), _as_dict(b)
            out[name] = sum(1 for key in set(da) | set(db) if da.get(key) != db.get(key))
            continue
        size = a.value_size
        length = max(len(a.values), len(b.values))
        va, vb = a.values.ljust(length, b"\0"), b.values.ljust(length, b"\0")
        out[name] = 0 if va == vb else _differing_values(va, vb, size)
    return out


def _differing_values(a: bytes, b: bytes, size: int) -> int:
    """How many of the size-byte values at the same offsets differ; equal 64 KiB blocks are skipped."""
    block = size * max(1, 65536 // size)
    typecode = {4: "I", 8: "Q"}.get(size)
    count = 0
    for start in range(0, len(a), block):
        x, y = a[start:start + block], b[start:start + block]
        if x == y:
            continue
        if typecode:
            count += sum(1 for u, v in zip(array.array(typecode, x), array.array(typecode, y)) if u != v)
        else:
            count += sum(1 for i in range(0, len(x), size) if x[i:i + size] != y[i:i + size])
    return count


def _as_dict(m: MapContents) -> Dict[bytes, bytes]:
    ks, vs = m.key_size, m.value_size
    return {m.keys[i * ks:(i + 1) * ks]: m.values[i * vs:(i + 1) * vs] for i in range(m.count)}


# --- the dry run's section -------------------------------------------------------------------------

def map_diff(plan, tables, loaded, record: Optional[dict], ifnames: Optional[Dict[int, str]] = None) -> dict:
    """The new plan's compiled tables against the loaded generation (mapread.LoadedGeneration or
    None), rules named through the plans' counter paths (record: the loaded plan's planstore
    record, or None when it is missing); ifnames: ifindex -> device name, for input devices."""
    from ipt2xdp.mapview import RuleNames, decode, rule_names
    from ipt2xdp.report import decision_records

    paths = [[(r.table, r.chain, r.index) for r in path] for path in plan.counter_paths]
    new_view = decode(tables.maps, rule_names(paths, decision_records(plan)))
    if loaded is None:
        return {"loaded": False, "maps": compare_views(None, new_view, ifnames)}
    if record and "counter_paths" in record:
        old_names = rule_names(record["counter_paths"], record["decisions"])
    else:
        old_names = RuleNames()
    raw = raw_differences(loaded.maps, {name: tables.maps[name] for name in loaded.maps})
    return {"loaded": True, "against": "kernel", "generation": loaded.generation,
            "deferring_all": loaded.deferring_all, "loaded_rules_named": bool(old_names.identity),
            "maps": compare_views(decode(loaded.maps, old_names), new_view, ifnames),
            "kernel_maps": raw, "kernel_maps_identical": not any(raw.values())}


def _side(value) -> str:
    if isinstance(value, list):
        return ", ".join(value) if value else "no rule"
    return value or "-"


def entry_text(entry: dict) -> str:
    head = entry.get("rule") or entry.get("key")
    if entry["op"] == "added":
        return f"{head}: {_side(entry['after'])}"
    if entry["op"] == "removed":
        return f"{head}: was {_side(entry['before'])}"
    return f"{head}: {_side(entry['before'])} -> {_side(entry['after'])}"


def table_lines(diff: dict, colour: bool = False, shown: int = 3) -> List[str]:
    """The compact section of the table report."""
    paint = {"added": ("+", "\033[32m"), "removed": ("-", "\033[31m"), "changed": ("~", "\033[33m")}
    if "error" in diff:
        return [f"map entries: {diff['error']}"]
    changed = [m for m in diff["maps"] if m["added"] or m["removed"] or m["changed"]]
    if not diff["loaded"]:
        total = sum(m["added"] for m in diff["maps"])
        return [f"map entries: nothing loaded: all {total} would be added ("
                + ", ".join(f"{m['map']} {m['added']}" for m in changed) + ")"]
    head = f"map entries against generation {diff['generation']} as loaded in the kernel"
    if diff["deferring_all"]:
        head += " (XDP defers everything right now)"
    if not diff["loaded_rules_named"]:
        head += "; its plan record is missing, so its rules are named by classifier position"
    lines = [head + ":"]
    if not changed:
        lines.append("  no map entry would change")
    for m in changed:
        lines.append(f"  {m['map']}: {m['added']} added, {m['removed']} removed, {m['changed']} changed")
        for entry in m["entries"][:shown]:
            mark, code = paint[entry["op"]]
            mark = f"{code}{mark}\033[0m" if colour else mark
            lines.append(f"    {mark} {entry_text(entry)}")
        more = m["added"] + m["removed"] + m["changed"] - min(shown, len(m["entries"]))
        if more > 0:
            lines.append(f"    ... {more} more (--json lists up to {ENTRY_LIMIT})")
    differing = {name: n for name, n in diff["kernel_maps"].items() if n}
    if differing:
        lines.append("  kernel maps that would change: " + ", ".join(f"{k} {v}" for k, v in differing.items()))
    else:
        lines.append("  the loaded maps are exactly what this plan compiles to")
    return lines
