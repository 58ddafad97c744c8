# SPDX-License-Identifier: GPL-2.0-only
"""The route check before a DROP (delivered_locally in bpf/ipt2xdp.bpf.c), with BPF_PROG_TEST_RUN
in a namespace whose routes the test sets: a destination the kernel would forward is passed (and
counted as not_local, not by the rule), one it delivers locally or cannot route is dropped."""
import pytest

from ipt2xdp.classifier import ACCEPT, DROP, ClassifierRule, IntervalSet, Match
from ipt2xdp.compile import compile
from tests.bpf.packets import tcp, udp

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
RULE = 7
# One rule drops everything to TCP port 22 and UDP 5353; BPF_PROG_TEST_RUN's ingress device is lo.
RULES = [ClassifierRule(Match(dport=IntervalSet.single(22)), DROP, RULE),
         ClassifierRule(Match(dport=IntervalSet.single(5353)), DROP, RULE + 1)]


@pytest.fixture(scope="module")
def routed(routing_namespace, dataplane):
    ns = routing_namespace
    ns.sh("ip link add d0 type veth peer name d1 && ip link set d1 up && ip link set d0 up && ip addr add 10.9.0.1/24 dev d0 && "
          "ip addr add 192.0.2.1/32 dev d0 && ip route add 198.51.100.0/24 via 10.9.0.2 && "
          "ip route add blackhole 203.0.113.0/24 && ip route add 224.0.0.0/4 via 10.9.0.2")
    dataplane.apply_generation(compile(RULES, ACCEPT))
    return ns


def _forwarding(ns, on: bool) -> None:
    ns.run(["sysctl", "-qw", f"net.ipv4.conf.all.forwarding={int(on)}"])


def _run(dp, packet):
    """(verdict, rise of the rule's counter, rise of the not_local stat)."""
    counters, stats = dp.read_counters(), dp.read_stats()
    verdict, _ = dp.test_run(packet)
    after, after_stats = dp.read_counters(), dp.read_stats()
    rule = after.get(RULE, (0, 0))[0] - counters.get(RULE, (0, 0))[0]
    return verdict, rule, after_stats["not_local"] - stats["not_local"]


CASES = [
    # forwarding on: only a forwarded destination escapes the DROP
    ("local address", "192.0.2.1", True, (XDP_DROP, 1, 0)),
    ("subnet broadcast (a broadcast route)", "10.9.0.255", True, (XDP_DROP, 1, 0)),
    ("no route at all: the stack drops it", "8.8.8.8", True, (XDP_DROP, 1, 0)),
    ("routed elsewhere: filter/FORWARD decides", "198.51.100.7", True, (XDP_PASS, 0, 1)),
    ("blackhole route: the stack drops it, XDP need not", "203.0.113.5", True, (XDP_PASS, 0, 1)),
    ("multicast keeps the planner's view despite a route", "224.0.0.251", True, (XDP_DROP, 1, 0)),
    ("limited broadcast keeps the planner's view", "255.255.255.255", True, (XDP_DROP, 1, 0)),
    # forwarding off: nothing is forwarded, a removed address is dropped by the stack
    ("forwarding off: a routed destination", "198.51.100.7", False, (XDP_DROP, 1, 0)),
    ("forwarding off: local address", "192.0.2.1", False, (XDP_DROP, 1, 0)),
]


@pytest.mark.parametrize("description,dst,forwarding,expected", CASES, ids=[c[0] for c in CASES])
def test_drop_asks_the_route(routed, dataplane, description, dst, forwarding, expected):
    _forwarding(routed, forwarding)
    assert _run(dataplane, tcp("10.1.1.1", 22, dst=dst)) == expected, description


def test_accept_never_asks(routed, dataplane):
    """Only the DROP path pays for the lookup: an ACCEPT is a pass either way and counts."""
    _forwarding(routed, True)
    stats = dataplane.read_stats()
    assert dataplane.test_run(tcp("10.1.1.1", 80, dst="198.51.100.7"))[0] == XDP_PASS
    assert dataplane.read_stats()["not_local"] == stats["not_local"]
    assert dataplane.read_stats()["classified"] == stats["classified"] + 1


def test_policy_routing_counts(routed, dataplane):
    """A policy rule that sends port 5353 to another table is honoured (no BPF_FIB_LOOKUP_DIRECT):
    the lookup carries the packet's protocol and ports."""
    _forwarding(routed, True)
    routed.sh("ip route add 192.0.2.1/32 via 10.9.0.2 table 100 && "
              "ip rule add pref 10 ipproto udp dport 5353 lookup 100 && "
              "ip rule del pref 0 && ip rule add pref 20 lookup local")
    try:
        assert _run(dataplane, udp("10.1.1.1", 5353, dst="192.0.2.1"))[0] == XDP_PASS
        assert _run(dataplane, tcp("10.1.1.1", 22, dst="192.0.2.1")) == (XDP_DROP, 1, 0)
    finally:
        routed.sh("ip rule del pref 10; ip rule add pref 0 lookup local; ip rule del pref 20", check=False)


@pytest.mark.parametrize("all_on,device_on,expected", [
    (True, False, (XDP_DROP, 1, 0)),  # the stack never forwards from this device
    (False, True, (XDP_PASS, 0, 1)),  # it forwards from this device: filter/FORWARD decides
], ids=["all on, ingress device off", "all off, ingress device on"])
def test_ingress_device_forwarding_decides(routed, dataplane, all_on, device_on, expected):
    """The program reads the ingress device's own forwarding flag, as the stack and the helper do
    (IN_DEV_FORWARD), not the namespace-wide one: a routed destination is dropped only when that
    device does not forward. BPF_PROG_TEST_RUN's ingress device is lo."""
    _forwarding(routed, all_on)
    routed.run(["sysctl", "-qw", f"net.ipv4.conf.lo.forwarding={int(device_on)}"])
    try:
        assert _run(dataplane, tcp("10.1.1.1", 22, dst="198.51.100.7")) == expected
    finally:
        _forwarding(routed, False)
