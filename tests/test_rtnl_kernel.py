# SPDX-License-Identifier: GPL-2.0-only
"""hostinfo reads links and routes with its own rtnetlink dumps (ipt2xdp/rtnl.py); pyroute2, which
it used before, must read the same host context from the same kernel: devices of many kinds
(veth, bridge and port, macvlan, ifb: this kernel has no bond, vlan or dummy), local/broadcast/unicast/
blackhole/unreachable/prohibit routes, multipath and nexthop-object routes, routes with a TOS,
and routes of other tables."""
import ipaddress

import pytest

from ipt2xdp import netns
from ipt2xdp.hostinfo import (ALWAYS_LOCAL, AF_INET, RT_TABLE_LOCAL, RT_TABLE_MAIN, RTN_BROADCAST, RTN_LOCAL,
                              RTN_NAMES, Device, RouteType, read_host_context)

pytestmark = pytest.mark.kernel

SETUP = """
ip link add v0 type veth peer name v1
ip link add br0 type bridge
ip link set v1 master br0
ip link add w0 type veth peer name w1
ip link add link w0 name mv0 type macvlan
ip link add ifbx type ifb
for d in v0 v1 br0 w0 w1 mv0 ifbx; do ip link set $d up; done
ip addr add 10.50.0.1/24 dev v0
ip addr add 10.51.0.1/16 brd + dev br0
ip addr add 10.52.7.1/24 dev w0
ip addr add 10.53.0.1/24 dev mv0
ip addr add 192.0.2.9/32 dev w1
ip route add 198.51.100.0/24 nexthop via 10.50.0.2 dev v0 nexthop via 10.52.7.2 dev w0
ip nexthop add id 12 via 10.50.0.3 dev v0
ip route add 203.0.113.0/25 nhid 12
ip route add blackhole 203.0.113.128/26
ip route add unreachable 203.0.113.192/27
ip route add prohibit 203.0.113.224/28
ip route add 100.64.0.0/10 via 10.50.0.4 tos 0x10
ip route add 100.128.0.0/10 via 10.52.7.9 table 100
ip route add default via 10.50.0.254
ip route add local 172.20.0.0/16 dev lo
ip route add broadcast 10.50.0.128 dev v0 table local
ip route add multicast 239.1.0.0/16 dev v0 table main
"""


def pyroute2_host_context():
    """The links and routes part of read_host_context() as it was read through pyroute2."""
    from pyroute2 import IPRoute

    def first_oif(route) -> int:
        if route.get_attr("RTA_NH_ID"):  # never true: pyroute2 0.9 does not decode RTA_NH_ID
            return -1
        oif = route.get_attr("RTA_OIF")
        if oif:
            return oif
        hops = route.get_attr("RTA_MULTIPATH")
        return hops[0]["oif"] if hops else 0

    with IPRoute() as ipr:
        devices = []
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else ""
            devices.append(Device(link.get_attr("IFLA_IFNAME"), link["index"], kind or "",
                                  link.get_attr("IFLA_MASTER"), link.get_attr("IFLA_LINK")))
        local = set(ALWAYS_LOCAL)
        routes = []
        for table in (RT_TABLE_LOCAL, RT_TABLE_MAIN):
            for route in ipr.get_routes(table=table, family=AF_INET):
                network = ipaddress.IPv4Network(f"{route.get_attr('RTA_DST') or '0.0.0.0'}/{route['dst_len']}",
                                                strict=False)
                if table == RT_TABLE_LOCAL and route["type"] in (RTN_LOCAL, RTN_BROADCAST):
                    local.add(network)
                if route["tos"] == 0 and route["type"] < len(RTN_NAMES):
                    routes.append(RouteType(network, RTN_NAMES[route["type"]], first_oif(route), table))
    ordered = tuple(sorted(local, key=lambda n: (int(n.network_address), n.prefixlen)))
    return tuple(devices), ordered, tuple(routes)


@pytest.fixture
def host_ns():
    ns = netns.create_namespace("rtnl")
    try:
        ns.sh("set -e\n" + SETUP)
        yield ns
    finally:
        netns.delete_namespace(ns.name)


def test_own_rtnetlink_reader_reads_what_pyroute2_reads(host_ns):
    with host_ns.entered():
        ours = read_host_context(attached=("v0",))
        reference = pyroute2_host_context()
    assert (ours.devices, ours.local_destinations, ours.route_types) == reference
    kinds = {d.name: d.kind for d in ours.devices}
    assert kinds["br0"] == "bridge" and kinds["v0"] == "veth" and kinds["mv0"] == "macvlan" and kinds["lo"] == ""
    by_name = {d.name: d for d in ours.devices}
    assert by_name["v1"].master == by_name["br0"].ifindex and by_name["mv0"].link == by_name["w0"].ifindex
    oifs = {(r.network, r.table): r.oif for r in ours.route_types}
    assert oifs[(ipaddress.IPv4Network("203.0.113.0/25"), RT_TABLE_MAIN)] == by_name["v0"].ifindex  # nexthop object
    assert oifs[(ipaddress.IPv4Network("198.51.100.0/24"), RT_TABLE_MAIN)] == by_name["v0"].ifindex  # first hop
    assert ipaddress.IPv4Network("172.20.0.0/16") in ours.local_destinations
    assert not any(r.network == ipaddress.IPv4Network("100.64.0.0/10") for r in ours.route_types)  # TOS route
    assert not any(r.network == ipaddress.IPv4Network("100.128.0.0/10") for r in ours.route_types)  # table 100


def test_many_links_and_routes_span_several_dump_messages(host_ns):
    script = "\n".join([f"ip link add x{i} type veth peer name y{i}" for i in range(150)] +
                       [f"ip route add 10.{100 + i // 250}.{i % 250}.0/24 dev lo" for i in range(1200)])
    host_ns.run(["ip", "-batch", "-"], input=script.replace("ip ", "") + "\n")
    with host_ns.entered():
        ours = read_host_context()
        reference = pyroute2_host_context()
    assert len(ours.devices) > 300 and len(ours.route_types) > 1200
    assert (ours.devices, ours.local_destinations, ours.route_types) == reference


def test_nexthop_object_routes_without_compat_attributes_read_alike(host_ns):
    """With nexthop_compat_mode=0 the kernel sends only RTA_NH_ID for such routes: both readers
    then see no nexthop device (0), as before."""
    host_ns.run(["sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0"])
    with host_ns.entered():
        ours = read_host_context()
        reference = pyroute2_host_context()
    assert (ours.devices, ours.local_destinations, ours.route_types) == reference
    oifs = {(r.network, r.table): r.oif for r in ours.route_types}
    assert oifs[(ipaddress.IPv4Network("203.0.113.0/25"), RT_TABLE_MAIN)] == 0
