# SPDX-License-Identifier: GPL-2.0-only
"""A cheap fingerprint of the legacy (x_tables) ruleset, read straight from the kernel.

Legacy iptables sends no notification when a table is replaced, so `ipt2xdp watch` polls. Running
iptables-legacy-save every second would cost a process and a full text render per poll; instead
this reads each table's blob with the same getsockopt() calls iptables itself uses
(IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES) and hashes it with the per-rule counters blanked (they
change with every packet, the rules do not). Kernel-private parts of matches and targets (rate
limiter state, pointers) are not copied to user space since Linux 4.12 (xt_*_to_user with
usersize), so the blob of an unchanged ruleset hashes the same from poll to poll.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import socket
import struct
from typing import Dict, Optional

from ipt2xdp.live import legacy_tables

IPT_SO_GET_INFO = 64
IPT_SO_GET_ENTRIES = 65
_INFO = struct.Struct("=32sI5I5III")   # struct ipt_getinfo
_ENTRIES_HEAD = 40                      # struct ipt_get_entries: name[32], size, then 8-aligned entries
# struct ipt_entry: struct ipt_ip (84 bytes), nfcache u32, target_offset u16, next_offset u16,
# comefrom u32, struct xt_counters {u64 pcnt, bcnt}.
_NEXT_OFFSET = 90
_COUNTERS = 96
_COUNTERS_END = 112

_libc = ctypes.CDLL(None, use_errno=True)


def _getsockopt(fd: int, option: int, buf: ctypes.Array) -> None:
    length = ctypes.c_uint32(len(buf))
    if _libc.getsockopt(fd, socket.IPPROTO_IP, option, buf, ctypes.byref(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getsockopt({option}): {errno.errorcode.get(err, err)}")


def table_digest(fd: int, name: str) -> str:
    """A digest of the table's rules as the kernel holds them, every rule's counters zeroed."""
    for _attempt in range(5):  # the table may be replaced between the two calls: size changes
        info = ctypes.create_string_buffer(_INFO.pack(name.encode(), 0, *([0] * 10), 0, 0), _INFO.size)
        _getsockopt(fd, IPT_SO_GET_INFO, info)
        fields = _INFO.unpack(info.raw)
        size = fields[-1]
        request = ctypes.create_string_buffer(_ENTRIES_HEAD + size)
        struct.pack_into("=32sI", request, 0, name.encode(), size)
        try:
            _getsockopt(fd, IPT_SO_GET_ENTRIES, request)
        except OSError as error:
            if error.errno == errno.EAGAIN:  # size mismatch: replaced in between, read again
                continue
            raise
        # Blank the counters in place: no copy of a blob that is megabytes at 10k rules.
        blob = memoryview(request).cast("B")[_ENTRIES_HEAD:]
        zero = bytes(_COUNTERS_END - _COUNTERS)
        next_offset = struct.Struct("=H").unpack_from
        offset, end = 0, len(blob) - _COUNTERS_END
        while offset <= end:
            blob[offset + _COUNTERS:offset + _COUNTERS_END] = zero
            step = next_offset(blob, offset + _NEXT_OFFSET)[0]
            if step == 0:
                break
            offset += step
        # hook entry points and underflows are part of the ruleset's meaning too
        digest = hashlib.sha256(info.raw[32:])
        digest.update(blob)
        return digest.hexdigest()[:16]
    raise OSError(errno.EAGAIN, f"legacy table {name} kept changing while being read")


def table_digests() -> Dict[str, str]:
    """{table: digest} of every legacy table that exists in this namespace ({} when none does)."""
    names = legacy_tables()
    if not names:
        return {}
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        return {name: table_digest(sock.fileno(), name) for name in names}


def digest() -> Optional[str]:
    """One digest over all legacy tables, or None when there are none."""
    tables = table_digests()
    if not tables:
        return None
    return hashlib.sha256(repr(sorted(tables.items())).encode()).hexdigest()[:16]
