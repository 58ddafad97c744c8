# SPDX-License-Identifier: GPL-2.0-only
"""compile() step 3: slots, class rows, sets, the address directory and bounds become the key/value
bytes of a generation's maps (MapContents); dump() renders them for golden files."""
from __future__ import annotations

import bisect
import ctypes
import struct
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

from ipt2xdp import abi
from ipt2xdp.classifier import Action, Verdict
from ipt2xdp.errors import CapacityError
from ipt2xdp.slots import Slot

ACT_CODES = {Verdict.DROP: abi.ACT_DROP, Verdict.ACCEPT: abi.ACT_ACCEPT, Verdict.DEFER: abi.ACT_DEFER,
        Verdict.CONTINUE: abi.ACT_CONTINUE}
# Domains of the small fields as value_class regions: (base, size incl. the "absent" value).
VALUE_REGIONS = {"proto": (abi.VC_PROTO, abi.CT_CLASSES * 256), "sport": (abi.VC_SPORT, 65537),
                 "dport": (abi.VC_DPORT, 65537), "icmp": (abi.VC_ICMP, 65537), "tcp_flags": (abi.VC_TCP_FLAGS, 65)}


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


_INDEX_KEYS = b""  # the keys 0..N-1 of the largest array map packed so far (value_class: 200k u32s)


def index_keys(n: int) -> bytes:
    """The keys of an n-entry array map, 0..n-1 as native u32s: a prefix of the longest kept,
    so packing the fixed-size maps' keys (a few ms each) is not redone in every compile; at most
    the largest array map's keys are kept (addr_bounds: 1 MB)."""
    global _INDEX_KEYS
    if 4 * n > len(_INDEX_KEYS):
        _INDEX_KEYS = struct.pack(f"={n}I", *range(n))
    return _INDEX_KEYS[:4 * n]


def pack_array(name: str, values: Sequence[bytes], value_size: int) -> MapContents:
    return MapContents(name, max(1, len(values)), 4, value_size, index_keys(len(values)), b"".join(values))


def dense_array(name: str, blob: bytes, value_size: int) -> MapContents:
    n = len(blob) // value_size
    return MapContents(name, max(1, n), 4, value_size, index_keys(n), blob)


def action_code(action: Action) -> int:
    """A DROP guarded by ipset copies is IPT2XDP_ACT_SET_GUARDED | bits: a program without the
    guard passes such slots, as it passes every action it does not know."""
    if action.guard:
        return abi.ACT_SET_GUARDED | action.guard
    return ACT_CODES[action.verdict]


def encode_slot(slot: Slot, counter: int, set_id: int, next_slot: int) -> bytes:
    """counter: the slot's index in the counters (compile numbers them; slot.counter is its rule id)."""
    s = abi.Slot(counter=counter, next=next_slot, set_id=set_id, action=action_code(slot.action),
                 kind=abi.SLOT_SET if slot.set_members is not None else abi.SLOT_RULE,
                 key_fields=slot.key_fields, src_plen=slot.src_plen, dst_plen=slot.dst_plen)
    return bytes(s)


def encode_rows(rows_bitmaps: List[int]) -> MapContents:
    """Each row: summary (bit w: word w nonzero), then the bitmap words, little-endian u64s."""
    values = []
    rows_bitmaps = rows_bitmaps or [0]  # an empty ruleset still gets a (never read) row
    full = (1 << abi.MAX_SLOTS) - 1
    for bitmap in rows_bitmaps:
        raw = (bitmap & full).to_bytes(abi.MAX_WORDS * 8, "little")
        values.append(_summary(raw).to_bytes(abi.SUMMARY_WORDS * 8, "little") + raw)
    return pack_array("class_rows", values, ctypes.sizeof(abi.ClassRow))


_NONZERO_DIGIT = bytes([ord("0")] + [ord("1")] * 255)


def _summary(raw: bytes) -> int:
    """Bit w set iff the little-endian u64 word w of raw is nonzero (bytewise, no loop per word):
    OR the eight byte lanes of the words, then read one '0'/'1' digit per word."""
    lanes = 0
    for lane in range(8):
        lanes |= int.from_bytes(raw[lane::8], "big")
    digits = lanes.to_bytes(len(raw) // 8, "big").translate(_NONZERO_DIGIT)
    return int(digits[::-1], 2)


def encode_value_class(field_intervals, row_base) -> MapContents:
    # written run by run into zeroed bytes: packing 200k row numbers one by one took several ms
    rows = bytearray(4 * abi.VC_ENTRIES)
    for name, (base, size) in VALUE_REGIONS.items():
        if name not in field_intervals:
            continue
        intervals = field_intervals[name]
        for i, (start, cls) in enumerate(intervals):
            end = intervals[i + 1][0] if i + 1 < len(intervals) else size
            rows[4 * (base + start):4 * (base + end)] = struct.pack("=I", row_base[name] + cls) * (end - start)
    return dense_array("value_class", bytes(rows), 4)


def encode_addresses(field_intervals, row_base) -> Tuple[MapContents, MapContents]:
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
    blob = struct.pack(f"={2 * len(bounds)}I", *(v for bound in bounds for v in bound))
    bounds_map = dense_array("addr_bounds", blob, 8)
    bounds_map.max_entries = abi.MAX_BOUNDS
    return (dense_array("addr_dir", bytes(directory), 8), bounds_map)


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


def encode_iif(field_intervals, row_base, named: Sequence[int]) -> Tuple[MapContents, int]:
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


def dump(tables) -> str:
    """Human-readable, deterministic rendering of the tables (golden files compare against it)."""
    out = [f"# rules {tables.rule_count} slots {tables.slot_count} sets {tables.set_count} "
           f"default {tables.default_action.name} field_mask {tables.field_mask:#x} digest {tables.digest}"]
    out.extend(f"# note: {n}" for n in tables.notes)
    cfg = abi.GenConfig.from_buffer_copy(tables.maps["cfg"].values)
    out.append(f"cfg nslots={cfg.nslots} counter_stride={cfg.counter_stride} default_action={cfg.default_action} "
               f"default_counter={cfg.default_counter} iif_default_row={cfg.iif_default_row}")
    for g in range(cfg.ngroups):
        out.append(f"group {g}: fields={cfg.group_fields[g]:#x} members=row {cfg.group_row[g]}")
    counter_rules = tables.maps["counter_rules"]
    rule_of = struct.unpack(f"={counter_rules.count}I", counter_rules.values)

    def counted(counter: int) -> str:
        return f"counter={counter} ({'rule ' + str(rule_of[counter]) if counter < len(rule_of) else 'not a rule'})"
    for i, (_, value) in enumerate(tables.maps["slots"].entries()):
        s = abi.Slot.from_buffer_copy(value)
        out.append(f"slot {i}: {counted(s.counter)} action={s.action} kind={s.kind} next={s.next} set={s.set_id} "
                   f"key_fields={s.key_fields:#x} plen={s.src_plen}/{s.dst_plen}")
    for key, value in sorted(tables.maps["exact_set"].entries()):
        if tables.set_count:
            out.append(f"set {key.hex()} -> {counted(struct.unpack('=I', value)[0])}")
    bounds = tables.maps["addr_bounds"]
    for i, (_, value) in enumerate(bounds.entries()):
        start, row = struct.unpack("=II", value)
        out.append(f"addr_bound {i}: start={start:#010x} row={row}")
    vc = tables.maps["value_class"].values
    for name, (base, size) in VALUE_REGIONS.items():
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
    if cfg.tuple_fast_fields[0]:
        if not cfg.src_fast_plens[0]:
            out.append("fast dsts " + " ".join(f"{cfg.src_fast_dst_lo[i]:#010x}-{cfg.src_fast_dst_hi[i]:#010x}"
                                               for i in range(cfg.src_fast_ndst)))
        for i in range(abi.TUPLE_FAST_SHAPES):
            if cfg.tuple_fast_fields[i]:
                out.append(f"tuple_fast shape {i}: key_fields={cfg.tuple_fast_fields[i]:#x} "
                           f"plen={cfg.tuple_fast_src_plen[i]}/{cfg.tuple_fast_dst_plen[i]}")
        for key, value in sorted(tables.maps["tuple_fast"].entries()):
            counter, action = struct.unpack("=II", value)
            out.append(f"tuple_fast {key.hex()} -> rule {counter} action {action:#x}")
    for key, value in sorted(tables.maps["iif_class"].entries()):
        if tables.field_mask & (1 << abi.F_IIF):
            out.append(f"iif {struct.unpack('=I', key)[0]} -> row {struct.unpack('=I', value)[0]}")
    for i, (_, value) in enumerate(tables.maps["class_rows"].entries()):
        bitmap = int.from_bytes(value[abi.SUMMARY_WORDS * 8:], "little")
        out.append(f"row {i}: slots {[b for b in range(bitmap.bit_length()) if bitmap >> b & 1]}")
    return "\n".join(out) + "\n"
