# SPDX-License-Identifier: GPL-2.0-only
"""The inner maps of one generation: created and filled anew, or rewritten in place where this
process wrote them two flips ago (only the entries that differ; dataplane.py's docstring says when
that is allowed). A part of dataplane.Dataplane (a base class of it), apart from the flip itself."""
from __future__ import annotations

import os
import struct
from typing import Dict, Optional, Tuple

from ipt2xdp import abi, fastcount, libbpf
from ipt2xdp.compile import Tables
from ipt2xdp.mapread import read_hash
from ipt2xdp.mapwrite import WRITTEN, Written, array_rewrite, entries, hash_rewrite, nonzero_entries, u32


class InnerMaps:
    """Needs of the class it is mixed into: map_fds (the outer maps by object name)."""

    def _contents(self, name: str, tables: Tables, generation: int) -> Tuple[int, bytes, bytes]:
        """(max_entries, keys, values) of a generation's inner map, exactly as written."""
        contents = tables.maps[name]
        max_entries = contents.max_entries
        if name == "counters":  # one stride of counters per possible CPU
            max_entries *= libbpf.num_possible_cpus()
        values = contents.values
        if name == "cfg":
            values = struct.pack("=Q", generation) + values[8:]
        return max_entries, contents.keys, values

    def _create_inner(self, name: str, tables: Tables, generation: int) -> Tuple[int, Written]:
        shape = abi.GEN_MAPS[name]
        max_entries, keys, values = self._contents(name, tables, generation)
        fd = libbpf.map_create(shape.kernel_type, f"i2x_{name}"[:15], shape.key_size, shape.kernel_value_size,
                               max_entries, shape.map_flags)
        try:
            count = len(keys) // shape.key_size
            written_keys, written_values = keys, values
            if shape.map_type == abi.BPF_MAP_TYPE_ARRAY:
                keys, values, count = nonzero_entries(keys, values, count, shape.value_size)
            if shape.counted:
                values = fastcount.expand(values, shape, libbpf.num_possible_cpus())
            libbpf.update_batch(fd, keys, values, count, f"filling map {name}")
            return fd, Written(libbpf.map_info(fd).id, max_entries, written_keys, written_values)
        except BaseException:
            os.close(fd)
            raise

    def _remembered(self) -> Dict[int, Dict[str, Written]]:
        """WRITTEN's slots for this program (emptied when it is another one)."""
        program = libbpf.map_info(self.map_fds[abi.MAP_STATE.name]).id
        if WRITTEN["program"] != program:
            WRITTEN.update(program=program, slots={}, settled=None, deferred=None, pending=None, final_counts={})
        return WRITTEN["slots"]

    def _rewritable(self, slot: int, tables: Tables, generation: int) -> Dict[str, Tuple[Written, int]]:
        """{name: (what the map holds, its fd)} of the inner maps of slot this process may rewrite
        in place for this generation (dataplane.py's docstring); the fds are the caller's to close."""
        known = self._remembered().get(slot, {})
        out: Dict[str, Tuple[Written, int]] = {}
        try:
            for name, written in known.items():
                max_entries, _keys, _values = self._contents(name, tables, generation)
                if written.max_entries != max_entries:
                    continue
                raw = libbpf.lookup_elem(self.map_fds[abi.GEN_MAPS[name].name], u32(slot), 4)
                if raw is None or struct.unpack("=I", raw)[0] != written.map_id:
                    continue
                fd = libbpf.map_fd_by_id(written.map_id)
                info = libbpf.map_info(fd)
                if (info.id, info.max_entries) != (written.map_id, max_entries):
                    os.close(fd)
                    continue
                out[name] = (written, fd)
        except BaseException:
            for _written, fd in out.values():
                os.close(fd)
            raise
        return out

    def _rewrite_inner(self, name: str, fd: int, known: Written, tables: Tables, generation: int) -> Optional[Written]:
        """Make the map fd (holding known) hold this generation's contents; None when it cannot
        be done by differences (then nothing was written)."""
        shape = abi.GEN_MAPS[name]
        max_entries, keys, values = self._contents(name, tables, generation)
        what = f"rewriting map {name}"
        if name == "counters":  # written by the program, not by us: read, and zero what it counted
            if keys or values:
                return None
            held = libbpf.read_array(fd, shape.value_size, max_entries)
            if len(held) != max_entries * shape.value_size:
                return None
            index = struct.pack(f"={max_entries}I", *range(max_entries))
            counted, _, count = nonzero_entries(index, held, max_entries, shape.value_size)
            libbpf.update_batch(fd, counted, bytes(count * shape.value_size), count, what)
            return Written(known.map_id, max_entries, b"", b"")
        if shape.map_type == abi.BPF_MAP_TYPE_ARRAY:
            rewrite = array_rewrite(known, keys, values, shape.key_size, shape.value_size)
            if rewrite is None:
                return None
            libbpf.update_batch(fd, *rewrite, what)
        else:
            stale, changed_keys, changed_values, count = hash_rewrite(known, keys, values, shape.key_size,
                                                                       shape.value_size)
            for key in stale:  # first: the map's size is the new generation's own
                libbpf.delete_elem(fd, key)
            if shape.counted:  # the program counts in the entries: zero what it counted two flips ago
                ncpus = libbpf.num_possible_cpus()
                # Read when the flip before last replaced this slot, after which no run counted
                # in it (dataplane.py); else read now.
                final = WRITTEN["final_counts"].pop(known.map_id, None)
                held_keys, held = final or read_hash(fd, shape.key_size, fastcount.entry_size(shape, ncpus))
                recount = fastcount.counted(held_keys, held, shape, ncpus)
                size, value_size = shape.key_size, shape.value_size
                # The plan's values of the entries written: the changed ones, and, only if the
                # program counted in some, every entry (most flips find none: no dict of them all)
                changed_entries = entries(changed_keys, changed_values, size, value_size)
                new = entries(keys, values, size, value_size) if recount else changed_entries
                write, plan_values = fastcount.rewrite_set(new, list(changed_entries), recount)
                changed_keys, changed_values, count = b"".join(write), fastcount.expand(plan_values, shape, ncpus), len(write)
            libbpf.update_batch(fd, changed_keys, changed_values, count, what)
        return Written(known.map_id, max_entries, keys, values)
