# SPDX-License-Identifier: GPL-2.0-only
"""The nf_tables generation of this network namespace: the number every committed nf_tables
transaction moves by exactly one (iptables-nft commits each command as one transaction; a batch
the kernel refuses moves nothing). Two reads that agree bracket a moment in which nothing in
nf_tables changed; a read one past an earlier one tells that exactly one transaction was
committed since (`ipt2xdp watch`: warm.py)."""
from __future__ import annotations

import socket
import struct
from typing import Optional

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NFTA_GEN_ID = 1
_NLMSG = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (network order; 0 here)
_ATTR = struct.Struct("=HH")


def generation() -> Optional[int]:
    """The current generation, or None when nf_tables does not answer (not loaded, no netlink)."""
    request = _NLMSG.pack(_NLMSG.size + _NFGENMSG.size, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN,
                          NLM_F_REQUEST, 1, 0) + _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as sock:
            sock.settimeout(1.0)
            sock.bind((0, 0))
            sock.send(request)
            data = sock.recv(1 << 12)
    except OSError:
        return None
    return generation_of(data)


def generation_of(data: bytes) -> Optional[int]:
    """NFTA_GEN_ID of the NEWGEN message in a netlink answer (None for an error, or none there)."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            return None
        if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN:
            at, end = offset + _NLMSG.size + _NFGENMSG.size, offset + length
            while at + _ATTR.size <= end:
                size, attr = _ATTR.unpack_from(data, at)
                if size < _ATTR.size:
                    return None
                if attr & 0x3FFF == NFTA_GEN_ID and size >= _ATTR.size + 4:
                    return struct.unpack_from("!I", data, at + _ATTR.size)[0]
                at += (size + 3) & ~3
            return None
        if kind == NLMSG_ERROR:
            return None
        offset += (length + 3) & ~3
    return None
