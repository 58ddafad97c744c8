# SPDX-License-Identifier: GPL-2.0-only
"""The fast paths' maps as the kernel holds them: per CPU, each entry counting what it decides.

A fast-path hit used to count its rule in the generation's counters array, a second map lookup
per packet that the verifier cannot inline (the array is sized per generation). The kernel maps
src_fast and tuple_fast are PERCPU_HASH instead (abi.MapShape.counted): per CPU, the plan's value
(struct ipt2xdp_src_fast_value, the same on every CPU) followed by that CPU's packets and bytes
(struct ipt2xdp_fast_entry), which the program bumps in the entry its lookup returned. Everything
above the Dataplane keeps seeing the plan's values: they are expanded here on the way in and
compacted on the way out, and the counts are added to their rules' counters when read.
"""
from __future__ import annotations

import ctypes
import struct
from typing import Dict, List, Set, Tuple

from ipt2xdp import abi

COUNT_SIZE = ctypes.sizeof(abi.Counter)
_ZERO_COUNT = bytes(COUNT_SIZE)


def entry_size(shape: abi.MapShape, ncpus: int) -> int:
    """Bytes of one entry's value as the kernel's syscalls take it: one value per possible CPU
    (kernel_value_size is a multiple of 8, so there is no padding)."""
    return shape.kernel_value_size * ncpus


def expand(values: bytes, shape: abi.MapShape, ncpus: int) -> bytes:
    """The plan's values as per-CPU kernel values with zero counts."""
    size = shape.value_size
    return b"".join((values[i:i + size] + _ZERO_COUNT) * ncpus for i in range(0, len(values), size))


def compact(raw: bytes, shape: abi.MapShape, ncpus: int) -> bytes:
    """The plan's values of per-CPU kernel values (CPU 0's copy; the loader writes them all equal)."""
    step = entry_size(shape, ncpus)
    return b"".join(raw[i:i + shape.value_size] for i in range(0, len(raw), step))


def counted(keys: bytes, raw: bytes, shape: abi.MapShape, ncpus: int) -> Set[bytes]:
    """Keys of the entries some CPU has counted a packet in."""
    step, size = entry_size(shape, ncpus), shape.kernel_value_size
    out = set()
    for n, first in enumerate(range(0, len(raw), step)):
        entry = raw[first:first + step]
        if any(entry[c * size + shape.value_size:(c + 1) * size] != _ZERO_COUNT for c in range(ncpus)):
            out.add(keys[n * shape.key_size:(n + 1) * shape.key_size])
    return out


def totals(raw: bytes, shape: abi.MapShape, ncpus: int) -> Dict[int, List[int]]:
    """{rule id: [packets, bytes]} summed over the entries and CPUs (entries never counted left out)."""
    out: Dict[int, List[int]] = {}
    # per CPU value: counter u32, action u32, packets u64, bytes u64
    fmt = struct.Struct("=IIQQ")
    assert fmt.size == shape.kernel_value_size
    for rule, _action, packets, nbytes in fmt.iter_unpack(raw):
        if packets or nbytes:
            total = out.setdefault(rule, [0, 0])
            total[0] += packets
            total[1] += nbytes
    return out


def rewrite_set(new: Dict[bytes, bytes], changed: List[bytes], recount: Set[bytes]) -> Tuple[List[bytes], bytes]:
    """The keys to write into a map rewritten in place, and their plan values: the changed ones and
    those that still count packets of an older generation (written again, their counts zero)."""
    already = set(changed)
    keys = list(changed) + [key for key in recount if key in new and key not in already]
    return keys, b"".join(new[key] for key in keys)
