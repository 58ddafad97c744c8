# SPDX-License-Identifier: GPL-2.0-only
"""NAT hosts: random rulesets with a nat table (rulegen.generate_nat: DNAT, REDIRECT, nat user chains,
SNAT/MASQUERADE) through netfilter alone and netfilter + ipt2xdp, probe by probe; and the harness's
observation of NATed probes checked against the kernel first (a probe DNATed to another port or
address and accepted by filter/INPUT is delivered, not dropped).

IPT2XDP_COMPAT_NAT seeds (default 12), first seed IPT2XDP_COMPAT_NAT_SEED (default 82000), attach as
IPT2XDP_COMPAT_ATTACH (native), both backends.
"""
import os

import pytest

from compat_tests import differential, harness
from compat_tests.packets import DEFAULT_LOCAL

pytestmark = pytest.mark.kernel

NAT_SEEDS = differential.env_int("IPT2XDP_COMPAT_NAT", 12)
FIRST = differential.env_int("IPT2XDP_COMPAT_NAT_SEED", 82000)
ATTACH = os.environ.get("IPT2XDP_COMPAT_ATTACH", "native")
OTHER = "198.51.100.20"  # a second local address: DNAT and SNAT target
THERE = "192.0.2.7"

RULESET = f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 2002 -j DROP
-A INPUT -d {DEFAULT_LOCAL} -p udp -m udp --dport 1005 -j DROP
-A INPUT -p udp -m udp --dport 1006 -j DROP
-A INPUT -s {THERE} -p udp -m udp --sport 53 -m conntrack ! --ctstate ESTABLISHED -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:natc - [0:0]
-A PREROUTING -p udp -m udp --dport 1001 -j DNAT --to-destination {DEFAULT_LOCAL}:2001
-A PREROUTING -p udp -m udp --dport 1002 -j DNAT --to-destination :2002
-A PREROUTING -p tcp -m tcp --dport 23 -j DNAT --to-destination {DEFAULT_LOCAL}:2222
-A PREROUTING -p udp -m udp --dport 1003 -j DNAT --to-destination {OTHER}
-A PREROUTING -p udp -m udp --dport 1004 -j REDIRECT --to-ports 3004
-A PREROUTING -d {DEFAULT_LOCAL} -p udp -m udp --dport 1005 -j natc
-A PREROUTING -d {OTHER} -p icmp -m icmp --icmp-type echo-request -j DNAT --to-destination {DEFAULT_LOCAL}
-A natc -j DNAT --to-destination {OTHER}
-A POSTROUTING -p udp -m udp --sport 5353 -j SNAT --to-source {OTHER}
COMMIT
"""


def _cases():
    from scapy.layers.inet import ICMP, IP, TCP, UDP

    ip = IP(src="192.0.2.1", dst=DEFAULT_LOCAL)
    reply = IP(src=THERE, dst=OTHER) / UDP(sport=53, dport=5353)  # to the flow's SNAT source
    return [
        (("udp 1001 DNATed to port 2001 (closed), accepted", ip / UDP(dport=1001)), (True, ("icmp-3/3",))),
        (("udp 1002 DNATed to port 2002, which INPUT drops", ip / UDP(dport=1002)), (False, ())),
        (("tcp 23 SYN DNATed to port 2222 (closed), accepted", ip / TCP(dport=23, flags="S")), (True, ("tcp-rst",))),
        (("udp 1003 DNATed to another local address", ip / UDP(dport=1003)), (True, ("icmp-3/3",))),
        (("udp 1004 REDIRECTed to port 3004", ip / UDP(dport=1004)), (True, ("icmp-3/3",))),
        (("udp 1005 DNATed away from the address INPUT drops (via a nat chain)", ip / UDP(dport=1005)),
         (True, ("icmp-3/3",))),
        (("udp 1006: no nat rule, INPUT drops", ip / UDP(dport=1006)), (False, ())),
        (("echo request DNATed to another local address", IP(src="192.0.2.1", dst=OTHER) / ICMP(type=8)),
         (True, ("icmp-0/0",))),
        (("reply to the receiver's SNATed udp flow, at its SNAT source", reply), (True, ())),
        (("the same datagram, now for a flow that does not exist", IP(src=THERE, dst=OTHER) / UDP(sport=53, dport=5354)),
         (False, ())),
    ]


@pytest.fixture(scope="module")
def cases():
    from compat_tests.packets import Flow
    from compat_tests.probes import handmade

    specs, expected = zip(*_cases())
    flows = [Flow(17, DEFAULT_LOCAL, 5353, THERE, 53)]  # leaves with source OTHER (nat POSTROUTING)
    return handmade(specs, (DEFAULT_LOCAL, OTHER), flows), expected


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_nated_probes_are_observed_as_netfilter_decides(cases, backend):
    corpus, expected = cases
    run = harness.run_once(RULESET, corpus, backend)
    assert not run.observation.marker_lost and not run.observation.notes
    got = {p.description: run.fates[p.id].key for p in corpus.probes}
    assert got == {p.description: e for p, e in zip(corpus.probes, expected)}


def test_without_the_nat_destinations_a_rewritten_address_would_look_dropped(cases, monkeypatch):
    """Why the harness accepts the receiver's other addresses with a nat table: the raw socket sees
    the packet after DNAT, so a strict destination check calls an accepted probe dropped."""
    corpus, expected = cases
    monkeypatch.setattr(harness, "has_nat_table", lambda text: False)
    fates = harness.run_once(RULESET, corpus, "legacy").fates
    moved = [p for p in corpus.probes if "another local address" in p.description or "1005" in p.description]
    assert len(moved) == 3 and all(not fates[p.id].delivered for p in moved)


PORT_FORWARD = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 80 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 80 -m tcp --syn -j DNAT --to-destination :8080
-A PREROUTING -d 198.51.100.20 -p tcp -m tcp --dport 80 -m tcp --syn -j REDIRECT --to-ports 8080
COMMIT
"""


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_a_published_port_s_later_segments_pass(backend):
    """Only the SYN matches the nat rule (--syn); conntrack rewrites the rest of the connection to
    8080, which filter/INPUT accepts, while XDP sees port 80, which it drops. The guards defer the
    SYN; the later segments pass only by the conntrack lookup (abi.NAT_FLOWS)."""
    import random

    from compat_tests import probes
    from compat_tests.packets import Corpus, TcpFlow

    ctx = probes.Context(random.Random(0), [], [], [DEFAULT_LOCAL, OTHER], [80], [], [])
    ctx.tcp_flows = [TcpFlow("192.0.2.1", 20000, DEFAULT_LOCAL, 80), TcpFlow("192.0.2.1", 20001, OTHER, 80)]
    built = [probes.tcp_flow_syn(ctx, 1, 0), probes.tcp_flow_syn(ctx, 2, 1)]
    for kind in ("handshake ack", "data", "pure ack", "fin"):
        for index in (0, 1):
            built.append(probes.tcp_flow_segment(ctx, len(built) + 1, index, kind))
    corpus = Corpus(built, (DEFAULT_LOCAL, OTHER), tcp_flows=tuple(ctx.tcp_flows), listen_any=(8080,),
                    sysctls=(("net.netfilter.nf_conntrack_tcp_loose", "0"),))
    cmp = harness.compare(PORT_FORWARD, corpus, (backend,), differential.attach_from_env(ATTACH))
    alone, _ = cmp.runs[0]
    assert all(fate.delivered for fate in alone.fates.values())  # netfilter accepts the whole connection
    assert not cmp.disagreements, cmp.report()


def test_random_nat_rulesets_agree():
    failures = differential.run_seeds(range(FIRST, FIRST + NAT_SEEDS), ATTACH, nat=True)
    assert not failures, f"{len(failures)} of {NAT_SEEDS} nat seeds disagree (attach={ATTACH}):\n\n" + \
        "\n\n".join(failures[:5])
