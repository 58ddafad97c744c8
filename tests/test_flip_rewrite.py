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


def _apply(old_keys, old_values, stale, keys, values, count, key_size, value_size):
    """What a hash map filled from old (in order: the last of a repeated key wins) holds after
    the rewrite: stale keys deleted first, then the writes."""
    held = {old_keys[i:i + key_size]: old_values[j:j + value_size]
            for i, j in zip(range(0, len(old_keys), key_size), range(0, len(old_values), value_size))}
    for key in stale:
        del held[key]
    for i in range(count):
        held[keys[i * key_size:(i + 1) * key_size]] = values[i * value_size:(i + 1) * value_size]
    return held


@pytest.mark.parametrize("seed", range(40))
def testhash_rewrite_of_one_edit_equals_a_fresh_fill(seed):
    """A served change: the new entries are the old ones with one run inserted, removed or
    changed (compared alone), or with a key repeated elsewhere (then the whole maps are)."""
    rng = random.Random(seed)
    key_size, value_size = 12, 8
    count = rng.randrange(0, 400)
    entries = [(rng.randbytes(key_size), rng.randbytes(value_size)) for _ in range(count)]
    edited = list(entries)
    at = rng.randrange(0, count + 1)
    kind = rng.choice(["insert", "remove", "change", "move", "repeat", "repeat-old"])
    if kind == "insert" or not entries:
        edited[at:at] = [(rng.randbytes(key_size), rng.randbytes(value_size)) for _ in range(rng.randrange(1, 4))]
    elif kind == "remove":
        del edited[min(at, count - 1):min(at, count - 1) + rng.randrange(1, 4)]
    elif kind == "change":
        edited[min(at, count - 1)] = (edited[min(at, count - 1)][0], rng.randbytes(value_size))
    elif kind == "move":  # the same entry, elsewhere
        edited.insert(at, edited.pop(rng.randrange(count)))
    elif kind == "repeat":  # a key of the common head or tail written again in the run, new value
        edited.insert(at, (rng.choice(entries)[0], rng.randbytes(value_size)))
    else:  # a key of the run repeated in the old generation's head or tail
        entries.insert(rng.randrange(count + 1), (edited[min(at, count - 1)][0], rng.randbytes(value_size)))
    old_keys, old_values = b"".join(k for k, _ in entries), b"".join(v for _, v in entries)
    keys, values = b"".join(k for k, _ in edited), b"".join(v for _, v in edited)
    stale, out_keys, out_values, written = hash_rewrite(Written(1, 800, old_keys, old_values), keys, values,
                                                        key_size, value_size)
    expected = dict(edited)
    assert _apply(old_keys, old_values, stale, out_keys, out_values, written, key_size, value_size) == expected
    held = dict(entries)
    assert written == sum(1 for k, v in expected.items() if held.get(k) != v)
    assert len(stale) == sum(1 for k in held if k not in expected)


def testhash_rewrite_compares_only_the_differing_run(monkeypatch):
    """One entry appended to 10,000: no dict of all the entries is made."""
    from ipt2xdp import mapwrite

    def refuse(*args):
        raise AssertionError("compared every entry")
    monkeypatch.setattr(mapwrite, "_whole_diff", refuse)
    keys = b"".join(struct.pack("=I8x", n) for n in range(10000))
    values = bytes(8 * 10000)
    stale, out_keys, out_values, written = hash_rewrite(
        Written(1, 10001, keys, values), keys + struct.pack("=I8x", 10000), values + b"\1" * 8, 12, 8)
    assert (stale, written, out_keys, out_values) == ([], 1, struct.pack("=I8x", 10000), b"\1" * 8)
