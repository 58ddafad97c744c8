# SPDX-License-Identifier: GPL-2.0-only
"""A flip that ends a deferral this process made waits for no grace period; every other flip keeps
its waits (dataplane.py, "Ending a deferral").

This process plays the watcher serving a wrapper's change: flip, traffic, defer (as "begin"
does), traffic while deferring, flip to the changed plan. The RCU barriers each flip runs are
counted; the replaced generation's counters must be exactly the traffic it judged (final without
the wait), the deferred traffic must have passed uncounted, and after the flip the new plan
decides. Flips that do not end this process's own deferral (none at all, one resumed and stored
again without a wait, one made by another process) must still wait after the flip.
"""
import sys

import pytest
from scapy.all import IP, TCP, Ether, raw

from ipt2xdp import abi, dataplane, loader, pins
from tests.nsutil import entered_namespace
from tests.test_flip_rewrite_kernel import assert_in_force_equals_a_full_write, tables_for

pytestmark = pytest.mark.kernel
XDP_DROP, XDP_PASS = 1, 2
BLOCKED = [raw(Ether() / IP(src=f"10.1.0.{i}", dst="192.0.2.200") / TCP(dport=1 + i, flags="A")) for i in (0, 7, 99)]
APPENDED = raw(Ether() / IP(src="192.0.2.1", dst="192.0.2.200") / TCP(dport=80, flags="A"))  # "append"'s extra rule


@pytest.fixture
def namespace():
    with entered_namespace("flipdefer") as ns:
        try:
            yield ns
        finally:
            loader.detach(all_devices=True)


@pytest.fixture
def barriers(monkeypatch):
    """How many RCU barriers ran (the flip's own, and its Background one before it)."""
    calls = []
    real = dataplane.rcu_barrier

    def counted():
        calls.append(1)
        real()
    monkeypatch.setattr(dataplane, "rcu_barrier", counted)
    return calls


def _run(packets, repeat: int = 2):
    dp = dataplane.Dataplane.open_pinned(pins.pin_dir())
    try:
        return [dp.test_run(packet, repeat=repeat)[0] for packet in packets]
    finally:
        dp.close()


def _counters():
    dp = dataplane.Dataplane.open_pinned(pins.pin_dir())
    try:
        return dp.read_counters()
    finally:
        dp.close()


def _flip(step: str, barriers) -> loader.ApplyResult:
    del barriers[:]
    return loader.apply(tables_for(step), release_old=False)


def test_ending_own_deferral_waits_for_nothing(namespace, barriers):
    _flip("base", barriers)
    assert _run(BLOCKED) == [XDP_DROP] * 3
    counted = _counters()
    assert sum(packets for packets, _bytes in counted.values()) == 6, counted

    loader.defer_all(True)  # the served change's "begin"
    assert _run(BLOCKED + [APPENDED]) == [XDP_PASS] * 4  # deferring: nothing decided, nothing counted
    assert _counters() == counted

    result = _flip("append", barriers)
    assert barriers == [], "a flip ending this process's own deferral waited for a grace period"
    assert result.previous_counters == counted  # the replaced generation's counts, final
    assert_in_force_equals_a_full_write(tables_for("append"))
    assert _run(BLOCKED + [APPENDED]) == [XDP_DROP] * 4  # the new plan decides

    # The replaced slot was not marked settled: a flip straight after waits before writing into it,
    # and after it, as any flip replacing a generation in force.
    result = _flip("base", barriers)
    assert len(barriers) == 2 and result.rewritten, (barriers, result.rewritten)
    assert_in_force_equals_a_full_write(tables_for("base"))
    assert _run([APPENDED]) == [XDP_PASS]

    # Deferring again settles it (its barrier comes after the last flip): no wait at all.
    loader.defer_all(True)
    result = _flip("append", barriers)
    assert barriers == [] and result.rewritten, (barriers, result.rewritten)
    assert_in_force_equals_a_full_write(tables_for("append"))
    assert _run([APPENDED]) == [XDP_DROP]


def test_other_deferrals_keep_the_wait(namespace, barriers):
    _flip("base", barriers)
    _flip("append", barriers)
    assert len(barriers) == 1  # after the flip; the one before it ran after the first flip

    # Deferred, resumed, then "defer" stored without its wait (a writer killed before its
    # barrier): the state reads as deferring, but not as this process's deferral.
    loader.defer_all(True)
    loader.defer_all(False)
    dp = dataplane.Dataplane.open_pinned(pins.pin_dir())
    try:
        st = dp.read_state()
        dp.write_state(abi.DEFER_ALL, st.last_slot, st.generation)
    finally:
        dp.close()
    _flip("base", barriers)
    assert len(barriers) == 1, barriers

    # A deferral made by another process.
    result = namespace.run([sys.executable, "-c", "from ipt2xdp import loader; loader.defer_all(True)"], check=False)
    assert result.returncode == 0, result.stderr
    assert _run([BLOCKED[0]]) == [XDP_PASS]
    _flip("append", barriers)
    assert len(barriers) == 1, barriers
    assert _run(BLOCKED + [APPENDED]) == [XDP_DROP] * 4

    # Deferred by this process, then another process flipped (and deferred again, at its new
    # generation): not the deferral this process waited for.
    loader.defer_all(True)
    code = ("from ipt2xdp import loader; from tests.test_flip_rewrite_kernel import tables_for\n"
            "loader.apply(tables_for('base'), release_old=False); loader.defer_all(True)")
    result = namespace.run([sys.executable, "-c", code], check=False)
    assert result.returncode == 0, result.stderr
    _flip("append", barriers)
    assert len(barriers) == 2, "a flip after another process's flip and deferral skipped its waits"
    assert_in_force_equals_a_full_write(tables_for("append"))


def test_a_deferral_left_to_its_barrier_is_waited_for_by_the_next_flip(namespace, barriers):
    """begin()'s deferral (wait=False): in force for every later run at once; its barrier runs in
    the background and the flip ending it waits for that one, not for one of its own."""
    _flip("base", barriers)
    assert _run(BLOCKED) == [XDP_DROP] * 3
    counted = _counters()
    del barriers[:]
    loader.defer_all(True, wait=False)
    assert _run(BLOCKED + [APPENDED]) == [XDP_PASS] * 4  # deferring at once
    result = _flip("append", barriers)
    assert barriers == [], "the flip ran a barrier of its own instead of the deferral's"
    assert dataplane.WRITTEN["pending"] is None
    assert result.previous_counters == counted
    assert_in_force_equals_a_full_write(tables_for("append"))
    assert _run(BLOCKED + [APPENDED]) == [XDP_DROP] * 4

    # Resumed before the flip (the real command failed): the pending barrier no longer counts as a
    # deferral this process waited for; the flip keeps its own waits.
    loader.defer_all(True, wait=False)
    loader.defer_all(False)
    assert dataplane.WRITTEN["pending"] is None
    _flip("base", barriers)
    assert len(barriers) >= 1, barriers
    assert_in_force_equals_a_full_write(tables_for("base"))
    assert _run([APPENDED]) == [XDP_PASS]
