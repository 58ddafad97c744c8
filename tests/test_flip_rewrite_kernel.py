# SPDX-License-Identifier: GPL-2.0-only
"""A flip that rewrites the inactive slot's maps in place (dataplane.py, what `ipt2xdp watch` does
from its third flip on) leaves every map exactly as a full write into new maps leaves it.

This process plays the watcher: it flips through a series of one-rule changes (appends, deletes,
an insert in the middle, an edit, a shrink and a regrowth) with release_old=False, traffic counted
between flips (BPF_PROG_TEST_RUN), and another process flips in between without knowing what the
maps hold. After every flip each map of the generation in force is read back from the kernel and
compared with the compiled contents (arrays whole, hash maps entry by entry, the sizes, the
counters and the fast-path entries' counts all zero), and the test checks that maps were in fact rewritten in place where they
could be, and written afresh after the other process's flip.
"""
import ctypes
import os
import struct
import sys

import pytest

from ipt2xdp import abi, libbpf, pins
from ipt2xdp.classifier import ACCEPT, DROP, ClassifierRule, IntervalSet, Match
from tests.nsutil import entered_namespace

pytestmark = pytest.mark.kernel
TCP_ = frozenset({6})
BASE = 300


def _ip(a, b, c, d):
    return a << 24 | b << 16 | c << 8 | d


def _rule(i: int, port: int = 0) -> ClassifierRule:
    return ClassifierRule(Match(src=IntervalSet.single(_ip(10, 1, i // 256, i % 256)), proto=TCP_,
                                dport=IntervalSet.single(port or 1 + i)), DROP, i)


def rules_for(step: str):
    """The classifier rules of each step (a stand-in for the plan of a ruleset after one change)."""
    base = [_rule(i) for i in range(BASE)]
    extra = ClassifierRule(Match(src=IntervalSet.single(_ip(192, 0, 2, 1))), DROP, BASE)
    web = ClassifierRule(Match(proto=TCP_, dport=IntervalSet.single(443)), ACCEPT, BASE + 1)
    steps = {
        "base": base,
        "append": base + [extra],
        "insert": base[:100] + [web] + base[100:],
        "edit": base[:50] + [_rule(50, port=9999)] + base[51:],
        "delete": base[:10] + base[11:],
        "shrink": base[:120],
        "foreign": base[:200] + [web],
    }
    return steps[step]


def tables_for(step: str):
    from ipt2xdp.compile import compile

    return compile(rules_for(step), ACCEPT)


def _inner_fd(dp, name: str, slot: int) -> int:
    raw = libbpf.lookup_elem(dp.map_fds[abi.GEN_MAPS[name].name], struct.pack("=I", slot), 4)
    assert raw is not None, name
    return libbpf.map_fd_by_id(struct.unpack("=I", raw)[0])


def assert_in_force_equals_a_full_write(tables) -> None:
    from ipt2xdp import fastcount
    from ipt2xdp.dataplane import Dataplane
    from ipt2xdp.mapdiff import raw_differences
    from ipt2xdp.mapread import read_hash, read_loaded

    loaded = read_loaded()
    assert raw_differences(loaded.maps, {name: tables.maps[name] for name in loaded.maps}) == \
        {name: 0 for name in loaded.maps}
    dp = Dataplane.open_pinned(pins.pin_dir())
    try:
        slot = dp.read_state().active
        for name, shape in abi.GEN_MAPS.items():
            fd = _inner_fd(dp, name, slot)
            try:
                want = tables.maps[name].max_entries * (libbpf.num_possible_cpus() if name == "counters" else 1)
                info = libbpf.map_info(fd)
                assert (info.max_entries, info.map_flags) == (want, shape.map_flags), name
                if name == "counters":
                    assert libbpf.read_array(fd, shape.value_size, want) == bytes(want * shape.value_size)
                if shape.counted:  # what the program counted in a map rewritten in place is gone
                    ncpus = libbpf.num_possible_cpus()
                    keys, held = read_hash(fd, shape.key_size, fastcount.entry_size(shape, ncpus))
                    assert not fastcount.counted(keys, held, shape, ncpus), name
            finally:
                os.close(fd)
        fd = _inner_fd(dp, "cfg", slot)
        try:
            cfg = abi.GenConfig.from_buffer_copy(libbpf.lookup_elem(fd, struct.pack("=I", 0),
                                                                    ctypes.sizeof(abi.GenConfig)))
        finally:
            os.close(fd)
        assert cfg.generation == dp.read_state().generation
    finally:
        dp.close()


def count_traffic(tables) -> None:
    """Packets through the generation in force, so its counters are not all zero."""
    from scapy.all import IP, TCP, Ether, raw

    from ipt2xdp.dataplane import Dataplane

    dp = Dataplane.open_pinned(pins.pin_dir())
    try:
        for i in (0, 7, 99):
            packet = raw(Ether() / IP(src=f"10.1.0.{i}", dst="192.0.2.200") / TCP(dport=1 + i, flags="A"))
            dp.test_run(packet, repeat=3)
        assert dp.read_counters(), "the test traffic counted nothing: the counters' reset would be untested"
        # the rules are exact tuples: the fast path decides them and counts in its entries
        assert dp._fast_counts(dp.read_state().active), "nothing counted in tuple_fast: its reset would be untested"
    finally:
        dp.close()


@pytest.fixture
def namespace():
    with entered_namespace("flip") as ns:
        yield ns


def _foreign_flip(ns, step: str) -> None:
    code = ("from ipt2xdp import loader; from tests.test_flip_rewrite_kernel import tables_for\n"
            f"loader.apply(tables_for({step!r}), release_old=False)")
    result = ns.run([sys.executable, "-c", code], check=False)
    assert result.returncode == 0, result.stderr


def test_rewritten_slots_equal_full_writes(namespace):
    from ipt2xdp import loader
    from ipt2xdp.wrapper import xdpcounts

    sequence = ["base", "append", "base", "append", "insert", "base", "edit", "delete", "base", "shrink",
                "base", "FOREIGN", "append", "base", "append", "base"]
    rewritten = []
    try:
        for step in sequence:
            if step == "FOREIGN":
                _foreign_flip(namespace, "foreign")
                assert_in_force_equals_a_full_write(tables_for("foreign"))
                rewritten.append(None)
                continue
            tables = tables_for(step)
            result = loader.apply(tables, release_old=False)
            rewritten.append(set(result.rewritten))
            assert_in_force_equals_a_full_write(tables)
            # the name the watcher binds a wrapper's change record to is status()'s
            assert loader.generation_ident() == xdpcounts.generation_id(loader.status(include_counters=False)) \
                == f"{loader.status()['program_id']}-{result.generation}"
            count_traffic(tables)
    finally:
        loader.detach(all_devices=True)
    every = set(abi.GEN_MAPS)
    # The first flips find nothing of theirs in the slot; the third holds the first's maps, the
    # same size: every map is rewritten, the counters zeroed.
    assert rewritten[:2] == [set(), set()]
    assert rewritten[2] == every, rewritten
    # A size change makes new maps of the sized ones only (counters, exact-match sets...), the
    # fixed-size arrays are rewritten all the same.
    assert {"value_class", "addr_dir", "cfg"} <= rewritten[4] < every, rewritten
    # After the other process's flip: the slot it wrote is unknown (full write), the other one
    # still holds this process's maps (rewritten).
    after = rewritten[sequence.index("FOREIGN") + 1:]
    assert {"value_class", "addr_dir"} <= after[0], after  # the slot the other process left alone
    assert after[1] == set(), after                        # the slot it wrote: full write
    assert after[2] and after[3], after
