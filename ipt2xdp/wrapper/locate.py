# SPDX-License-Identifier: GPL-2.0-only
"""Whether ipt2xdp is loaded in this network namespace, asked at the start of wrapper calls.

Only os and the C socket module are imported: a call that then exec()s the real tool has paid for
nothing else (pins.netns_id() needs ctypes; the `socket` module imports enum, selectors...).
"""
from __future__ import annotations

import os
import sys

SO_NETNS_COOKIE = 71


def netns_cookie() -> int:
    """pins.netns_id() without importing pins: the namespace's cookie (its inode on kernels
    before 5.14)."""
    import _socket

    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            return int.from_bytes(sock.getsockopt(_socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), sys.byteorder)
        finally:
            sock.close()
    except OSError:
        return os.stat("/proc/self/ns/net").st_ino


def pin_dir_fast() -> "str | None":
    """This namespace's pin directory if ipt2xdp is loaded here, else None; cheap on the common path."""
    netns = netns_cookie()
    root = os.environ.get("IPT2XDP_BPFFS")
    if root is None and os.path.isdir("/sys/fs/bpf/ipt2xdp"):
        root = "/sys/fs/bpf"
    if root is None:  # bpffs hidden (ip netns exec): the full search
        from ipt2xdp import pins
        from ipt2xdp.errors import LoadError

        try:
            root = pins.bpffs_root()
        except LoadError:
            return None
    path = os.path.join(root, "ipt2xdp", str(netns))
    return path if os.path.exists(os.path.join(path, "prog")) else None
