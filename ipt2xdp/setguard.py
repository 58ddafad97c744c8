# SPDX-License-Identifier: GPL-2.0-only
"""The kernel side of ipset mirroring: the change counters XDP compares with (bpf/ipt2xdp_setguard.h).

`ensure()` loads bpf/ipt2xdp_setguard.bpf.o once per network namespace: raw tracepoint programs
that count every request that may change an ipset (an nfnetlink send, see the C file) when it
starts and when it is done, into the map `ipt2xdp_setguard`,
which the XDP program shares (Dataplane.load points its map at the same pin). Links are pinned in
<bpffs>/ipt2xdp/setguard-<netns>/ (and the map beside the XDP program, or there before the first
load), so they outlive the command; `detach --all` removes them. The import waits for a moment with no request in flight (`settled_counts()`), reads the counts
then, and only then the sets; `store_expectation()` puts
those counts and the timeout deadline in the generation's slot before the flip.

For the `ipt2xdp watch` service: `counts()` moves whenever a set loses or gains members; a mirror
is stale when `mirror_state()["current"]` is False, and a live re-import (`ipt2xdp import --live`)
makes it current again.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ipt2xdp import abi, libbpf, pins
from ipt2xdp.errors import LoadError
from ipt2xdp.resources import bpf_object_path

OBJECT = "ipt2xdp_setguard.bpf.o"
MAP_PIN = "counts"
NEVER = (1 << 64) - 1  # deadline of a copy without timeouts


@dataclass(frozen=True)
class Expectation:
    """What a generation's guarded DROPs were built from."""

    removals: int
    additions: int
    deadline_ns: int = NEVER


def guard_dir(netns: Optional[int] = None) -> str:
    netns = netns if netns is not None else pins.netns_id()
    return os.path.join(os.path.dirname(pins.pin_dir(netns=netns)), f"setguard-{netns}")


def map_pin_path() -> str:
    """Where the namespace's guard map is pinned: beside the XDP program once that is pinned, else
    (a first import) in the guard's directory, where Dataplane.load finds it."""
    beside_xdp = os.path.join(pins.pin_dir(), abi.MAP_SETGUARD.name)
    return beside_xdp if os.path.exists(beside_xdp) else os.path.join(guard_dir(), MAP_PIN)


def _declare() -> ctypes.CDLL:
    l = libbpf.lib()
    P, I, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, restype, argtypes in (("bpf_map__set_pin_path", I, [P, S]), ("bpf_object__next_program", P, [P, P]),
                                    ("bpf_program__name", S, [P]), ("bpf_program__attach", P, [P]),
                                    ("bpf_link__pin", I, [P, S]), ("bpf_link__destroy", I, [P])):
        fn = getattr(l, name)
        fn.restype, fn.argtypes = restype, argtypes
    return l


def share_map(obj: libbpf.BpfObject, create: bool = False) -> None:
    """Point obj's ipt2xdp_setguard at the namespace's pinned guard map. With create, libbpf
    creates and pins it at load when absent (the guard object); without, an object loaded before
    any guard keeps its own map, which the guard then finds pinned beside the program."""
    path = map_pin_path()
    if not create and not os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    l = _declare()
    libbpf.check(l.bpf_map__set_pin_path(obj.map(abi.MAP_SETGUARD.name), path.encode()),
                 "sharing the ipset guard map")


def _programs(obj: libbpf.BpfObject) -> List[Tuple[str, int]]:
    l = _declare()
    out, prog = [], None
    while True:
        prog = l.bpf_object__next_program(obj.ptr, prog)
        if not prog:
            return out
        out.append((l.bpf_program__name(prog).decode(), prog))


def attached() -> bool:
    directory = guard_dir()
    return os.path.isdir(directory) and any(name.startswith("link_") for name in os.listdir(directory))


def ensure() -> None:
    """Attach the guard in this namespace unless it is attached (root; idempotent).

    Raises LoadError when the kernel refuses (no fentry/fexit, no BTF of ip_set_core): then sets
    cannot be mirrored exactly and the importer leaves their rules to netfilter.
    """
    with pins.lock():
        if attached():
            _check_shared_with_xdp()
            return
        directory = guard_dir()
        os.makedirs(directory, exist_ok=True)
        obj = libbpf.BpfObject(str(bpf_object_path(OBJECT)))
        links = []
        l = _declare()
        try:
            share_map(obj, create=True)
            obj.load()
            _set_netns_cookie(obj)
            for name, prog in _programs(obj):
                ctypes.set_errno(0)
                link = l.bpf_program__attach(prog)
                if not link:
                    raise LoadError(f"attaching the ipset guard {name}", ctypes.get_errno() or errno.EINVAL,
                                    "the kernel needs raw tracepoints and BTF (CONFIG_DEBUG_INFO_BTF); "
                                    "-m set rules stay with netfilter")
                links.append(link)
            for (name, _), link in zip(_programs(obj), links):
                libbpf.check(l.bpf_link__pin(link, os.path.join(directory, f"link_{name}").encode()),
                             f"pinning the ipset guard {name}")
        except BaseException:
            for name in os.listdir(directory) if os.path.isdir(directory) else ():
                if name.startswith("link_"):
                    os.unlink(os.path.join(directory, name))
            raise
        finally:
            for link in links:  # the pins keep them attached
                l.bpf_link__destroy(link)
            obj.close()
        _check_shared_with_xdp()


def _set_netns_cookie(obj: libbpf.BpfObject) -> None:
    """Count only this namespace's nfnetlink requests (the guard's map may be new or shared)."""
    fd = libbpf.lib().bpf_map__fd(obj.map(abi.MAP_SETGUARD.name))
    key = struct.pack("=I", abi.SETGUARD_LIVE)
    live = abi.SetGuard.from_buffer_copy(libbpf.lookup_elem(fd, key, ctypes.sizeof(abi.SetGuard)))
    if live.netns_cookie != pins.netns_id():
        # Written before any program is attached: no count can be lost by this read-modify-write.
        live.netns_cookie = pins.netns_id()
        libbpf.update_elem(fd, key, bytes(live), what="configuring the ipset guard")


def _prog_map_ids(prog_fd: int) -> List[int]:
    info = (ctypes.c_uint8 * 64)()
    n = ctypes.c_uint32(64)
    libbpf.check(libbpf.lib().bpf_obj_get_info_by_fd(prog_fd, info, ctypes.byref(n)), "reading program info")
    count = struct.unpack_from("=I", info, 52)[0]
    ids = (ctypes.c_uint32 * max(count, 1))()
    info2 = (ctypes.c_uint8 * 64)()
    struct.pack_into("=IQ", info2, 52, count, ctypes.addressof(ids))
    libbpf.check(libbpf.lib().bpf_obj_get_info_by_fd(prog_fd, info2, ctypes.byref(n)), "reading program maps")
    return list(ids)[:count]


def _check_shared_with_xdp() -> None:
    """The XDP program in force must read the very map the guard programs write (a guard map
    re-created after an unpin would leave XDP blind to changes)."""
    prog_pin = os.path.join(pins.pin_dir(), "prog")
    links = sorted(n for n in os.listdir(guard_dir()) if n.startswith("link_"))
    if not os.path.exists(prog_pin) or not links:
        return  # Dataplane.load will share the pinned map
    xdp_fd, link_fd = libbpf.obj_get(prog_pin), libbpf.obj_get(os.path.join(guard_dir(), links[0]))
    guard_fd = -1
    try:
        info = (ctypes.c_uint32 * 8)()  # struct bpf_link_info: type, id, prog_id, ...
        n = ctypes.c_uint32(ctypes.sizeof(info))
        libbpf.check(libbpf.lib().bpf_obj_get_info_by_fd(link_fd, info, ctypes.byref(n)), "reading the guard's link")
        guard_fd = libbpf.check(libbpf.lib().bpf_prog_get_fd_by_id(info[2]), "opening the guard program")
        if not set(_prog_map_ids(guard_fd)) & set(_prog_map_ids(xdp_fd)):  # only the guard map is shared
            raise LoadError("the XDP program in force does not read this namespace's ipset guard map", errno.ESTALE,
                            "run `ipt2xdp detach --all`, then import again")
    finally:
        for fd in (xdp_fd, link_fd, guard_fd):
            if fd >= 0:
                os.close(fd)


def _read(index: int) -> abi.SetGuard:
    fd = libbpf.obj_get(map_pin_path())
    try:
        raw = libbpf.lookup_elem(fd, struct.pack("=I", index), ctypes.sizeof(abi.SetGuard))
    finally:
        os.close(fd)
    return abi.SetGuard.from_buffer_copy(raw)


def counts() -> Tuple[int, int, int]:
    """(removals, additions, settled) counted so far in this namespace's guard. `settled` is read
    first, so removals == settled means no request that may change a set was in flight."""
    settled = _read(abi.SETGUARD_LIVE).settled
    live = _read(abi.SETGUARD_LIVE)
    return live.removals, live.additions, settled


def settled_counts(timeout_s: float = 2.0) -> Tuple[int, int]:
    """(removals, additions) at a moment when no set change was in flight; LoadError if requests
    kept coming for timeout_s (then the sets are read but not trusted)."""
    deadline = time.monotonic() + timeout_s
    while True:
        removals, additions, settled = counts()
        if removals == settled:
            return removals, additions
        if time.monotonic() > deadline:
            raise LoadError("ipset changes kept being in flight while the sets were to be read", errno.EBUSY,
                            "import again when the sets are quiet; -m set rules stay with netfilter meanwhile")
        time.sleep(0.01)


def store_expectation(fd: int, slot: int, expectation: Optional[Expectation]) -> None:
    """Write into the XDP program's guard map (fd) what generation slot `slot` was built from,
    before the flip. None: a generation with no guarded DROP; it gets counts that never match, so
    a stray guarded slot would pass."""
    e = expectation or Expectation(NEVER, NEVER, 0)
    value = bytes(abi.SetGuard(removals=e.removals, additions=e.additions, deadline_ns=e.deadline_ns))
    libbpf.update_elem(fd, struct.pack("=I", 1 + slot), value, what="storing the ipset guard's expectation")


def mirror_state(slot: int) -> Dict[str, object]:
    """For status: whether guarded DROPs of generation slot `slot` still drop, and why not."""
    if not os.path.exists(map_pin_path()):
        return {"guard": False}
    live, want = _read(abi.SETGUARD_LIVE), _read(1 + slot)
    if want.removals == NEVER:
        return {"guard": attached(), "mirrored": False}
    now = time.monotonic_ns()
    reasons: List[str] = []
    if live.removals != want.removals:
        reasons.append("members removed")
    if live.additions != want.additions:
        reasons.append("members added")
    if want.deadline_ns != NEVER and now >= want.deadline_ns:
        reasons.append("a member may have timed out")
    return {"guard": attached(), "mirrored": True, "current": not reasons, "changed": reasons,
            "removals": live.removals - want.removals, "additions": live.additions - want.additions,
            "deadline_in_s": None if want.deadline_ns == NEVER else round((want.deadline_ns - now) / 1e9, 1)}


def remove(netns: Optional[int] = None) -> None:
    """Detach and unpin the guard of a namespace (detach --all, namespace removal)."""
    pins.remove_tree(guard_dir(netns))


def mirror_for_import(host, ruleset, notice=None, mirror: bool = True):
    """(host with the ruleset's sets, Expectation) for a real import, in the order exactness needs:
    guard attached, then the counts read, then the sets read. Without a guard the sets are left
    unknown (set-guard) and the Expectation is None. `mirror=False` (import --ipsets defer) leaves
    them unknown without attaching the guard, whose tracepoints every syscall of the host pays."""
    from dataclasses import replace

    from ipt2xdp import ipsets

    names = ipsets.referenced_sets(ruleset)
    if not names:
        return host, None
    if not mirror:
        return replace(host, ipsets=tuple(ipsets.IpSet(n, unsupported="set-off") for n in names)), None
    try:
        ensure()
        removals, additions = settled_counts()
    except LoadError as error:
        if notice is not None:
            notice(f"ipsets not mirrored: {error}")
        return replace(host, ipsets=tuple(ipsets.IpSet(n, unsupported="set-guard") for n in names)), None
    return (replace(host, ipsets=ipsets.read_sets(names, ipsets.changed_by_rules(ruleset))),
            Expectation(removals, additions))


def with_deadline(expectation: Optional[Expectation], deadline_ns: Optional[int]) -> Optional[Expectation]:
    if expectation is None or deadline_ns is None:
        return expectation
    return Expectation(expectation.removals, expectation.additions, min(max(deadline_ns, 0), NEVER))
