# SPDX-License-Identifier: GPL-2.0-only
"""dataplane's in-place rewrite of a slot's maps, without a kernel: the writes it computes, applied
to a model of the map that holds what was written before, give exactly what a fresh map filled
with the new contents holds (arrays: zero where nothing was written; hashes: only the entries
written). The kernel test (test_flip_rewrite_kernel.py) compares the real maps."""
import random
import struct

import pytest

from ipt2xdp.mapwrite import REWRITE_CHUNK, Written, array_rewrite, hash_rewrite


def _array(values: bytes, value_size: int, max_entries: int) -> bytes:
    return values.ljust(max_entries * value_size, b"\0")


def _index(count: int) -> bytes:
    return struct.pack(f"={count}I", *range(count))


def _apply_array(held: bytearray, keys: bytes, values: bytes, value_size: int) -> None:
    for i in range(len(keys) // 4):
        (index,) = struct.unpack_from("=I", keys, 4 * i)
        held[index * value_size:(index + 1) * value_size] = values[i * value_size:(i + 1) * value_size]


def _random_values(rng, count: int, value_size: int, density: float) -> bytes:
    return b"".join(bytes(rng.randrange(1, 256) for _ in range(value_size)) if rng.random() < density
                    else bytes(value_size) for _ in range(count))


@pytest.mark.parametrize("seed", range(12))
def testarray_rewrite_equals_a_fresh_fill(seed):
    rng = random.Random(seed)
    value_size, max_entries = rng.choice([4, 8, 16]), 3 * REWRITE_CHUNK + 17
    old_count, new_count = rng.randrange(0, max_entries + 1), rng.randrange(0, max_entries + 1)
    old = _random_values(rng, old_count, value_size, rng.random())
    new = bytearray(_random_values(rng, new_count, value_size, rng.random()))
    for i in range(min(old_count, new_count)):  # mostly alike, as one rule's change leaves them
        if rng.random() < 0.9:
            new[i * value_size:(i + 1) * value_size] = old[i * value_size:(i + 1) * value_size]
    new = bytes(new)
    held = bytearray(_array(old, value_size, max_entries))
    keys, values, count = array_rewrite(Written(1, max_entries, _index(old_count), old), _index(new_count), new,
                                         4, value_size)
    assert len(keys) == 4 * count and len(values) == value_size * count
    _apply_array(held, keys, values, value_size)
    assert bytes(held) == _array(new, value_size, max_entries)
    if old == new and old_count == new_count:
        assert count == 0


def testarray_rewrite_writes_only_the_chunks_that_differ():
    value_size, count = 4, 10 * REWRITE_CHUNK
    old = bytes(range(256)) * (count * value_size // 256)
    new = bytearray(old)
    new[5 * REWRITE_CHUNK * value_size] ^= 1
    keys, values, written = array_rewrite(Written(1, count, _index(count), old), _index(count), bytes(new), 4,
                                           value_size)
    assert written == REWRITE_CHUNK
    assert struct.unpack_from("=I", keys, 0)[0] == 5 * REWRITE_CHUNK


def testarray_rewrite_refuses_arrays_indexed_differently():
    old_keys, new_keys = _index(4), struct.pack("=4I", 0, 1, 3, 2)
    assert array_rewrite(Written(1, 8, old_keys, bytes(16)), new_keys, bytes(16), 4, 4) is None


@pytest.mark.parametrize("seed", range(12))
def testhash_rewrite_equals_a_fresh_fill(seed):
    rng = random.Random(seed)
    key_size, value_size = 12, 4
    universe = [bytes(rng.randrange(256) for _ in range(key_size)) for _ in range(300)]
    old = {k: bytes(rng.randrange(256) for _ in range(value_size)) for k in rng.sample(universe, rng.randrange(300))}
    new = {k: old[k] if k in old and rng.random() < 0.8 else bytes(rng.randrange(256) for _ in range(value_size))
           for k in rng.sample(universe, rng.randrange(300))}
    held = dict(old)
    stale, keys, values, count = hash_rewrite(Written(1, 300, b"".join(old), b"".join(old.values())),
                                               b"".join(new), b"".join(new.values()), key_size, value_size)
    for key in stale:
        del held[key]
    assert len(held) <= len(new)  # deleting first: the map never holds more than the new generation
    for i in range(count):
        held[keys[i * key_size:(i + 1) * key_size]] = values[i * value_size:(i + 1) * value_size]
    assert held == new
    assert count == sum(1 for k, v in new.items() if old.get(k) != v)
