# SPDX-License-Identifier: GPL-2.0-only
"""Kernel handles of one loaded ipt2xdp program: its maps, atomic generation updates (their inner
maps: innermaps.py), counters (counterread.py). (loader.py builds the user-facing
apply/detach/status on top, with pins and devices.)

Atomic generations. Each per-generation map is an ARRAY_OF_MAPS with two slots. An update:
  1. creates fresh inner maps sized to the ruleset and fills them (nothing reads them yet);
  2. waits for an RCU grace period (the barrier, in a thread while 1 runs), so no program run
     that started before the previous flip can still read the inactive slot (not needed when
     this process made the previous flip and waited after it, step 5);
  3. stores the inner maps into the inactive slot of every outer map (in parallel threads, so
     the nine updates share their grace-period waits);
  4. flips state.active to that slot: one u32 store, the only thing a packet reads to choose;
  5. waits again, so on return no packet reads the old slot; the old inner maps are released.
The barrier is an update of a throwaway ARRAY_OF_MAPS: after every successful update of an
ARRAY_OF_MAPS or HASH_OF_MAPS the kernel calls maybe_wait_bpf_programs(), which runs
synchronize_rcu() (synchronize_rcu_expedited() in newer trees) before the syscall returns
(kernel/bpf/syscall.c; XDP runs inside an RCU read-side section, in native and generic mode and
under BPF_PROG_TEST_RUN). tests/test_loader_kill.py checks the effect on this kernel: an updater
parked or killed at every step leaves exactly the old or the new ruleset in force. A crash
before step 4 leaves the old generation in force; after it, the new one.

Ending a deferral. A flip from "defer everything" (the wrapper's and `ipt2xdp watch`'s: defer, the
real command, flip) needs fewer waits, because a run that reads "defer" reads no slot at all (the
program returns XDP_PASS before it looks at a generation; a packet passed is always safe):
  - defer_all(True) stores "defer" and starts a barrier. Every run that starts later passes. A run
    that read the state before judges its packet by the generation in force when it read it,
    whose slot nothing rewrites before the next flip (which writes the other slot): it is judged
    by a ruleset in force while it is judged, as netfilter judges a packet already in its rules
    when a new ruleset is committed (by the old table or generation). So the wrapper's real
    command need not wait for that barrier (wait=False: begin() lets it run in the background,
    WRITTEN "pending"); it is needed by the next flip, which waits for it first
    (settle_deferral): it ends every run that started before the flip to the generation in force,
    so it settles the other slot (WRITTEN "settled"), and the flip writes there without waiting
    again (step 2).
  - Step 5 is skipped when the state read under the pins lock at the start of the flip is the very
    deferral this process made and waited for (its barrier passed before the flip read the state;
    WRITTEN "deferred": same generation, same last
    slot; this process's own resume or flip clears it, another process's flip moves the
    generation). Then every run that started before the flip read "defer", and every later one
    reads the new slot: no run reads the replaced slot, so its counters are final when read right
    after the flip, and nothing is left to wait for. The replaced slot is then not marked settled:
    the next flip waits before rewriting it (step 2) unless another deferral's barrier has passed
    since (the wrapper's next "begin", which it always has in `ipt2xdp watch`'s served changes).
    A flip that replaces a generation in force, or ends a deferral made elsewhere, keeps step 5.
  - The one sequence the check cannot see: between this process's deferral and its flip, another
    process resumes the old generation and then a third stores "defer" and dies before its barrier
    returns (the state reads as before). In this project a process resumes or flips only under the
    wrapper's lock (`ipt2xdp import`, a wrapper call re-planning itself or aborting, the watcher's
    re-imports), which the caller of a served change holds from "begin" to its answer (the watcher's
    own resumes are in-process and clear "deferred"; its deferrals on a trigger only store "defer"
    again), so only a writer outside it (bpftool on the pinned map, a script using the loader
    without the lock) can make the sequence. A run that
    started before that store may then still read the replaced slot after the flip, its verdict
    that of the generation it read (as it would be with the wait); what is at stake is its count,
    added after the replaced slot's counters were read. Verdicts never depend on the skipped wait:
    the slot is not marked settled, so no flip rewrites it before a barrier.
tests/test_flip_defer_kernel.py counts the barriers of each kind of flip and checks the counters
and the verdicts around a flip that ends a deferral.

Rewriting in place. A process that flips again and again (`ipt2xdp watch`) and keeps the replaced
generation's maps (release=False, no release_replaced()) finds, at its next flip, the inactive
slot holding maps it filled itself two flips ago. Step 1 then writes into those maps only the
entries that differ from what it wrote there (WRITTEN; the program itself writes only the
counters and the fast-path entries' counts, which are read and zeroed), after the barrier of step 2, and step 3 installs only the
maps made afresh. What the program counted in the fast-path entries there is known from the flip
that replaced the slot: it read the slot's final counters (after its barrier, or ending a deferral
no run read the slot through), and that read (mapwrite.WRITTEN["final_counts"]) tells which counts
to zero, instead of reading the hash maps again (about 7 ms at 10k rules).
A map is rewritten in place only when this process remembers what it holds,
the slot still holds that very map (by map id: every other writer installs maps of its own, and a
release deletes them) and its size is the one the new generation needs; anything else, or any
doubt, is a full write into a new map. tests/test_flip_rewrite_kernel.py compares every map so
written with a full write.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ipt2xdp import abi, libbpf, pins, setguard
from ipt2xdp.compile import Tables
from ipt2xdp.counterread import CounterReading
from ipt2xdp.errors import AbiMismatch, LoadError
from ipt2xdp.innermaps import InnerMaps
from ipt2xdp.mapwrite import WRITTEN, Background, Written, concurrently, rcu_barrier, u32
from ipt2xdp.resources import bpf_object_path

PROG_PIN = "prog"
META_PIN = "meta"
META_VALUE_SIZE = 4096
META_ATTACH = abi.GEN_SLOTS  # meta[0..GEN_SLOTS-1]: per-slot generation records; meta[2]: attachments


def object_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def require_root() -> None:
    if os.geteuid() != 0:
        raise LoadError("ipt2xdp needs root to load XDP programs", errno.EPERM, "rerun it as root (sudo)")


FIXED_INNER_ENTRIES = abi.FIXED_INNER_ENTRIES  # inner maps without BPF_F_INNER_MAP keep the template's size


def check_abi(obj: libbpf.BpfObject) -> None:
    """Compare every map of the object with abi.py; AbiMismatch lists every difference."""
    l = libbpf.lib()
    diffs: List[str] = []

    def compare(label, ptr, shape):
        got = (l.bpf_map__type(ptr), l.bpf_map__key_size(ptr), l.bpf_map__value_size(ptr))
        want = (shape.kernel_type, shape.key_size, shape.kernel_value_size)
        for what, g, w in zip(("Type", "KeySize", "ValueSize"), got, want):
            if g != w:
                diffs.append(f"{label}: {what} {g} != {w}")
    for shape in (abi.MAP_STATE, abi.MAP_STATS, abi.MAP_CSUM_SCRATCH):
        compare(shape.name, obj.map(shape.name), shape)
    for name, shape in abi.GEN_MAPS.items():
        outer = obj.map(shape.name)
        if l.bpf_map__max_entries(outer) != abi.GEN_SLOTS:
            diffs.append(f"{shape.name}: MaxEntries {l.bpf_map__max_entries(outer)} != {abi.GEN_SLOTS}")
        inner = l.bpf_map__inner_map(outer)
        if not inner:
            diffs.append(f"{shape.name}: not a map-in-map")
            continue
        compare(shape.name + ".inner", inner, shape)
        if l.bpf_map__map_flags(inner) != shape.map_flags:
            diffs.append(f"{shape.name}.inner: Flags {l.bpf_map__map_flags(inner):#x} != {shape.map_flags:#x}")
        fixed = FIXED_INNER_ENTRIES.get(name)
        if fixed is not None and l.bpf_map__max_entries(inner) != fixed:
            diffs.append(f"{shape.name}.inner: MaxEntries {l.bpf_map__max_entries(inner)} != {fixed}")
    if diffs:
        raise AbiMismatch(diffs)


@dataclass
class Dataplane(InnerMaps, CounterReading):
    """Kernel handles of one loaded ipt2xdp program and its maps (pinned or not)."""

    prog_fd: int
    map_fds: Dict[str, int]          # object map name -> fd
    meta_fd: int
    obj: Optional[libbpf.BpfObject] = None
    object_sha: str = ""
    rewritten: List[str] = field(default_factory=list)  # maps the last apply_generation() rewrote in place
    replaced_slot: Optional[int] = None  # the slot the last apply_generation() replaced

    # --- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def load(cls, object_path: Optional[str] = None) -> "Dataplane":
        """Open, check and load the object; state starts as DEFER_ALL (everything to netfilter)."""
        path = str(object_path or bpf_object_path())
        obj = libbpf.BpfObject(path)
        try:
            check_abi(obj)
            setguard.share_map(obj)
            obj.load()
            l = libbpf.lib()
            names = [abi.MAP_STATE.name, abi.MAP_STATS.name, abi.MAP_SETGUARD.name] + [s.name for s in abi.GEN_MAPS.values()]
            map_fds = {n: l.bpf_map__fd(obj.map(n)) for n in names}
            meta_fd = libbpf.map_create(abi.BPF_MAP_TYPE_ARRAY, "ipt2xdp_meta", 4, META_VALUE_SIZE, abi.GEN_SLOTS + 1)
            dp = cls(obj.program_fd(abi.PROGRAM_NAME), map_fds, meta_fd, obj, object_digest(path))
            dp.write_state(abi.DEFER_ALL, abi.GEN_SLOTS - 1, 0)
            dp.write_meta(META_ATTACH, {"object_sha": dp.object_sha, "attachments": {}})
            return dp
        except BaseException:
            obj.close()
            raise

    @classmethod
    def open_pinned(cls, directory: str) -> Optional["Dataplane"]:
        """The pinned instance in directory, or None if there is none."""
        if not os.path.exists(os.path.join(directory, PROG_PIN)):
            return None
        fds = {}
        name = PROG_PIN
        try:
            prog_fd = libbpf.obj_get(os.path.join(directory, PROG_PIN))
            for name in [abi.MAP_STATE.name, abi.MAP_STATS.name, abi.MAP_SETGUARD.name] + \
                    [s.name for s in abi.GEN_MAPS.values()] + [META_PIN]:
                fds[name] = libbpf.obj_get(os.path.join(directory, name))
            meta_fd = fds.pop(META_PIN)
        except LoadError as error:
            for fd in fds.values():
                os.close(fd)
            # a map this version has and the pinned program lacks: pinned by an older ipt2xdp
            raise LoadError(f"pinned ipt2xdp state in {directory} has no {name} (pinned by another ipt2xdp "
                            "version, or left incomplete by a crash)", error.errno_value,
                            "run `ipt2xdp detach --all` (netfilter alone decides meanwhile), then import "
                            "again") from None
        dp = cls(prog_fd, fds, meta_fd)
        dp.object_sha = dp.read_meta(META_ATTACH).get("object_sha", "")
        info = libbpf.map_info(fds[abi.MAP_STATE.name])
        if info.value_size != abi.MAP_STATE.value_size:
            dp.close()
            raise AbiMismatch([f"{abi.MAP_STATE.name}: ValueSize {info.value_size} != {abi.MAP_STATE.value_size} "
                               f"(pinned by another ipt2xdp version; run `ipt2xdp detach --all` first)"])
        return dp

    def pin(self, directory: str) -> None:
        """Pin everything under directory at once: pin into a sibling, then rename it into place."""
        tmp = f"{directory}-tmp{os.getpid()}"  # bpffs refuses "." in names
        pins.remove_tree(tmp)
        os.makedirs(tmp)
        try:
            libbpf.obj_pin(self.prog_fd, os.path.join(tmp, PROG_PIN))
            libbpf.obj_pin(self.meta_fd, os.path.join(tmp, META_PIN))
            for name, fd in self.map_fds.items():
                libbpf.obj_pin(fd, os.path.join(tmp, name))
            os.rename(tmp, directory)
        except BaseException:
            pins.remove_tree(tmp)
            raise

    def close(self) -> None:
        for fd in [self.prog_fd, self.meta_fd, *self.map_fds.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        self.map_fds = {}

    @property
    def prog_id(self) -> int:
        return libbpf.prog_id(self.prog_fd)

    # --- state and metadata ------------------------------------------------------------------
    def read_state(self) -> abi.State:
        raw = libbpf.lookup_elem(self.map_fds[abi.MAP_STATE.name], u32(0), ctypes.sizeof(abi.State))
        return abi.State.from_buffer_copy(raw)

    def write_state(self, active: int, last_slot: int, generation: int) -> None:
        value = bytes(abi.State(active=active, last_slot=last_slot, generation=generation))
        libbpf.update_elem(self.map_fds[abi.MAP_STATE.name], u32(0), value, what="flipping the active generation")

    def defer_all(self, on: bool = True, wait: bool = True) -> bool:
        """Make XDP pass everything to netfilter (on) or resume the last generation (off: a packet
        still deferring meanwhile is no harm, so no wait). Returns whether it was deferring
        everything before. on: every run that starts later passes; with wait, every run that read
        the state before has ended too when this returns; without, that barrier runs in the
        background and this process's next flip waits for it first (module docstring)."""
        st = self.read_state()
        self._remembered()  # forgets what it knew of another program
        WRITTEN["deferred"] = WRITTEN["pending"] = None  # until a barrier after the write below has passed
        self.write_state(abi.DEFER_ALL if on else st.last_slot, st.last_slot, st.generation)
        if on and wait:
            rcu_barrier()
            self._settled(st.generation, st.last_slot)
        elif on:
            WRITTEN["pending"] = (Background(rcu_barrier), st.generation, st.last_slot)
        return st.active >= abi.GEN_SLOTS

    @staticmethod
    def _settled(generation: int, last_slot: int) -> None:
        """A barrier after storing "defer everything" in the state (generation, last_slot) passed:
        every run that started before the flip to that generation has ended, and every later one
        reads "defer" or last_slot: the other slot is free (apply_generation), and from here until
        this process sees the state otherwise, no run reads any slot."""
        WRITTEN["settled"] = generation
        WRITTEN["deferred"] = (generation, last_slot)

    @classmethod
    def settle_deferral(cls) -> None:
        """Wait for the barrier of this process's last defer_all(wait=False), if it still runs
        and no defer_all came after it."""
        pending, WRITTEN["pending"] = WRITTEN.get("pending"), None
        if pending is not None:
            barrier, generation, last_slot = pending
            barrier.join()
            cls._settled(generation, last_slot)

    def read_meta(self, index: int) -> dict:
        raw = libbpf.lookup_elem(self.meta_fd, u32(index), META_VALUE_SIZE) or b""
        text = raw.split(b"\0", 1)[0]
        try:
            return json.loads(text) if text else {}
        except ValueError:
            return {}

    def write_meta(self, index: int, record: dict) -> None:
        data = json.dumps(record, sort_keys=True).encode()
        if len(data) >= META_VALUE_SIZE:
            raise LoadError("metadata record too large", errno.E2BIG, "attach fewer devices per namespace")
        libbpf.update_elem(self.meta_fd, u32(index), data.ljust(META_VALUE_SIZE, b"\0"), what="writing metadata")

    # --- generations -------------------------------------------------------------------------
    def apply_generation(self, tables: Tables, record: Optional[dict] = None,
                         pause_hook: Optional[Callable[[str], None]] = None,
                         release: bool = True, counts_later: bool = False) -> Tuple[int, Optional[Dict[int, Tuple[int, int]]]]:
        """Make tables the generation in force, atomically. Returns (generation, final counters of
        the generation it replaced). pause_hook(step) is a test hook called between steps.
        release=False leaves the replaced generation's maps in their slot (release_replaced()
        frees them later; the next generation replaces them, or rewrites them in place when this
        process filled them: module docstring). self.rewritten lists the maps rewritten in place.
        counts_later (with release=False): the final counters are not read here (None), but by the
        caller from self.replaced_slot before the next flip (loader.ApplyResult.final_counts()).

        Every update or delete of an outer map waits for a grace period before it returns, so the
        updates of the outer maps run in parallel threads and share their waits (the
        syscalls release the GIL); the first barrier runs while the inner maps are filled. A
        generation costs about three grace periods, not two per outer map plus two."""
        hook = pause_hook or (lambda step: None)
        self.settle_deferral()
        st = self.read_state()
        last = st.last_slot if st.active >= abi.GEN_SLOTS else st.active
        target = (last + 1) % abi.GEN_SLOTS
        generation = st.generation + 1
        inner: Dict[str, int] = {}
        written: Dict[str, Written] = {}
        reused: Dict[str, Tuple[Written, int]] = {}
        self.rewritten = []
        self._remembered()  # forgets what it knew of another program
        # Ending a deferral this process made (and waited for) in this very state: no run reads
        # the replaced slot, before the flip or after it (module docstring: no final barrier).
        ends_deferral = st.active >= abi.GEN_SLOTS and WRITTEN.get("deferred") == (st.generation, st.last_slot)
        barrier = None if WRITTEN["settled"] == st.generation else Background(rcu_barrier)
        try:
            try:
                reused = self._rewritable(target, tables, generation)
                slots = self._remembered()
                slots.pop(target, None)  # until this flip is done: a failure midway leaves doubt
                for name in abi.GEN_MAPS:
                    if name not in reused:
                        inner[name], written[name] = self._create_inner(name, tables, generation)
                        hook(f"filled {name}")
            finally:
                if barrier is not None:
                    barrier.join()
            # After the barrier: no program run still reads the inactive slot's maps.
            for name, (old, fd) in reused.items():
                again = self._rewrite_inner(name, fd, old, tables, generation)
                if again is None:
                    inner[name], written[name] = self._create_inner(name, tables, generation)
                else:
                    written[name] = again
                    self.rewritten.append(name)
                hook(f"filled {name}")
            setguard.store_expectation(self.map_fds[abi.MAP_SETGUARD.name], target, tables.set_guard)
            self.write_meta(target, dict(record or {}, generation=generation, rules=tables.rule_count,
                                         slots=tables.slot_count, sets=tables.set_count, digest=tables.digest,
                                         overflowed_rules=tables.overflowed_rules, applied_at=int(time.time())))

            def install(name: str) -> None:
                libbpf.update_elem(self.map_fds[abi.GEN_MAPS[name].name], u32(target), u32(inner[name]),
                                   what=f"installing generation {generation} map {name}")
                hook(f"installed {name}")
            if inner:  # each install waits for a grace period: none when every map was rewritten
                concurrently([lambda name=name: install(name) for name in inner])
            WRITTEN["deferred"] = WRITTEN["settled"] = None
            self.write_state(target, target, generation)
            hook("flipped")
            slots[target] = written
            if not ends_deferral:
                rcu_barrier()
                WRITTEN["settled"] = generation
            # else not settled: the next flip waits before it writes into the replaced slot,
            # unless a deferral's barrier (defer_all) has passed by then
        finally:
            for fd in list(inner.values()) + [fd for _old, fd in reused.values()]:
                os.close(fd)
        # Final: after the barrier, or ending a deferral no run read the replaced slot through.
        WRITTEN["final_counts"] = {}  # only the slot just replaced is rewritten next
        self.replaced_slot = last
        if counts_later and not release and st.generation:
            return generation, None
        old_counters = self.read_counters(slot=last, final=not release) if st.generation else {}
        if release:
            self.release_slots([last])
        return generation, old_counters

    def release_replaced(self) -> None:
        """Free the maps of every slot but the last one flipped to (the program reads no other:
        the flip's barrier has passed). Each delete waits for a grace period, so they run at once."""
        current = self.read_state().last_slot
        self.release_slots([slot for slot in range(abi.GEN_SLOTS) if slot != current])

    def release_slots(self, slots: List[int]) -> None:
        remembered = self._remembered()
        for slot in slots:
            remembered.pop(slot, None)

        def release(outer_fd: int, slot: int) -> None:  # the old generation: memory follows one ruleset
            try:
                libbpf.delete_elem(outer_fd, u32(slot))
            except LoadError:
                pass
        concurrently([lambda fd=self.map_fds[shape.name], slot=slot: release(fd, slot)
                      for shape in abi.GEN_MAPS.values() for slot in slots])

    def _inner_fd(self, outer_name: str, slot: int) -> Optional[int]:
        raw = libbpf.lookup_elem(self.map_fds[outer_name], u32(slot), 4)
        if raw is None:
            return None
        (map_id,) = struct.unpack("=I", raw)
        return libbpf.map_fd_by_id(map_id) if map_id else None

    def test_run(self, packet: bytes, repeat: int = 1, ingress_ifindex: int = 0) -> Tuple[int, int]:
        """(XDP verdict, ns per run) of the program on one packet (BPF_PROG_TEST_RUN)."""
        retval, duration, _ = libbpf.test_run(self.prog_fd, packet, repeat, ingress_ifindex)
        return retval, duration
