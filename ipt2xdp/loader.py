# SPDX-License-Identifier: GPL-2.0-only
"""The loader API: apply(), detach(), status(), read_counters(). The only stage that touches the
kernel (with dataplane.py, devices.py, pins.py).

State is pinned per network namespace under <bpffs>/ipt2xdp/<netns inode>/ (see pins.py), so
separate invocations, also under `ip netns exec`, find it. Every failure leaves the kernel as it
was: a first load is pinned only once everything worked; devices attached by a failed call are
detached again; a generation is in force only after its single flip (dataplane.py).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ipt2xdp import abi, devices, pins, setguard
from ipt2xdp.compile import Tables
from ipt2xdp.dataplane import META_ATTACH, PROG_PIN, Dataplane, object_digest, require_root
from ipt2xdp.errors import LoadError
from ipt2xdp.mapwrite import Background
from ipt2xdp.resources import bpf_object_path

__all__ = ["apply", "detach", "status", "read_counters", "defer_all", "release_replaced", "generation_ident",
           "ApplyResult", "Dataplane"]


@dataclass
class ApplyResult:
    generation: int
    pin_dir: str
    attached: Dict[str, str]                       # device -> mode now in use
    newly_attached: List[str] = field(default_factory=list)
    # of the replaced generation; None: not read yet (apply(counts_later=True)), see final_counts()
    previous_counters: Optional[Dict[int, Tuple[int, int]]] = field(default_factory=dict)
    rewritten: List[str] = field(default_factory=list)  # maps rewritten in place (dataplane.py), not made anew
    replaced_slot: Optional[int] = None

    def final_counts(self) -> Dict[int, Tuple[int, int]]:
        """previous_counters, read now if the flip left them: no run counts in the replaced slot
        any more, and the wrapper's lock, held by the caller, keeps any flip from rewriting it first."""
        if self.previous_counters is None:
            dp = Dataplane.open_pinned(self.pin_dir)
            try:
                self.previous_counters = dp.read_counters(slot=self.replaced_slot, final=True) if dp else {}
            finally:
                if dp is not None:
                    dp.close()
        return self.previous_counters


def _stderr_notice(message: str) -> None:
    print(f"ipt2xdp: {message}", file=sys.stderr)


def _remove_stale_tmp(directory: str) -> None:
    """Pin directories a killed first apply left half made (<dir>-tmp<pid>, pid gone): unpin them."""
    parent, name = os.path.split(directory)
    for entry in os.listdir(parent):
        if entry.startswith(name + "-tmp"):
            pid = entry[len(name) + 4:]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                pins.remove_tree(os.path.join(parent, entry))


class Preload:
    """The BPF object loaded in a thread while the caller plans: on a first import nothing is pinned
    yet, and the verifier's ~0.2 s can run beside parse and plan (libbpf's calls release the GIL).
    apply(preload=...) takes it, or discards it when another instance is pinned by then."""

    def __init__(self, object_path: Optional[str] = None):
        self._loaded: Optional[Dataplane] = None
        # The ipset guard map is shared by pinning (setguard.share_map): an object loaded before
        # the guard pinned its map has a map of its own, which the guard never writes.
        self._guard_map_shared = os.path.exists(setguard.map_pin_path())
        self._job = Background(lambda: self._load(object_path))

    def _load(self, object_path: Optional[str]) -> None:
        self._loaded = Dataplane.load(object_path)

    def take(self) -> Optional[Dataplane]:
        """The object loaded ahead, or None when it cannot serve (the guard map was pinned after
        it loaded, or it was taken already): the caller loads it again."""
        self._job.join()  # raises what the load raised, in the caller's thread
        if not self._guard_map_shared and os.path.exists(setguard.map_pin_path()):
            self.discard()
            return None
        dp, self._loaded = self._loaded, None
        return dp

    def discard(self) -> None:
        """Close what was loaded, if nobody took it (the kernel frees an unpinned program)."""
        try:
            self._job.join()
        except BaseException:  # noqa: BLE001 - nothing was loaded, so nothing to close
            return
        if self._loaded is not None:
            self._loaded.close()
            self._loaded = None


def pinned() -> bool:
    """Whether an ipt2xdp program is pinned in this network namespace (complete or not)."""
    return os.path.exists(os.path.join(pins.pin_dir(), PROG_PIN))


def _open_or_load(directory: str, object_path: Optional[str], preload: Optional[Preload] = None
                  ) -> Tuple[Dataplane, bool]:
    dp = Dataplane.open_pinned(directory)
    if dp is None:
        ahead = preload.take() if preload is not None else None
        return ahead or Dataplane.load(object_path), True
    if preload is not None:
        preload.discard()
    path = str(object_path or bpf_object_path())
    if dp.object_sha and dp.object_sha != object_digest(path):
        dp.close()
        raise LoadError(f"the pinned ipt2xdp program in {directory} comes from another build", 0,
                        "run `ipt2xdp detach --all`, then import again", exit_code=3)
    return dp, False


def apply(tables: Tables, ifaces: Sequence[str] = (), mode: str = "native", *, source_digest: str = "",
          object_path: Optional[str] = None, notice: Callable[[str], None] = _stderr_notice,
          pause_hook: Optional[Callable[[str], None]] = None, release_old: bool = True,
          preload: Optional[Preload] = None, counts_later: bool = False) -> ApplyResult:
    """Make tables the ruleset XDP enforces in this network namespace and attach it to ifaces.

    Args:
        tables: compile.compile() output.
        ifaces: devices to attach to (already attached ones stay attached).
        mode: "native", "generic" or "auto" (native, then generic with a notice).
        source_digest: digest of the ruleset text, shown by `status` to tell whether the loaded
            ruleset still matches the kernel's.
        notice: receives one-line messages such as the native->generic fallback.
        pause_hook: test hook, called between the steps of the generation update.
        release_old: free the replaced generation's maps now; False keeps them (a later
            release_replaced() frees them): `ipt2xdp watch` keeps them, and its next flip
            rewrites in them only what differs (dataplane.py).
        preload: the object loaded ahead (Preload), used if nothing is pinned yet.
        counts_later: with release_old=False, the replaced generation's final counters are read
            by ApplyResult.final_counts() when the caller asks, not before apply returns.
    Raises:
        LoadError (with errno and next step), AbiMismatch.
    """
    require_root()
    devices.check_mode(mode)
    indexes = {name: devices.ifindex(name) for name in ifaces}  # fail on a missing device first
    directory = pins.pin_dir(mount=True)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    with pins.lock():
        _remove_stale_tmp(directory)
        dp, fresh = _open_or_load(directory, object_path, preload)
        newly: List[str] = []
        try:
            generation, previous = dp.apply_generation(tables, {"source_digest": source_digest}, pause_hook,
                                                         release_old, counts_later)
            record = dp.read_meta(META_ATTACH)
            attachments = dict(record.get("attachments", {}))
            our_id = dp.prog_id
            for name in ifaces:
                used, attached_now = devices.attach(name, dp.prog_fd, our_id, mode, notice)
                if attached_now:
                    newly.append(name)
                attachments[name] = {"ifindex": indexes[name], "mode": used}
            if fresh:
                dp.pin(directory)
            record["attachments"] = attachments
            dp.write_meta(META_ATTACH, record)
        except BaseException:
            for name in newly:  # nothing half attached
                try:
                    devices.detach(indexes[name], dp.prog_id)
                except LoadError:
                    pass
            dp.close()
            raise
        result = ApplyResult(generation, directory, {n: a["mode"] for n, a in attachments.items()}, newly, previous,
                             list(dp.rewritten), dp.replaced_slot)
        dp.close()
        return result


def _detach_program_everywhere(directory: str) -> List[str]:
    """The devices of this namespace that ran the program pinned in directory, detached from it."""
    import socket

    from ipt2xdp import libbpf

    try:
        prog_fd = libbpf.obj_get(os.path.join(directory, PROG_PIN))
    except LoadError:
        return []
    try:
        our_id = libbpf.prog_id(prog_fd)
    finally:
        os.close(prog_fd)
    return [name for index, name in socket.if_nameindex() if devices.detach(index, our_id)]


def detach(ifaces: Sequence[str] = (), all_devices: bool = False) -> List[str]:
    """Detach XDP from the given devices (or all recorded ones, then unpin everything).

    Returns the devices detached. Netfilter alone decides for them afterwards.
    """
    require_root()
    directory = pins.pin_dir()
    with pins.lock():
        try:
            dp = Dataplane.open_pinned(directory)
        except LoadError:
            if not all_devices:
                raise
            # pinned by another ipt2xdp version (or left partial by a crash): what `--all` needs is
            # the pinned program, to take it off every device that runs it, then the pins gone
            done = _detach_program_everywhere(directory)
            pins.remove_tree(directory)
            setguard.remove()
            return done
        if dp is None:
            if all_devices:
                pins.remove_tree(directory)
                setguard.remove()
                return []
            raise LoadError("ipt2xdp is not loaded in this network namespace", 0,
                            "nothing to detach; `ipt2xdp status` shows what is loaded", exit_code=1)
        try:
            record = dp.read_meta(META_ATTACH)
            attachments = dict(record.get("attachments", {}))
            targets = list(attachments) if all_devices else list(ifaces)
            done = []
            our_id = dp.prog_id
            for name in targets:
                info = attachments.get(name)
                index = info["ifindex"] if info else devices.ifindex(name)
                if devices.ifname(index) is None:  # the device is gone, and its attachment with it
                    attachments.pop(name, None)
                    continue
                if devices.detach(index, our_id):
                    done.append(name)
                elif not all_devices and name not in attachments:
                    raise LoadError(f"ipt2xdp is not attached to {name}", 0,
                                    "`ipt2xdp status` lists the attached devices", exit_code=1)
                attachments.pop(name, None)
            record["attachments"] = attachments
            dp.write_meta(META_ATTACH, record)
        finally:
            dp.close()
        if all_devices:
            pins.remove_tree(directory)
            setguard.remove()
        return done


def defer_all(on: bool = True, wait: bool = True) -> Optional[bool]:
    """For the wrapper: pass everything to netfilter while it changes (on), then resume (off).
    Returns whether XDP was deferring everything before (None: not loaded here). wait=False: the
    grace period after the deferral is waited for by this process's next flip (dataplane.py)."""
    require_root()
    with pins.lock():
        dp = Dataplane.open_pinned(pins.pin_dir())
        if dp is None:
            return None
        try:
            return dp.defer_all(on, wait)
        finally:
            dp.close()


def release_replaced() -> None:
    """Free the maps of the generation the last flip replaced, if still held (apply(release_old=False))."""
    require_root()
    with pins.lock():
        dp = Dataplane.open_pinned(pins.pin_dir())
        if dp is None:
            return
        try:
            dp.release_replaced()
        finally:
            dp.close()


def generation_ident() -> Optional[str]:
    """"<program id>-<generation>" of the generation in force here (as status() reports the two;
    xdpcounts names generations so), None when nothing is loaded: one state read, not status()."""
    dp = Dataplane.open_pinned(pins.pin_dir())
    if dp is None:
        return None
    try:
        return f"{dp.prog_id}-{dp.read_state().generation}"
    finally:
        dp.close()


def read_counters() -> Dict[int, Tuple[int, int]]:
    """{rule_id: (packets, bytes)} of the generation in force; abi.DEFAULT_COUNTER is the policy."""
    dp = Dataplane.open_pinned(pins.pin_dir())
    if dp is None:
        return {}
    try:
        return dp.read_counters()
    finally:
        dp.close()


_COUNTER_NAMES = {abi.DEFAULT_COUNTER: "default", abi.OVERFLOW_COUNTER: "overflow", abi.NAT_NEW_COUNTER: "nat_new"}


def status(live_source_digest: Optional[str] = None, include_counters: bool = True) -> dict:
    """What is loaded in this network namespace, as a JSON-ready dict.

    Args:
        live_source_digest: digest of the ruleset netfilter holds now (computed by the caller the
            same way as apply()'s source_digest); adds "in_sync": whether XDP was built from it.
        include_counters: False skips reading the per-rule counters (the one part whose cost
            grows with the ruleset: one batch read of rules x CPUs entries); "counters" is {}.
    """
    directory = pins.pin_dir()
    out = {"netns": pins.netns_id(), "pin_dir": directory, "loaded": False}
    dp = Dataplane.open_pinned(directory)
    if dp is None:
        return out
    try:
        st = dp.read_state()
        slot = st.last_slot if st.active >= abi.GEN_SLOTS else st.active
        our_id = dp.prog_id
        record = dp.read_meta(META_ATTACH)
        attachments = {}
        for name, info in record.get("attachments", {}).items():
            live = None
            if devices.ifname(info["ifindex"]) is not None:
                native, generic = devices.attached(info["ifindex"])
                live = "native" if native == our_id else "generic" if generic == our_id else None
            attachments[name] = {"ifindex": info["ifindex"], "mode": info["mode"], "attached": live is not None,
                                 "live_mode": live}
        counters = dp.read_counters() if include_counters else {}
        out.update(loaded=True, program_id=our_id, object_sha=record.get("object_sha", ""),
                   deferring_all=st.active >= abi.GEN_SLOTS, generation=st.generation, active_slot=slot,
                   ruleset=dp.read_meta(slot), devices=attachments, stats=dp.read_stats(),
                   counters={_COUNTER_NAMES.get(k, str(k)): {"packets": p, "bytes": b}
                             for k, (p, b) in sorted(counters.items())})
        out["ipset_mirror"] = setguard.mirror_state(slot)
        if live_source_digest is not None:
            out["in_sync"] = out["ruleset"].get("source_digest") == live_source_digest
        return out
    finally:
        dp.close()
