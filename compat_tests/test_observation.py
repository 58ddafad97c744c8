# SPDX-License-Identifier: GPL-2.0-only
"""The harness's observation is right against the kernel: what filter/INPUT drops is never seen as
delivered, what it accepts always is, REJECT is told apart from DROP, and an XDP drop is visible."""
import pytest

from compat_tests import harness
from compat_tests.packets import DEFAULT_LOCAL, NONLOCAL
from ipt2xdp.resources import bpf_object_path

pytestmark = pytest.mark.kernel

RULESET = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp -m udp --dport 1003 -j DROP
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:sub - [0:0]
-A INPUT -p udp -m udp --dport 1000 -j DROP
-A INPUT -p udp -m udp --dport 1001 -j ACCEPT
-A INPUT -p udp -m udp --dport 1002 -j REJECT
-A INPUT -p tcp -m tcp --dport 22 -j REJECT --reject-with tcp-reset
-A INPUT -p tcp -m tcp --dport 23 -j DROP
-A INPUT -s 10.9.0.0/16 -j DROP
-A INPUT -p 47 -j DROP
-A INPUT -p udp -j sub
-A sub -p udp -m udp --dport 2000 -j RETURN
-A sub -p udp -m udp --dport 2001 -j DROP
COMMIT
"""


def _cases():
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.packet import Raw

    src, dst = "192.0.2.1", DEFAULT_LOCAL
    ip = IP(src=src, dst=dst)
    data = Raw(b"x" * 40)
    # (description, packet[, fragsize]) and the expected (delivered, replies)
    return [
        (("udp 1000: DROP in INPUT", ip / UDP(dport=1000)), (False, ())),
        (("udp 1001: ACCEPT (no listener: port unreachable)", ip / UDP(dport=1001)), (True, ("icmp-3/3",))),
        (("udp 1002: REJECT", ip / UDP(dport=1002)), (False, ("icmp-3/3",))),
        (("udp 1003: DROP in raw/PREROUTING", ip / UDP(dport=1003)), (False, ())),
        (("tcp 22 SYN: REJECT with reset", ip / TCP(dport=22, flags="S")), (False, ("tcp-rst",))),
        (("tcp 23 SYN: DROP", ip / TCP(dport=23, flags="S")), (False, ())),
        (("tcp 24 SYN: policy ACCEPT, closed port", ip / TCP(dport=24, flags="S")), (True, ("tcp-rst",))),
        (("tcp 24 ACK: policy ACCEPT, closed port", ip / TCP(dport=24, flags="A")), (True, ("tcp-rst",))),
        (("echo request: policy ACCEPT", ip / ICMP(type=8)), (True, ("icmp-0/0",))),
        (("udp from 10.9.1.1: DROP by source", IP(src="10.9.1.1", dst=dst) / UDP(dport=3000)), (False, ())),
        (("gre: DROP by protocol", IP(src=src, dst=dst, proto=47) / Raw(bytes(8))), (False, ())),
        (("sctp: policy ACCEPT", IP(src=src, dst=dst, proto=132) / Raw(bytes(16))), (True, ())),
        (("udp 2000: RETURN from sub, policy ACCEPT", ip / UDP(dport=2000)), (True, ("icmp-3/3",))),
        (("udp 2001: DROP in sub", ip / UDP(dport=2001)), (False, ())),
        (("udp 1001 in 3 fragments: reassembled, ACCEPT", ip / UDP(dport=1001) / data, 16), (True, ("icmp-3/3",))),
        (("udp 1000 in 3 fragments: reassembled, DROP", ip / UDP(dport=1000) / data, 16), (False, ())),
        (("udp 1001 to a non-local address, forwarding off", IP(src=src, dst=NONLOCAL) / UDP(dport=1001)), (False, ())),
    ]


@pytest.fixture(scope="module")
def cases():
    from compat_tests.probes import handmade

    specs, expected = zip(*_cases())
    return handmade(specs), expected


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_delivered_exactly_when_netfilter_accepts(cases, backend):
    corpus, expected = cases
    run = harness.run_once(RULESET, corpus, backend)
    assert not run.observation.marker_lost and not run.observation.notes
    got = {p.description: run.fates[p.id].key for p in corpus.probes}
    want = {p.description: e for p, e in zip(corpus.probes, expected)}
    assert got == want
    # Every probe reached the stack: a drop here is netfilter's, not the harness losing frames.
    assert all(f.ingress for f in run.fates.values())
    assert run.seconds < 2


@pytest.mark.parametrize("mode", ["xdpdrv", "xdpgeneric"])
def test_an_xdp_drop_is_seen_and_reported(cases, mode):
    corpus, expected = cases
    drop_all = harness.xdp_object_attach(str(bpf_object_path("empty_drop.bpf.o")), mode)
    cmp = harness.compare(RULESET, corpus, backends=("legacy",), attach=drop_all)
    _, attached = cmp.runs[0]
    assert attached.observation.marker_lost  # drop-all also drops the end marker: reported, not hung
    assert all(not f.delivered and not f.ingress and not f.replies for f in attached.fates.values())
    # Exactly the probes that netfilter lets through, or answers, disagree.
    assert {d.probe.id for d in cmp.disagreements} == {
        p.id for p, e in zip(corpus.probes, expected) if e != (False, ())}
    report = cmp.report()
    assert "-A INPUT -p udp -m udp --dport 1001 -j ACCEPT" in report
    assert "udp 1001: ACCEPT" in report and "dropped before the stack" in report
    assert "end marker never reached the stack" in report


def test_backends_differ_on_truncated_l4_headers():
    """A kernel fact the planner must respect: xt_tcp/xt_udp drop ("hotdrop") a packet whose header
    they cannot read, while nf_tables' payload expression just does not match. XDP must DEFER these."""
    from scapy.layers.inet import IP, TCP
    from compat_tests.packets import Corpus, Probe

    ruleset = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 22 -j DROP\nCOMMIT\n"
    full = IP(id=1, src="192.0.2.1", dst=DEFAULT_LOCAL) / TCP(dport=80)
    cut = IP(id=1, src="192.0.2.1", dst=DEFAULT_LOCAL, proto=6) / bytes(full[TCP])[:6]  # 6 bytes of TCP
    probe = Probe(1, "tcp header cut after 6 bytes", (bytes(cut),), "192.0.2.1", DEFAULT_LOCAL, 6)
    corpus = Corpus([probe], (DEFAULT_LOCAL,))
    legacy = harness.run_once(ruleset, corpus, "legacy").fates[1]
    nft = harness.run_once(ruleset, corpus, "nft").fates[1]
    assert (legacy.delivered, nft.delivered) == (False, True)


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_conntrack_state_of_flows_the_receiver_opened(backend):
    from scapy.layers.inet import ICMP, IP, UDP
    from compat_tests.packets import Flow
    from compat_tests.probes import handmade

    ruleset = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED -j ACCEPT
COMMIT
"""
    here, there = DEFAULT_LOCAL, "192.0.2.7"
    flows = [Flow(17, here, 5353, there, 53), Flow(1, here, 4242, there, 0)]
    quoted = IP(src=here, dst=there) / UDP(sport=5353, dport=53)
    corpus = handmade([
        ("udp reply: ESTABLISHED", IP(src=there, dst=here) / UDP(sport=53, dport=5353)),
        ("udp from another port: NEW", IP(src=there, dst=here) / UDP(sport=54, dport=5353)),
        ("port unreachable about the flow: RELATED", IP(src=there, dst=here) / ICMP(type=3, code=3) / quoted),
        ("echo reply: ESTABLISHED", IP(src=there, dst=here) / ICMP(type=0, id=4242, seq=1)),
    ], flows=flows)
    run = harness.run_once(ruleset, corpus, backend)
    assert [run.fates[p.id].delivered for p in corpus.probes] == [True, False, True, True]


def _flow_corpus(loose: str):
    """One TCP flow the sender opens to a listener on 8080, then segments of it, in this order."""
    import random

    from compat_tests import probes
    from compat_tests.packets import Corpus, TcpFlow

    ctx = probes.Context(random.Random(0), [], [], [DEFAULT_LOCAL], [], [], [],
                         tcp_flows=[TcpFlow("192.0.2.9", 40000, DEFAULT_LOCAL, 8080)])
    built = [probes.tcp_flow_syn(ctx, 1, 0)]
    for kind in ("handshake ack", "data", "data out of window", "ack of unsent data", "ack without syn (no entry)",
                 "pure ack", "rst"):
        built.append(probes.tcp_flow_segment(ctx, len(built) + 1, 0, kind))
    return Corpus(built, (DEFAULT_LOCAL,), tcp_flows=tuple(ctx.tcp_flows),
                  sysctls=(("net.netfilter.nf_conntrack_tcp_loose", loose),))


@pytest.mark.parametrize("loose", ["0", "1"])
@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_tcp_flows_the_sender_opens(backend, loose):
    """A real handshake from the sender to a listening socket: the SYN-ACK is traced and its ISN put
    into the later segments, so they are ESTABLISHED; out-of-window ones are INVALID; an ACK with no
    connection is NEW only with nf_conntrack_tcp_loose=1 (then the listener answers with a reset)."""
    ruleset = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 8080 -m conntrack --ctstate NEW -j ACCEPT
COMMIT
"""
    corpus = _flow_corpus(loose)
    run = harness.run_once(ruleset, corpus, backend)
    assert not run.observation.marker_lost and not run.observation.notes
    got = [(p.description.split(": ", 1)[1], run.fates[p.id].key) for p in corpus.probes]
    pickup = (True, ("tcp-rst",)) if loose == "1" else (False, ())
    assert got == [
        ("SYN", (True, ("tcp-synack",))),
        ("handshake ack [A]", (True, ())),
        ("data [PA]", (True, ())),
        ("data out of window [PA]", (False, ())),
        ("ack of unsent data [A]", (False, ())),
        ("ack without syn (no entry) [A]", pickup),
        ("pure ack [A]", (True, ())),
        ("rst [R]", (True, ())),
    ]


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_forwarding_on_copies_beyond_the_receiver(backend):
    """ip_forward=1: probes to packets.FORWARDED go through filter/FORWARD to the third namespace,
    where they are seen; FORWARD's DROP and REJECT are observed, and so is the TTL check."""
    from scapy.layers.inet import IP, UDP
    from compat_tests.packets import FORWARDED
    from compat_tests.probes import handmade

    ruleset = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -p udp -m udp --dport 1000 -j DROP
-A FORWARD -p udp -m udp --dport 1001 -j REJECT
-A FORWARD -o fwd0 -p udp -m udp --dport 1003 -j DROP
COMMIT
"""
    far = FORWARDED.replace(".0/24", ".77")
    src = "192.0.2.1"
    cases = [
        (("udp 1000 forwarded: DROP in FORWARD", IP(src=src, dst=far) / UDP(dport=1000)), (False, ())),
        (("udp 1001 forwarded: REJECT", IP(src=src, dst=far) / UDP(dport=1001)), (False, ("icmp-3/3",))),
        (("udp 1002 forwarded: ACCEPT, seen beyond", IP(src=src, dst=far) / UDP(dport=1002)), (False, ("seen beyond",))),
        (("udp 1003 forwarded out fwd0: DROP", IP(src=src, dst=far) / UDP(dport=1003)), (False, ())),
        (("udp 1003 routed back out the veth: forwarded", IP(src=src, dst="100.64.9.9") / UDP(dport=1003)),
         (False, ("forwarded",))),
        (("udp 1002 with ttl 1: time exceeded", IP(src=src, dst=far, ttl=1) / UDP(dport=1002)), (False, ("icmp-11/0",))),
        (("udp 1000 to a local address: INPUT accepts", IP(src=src, dst=DEFAULT_LOCAL) / UDP(dport=1000)),
         (True, ("icmp-3/3",))),
    ]
    specs, expected = zip(*cases)
    corpus = handmade(specs)
    run = harness.run_once(ruleset, corpus, backend, forwarding=True)
    assert not run.observation.marker_lost and not run.observation.notes
    assert {p.description: run.fates[p.id].key for p in corpus.probes} == \
        {p.description: e for p, e in zip(corpus.probes, expected)}


def test_reused_receiver_keeps_earlier_fragments_apart():
    """A receiver kept across rulesets (compat_tests.reuse) still holds the fragment queues of the
    runs before (ipfrag_time, 30 s). The head of a datagram sent in one run and its tail sent in the
    next must not be reassembled into a delivery that a fresh testbed would never see: each run in
    a kept receiver gets its own IP ids (this is what made seed 547 of a 2,000-seed run disagree)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet import fragment
    from scapy.packet import Raw
    from compat_tests.packets import Corpus, Probe

    ruleset = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    pkt = IP(id=1, src="192.0.2.1", dst=DEFAULT_LOCAL) / UDP(sport=4000, dport=1001) / Raw(bytes(48))
    pieces = [bytes(f) for f in fragment(pkt, fragsize=16)]
    head = Corpus([Probe(1, "udp, first fragment only", tuple(pieces[:1]), pkt.src, pkt.dst, 17)], (DEFAULT_LOCAL,))
    tail = Corpus([Probe(1, "udp, tail fragments only", tuple(pieces[1:]), pkt.src, pkt.dst, 17)], (DEFAULT_LOCAL,))
    attach = harness.ipt2xdp_attach("native", reuse=True)
    first = harness.run_once(ruleset, head, "legacy", attach)
    second = harness.run_once(ruleset, tail, "legacy", attach)
    alone = harness.run_once(ruleset, tail, "legacy")
    assert not first.fates[1].delivered and first.fates[1].ingress
    assert second.fates[1].ingress  # the tail did reach the kept receiver
    assert alone.fates[1].key == second.fates[1].key == (False, ())


def test_a_new_ip_id_keeps_a_bad_header_checksum_bad():
    """The IP-id offset of kept receivers must not repair the bad-checksum probes (it did: 8 of 20
    seeds then saw them delivered with ipt2xdp attached and dropped by netfilter alone)."""
    import struct

    from compat_tests.observe import _checksum, with_ip_id

    header = bytearray(b"\x45\x00\x00\x14\x00\x01\x00\x00\x40\x06\x00\x00\x0a\x00\x00\x01\x0a\x00\x00\x02")
    header[10:12] = struct.pack("!H", _checksum(bytes(header)))
    assert _checksum(with_ip_id(bytes(header), 77)) == 0
    header[10] ^= 0x5A
    moved = with_ip_id(bytes(header), 77)
    assert moved[4:6] == b"\x00\x4d" and _checksum(moved) != 0
