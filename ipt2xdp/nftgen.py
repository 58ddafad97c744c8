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

from ipt2xdp.nftlist import NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES
from ipt2xdp.rtnl import _HEADER, NLM_F_REQUEST, NLMSG_ERROR, _attrs

NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFTA_GEN_ID = 1
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (network order; 0 here)


def generation() -> Optional[int]:
    """The current generation, or None when nf_tables does not answer (not loaded, no netlink)."""
    request = _HEADER.pack(_HEADER.size + _NFGENMSG.size, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN,
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
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return None
        if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN:
            for attr, value in _attrs(data, offset + _HEADER.size + _NFGENMSG.size, offset + length):
                if attr == NFTA_GEN_ID and len(value) >= 4:
                    return struct.unpack_from("!I", value)[0]
            return None
        if kind == NLMSG_ERROR:
            return None
        offset += (length + 3) & ~3
    return None
