# SPDX-License-Identifier: GPL-2.0-only
"""Writing a generation's maps (dataplane.apply_generation): only the nonzero chunks of a new array,
only what differs from what this process last wrote into a slot it still holds (array_rewrite,
hash_rewrite; WRITTEN remembers it), writes in parallel threads, and the RCU barrier that tells
when no XDP run can still read a slot."""
from __future__ import annotations

import os
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from ipt2xdp import abi, libbpf


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def rcu_barrier() -> None:
    """Return only after every XDP program run that started before the call has finished."""
    inner = libbpf.map_create(abi.BPF_MAP_TYPE_ARRAY, "ipt2xdp_sync", 4, 4, 1)
    try:
        outer = libbpf.map_create(abi.BPF_MAP_TYPE_ARRAY_OF_MAPS, "ipt2xdp_sync_o", 4, 4, 1, inner_map_fd=inner)
        try:
            libbpf.update_elem(outer, u32(0), u32(inner), what="waiting for running XDP programs")
        finally:
            os.close(outer)
    finally:
        os.close(inner)


ZERO_CHUNK = 256  # entries per chunk tested for zero


def nonzero_entries(keys: bytes, values: bytes, count: int, value_size: int) -> Tuple[bytes, bytes, int]:
    """The entries of an ARRAY map worth writing, in chunks: a new array is all zeros already, and
    the big dense ones (value_class, addr_dir: 330k entries, about 1 us each to write) are zero
    where the ruleset leaves a field alone. Chunks with any nonzero value are written whole."""
    key_size = len(keys) // count if count else 0
    zero = bytes(ZERO_CHUNK * value_size)
    kept_keys, kept_values, kept = [], [], 0
    for first in range(0, count, ZERO_CHUNK):
        last = min(count, first + ZERO_CHUNK)
        chunk = values[first * value_size:last * value_size]
        if chunk != zero[:len(chunk)]:
            kept_keys.append(keys[first * key_size:last * key_size])
            kept_values.append(chunk)
            kept += last - first
    return b"".join(kept_keys), b"".join(kept_values), kept


class Background:
    """fn() in a thread; join() waits and re-raises what it raised."""

    def __init__(self, fn: Callable[[], None]):
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as error:  # noqa: BLE001 - handed to the joining thread
            self.error = error

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def concurrently(calls: List[Callable[[], None]]) -> None:
    """Run the calls in parallel threads, wait for all, raise the first error."""
    running = [Background(call) for call in calls]
    errors = []
    for job in running:
        try:
            job.join()
        except BaseException as error:  # noqa: BLE001 - every job is waited for before raising
            errors.append(error)
    if errors:
        raise errors[0]


@dataclass
class Written:
    """An inner map this process filled or rewrote, as it holds it now (arrays: values by index,
    the entries past them zero; cfg with its generation stamped in)."""
    map_id: int
    max_entries: int
    keys: bytes
    values: bytes


# What this process last wrote into each slot's inner maps, for one program (by its state map's
# id: another program, or the same one pinned again, starts from nothing): {slot: {name: Written}}.
# "settled": the generation this process last flipped to and waited for (its final barrier): while
# it is the one in force, nothing can still read the other slot, and the next flip needs no barrier
# before it writes there.
# "deferred": (generation, last slot) of the state this process made "defer everything" in and
# waited for (defer_all): a flip from that very state needs no barrier after it (dataplane.py).
# "pending": (the barrier, generation, last slot) of a deferral that did not wait for it
# (defer_all(wait=False)): the next flip waits for it, then counts it settled and deferred.
# "final_counts": {map id: (keys, per-CPU values)} of the counted (fast-path) maps of the slot the
# last flip replaced, as the flip read them once no run could count in them any more (its final
# counters): what the next flip's rewrite of that slot finds in them (to zero what was counted),
# read again otherwise.
WRITTEN: Dict[str, object] = {"program": None, "slots": {}, "settled": None, "deferred": None, "pending": None,
                              "final_counts": {}}
REWRITE_CHUNK = 256  # array entries compared, and written when they differ, at a time


def array_rewrite(known: Written, keys: bytes, values: bytes, key_size: int,
                   value_size: int) -> Optional[Tuple[bytes, bytes, int]]:
    """The writes that turn an array holding known into one holding (keys, values), as a fresh
    array filled with them holds it. Arrays as compile makes them: keys 0..n-1 in order (what
    nonzero_entries and mapread assume too); None when either does not end at its count or the
    two differ in their common part (then: a full write)."""
    old_count, new_count = len(known.keys) // key_size, len(keys) // key_size
    common = min(old_count, new_count) * key_size
    for blob, count in ((known.keys, old_count), (keys, new_count)):
        if count and int.from_bytes(blob[-key_size:], sys.byteorder) != count - 1:
            return None
    if known.keys[:common] != keys[:common]:
        return None
    out_keys, out_values, written = [], [], 0
    old_values, new_values = known.values, values
    for first in range(0, max(old_count, new_count), REWRITE_CHUNK):
        last = min(max(old_count, new_count), first + REWRITE_CHUNK)
        span = (last - first) * value_size
        old = old_values[first * value_size:last * value_size]
        new = new_values[first * value_size:last * value_size]
        if old == new and len(old) == span:
            continue
        new = new.ljust(span, b"\0")  # past the new values: zero, as in a fresh array
        if old.ljust(span, b"\0") == new:
            continue
        # the indexes of this chunk: the new keys where there are, the old ones past them
        cut = max(first, min(last, new_count))
        out_keys.append(keys[first * key_size:cut * key_size] + known.keys[cut * key_size:last * key_size])
        out_values.append(new)
        written += last - first
    return b"".join(out_keys), b"".join(out_values), written


def hash_rewrite(known: Written, keys: bytes, values: bytes, key_size: int,
                  value_size: int) -> Tuple[List[bytes], bytes, bytes, int]:
    """(keys to delete, then keys and values to write, their count) that turn a hash map holding
    known into one holding (keys, values). A served change moves one rule: the two generations'
    entries, in compile's order, differ in a short run between a common head and a common tail
    (found by comparing bytes), and only that run is compared entry by entry (a dict of every
    entry of both: 5-10 ms at 10k entries, a tenth of a second at 100k)."""
    old_count, new_count = len(known.keys) // key_size, len(keys) // key_size
    head = _common_run(known.keys, keys, known.values, values, key_size, value_size, min(old_count, new_count))
    tail = _common_run(known.keys, keys, known.values, values, key_size, value_size,
                       min(old_count, new_count) - head, from_end=True)
    old_run, new_run = range(head, old_count - tail), range(head, new_count - tail)
    if len(old_run) + len(new_run) <= DIFF_RUN_LIMIT:
        diff = _run_diff(known, keys, values, key_size, value_size, old_run, new_run)
        if diff is not None:
            return diff
    return _whole_diff(known.keys, known.values, keys, values, key_size, value_size)


DIFF_RUN_LIMIT = 256  # entries of the differing run compared alone; past it, the whole maps


def _common_run(old_keys: bytes, new_keys: bytes, old_values: bytes, new_values: bytes, key_size: int,
                value_size: int, most: int, from_end: bool = False) -> int:
    """How many entries, at most `most`, the two generations share at their start (or end): the
    longest equal run, by a binary search of byte slices (each comparison a memcmp)."""
    def equal(n: int) -> bool:
        if from_end:
            return (n == 0 or old_keys[len(old_keys) - n * key_size:] == new_keys[len(new_keys) - n * key_size:]
                    and old_values[len(old_values) - n * value_size:] == new_values[len(new_values) - n * value_size:])
        return old_keys[:n * key_size] == new_keys[:n * key_size] and old_values[:n * value_size] == new_values[:n * value_size]
    low, high = 0, most
    while low < high:
        middle = (low + high + 1) // 2
        if equal(middle):
            low = middle
        else:
            high = middle - 1
    return low


def entries(keys: bytes, values: bytes, key_size: int, value_size: int,
            run: Optional[range] = None) -> Dict[bytes, bytes]:
    """{key: value} of packed entries (those of run, by index; all of them without one)."""
    if run is None:
        run = range(len(keys) // key_size)
    return {keys[n * key_size:(n + 1) * key_size]: values[n * value_size:(n + 1) * value_size] for n in run}


def _elsewhere(blob: bytes, key: bytes, size: int, run: range) -> bool:
    """Whether key is an entry of blob outside the entries of run."""
    position = blob.find(key)
    while position != -1:
        if position % size == 0 and position // size not in run:
            return True
        position = blob.find(key, position + 1)
    return False


def _run_diff(known: Written, keys: bytes, values: bytes, key_size: int, value_size: int, old_run: range,
              new_run: range) -> Optional[Tuple[List[bytes], bytes, bytes, int]]:
    """The rewrite from the differing runs alone, or None where that may not be the whole map's:
    a key of either run that is an entry outside it in either generation (within a run, the last
    of a repeated key wins, as in the whole map)."""
    old = entries(known.keys, known.values, key_size, value_size, old_run)
    new = entries(keys, values, key_size, value_size, new_run)
    for key in set(old) | set(new):
        if _elsewhere(known.keys, key, key_size, old_run) or _elsewhere(keys, key, key_size, new_run):
            return None
    return _diff(old, new)


def _whole_diff(old_keys: bytes, old_values: bytes, keys: bytes, values: bytes, key_size: int,
                value_size: int) -> Tuple[List[bytes], bytes, bytes, int]:
    return _diff(entries(old_keys, old_values, key_size, value_size), entries(keys, values, key_size, value_size))


def _diff(old: Dict[bytes, bytes], new: Dict[bytes, bytes]) -> Tuple[List[bytes], bytes, bytes, int]:
    stale = [key for key in old if key not in new]
    changed = [key for key, value in new.items() if old.get(key) != value]
    return stale, b"".join(changed), b"".join(new[key] for key in changed), len(changed)
