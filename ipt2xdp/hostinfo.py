# SPDX-License-Identifier: GPL-2.0-only
"""What the planner must know about the host of the current network namespace (rtnetlink, sysctls).

The planner itself is pure: it takes a HostContext value, so tests can hand it any host they like.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:
    from ipt2xdp.foreign import Foreign
    from ipt2xdp.ipsets import IpSet

RTN_LOCAL = 2
RTN_BROADCAST = 3
AF_INET = 2
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
RTN_NAMES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE", "UNREACHABLE",
             "PROHIBIT", "THROW", "NAT", "XRESOLVE")  # rtm_type values, as -m addrtype names them

# Destinations the stack delivers locally without a route entry of type local or broadcast.
ALWAYS_LOCAL = (ipaddress.IPv4Network("224.0.0.0/4"), ipaddress.IPv4Network("255.255.255.255/32"))


@dataclass(frozen=True)
class Device:
    name: str
    ifindex: int
    kind: str = ""               # "veth", "bridge", "bond", "vlan", ... ("" for physical devices)
    master: Optional[int] = None  # ifindex of the bridge or bond this device is enslaved to
    link: Optional[int] = None    # ifindex of the lower device (vlan, macvlan, ipvlan, veth peer)


@dataclass(frozen=True)
class RouteType:
    """A route of table local or main, as -m addrtype's lookup (inet_addr_type) may find it."""

    network: ipaddress.IPv4Network
    kind: str    # RTN_NAMES
    oif: int     # the device of its (first) nexthop; 0 without one, -1 unknown
    table: int   # RT_TABLE_LOCAL or RT_TABLE_MAIN


@dataclass(frozen=True)
class HostContext:
    devices: Tuple[Device, ...] = ()
    # Destinations whose packets go to filter/INPUT: routes of type local and broadcast, plus multicast.
    local_destinations: Tuple[ipaddress.IPv4Network, ...] = ALWAYS_LOCAL
    forwarding: bool = False
    attached: Tuple[str, ...] = field(default=())  # names of the devices XDP will be attached to
    # Conntrack facts that decide what state a packet without a conntrack entry gets (defaults are
    # the cautious ones; read_host_context() reads the namespace's sysctls):
    ct_checksum: bool = True    # net.netfilter.nf_conntrack_checksum: bad L4 checksums make INVALID
    ct_tcp_loose: bool = True   # net.netfilter.nf_conntrack_tcp_loose: mid-stream TCP pickup is NEW
    # Whether something outside the iptables ruleset may assign conntrack helpers, whose
    # expectations make a packet without an entry RELATED (nf_conntrack_helper=1 on kernels < 6.0,
    # nftables `ct helper`, or unknown). Helpers assigned by `-t raw -j CT --helper` are seen in the
    # ruleset by the planner itself.
    ct_external_helpers: bool = True
    # Routes of tables local and main (TOS 0) for -m addrtype; None: not known, addrtype is unknown.
    route_types: Optional[Tuple[RouteType, ...]] = None
    # The ipsets `-m set` rules read (ipsets.read_sets), or None when they were not read: then every
    # set match stays unknown. Left out of comparisons and repr (so of drift.host_digest): a set may
    # hold 100k members, and its changes are the set guard's business, not drift's.
    ipsets: Optional[Tuple["IpSet", ...]] = field(default=None, compare=False, repr=False)
    # Hooks outside the planned ruleset that see packets before filter/INPUT: native nftables base
    # chains and the other iptables backend's tables (ipt2xdp.foreign). None: not read (a host
    # made by hand, as in unit tests). In repr, so drift.host_digest notices such tables appear.
    foreign: Optional["Foreign"] = None

    def ipset(self, name: str) -> Optional["IpSet"]:
        return next((s for s in self.ipsets or () if s.name == name), None)

    def device(self, name: str) -> Optional[Device]:
        return next((d for d in self.devices if d.name == name), None)

    def masters(self, device: Device) -> Tuple[Optional[Device], ...]:
        """The devices above device, nearest first: its master, that one's master, and so on (a
        bond slave's bond may itself be a bridge port, an OVS port or a VRF slave). Ends with None
        where a master is not among the devices: unknown, so never taken as "no master"."""
        by_index = {d.ifindex: d for d in self.devices}
        above: list = []
        while device.master is not None and all(d is None or d.ifindex != device.master for d in above):
            device = by_index.get(device.master)
            above.append(device)
            if device is None:
                break
        return tuple(above)

    def with_attached(self, names) -> "HostContext":
        return replace(self, attached=tuple(names))


def _read_forwarding() -> bool:
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip() == "1"
    except OSError:
        return True  # unknown: assume the worst (traffic may be forwarded)


def _read_sysctl(name: str) -> Optional[str]:
    try:
        with open(f"/proc/sys/net/netfilter/{name}") as f:
            return f.read().strip()
    except OSError:
        return None


def _external_helpers(nft_document, nft_text: str) -> bool:
    """Whether conntrack helpers may be assigned outside iptables (then expectations may exist):
    automatic assignment, or an nftables `ct helper` object or statement (its JSON key). The
    document is foreign.read_nft_json()'s: None when nftables could not be read."""
    if _read_sysctl("nf_conntrack_helper") == "1":  # automatic assignment (kernels before 6.0)
        return True
    if nft_document is None:
        return True  # nftables rules cannot be read: a `ct helper` there cannot be ruled out
    return '"ct helper"' in nft_text


def read_host_context(attached=(), backend: Optional[str] = None, planned_tables=None) -> HostContext:
    """Read devices, local destinations, the forwarding switch and the hooks outside the planned
    ruleset (backend: the one the plan reads, "legacy" or "nft"; None: the active one;
    planned_tables: the names of the planned ruleset's tables, see read_netfilter_facts)."""
    from ipt2xdp import rtnl

    devices = [Device(link.name, link.index, link.kind, link.master, link.link) for link in rtnl.links()]
    local = set(ALWAYS_LOCAL)
    routes = []
    dumped = rtnl.ipv4_routes()
    for table in (RT_TABLE_LOCAL, RT_TABLE_MAIN):
        for route in dumped:
            if route.table != table:
                continue
            network = ipaddress.IPv4Network(f"{route.dst}/{route.dst_len}", strict=False)
            if table == RT_TABLE_LOCAL and route.type in (RTN_LOCAL, RTN_BROADCAST):
                local.add(network)
            if route.tos == 0 and route.type < len(RTN_NAMES):
                routes.append(RouteType(network, RTN_NAMES[route.type], _first_oif(route), table))
    ordered = tuple(sorted(local, key=lambda n: (int(n.network_address), n.prefixlen)))
    if backend is None:
        from ipt2xdp.backend import active_backend

        backend = active_backend()
    helpers, foreign = read_netfilter_facts(backend, devices, attached, planned_tables)
    return HostContext(tuple(devices), ordered, _read_forwarding(), tuple(attached),
                       ct_checksum=_read_sysctl("nf_conntrack_checksum") != "0",
                       ct_tcp_loose=_read_sysctl("nf_conntrack_tcp_loose") != "0",
                       ct_external_helpers=helpers, route_types=tuple(routes), foreign=foreign)


def read_netfilter_facts(backend: str, devices, attached, planned_tables=None, other=None):
    """(ct_external_helpers, foreign) from one `nft -j` listing and the other backend's tables: the
    host facts an nf_tables or legacy-table change can move. planned_tables: the names of the
    planned ruleset's tables when planning from iptables-nft (its tables are then not listed: see
    foreign.read_netfilter; None lists them too, which gives a Foreign that compares unequal);
    other: the other backend's (text, tables) when known to be unchanged."""
    from ipt2xdp.foreign import read_netfilter

    nft, foreign = read_netfilter(backend, devices, attached, planned_tables, other)  # one listing for both
    return _external_helpers(nft[0], nft[2]), foreign


def _first_oif(route) -> int:
    """The device of a route's first nexthop, as inet_dev_addr_type compares it; 0 without one.
    (A route via a nexthop object counts by the RTA_OIF / RTA_MULTIPATH the kernel adds for it,
    as it did when pyroute2 read the routes: see rtnl.py.)"""
    if route.oif:
        return route.oif
    return route.first_hop_oif or 0
