# SPDX-License-Identifier: GPL-2.0-only
"""What the planner must know about the host of the current network namespace, read via pyroute2.

The planner itself is pure: it takes a HostContext value, so tests can hand it any host they like.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional, Tuple

RTN_LOCAL = 2
RTN_BROADCAST = 3
AF_INET = 2

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
class HostContext:
    devices: Tuple[Device, ...] = ()
    # Destinations whose packets go to filter/INPUT: routes of type local and broadcast, plus multicast.
    local_destinations: Tuple[ipaddress.IPv4Network, ...] = ALWAYS_LOCAL
    forwarding: bool = False
    attached: Tuple[str, ...] = field(default=())  # names of the devices XDP will be attached to

    def device(self, name: str) -> Optional[Device]:
        return next((d for d in self.devices if d.name == name), None)

    def with_attached(self, names) -> "HostContext":
        return HostContext(self.devices, self.local_destinations, self.forwarding, tuple(names))


def _read_forwarding() -> bool:
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip() == "1"
    except OSError:
        return True  # unknown: assume the worst (traffic may be forwarded)


def read_host_context(attached=()) -> HostContext:
    """Read devices, local destinations and the forwarding switch of the current network namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        devices = []
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else ""
            devices.append(Device(link.get_attr("IFLA_IFNAME"), link["index"], kind or "",
                                  link.get_attr("IFLA_MASTER"), link.get_attr("IFLA_LINK")))
        local = set(ALWAYS_LOCAL)
        for route in ipr.get_routes(table=255, family=AF_INET):
            if route["type"] in (RTN_LOCAL, RTN_BROADCAST):
                dst = route.get_attr("RTA_DST")
                local.add(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
    ordered = tuple(sorted(local, key=lambda n: (int(n.network_address), n.prefixlen)))
    return HostContext(tuple(devices), ordered, _read_forwarding(), tuple(attached))
