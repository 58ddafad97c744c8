# SPDX-License-Identifier: GPL-2.0-only
"""What a loaded program counted, read from its maps: per-rule packets and bytes of a generation
(the counters array, named by counter_rules, plus what the fast-path entries counted) and the
program's per-CPU stats. A part of dataplane.Dataplane (a base class of it), apart because reading
counts shares nothing with loading and flipping generations but the map handles."""
from __future__ import annotations

import ctypes
import os
import struct
from typing import Dict, List, Optional, Tuple

from ipt2xdp import abi, fastcount, libbpf
from ipt2xdp.mapread import read_hash
from ipt2xdp.mapwrite import WRITTEN, ZERO_CHUNK, u32


class CounterReading:
    """Needs of the class it is mixed into: map_fds, read_state() and _inner_fd(outer, slot)."""

    def read_counters(self, slot: Optional[int] = None, final: bool = False) -> Dict[int, Tuple[int, int]]:
        """{rule id: (packets, bytes)} summed over CPUs, for the active (or given) slot (the
        counters array's, named by counter_rules), with what the fast-path entries counted
        (ipt2xdp/fastcount.py); rules that never matched are left
        out. abi.DEFAULT_COUNTER / abi.OVERFLOW_COUNTER name the default action and the capacity
        catch-all, abi.NAT_NEW_COUNTER the drops nat PREROUTING would have seen. final: no run can
        count in slot any more (the flip that replaced it read them): what the counted maps hold is
        kept for the flip that rewrites them (mapwrite.WRITTEN["final_counts"])."""
        if slot is None:
            st = self.read_state()
            slot = st.last_slot if st.active >= abi.GEN_SLOTS else st.active
        cfg_fd = self._inner_fd(abi.GEN_MAPS["cfg"].name, slot)
        fd = self._inner_fd(abi.GEN_MAPS["counters"].name, slot)
        rules_fd = self._inner_fd(abi.GEN_MAPS["counter_rules"].name, slot)
        try:
            if cfg_fd is None or fd is None or rules_fd is None:
                return {}
            cfg = abi.GenConfig.from_buffer_copy(libbpf.lookup_elem(cfg_fd, u32(0), ctypes.sizeof(abi.GenConfig)))
            info = libbpf.map_info(fd)
            raw = libbpf.read_array(fd, info.value_size, info.max_entries)
            stride = cfg.counter_stride
            # counter -> rule id: compile numbers the counters of the rules the classifier decides
            rule_of = libbpf.read_array(rules_fd, 4, libbpf.map_info(rules_fd).max_entries)
            names = dict(enumerate(struct.unpack(f"={len(rule_of) // 4}I", rule_of)[:cfg.default_counter]))
            names.update({cfg.default_counter: abi.DEFAULT_COUNTER, cfg.default_counter + 1: abi.OVERFLOW_COUNTER,
                          cfg.default_counter + 2: abi.NAT_NEW_COUNTER})
            totals: Dict[int, List[int]] = {}
            size = info.value_size  # packets, bytes: two u64
            zero = bytes(ZERO_CHUNK * size)
            for first in range(0, len(raw) // size, ZERO_CHUNK):  # most rules never matched: skip zeros
                chunk = raw[first * size:(first + ZERO_CHUNK) * size]
                if chunk == zero[:len(chunk)]:
                    continue
                values = struct.unpack(f"={len(chunk) // 8}Q", chunk)
                for offset in range(len(values) // 2):
                    packets, nbytes = values[2 * offset], values[2 * offset + 1]
                    if packets or nbytes:
                        index = first + offset
                        key = names.get(index % stride, index % stride)
                        total = totals.setdefault(key, [0, 0])
                        total[0] += packets
                        total[1] += nbytes
            for rule, (packets, nbytes) in self._fast_counts(slot, final).items():  # fast-path hits: rule ids
                total = totals.setdefault(rule, [0, 0])
                total[0] += packets
                total[1] += nbytes
            return {k: (v[0], v[1]) for k, v in totals.items()}
        finally:
            for f in (cfg_fd, fd, rules_fd):
                if f is not None:
                    os.close(f)

    def _fast_counts(self, slot: int, final: bool = False) -> Dict[int, List[int]]:
        """{rule id: [packets, bytes]} the fast-path entries of slot counted (ipt2xdp/fastcount.py)."""
        ncpus = libbpf.num_possible_cpus()
        out: Dict[int, List[int]] = {}
        for shape in abi.GEN_MAPS.values():
            if not shape.counted:
                continue
            fd = self._inner_fd(shape.name, slot)
            if fd is None:
                continue
            try:
                keys, raw = read_hash(fd, shape.key_size, fastcount.entry_size(shape, ncpus))
                if final:
                    WRITTEN["final_counts"][libbpf.map_info(fd).id] = (keys, raw)
            finally:
                os.close(fd)
            for rule, (packets, nbytes) in fastcount.totals(raw, shape, ncpus).items():
                total = out.setdefault(rule, [0, 0])
                total[0] += packets
                total[1] += nbytes
        return out

    def read_stats(self) -> Dict[str, int]:
        ncpus, size = libbpf.num_possible_cpus(), abi.MAP_STATS.value_size
        raw = libbpf.lookup_elem(self.map_fds[abi.MAP_STATS.name], u32(0), size * ncpus) or bytes(size * ncpus)
        per_cpu = [abi.Stats.from_buffer_copy(raw, c * size) for c in range(ncpus)]
        return {name: sum(s.packets[i] for s in per_cpu) for i, name in enumerate(abi.STAT_NAMES)}
