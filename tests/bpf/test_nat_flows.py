# SPDX-License-Identifier: GPL-2.0-only
"""Drops where conntrack may hold NATed flows (gen_config.nat_new & abi.NAT_FLOWS): the program
drops only TCP/UDP without a conntrack entry, and passes a packet of a known flow (PREROUTING may
rewrite it: the reply to a masqueraded connection goes to the container) and every protocol
bpf_xdp_ct_lookup cannot look up. The traffic case with a real MASQUERADE:
tests/test_nat_flows_kernel.py."""
import pytest

from ipt2xdp import abi
from ipt2xdp.classifier import ACCEPT, DROP, ClassifierRule, IntervalSet, Match
from ipt2xdp.compile import compile
from tests.bpf.packets import icmp, proto, tcp, udp

XDP_DROP, XDP_PASS = 1, 2
RULE = 7
CLASSIFIED = Match(proto=frozenset({1, 6, 17, 47}))   # decided by the class bitmaps
FAST = Match(src=IntervalSet.single(0x01020304))      # decided by the blocklist fast path


def _run(dataplane, nat_new, packet, match):
    tables = compile([ClassifierRule(match, DROP, RULE)], ACCEPT, nat_new=nat_new)
    assert bool(tables.fast_path and tables.fast_path.plens) == (match is FAST)
    dataplane.apply_generation(tables)
    before = dataplane.read_stats()["nat_flow"]
    got, _ = dataplane.test_run(packet, ingress_ifindex=1)
    counted = {k for k, v in dataplane.read_counters().items() if v[0]}
    return got, counted, dataplane.read_stats()["nat_flow"] - before


@pytest.fixture
def known_flow(routing_namespace):
    """A UDP flow 1.2.3.4:40000 -> 192.0.2.1:53 in conntrack (tests/bpf/packets.udp's tuple)."""
    routing_namespace.run(["conntrack", "-I", "-p", "udp", "-s", "1.2.3.4", "-d", "192.0.2.1", "--sport", "40000",
                           "--dport", "53", "-t", "60", "-u", "SEEN_REPLY"])
    yield
    routing_namespace.run(["conntrack", "-F"], check=False)


@pytest.mark.parametrize("match", [CLASSIFIED, FAST], ids=["classified", "fast path"])
def test_a_packet_of_a_known_flow_passes(dataplane, known_flow, match):
    assert _run(dataplane, abi.NAT_FLOWS, udp("1.2.3.4", 53), match) == (XDP_PASS, set(), 1)
    # with nat counting on as well: passed before nat_would_see (no counter moves)
    assert _run(dataplane, abi.NAT_FLOWS | abi.NAT_NEW_ON, udp("1.2.3.4", 53), match) == (XDP_PASS, set(), 1)
    # another port: no entry, a new flow, dropped (and counted for nat PREROUTING when counting)
    assert _run(dataplane, abi.NAT_FLOWS, udp("1.2.3.4", 54), match) == (XDP_DROP, {RULE}, 0)
    assert _run(dataplane, abi.NAT_FLOWS | abi.NAT_NEW_ON, udp("1.2.3.4", 54), match) == \
        (XDP_DROP, {RULE, abi.NAT_NEW_COUNTER}, 0)
    # without NAT_FLOWS the known flow is dropped as before
    assert _run(dataplane, 0, udp("1.2.3.4", 53), match) == (XDP_DROP, {RULE}, 0)


OTHER_PROTOCOLS = [
    ("ICMP echo reply (of a masqueraded ping)", icmp("1.2.3.4", 0)),
    ("ICMP error (about a masqueraded flow)", icmp("1.2.3.4", 3, 3)),
    ("GRE", proto("1.2.3.4", 47)),
]


@pytest.mark.parametrize("match", [CLASSIFIED, FAST], ids=["classified", "fast path"])
@pytest.mark.parametrize("description,packet", OTHER_PROTOCOLS, ids=[c[0] for c in OTHER_PROTOCOLS])
def test_protocols_conntrack_cannot_be_asked_about_pass(dataplane, description, packet, match):
    assert _run(dataplane, abi.NAT_FLOWS, packet, match) == (XDP_PASS, set(), 1), description
    assert _run(dataplane, 0, packet, match) == (XDP_DROP, {RULE}, 0), description


@pytest.mark.parametrize("match", [CLASSIFIED, FAST], ids=["classified", "fast path"])
def test_tcp_and_udp_without_an_entry_are_dropped(dataplane, match):
    for packet in (tcp("1.2.3.4", 80, flags="S"), tcp("1.2.3.4", 80, flags="A"), udp("1.2.3.4", 53)):
        assert _run(dataplane, abi.NAT_FLOWS, packet, match) == (XDP_DROP, {RULE}, 0)


@pytest.mark.parametrize("match", [CLASSIFIED, FAST], ids=["classified", "fast path"])
def test_with_helpers_tcp_and_udp_without_an_entry_pass(dataplane, match):
    # NAT_EXPECT: the first packet of a connection a helper expects has no entry yet and is NATed
    # like its master (an FTP data connection to a published address): no TCP/UDP drop
    flows = abi.NAT_FLOWS | abi.NAT_EXPECT
    for packet in (tcp("1.2.3.4", 10000, flags="S"), tcp("1.2.3.4", 80, flags="A"), udp("1.2.3.4", 69)):
        assert _run(dataplane, flows, packet, match) == (XDP_PASS, set(), 1)
    # an echo request is no helper's: still dropped
    assert _run(dataplane, flows, icmp("1.2.3.4", 8), match) == (XDP_DROP, {RULE}, 0)


@pytest.mark.parametrize("match", [CLASSIFIED, FAST], ids=["classified", "fast path"])
def test_an_icmp_echo_request_is_dropped(dataplane, match):
    # the original direction of its flow: NATed only by a DNAT, whose packets the guards defer
    assert _run(dataplane, abi.NAT_FLOWS, icmp("1.2.3.4", 8), match) == (XDP_DROP, {RULE}, 0)
    # with nat counting on, netfilter still decides it (nat_would_see cannot tell a new one)
    assert _run(dataplane, abi.NAT_FLOWS | abi.NAT_NEW_ON, icmp("1.2.3.4", 8), match)[0] == XDP_PASS
