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
    """The plan's values as per-CPU kernel values with zero counts: one strided copy of 8-byte
    words per CPU and word of a value (a join per entry took 0.4 s for 100k entries, 64 CPUs)."""
    size, per_cpu = shape.value_size, shape.kernel_value_size
    assert size % 8 == 0 and per_cpu % 8 == 0
    count = len(values) // size
    words, stride = size // 8, per_cpu // 8 * ncpus  # in 8-byte words
    out = bytearray(count * per_cpu * ncpus)
    src, dst = memoryview(values).cast("B").cast("Q"), memoryview(out).cast("Q")
    for cpu in range(ncpus):
        for j in range(words):
            dst[cpu * per_cpu // 8 + j::stride] = src[j::words]
    return bytes(out)


def compact(raw: bytes, shape: abi.MapShape, ncpus: int) -> bytes:
    """The plan's values of per-CPU kernel values (CPU 0's copy; the loader writes them all equal)."""
    size, step = shape.value_size, entry_size(shape, ncpus)
    count = len(raw) // step
    out = bytearray(count * size)
    for k in range(size):
        out[k::size] = raw[k::step]
    return bytes(out)


CHUNK = 256  # entries checked for counts at once: most entries of a big list never count a packet


def _counting(raw: bytes, shape: abi.MapShape, ncpus: int):
    """Indexes of the entries some CPU counted a packet in (the decisions blanked out, then zero
    chunks skipped whole)."""
    per_cpu, step = shape.kernel_value_size, entry_size(shape, ncpus)
    counts = bytearray(raw)
    blank = bytes(len(range(0, len(raw), per_cpu)))
    for k in range(shape.value_size):
        counts[k::per_cpu] = blank[:len(range(k, len(raw), per_cpu))]
    zero = bytes(CHUNK * step)
    for first in range(0, len(raw) // step, CHUNK):
        chunk = counts[first * step:(first + CHUNK) * step]
        if chunk == zero[:len(chunk)]:
            continue
        for n in range(len(chunk) // step):
            if chunk[n * step:(n + 1) * step] != zero[:step]:
                yield first + n


def counted(keys: bytes, raw: bytes, shape: abi.MapShape, ncpus: int) -> Set[bytes]:
    """Keys of the entries some CPU has counted a packet in."""
    size = shape.key_size
    return {keys[n * size:(n + 1) * size] for n in _counting(raw, shape, ncpus)}


def totals(raw: bytes, shape: abi.MapShape, ncpus: int) -> Dict[int, List[int]]:
    """{rule id: [packets, bytes]} summed over the entries and CPUs (entries never counted left out)."""
    out: Dict[int, List[int]] = {}
    # per CPU value: counter u32, action u32, packets u64, bytes u64
    fmt = struct.Struct("=IIQQ")
    assert fmt.size == shape.kernel_value_size
    step = entry_size(shape, ncpus)
    for n in _counting(raw, shape, ncpus):
        for rule, _action, packets, nbytes in fmt.iter_unpack(raw[n * step:(n + 1) * step]):
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
