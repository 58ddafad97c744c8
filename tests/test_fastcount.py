# SPDX-License-Identifier: GPL-2.0-only
"""ipt2xdp/fastcount.py: the fast paths' per-CPU kernel values, built and read back without a kernel
(tests/test_flip_rewrite_kernel.py and the fast-path counter tests check them against the program)."""
import struct

import pytest

from ipt2xdp import abi, fastcount

SHAPE = abi.GEN_MAPS["src_fast"]


def _plan_values(n):
    return b"".join(struct.pack("=II", 1000 + i, abi.ACT_DROP) for i in range(n))


def _count(raw: bytearray, ncpus: int, entry: int, cpu: int, packets: int, nbytes: int) -> None:
    struct.pack_into("=QQ", raw, (entry * ncpus + cpu) * SHAPE.kernel_value_size + SHAPE.value_size,
                     packets, nbytes)


@pytest.mark.parametrize("ncpus", [1, 2, 5])
def test_expand_writes_the_decision_on_every_cpu_with_zero_counts(ncpus):
    values = _plan_values(300)
    raw = fastcount.expand(values, SHAPE, ncpus)
    assert len(raw) == 300 * fastcount.entry_size(SHAPE, ncpus)
    entries = list(struct.iter_unpack("=IIQQ", raw))
    assert entries == [(1000 + i, abi.ACT_DROP, 0, 0) for i in range(300) for _ in range(ncpus)]
    assert fastcount.compact(raw, SHAPE, ncpus) == values
    assert fastcount.totals(raw, SHAPE, ncpus) == {} and fastcount.counted(b"", raw, SHAPE, ncpus) == set()


@pytest.mark.parametrize("ncpus", [1, 3])
def test_counts_sum_per_rule_over_entries_and_cpus(ncpus):
    n = 700  # more than one chunk of fastcount.CHUNK entries
    raw = bytearray(fastcount.expand(_plan_values(n), SHAPE, ncpus))
    _count(raw, ncpus, 3, ncpus - 1, 2, 120)
    if ncpus > 1:
        _count(raw, ncpus, 3, 0, 1, 60)
    _count(raw, ncpus, 650, 0, 0, 7)  # bytes alone count too
    keys = b"".join(struct.pack("=II", i, 32) for i in range(n))
    want_first = [3, 180] if ncpus > 1 else [2, 120]
    assert fastcount.totals(bytes(raw), SHAPE, ncpus) == {1003: want_first, 1650: [0, 7]}
    assert fastcount.counted(keys, bytes(raw), SHAPE, ncpus) == {struct.pack("=II", 3, 32), struct.pack("=II", 650, 32)}
    assert fastcount.compact(bytes(raw), SHAPE, ncpus) == _plan_values(n)


def test_rewrite_set_adds_the_kept_entries_that_still_count():
    new = {b"a": b"1", b"b": b"2", b"c": b"3"}
    keys, values = fastcount.rewrite_set(new, [b"b"], {b"b", b"c", b"gone"})
    assert keys == [b"b", b"c"] and values == b"23"
