# SPDX-License-Identifier: GPL-2.0-only
"""Where ipt2xdp's pinned state lives: <bpffs>/ipt2xdp/<netns inode>/, one directory per network
namespace, so separate invocations (and separate namespaces) find their own program and maps.

`ip netns exec NAME` remounts /sys in a private mount namespace, which hides /sys/fs/bpf (and a
bpffs mounted anew there would be a new, empty instance). The original bpffs stays reachable
through the root of a process still in the original mount namespace: the parent that ran
`ip netns exec` (ip execs the command, so our parent is the caller's shell), its ancestors, or
PID 1. /proc/<pid>/root needs ptrace read access; on hosts without CAP_SYS_PTRACE PID 1's is
refused while our own ancestors' are not, so ancestors are tried first. The same pins are then
found with or without `ip netns exec`; IPT2XDP_BPFFS overrides the search.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
from typing import Iterator, Optional

from ipt2xdp.errors import LoadError

BPF_FS_MAGIC = 0xCAFE4A11
LOCK_DIR = "/run/lock"


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


def _ancestors() -> Iterator[int]:
    pid = os.getppid()
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        yield pid
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return


def _candidates() -> Iterator[str]:
    yield "/sys/fs/bpf"
    for pid in _ancestors():
        yield f"/proc/{pid}/root/sys/fs/bpf"
    yield "/proc/1/root/sys/fs/bpf"


def _is_bpffs(path: str) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = _StatFs()
    if libc.statfs(path.encode(), ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC


def bpffs_root(mount: bool = False) -> str:
    """The bpffs mount to pin under; with mount (a load about to pin), mounted at /sys/fs/bpf when
    none is (as bpftool and libxdp do: a host booted without systemd has none), while readers and
    the wrapper's pass-through leave the host's mounts alone. LoadError if none can be mounted, or
    IPT2XDP_BPFFS names no bpffs."""
    override = os.environ.get("IPT2XDP_BPFFS")
    if override:
        if _is_bpffs(override):
            return override
        raise LoadError(f"IPT2XDP_BPFFS={override} is not a BPF filesystem", errno.ENOENT,
                        f"mount one there with: mount -t bpf bpf {override}, or unset IPT2XDP_BPFFS")
    for path in _candidates():
        if _is_bpffs(path):
            return path
    # No bpffs, so nothing pinned: readers find no pins under the unmounted path ("not loaded").
    return mount_bpffs() if mount else "/sys/fs/bpf"


def _same_mount_namespace_as_parent() -> bool:
    try:
        return os.stat("/proc/self/ns/mnt").st_ino == os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino
    except OSError:
        return True


def mount_bpffs(path: str = "/sys/fs/bpf") -> str:
    """Mount bpffs at path and return it.

    Only in the caller's own mount namespace: under `ip netns exec` (a private namespace our parent
    is not in) a mount would be a new instance that vanishes with the command, taking the pins with
    it, so the user is told to mount it on the host instead.
    """
    hint = f"mount it with: mount -t bpf bpf {path}"
    if not _same_mount_namespace_as_parent():
        raise LoadError(f"no BPF filesystem at {path} in the host's mount namespace", errno.ENOENT,
                        f"{hint} outside `ip netns exec`")
    libc = ctypes.CDLL(None, use_errno=True)
    # mode=0700 as libxdp mounts it: pinned maps hold the firewall's decisions.
    if libc.mount(b"bpf", path.encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise LoadError(f"no BPF filesystem at {path}, and mounting one failed", err, hint)
    return path


SO_NETNS_COOKIE = 71  # Linux >= 5.14
CLONE_NEWNET = 0x40000000


def netns_id() -> int:
    """The key of the current network namespace's pin directory.

    The namespace cookie, unique for the life of the kernel; an inode number is reused once a
    namespace is gone, and a new namespace would then find a dead one's pins. Falls back to the
    inode on kernels without SO_NETNS_COOKIE.
    """
    import socket
    import struct

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    except OSError:
        return os.stat("/proc/self/ns/net").st_ino


def netns_id_of(netns_path: str) -> Optional[int]:
    """netns_id() of another network namespace (e.g. /var/run/netns/NAME), or None."""
    import threading

    result: list = []

    def probe() -> None:
        # setns() changes only this thread's namespace, and the thread ends right after.
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(netns_path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) == 0:
                result.append(netns_id())
        finally:
            os.close(fd)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return result[0] if result else None


def forget_netns(netns_path: str) -> None:
    """Unpin a namespace's state before it is deleted (its devices, and attachments, go with it)."""
    netns = netns_id_of(netns_path)
    if netns is None:
        return
    from ipt2xdp import setguard

    try:
        remove_tree(pin_dir(netns=netns))
        setguard.remove(netns)
    except LoadError:
        pass
    _remove_state_files(netns)


def _remove_state_files(netns: int) -> None:
    """The plan records, watcher socket and lock files kept for a namespace about to go: its cookie
    is never reused, so nothing would ever read them again (a test run left thousands in /run)."""
    import shutil

    from ipt2xdp import planstore
    from ipt2xdp.wrapper import sync

    shutil.rmtree(planstore._directory(netns), ignore_errors=True)
    for path in (lock_path(netns), sync.lock_path(netns)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def pin_dir(root: Optional[str] = None, netns: Optional[int] = None, mount: bool = False) -> str:
    """mount: see bpffs_root()."""
    return os.path.join(root or bpffs_root(mount), "ipt2xdp", str(netns if netns is not None else netns_id()))


def lock_path(netns: Optional[int] = None) -> str:
    """The lock file of a network namespace's ipt2xdp state (default: the current one)."""
    return os.path.join(LOCK_DIR, f"ipt2xdp-{netns if netns is not None else netns_id()}.lock")


@contextlib.contextmanager
def lock(netns: Optional[int] = None) -> Iterator[None]:
    """Serialise ipt2xdp's read-modify-write of one namespace's state (xdp-filter prog_lock style).

    bpffs cannot hold a regular file, so the lock file sits in /run/lock, which `ip netns exec`
    leaves shared.
    """
    os.makedirs(LOCK_DIR, exist_ok=True)
    fd = os.open(lock_path(netns), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """Unpin everything under path (bpffs supports unlink and rmdir)."""
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full):
            remove_tree(full)
        else:
            os.unlink(full)
    os.rmdir(path)
