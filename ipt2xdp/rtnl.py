# SPDX-License-Identifier: GPL-2.0-only
"""The rtnetlink dumps the planner's host context needs (links, IPv4 routes, tc ingress filters), read
directly.

pyroute2 gives the same records, but importing it costs 0.2-0.5 s, which every `ipt2xdp import`
and every re-plan of the iptables wrapper paid before reading a few dozen attributes. Only the
attributes hostinfo uses are decoded; tests/test_rtnl_kernel.py compares both readers.

RTA_NH_ID is decoded but hostinfo does not use it yet: pyroute2 0.9 never decoded it, so its
"nexthop object: device unknown" branch was never taken, and a route via a nexthop object was read
by its RTA_OIF / RTA_MULTIPATH (which the kernel adds with net.ipv4.nexthop_compat_mode=1, the
default). Reading it now would change plans; that is a decision of its own.
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Set, Tuple

NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_GETLINK, RTM_NEWROUTE, RTM_GETROUTE = 16, 18, 24, 26
RTM_NEWQDISC, RTM_GETQDISC, RTM_NEWTFILTER, RTM_GETTFILTER = 36, 38, 44, 46
TCA_KIND = 1
# The ingress hook's filters, named alike on an ingress qdisc and on a clsact one (whose ffff: alone
# names no block): TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS).
TC_INGRESS_PARENT = 0xFFFFFFF2
IFLA_IFNAME, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 5, 10, 18, 1
RTA_DST, RTA_OIF, RTA_MULTIPATH, RTA_TABLE, RTA_NH_ID = 1, 4, 9, 15, 30
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

_HEADER = struct.Struct("=IHHII")       # struct nlmsghdr
_ATTR = struct.Struct("=HH")            # struct rtattr
_IFINFO = struct.Struct("=BxHiII")      # struct ifinfomsg
_RTMSG = struct.Struct("=BBBBBBBBI")    # struct rtmsg
_TCMSG = struct.Struct("=BxxxiIII")     # struct tcmsg
_U32 = struct.Struct("=I")
_NEXTHOP = struct.Struct("=HBBi")       # struct rtnexthop
RECV_BUFFER = 1 << 18


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str              # IFLA_INFO_KIND, "" without one
    master: Optional[int]  # IFLA_MASTER
    link: Optional[int]    # IFLA_LINK


@dataclass(frozen=True)
class Route:
    dst: str          # RTA_DST as a dotted quad, "0.0.0.0" without one
    dst_len: int
    tos: int
    table: int        # RTA_TABLE (rtm_table without it)
    type: int         # rtm_type
    nh_id: int        # RTA_NH_ID (the nexthop is an object), 0 without one
    oif: int          # RTA_OIF, 0 without it
    first_hop_oif: Optional[int]  # rtnh_ifindex of RTA_MULTIPATH's first hop; None without hops


def _attrs(data: bytes, offset: int, end: int) -> Iterator[Tuple[int, bytes]]:
    while offset + 4 <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < 4:
            break
        yield kind & NLA_TYPE_MASK, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def _dump(message_type: int, body: bytes, protocol: int = NETLINK_ROUTE) -> Iterator[Tuple[int, bytes]]:
    """(type, payload) of every message of one NLM_F_DUMP request (rtnetlink unless protocol says)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol) as sock:
        sock.bind((0, 0))
        seq = 1
        sock.send(_HEADER.pack(_HEADER.size + len(body), message_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        while True:
            data, _, flags, _ = sock.recvmsg(RECV_BUFFER)
            if flags & socket.MSG_TRUNC:
                raise OSError(f"netlink dump {message_type}: a message did not fit {RECV_BUFFER} bytes")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, message_seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise OSError(f"netlink dump {message_type}: malformed message")
                payload = data[offset + _HEADER.size:offset + length]
                offset += (length + 3) & ~3
                if message_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", payload)[0]
                    if error:
                        raise OSError(error, f"netlink dump {message_type}: {os.strerror(error)}")
                    continue
                yield kind, payload


def links() -> List[Link]:
    """Every device of the current network namespace, in the kernel's dump order."""
    out = []
    for kind, payload in _dump(RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if kind != RTM_NEWLINK:
            continue
        index = _IFINFO.unpack_from(payload)[2]
        attrs: Dict[int, bytes] = dict(_attrs(payload, _IFINFO.size, len(payload)))
        info = attrs.get(IFLA_LINKINFO)
        link_kind = ""
        if info is not None:
            kind_value = dict(_attrs(info, 0, len(info))).get(IFLA_INFO_KIND)
            link_kind = _text(kind_value) if kind_value is not None else ""
        out.append(Link(index, _text(attrs.get(IFLA_IFNAME, b"")), link_kind,
                        _u32(attrs.get(IFLA_MASTER)), _u32(attrs.get(IFLA_LINK))))
    return out


def ipv4_routes() -> List[Route]:
    """Every IPv4 route of every table, in the kernel's dump order."""
    out = []
    for kind, payload in _dump(RTM_GETROUTE, _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
        if kind != RTM_NEWROUTE:
            continue
        family, dst_len, _, tos, table, _, _, route_type, _ = _RTMSG.unpack_from(payload)
        if family != socket.AF_INET:
            continue
        attrs = dict(_attrs(payload, _RTMSG.size, len(payload)))
        dst = attrs.get(RTA_DST)
        hops = attrs.get(RTA_MULTIPATH)
        first_hop = _NEXTHOP.unpack_from(hops)[3] if hops is not None and len(hops) >= _NEXTHOP.size else None
        out.append(Route(socket.inet_ntoa(dst) if dst else "0.0.0.0", dst_len, tos,
                         _u32(attrs.get(RTA_TABLE)) or table, route_type, _u32(attrs.get(RTA_NH_ID)) or 0,
                         _u32(attrs.get(RTA_OIF)) or 0, first_hop))
    return out


def ingress_qdisc_devices() -> Set[int]:
    """The ifindexes of the devices with an ingress or clsact qdisc (one dump for all of them):
    only those can hold tc ingress filters."""
    out = set()
    for kind, payload in _dump(RTM_GETQDISC, _TCMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if kind == RTM_NEWQDISC:
            attrs = dict(_attrs(payload, _TCMSG.size, len(payload)))
            if _text(attrs.get(TCA_KIND, b"")) in ("ingress", "clsact"):
                out.add(_TCMSG.unpack_from(payload)[1])
    return out


def ingress_filter_kinds(ifindex: int) -> Tuple[str, ...]:
    """The classifier kinds ("u32", "bpf", "flower"...) of the filters on a device's tc ingress hook
    (its ingress or clsact qdisc's ingress block); () without such a qdisc or filter."""
    kinds = set()
    request = _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, TC_INGRESS_PARENT, 0)
    for kind, payload in _dump(RTM_GETTFILTER, request):
        if kind == RTM_NEWTFILTER:
            attrs = dict(_attrs(payload, _TCMSG.size, len(payload)))
            kinds.add(_text(attrs.get(TCA_KIND, b"")) or "unnamed")
    return tuple(sorted(kinds))


def _u32(value: Optional[bytes]) -> Optional[int]:
    return _U32.unpack_from(value)[0] if value is not None and len(value) >= 4 else None


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")
