# SPDX-License-Identifier: GPL-2.0-only
"""Network devices: name -> ifindex, and XDP attach/detach per mode with clear failures.

Attachment goes through netlink (bpf_xdp_attach), not a bpf_link, so it outlives the process that
made it, as `ip link set dev X xdp ...` does; the pinned program id identifies ours.
"""
from __future__ import annotations

import errno
import socket
import sys
from typing import Callable, Optional, Tuple

from ipt2xdp import libbpf
from ipt2xdp.errors import EXIT_PARAMETER, LoadError

MODE_FLAGS = {"native": libbpf.XDP_FLAGS_DRV_MODE, "generic": libbpf.XDP_FLAGS_SKB_MODE}
MODES = ("native", "generic", "auto")


def ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise LoadError(f"device {name} does not exist in this network namespace", errno.ENODEV,
                        "check the name with `ip link show`", exit_code=EXIT_PARAMETER) from None


def ifname(index: int) -> Optional[str]:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


def attached(index: int) -> Tuple[int, int]:
    """(native program id, generic program id) attached to the device; 0 for none."""
    q = libbpf.xdp_query(index)
    return q.drv_prog_id, q.skb_prog_id


def _notice(message: str) -> None:
    print(f"ipt2xdp: {message}", file=sys.stderr)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise LoadError(f"unknown XDP mode {mode!r}", errno.EINVAL, "use native, generic or auto",
                        exit_code=EXIT_PARAMETER)


def attach(name: str, prog_fd: int, our_id: int, mode: str, notice: Callable[[str], None] = _notice) -> Tuple[str, bool]:
    """Attach our program to a device. Returns (mode used, whether this call attached it).

    auto = native, then generic with a notice when the driver has no native XDP. Another
    program already attached is never replaced.
    """
    check_mode(mode)
    index = ifindex(name)
    native_id, generic_id = attached(index)
    for other in (native_id, generic_id):
        if other and other != our_id:
            raise LoadError(f"another XDP program (id {other}) is attached to {name}", errno.EEXIST,
                            f"remove it first (ip link set dev {name} xdp off) or pick another device")
    wanted = ("native", "generic") if mode == "auto" else (mode,)
    current = "native" if native_id == our_id else "generic" if generic_id == our_id else None
    if current in wanted:
        return current, False
    if current is not None:
        # The kernel keeps one XDP mode per device: leave the old one first (packets meanwhile go
        # to netfilter alone, which is always safe).
        libbpf.check(libbpf.xdp_detach(index, MODE_FLAGS[current]), f"detaching XDP ({current}) from {name}")
    for m in wanted:
        ret = libbpf.xdp_attach(index, prog_fd, MODE_FLAGS[m] | libbpf.XDP_FLAGS_UPDATE_IF_NOEXIST)
        if ret == 0:
            return m, True
        err = -ret
        if m == "native" and mode == "auto" and err in (errno.EOPNOTSUPP, errno.EINVAL):
            notice(f"{name}: driver has no native XDP ({errno.errorcode.get(err, err)}); falling back to generic mode")
            continue
        step = (f"the driver of {name} has no native XDP; retry with --mode generic (or --mode auto)"
                if m == "native" and err in (errno.EOPNOTSUPP, errno.EINVAL) else
                "run as root" if err == errno.EPERM else "rerun with -v for libbpf's messages")
        raise LoadError(f"attaching XDP to {name} in {m} mode", err, step)
    raise AssertionError("unreachable")


def detach(name_or_index, our_id: int) -> bool:
    """Detach our program from a device, in whichever mode it is; False if it was not attached."""
    index = name_or_index if isinstance(name_or_index, int) else ifindex(name_or_index)
    native_id, generic_id = attached(index)
    done = False
    for mode, prog in (("native", native_id), ("generic", generic_id)):
        if prog and prog == our_id:
            libbpf.check(libbpf.xdp_detach(index, MODE_FLAGS[mode]), f"detaching XDP ({mode}) from ifindex {index}")
            done = True
    return done
