# SPDX-License-Identifier: GPL-2.0-only
"""What makes `ipt2xdp watch` re-import: one Trigger per kind of change the plan depends on.

A trigger is either an event source (fileno() is readable when something may have changed) or a
poll source (poll_interval seconds between check() calls), or both. check() says what changed
since the last check() or rebase(); the watcher calls check() just before it reads the ruleset
for a re-import (what it reports tells which cached host facts to read again, watch/warm.py), so
a change that lands after it is reported again on the next check (a needless re-import at worst,
never a missed one). rebase() forgets what changed without saying what.

Built in: nf_tables notifications, the legacy tables' digest (legacy sends no notification), the
host facts the planner reads (devices, their names and masters, local addresses: rtnetlink; the
forwarding and conntrack sysctls: polled every 2 s; the tc ingress hooks: notified and polled).
Other parts of ipt2xdp add their own with register(): a mirror kept elsewhere that exposes an
invalidation counter needs only

    triggers.register("ipset", lambda: triggers.CounterTrigger("ipset", read_counter, 1.0))

in a module listed in PLUGIN_MODULES.
"""
from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, List, Optional

from ipt2xdp.nftgen import NFT_MSG_NEWGEN
from ipt2xdp.nftlist import NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES
from ipt2xdp.rtnl import _HEADER, NETLINK_ROUTE

# Modules imported by the watcher before it builds its triggers; each calls register() on import.
PLUGIN_MODULES: List[str] = []


@dataclass(frozen=True)
class Change:
    source: str
    detail: str
    # Whether the change may make netfilter accept something the loaded plan drops. Unsure is True:
    # the watcher then makes XDP defer everything until the re-import.
    relaxing: bool = True


class Trigger:
    name = "trigger"
    poll_interval: Optional[float] = None

    def fileno(self) -> Optional[int]:
        return None

    def check(self) -> List[Change]:
        return []

    def rebase(self) -> None:
        pass

    def close(self) -> None:
        pass


_FACTORIES: Dict[str, Callable[[], Optional[Trigger]]] = {}


def register(name: str, factory: Callable[[], Optional[Trigger]]) -> None:
    """Add a kind of trigger; factory() returns it, or None when it does not apply on this host."""
    _FACTORIES[name] = factory


def build(names: Optional[List[str]] = None) -> List[Trigger]:
    import importlib

    for module in PLUGIN_MODULES:
        importlib.import_module(module)
    built = []
    for name, factory in _FACTORIES.items():
        if names is None or name in names:
            trigger = factory()
            if trigger is not None:
                built.append(trigger)
    return built


# ------------------------------------------------------------------------------------- polling

class CounterTrigger(Trigger):
    """Re-import when read() returns something else than at the last rebase (a generation counter,
    a digest, a file's mtime...)."""

    def __init__(self, name: str, read: Callable[[], Hashable], interval: float, relaxing: bool = True):
        self.name = name
        self.poll_interval = interval
        self._read = read
        self._relaxing = relaxing
        self._last = read()

    def check(self) -> List[Change]:
        now = self._read()
        if now == self._last:
            return []
        before, self._last = self._last, now
        return [Change(self.name, self.detail(before, now), self._relaxing)]

    def detail(self, before, now) -> str:
        return f"{before} -> {now}"

    def rebase(self) -> None:
        self._last = self._read()


# Measured at 10k legacy rules (python -m bench.legacy_poll): one digest costs 8-14 ms of CPU, so a
# one-second poll costs under 1.5% of one CPU and bounds how long a legacy change goes unseen.
LEGACY_POLL_SECONDS = 1.0
SYSCTL_POLL_SECONDS = 2.0


def legacy_trigger() -> Trigger:
    from ipt2xdp.watch import legacydigest

    return CounterTrigger("legacy", legacydigest.digest, LEGACY_POLL_SECONDS)


SYSCTLS = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/netfilter/nf_conntrack_checksum",
           "/proc/sys/net/netfilter/nf_conntrack_tcp_loose", "/proc/sys/net/netfilter/nf_conntrack_helper")


def _sysctls() -> tuple:
    values = []
    for path in SYSCTLS:
        try:
            with open(path) as f:
                values.append(f.read().strip())
        except OSError:
            values.append(None)
    return tuple(values)


# ----------------------------------------------------------------------------- netlink events

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFT_MSG_NAMES = {0: "NEWTABLE", 2: "DELTABLE", 3: "NEWCHAIN", 5: "DELCHAIN", 6: "NEWRULE", 8: "DELRULE",
                 9: "NEWSET", 11: "DELSET", 12: "NEWSETELEM", 14: "DELSETELEM", 18: "NEWOBJ", 20: "DELOBJ",
                 22: "NEWFLOWTABLE", 24: "DELFLOWTABLE", 26: "DESTROYTABLE", 27: "DESTROYCHAIN",
                 28: "DESTROYRULE", 29: "DESTROYSET", 30: "DESTROYSETELEM", 31: "DESTROYOBJ",
                 32: "DESTROYFLOWTABLE"}
# nf_tables families whose rules never see an IPv4 packet: ip6 and arp.
IRRELEVANT_FAMILIES = {10: "ip6", 3: "arp"}


def _netlink_socket(protocol: int, groups: int = 0, memberships=()) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, groups))
        for group in memberships:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except BaseException:
        sock.close()
        raise
    return sock


def _drain(sock: socket.socket):
    """Every pending message as (type, payload); ('overrun', b'') when the kernel dropped some."""
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno == errno.ENOBUFS:  # notifications were lost: assume anything changed
                yield "overrun", b""
                continue
            raise
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                break
            yield kind, data[offset + _HEADER.size:offset + length]
            offset += (length + 3) & ~3


class NftTrigger(Trigger):
    """nf_tables change notifications (what `nft monitor` and iptables-nft users see)."""

    name = "nftables"

    def __init__(self):
        self._sock = _netlink_socket(NETLINK_NETFILTER, memberships=(NFNLGRP_NFTABLES,))

    def fileno(self) -> Optional[int]:
        return self._sock.fileno()

    def check(self) -> List[Change]:
        what: Dict[str, int] = {}
        for kind, payload in _drain(self._sock):
            if kind == "overrun":
                what["notifications lost"] = what.get("notifications lost", 0) + 1
                continue
            if kind >> 8 != NFNL_SUBSYS_NFTABLES or (kind & 0xFF) == NFT_MSG_NEWGEN:
                continue
            family = payload[0] if payload else 0
            if family in IRRELEVANT_FAMILIES:
                continue
            label = NFT_MSG_NAMES.get(kind & 0xFF, f"message {kind & 0xFF}")
            what[label] = what.get(label, 0) + 1
        if not what:
            return []
        return [Change(self.name, ", ".join(f"{n} x{c}" for n, c in sorted(what.items())))]

    def rebase(self) -> None:
        for _ in _drain(self._sock):  # the coming read covers every change notified so far
            pass

    def close(self) -> None:
        self._sock.close()


RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255


def host_facts() -> tuple:
    """What the planner reads about this namespace through rtnetlink (hostinfo.read_host_context):
    device names, kinds, masters and lower devices; the routes of tables local and main (local
    and broadcast destinations, and the route types -m addrtype reads)."""
    from ipt2xdp import rtnl

    links = sorted((l.index, l.name, l.kind, l.master, l.link) for l in rtnl.links())
    routes = sorted((r.table, r.type, r.dst, r.dst_len, r.tos, r.nh_id, r.oif, r.first_hop_oif or 0)
                    for r in rtnl.ipv4_routes() if r.table in (RT_TABLE_MAIN, RT_TABLE_LOCAL))
    return tuple(links), tuple(routes)


class HostTrigger(Trigger):
    """Device and address changes (rtnetlink). Every message only prompts a fresh read of the
    facts; a change is reported only when they differ (operstate flaps and statistics updates
    leave them alone)."""

    name = "host"

    def __init__(self, facts: Callable[[], tuple] = host_facts):
        self._facts = facts
        self._sock = _netlink_socket(NETLINK_ROUTE, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE)
        self._last = facts()
        # Every rtnetlink message drained so far: the watcher's cached host facts (watch/warm.py)
        # are read again once this moves, whatever the message was.
        self.messages = 0

    def fileno(self) -> Optional[int]:
        return self._sock.fileno()

    def _drained(self) -> int:
        count = sum(1 for _ in _drain(self._sock))
        self.messages += count
        return count

    def check(self) -> List[Change]:
        if not self._drained():  # called without an event (a wrapper's sync): nothing changed
            return []
        now = self._facts()
        if now == self._last:
            return []
        labels = ("devices", "local addresses or routes")
        changed = [label for label, a, b in zip(labels, self._last, now) if a != b]
        self._last = now
        return [Change(self.name, ", ".join(changed) + " changed")]

    def rebase(self) -> None:
        if self._drained():
            self._last = self._facts()

    def close(self) -> None:
        self._sock.close()


RTMGRP_TC = 0x8
TC_POLL_SECONDS = 2.0


def tc_state() -> tuple:
    """(device, what its tc ingress hook holds) for every device whose hook is not empty."""
    from ipt2xdp import rtnl, tcingress

    qdiscs = rtnl.ingress_qdisc_devices()  # one dump instead of a filter dump per device
    return tuple((link.name, held) for link in sorted(rtnl.links(), key=lambda link: link.name)
                 for held in [tcingress.hook_contents(link.index, qdiscs)] if held)


class TcTrigger(CounterTrigger):
    """Filters and programs on the devices' tc ingress hooks (ipt2xdp.tcingress), polled like a
    counter because tcx attachments send no notification; qdisc and filter changes, which do,
    wake it at once."""

    def __init__(self, state: Callable[[], tuple] = tc_state):
        self._sock = _netlink_socket(NETLINK_ROUTE, RTMGRP_TC)
        super().__init__("tc", state, TC_POLL_SECONDS)

    def fileno(self) -> Optional[int]:
        return self._sock.fileno()

    def check(self) -> List[Change]:
        for _ in _drain(self._sock):
            pass
        return super().check()

    def detail(self, before, now) -> str:
        return "tc ingress filters or programs changed"

    def rebase(self) -> None:
        for _ in _drain(self._sock):
            pass
        super().rebase()

    def close(self) -> None:
        self._sock.close()


register("nftables", NftTrigger)
register("legacy", legacy_trigger)
register("host", HostTrigger)
register("tc", TcTrigger)
# The forwarding and conntrack sysctls send no notification: a few small reads per poll.
register("sysctl", lambda: CounterTrigger("sysctl", _sysctls, SYSCTL_POLL_SECONDS))

__all__ = ["Change", "Trigger", "CounterTrigger", "NftTrigger", "HostTrigger", "TcTrigger", "register", "build",
           "PLUGIN_MODULES"]
