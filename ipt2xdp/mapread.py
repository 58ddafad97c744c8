# SPDX-License-Identifier: GPL-2.0-only
"""Read the maps of the generation in force back from the kernel, as compile.Tables holds them.

The dry-run's map diff compares the new plan's compiled maps with these, so it is a diff against
what the program reads now, not against a stored copy. Arrays come back whole (index order, one
batch syscall per 64k entries); hash maps by batch lookup, or key by key where a kernel refuses.
The cfg entry is returned with its generation number zeroed, as compile writes it (the loader
stamps the number in when it fills the map). Counters are runtime data, not plan: left out (also
the fast paths' per-entry counts, ipt2xdp/fastcount.py).
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ipt2xdp import abi, fastcount, libbpf, pins
from ipt2xdp.mapencode import MapContents

SKIPPED = ("counters",)


@dataclass
class LoadedGeneration:
    maps: Dict[str, MapContents]   # logical names as in compile.Tables.maps, counters left out
    generation: int
    deferring_all: bool
    source_digest: str             # the planstore key of the plan these maps were compiled from


def read_hash(fd: int, key_size: int, value_size: int) -> Tuple[bytes, bytes]:
    """All (keys, values) of a hash map, batch lookup first."""
    keys, values = bytearray(), bytearray()
    info = libbpf.map_info(fd)
    chunk = max(1, min(info.max_entries, 65536))
    opts = libbpf.BatchOpts(sz=ctypes.sizeof(libbpf.BatchOpts))
    token_in, token_out = None, ctypes.create_string_buffer(max(8, key_size))
    while True:
        keys_buf = ctypes.create_string_buffer(key_size * chunk)
        values_buf = ctypes.create_string_buffer(value_size * chunk)
        count = ctypes.c_uint32(chunk)
        ret = libbpf.lib().bpf_map_lookup_batch(fd, token_in, token_out, keys_buf, values_buf,
                                                ctypes.byref(count), ctypes.byref(opts))
        if ret < 0 and -ret != errno.ENOENT:  # e.g. no batch support: the slow, sure way
            return _read_hash_by_key(fd, key_size, value_size)
        keys += keys_buf.raw[:key_size * count.value]
        values += values_buf.raw[:value_size * count.value]
        if ret < 0:
            return bytes(keys), bytes(values)
        token_in = ctypes.create_string_buffer(token_out.raw, len(token_out.raw))


def _read_hash_by_key(fd: int, key_size: int, value_size: int) -> Tuple[bytes, bytes]:
    keys, values = [], []
    for key in libbpf.keys(fd, key_size):
        value = libbpf.lookup_elem(fd, key, value_size)
        if value is not None:  # a key deleted while we iterate is simply gone
            keys.append(key)
            values.append(value)
    return b"".join(keys), b"".join(values)


def _read_inner(fd: int, shape: abi.MapShape) -> MapContents:
    info = libbpf.map_info(fd)
    if shape.counted:  # per CPU in the kernel: the plan's values, without the counts
        ncpus = libbpf.num_possible_cpus()
        keys, raw = read_hash(fd, shape.key_size, fastcount.entry_size(shape, ncpus))
        values = fastcount.compact(raw, shape, ncpus)
    elif shape.map_type == abi.BPF_MAP_TYPE_HASH:
        keys, values = read_hash(fd, shape.key_size, shape.value_size)
    else:
        values = libbpf.read_array(fd, shape.value_size, info.max_entries)
        n = len(values) // shape.value_size
        keys = struct.pack(f"={n}I", *range(n))
    return MapContents(shape.name, info.max_entries, shape.key_size, shape.value_size, keys, values)


def read_loaded(directory: Optional[str] = None) -> Optional[LoadedGeneration]:
    """The maps of the generation in force in this network namespace (None: nothing loaded).

    While XDP defers everything (an import in progress, `defer_all`), these are the maps of the
    generation it will resume."""
    from ipt2xdp.dataplane import Dataplane

    dp = Dataplane.open_pinned(directory or pins.pin_dir())
    if dp is None:
        return None
    try:
        state = dp.read_state()
        slot = state.last_slot if state.active >= abi.GEN_SLOTS else state.active
        maps: Dict[str, MapContents] = {}
        for name, shape in abi.GEN_MAPS.items():
            if name in SKIPPED:
                continue
            raw = libbpf.lookup_elem(dp.map_fds[shape.name], struct.pack("=I", slot), 4)
            map_id = struct.unpack("=I", raw)[0] if raw else 0
            if not map_id:
                return None  # loaded, but no generation was ever applied
            fd = libbpf.map_fd_by_id(map_id)
            try:
                maps[name] = _read_inner(fd, shape)
            finally:
                os.close(fd)
        cfg = maps["cfg"]
        maps["cfg"] = MapContents(cfg.name, cfg.max_entries, cfg.key_size, cfg.value_size, cfg.keys,
                                  bytes(8) + cfg.values[8:])
        meta = dp.read_meta(slot)
        return LoadedGeneration(maps, state.generation, state.active >= abi.GEN_SLOTS,
                                meta.get("source_digest", ""))
    finally:
        dp.close()
