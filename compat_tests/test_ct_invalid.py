# SPDX-License-Identifier: GPL-2.0-only
"""NEW versus INVALID and --ctproto against the kernel: a ruleset that logs and drops INVALID,
accepts NEW on some ports and sends NEW TCP to a user chain by --ctproto, compared probe by probe
with netfilter alone on both backends. The generated corpus mixes TCP flag combinations, bad L4
checksums and lengths; the handmade one names the cases XDP now decides. XDP must decide a share
of the probes itself, or the comparison would prove nothing."""
import pytest
from scapy.all import IP, TCP, UDP

from compat_tests import harness, packets, probes

pytestmark = pytest.mark.kernel

RULESET = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:bad-tcp - [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j LOG --log-prefix "invalid: "
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -m conntrack --ctstate NEW,RELATED --ctproto 6 -j bad-tcp
-A INPUT -p tcp -m tcp --dport 22 -m state --state NEW -j ACCEPT
-A INPUT -p udp -m udp --dport 53 -m conntrack --ctstate NEW --ctproto 17 -j ACCEPT
-A INPUT -m state --state NEW -p udp -m udp --dport 5000:5100 -j ACCEPT
-A bad-tcp -p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -j DROP
-A bad-tcp -p tcp -m tcp --dport 23 -j DROP
COMMIT
"""
LOCAL = packets.DEFAULT_LOCAL
SRC = "198.51.100.7"


def _bad_checksum(pkt, field):
    pkt = pkt.copy()
    raw = IP(bytes(pkt))
    setattr(raw[field], "chksum", (getattr(raw[field], "chksum") ^ 0x5A5A) or 1)
    return raw


HANDMADE = [
    ("SYN to a closed port", IP(src=SRC, dst=LOCAL) / TCP(sport=41001, dport=31337, flags="S")),
    ("SYN+ECE+CWR to a closed port", IP(src=SRC, dst=LOCAL) / TCP(sport=41002, dport=31337, flags="SEC")),
    ("SYN to 22", IP(src=SRC, dst=LOCAL) / TCP(sport=41003, dport=22, flags="S")),
    ("ACK to 22 (picked up)", IP(src=SRC, dst=LOCAL) / TCP(sport=41004, dport=22, flags="A")),
    ("ACK to a closed port", IP(src=SRC, dst=LOCAL) / TCP(sport=41005, dport=31337, flags="A")),
    ("SYN+FIN to 22", IP(src=SRC, dst=LOCAL) / TCP(sport=41006, dport=22, flags="SF")),
    ("SYN+ACK to 22", IP(src=SRC, dst=LOCAL) / TCP(sport=41007, dport=22, flags="SA")),
    ("SYN to 23 (bad-tcp)", IP(src=SRC, dst=LOCAL) / TCP(sport=41008, dport=23, flags="S")),
    ("SYN to 22, bad checksum", _bad_checksum(IP(src=SRC, dst=LOCAL) / TCP(sport=41009, dport=22, flags="S"), TCP)),
    ("SYN to a closed port, bad checksum",
     _bad_checksum(IP(src=SRC, dst=LOCAL) / TCP(sport=41010, dport=31337, flags="S"), TCP)),
    ("UDP to 53", IP(src=SRC, dst=LOCAL) / UDP(sport=41011, dport=53) / b"query"),
    ("UDP to 53 without a checksum", IP(src=SRC, dst=LOCAL) / UDP(sport=41012, dport=53, chksum=0) / b"query"),
    ("UDP to 53, bad checksum", _bad_checksum(IP(src=SRC, dst=LOCAL) / UDP(sport=41013, dport=53) / b"query", UDP)),
    ("UDP to 5050", IP(src=SRC, dst=LOCAL) / UDP(sport=41014, dport=5050) / b"x"),
    ("UDP to a closed port", IP(src=SRC, dst=LOCAL) / UDP(sport=41015, dport=31338) / b"x"),
    ("UDP to a closed port, bad checksum",
     _bad_checksum(IP(src=SRC, dst=LOCAL) / UDP(sport=41016, dport=31338) / b"x", UDP)),
]


def _xdp_decided(cmp):
    return min(sum(1 for fate in attached.fates.values() if not fate.ingress) for _, attached in cmp.runs)


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_handmade_new_and_invalid_probes(mode):
    corpus = probes.handmade(HANDMADE)
    cmp = harness.compare(RULESET, corpus, attach=harness.ipt2xdp_attach(mode))
    assert not cmp.disagreements, cmp.report()
    # dropped in XDP: what conntrack surely makes NEW and the ruleset drops (the policy, or bad-tcp
    # for NEW TCP that is not a plain SYN, and for port 23); every INVALID probe meets the LOG rule
    # in netfilter, and every probe with a bad checksum may be INVALID
    by_id = corpus.by_id()
    for _, attached in cmp.runs:
        dropped = {by_id[pid].description for pid, fate in attached.fates.items() if not fate.ingress}
        assert dropped == {"SYN to a closed port", "SYN+ECE+CWR to a closed port", "ACK to 22 (picked up)",
                           "ACK to a closed port", "SYN to 23 (bad-tcp)", "UDP to a closed port"}, dropped


def test_generated_corpus_matches_netfilter_alone():
    corpus = packets.generate(RULESET, n=300, seed=5)
    cmp = harness.compare(RULESET, corpus, attach=harness.ipt2xdp_attach("native"))
    assert not cmp.disagreements, cmp.report()
    assert _xdp_decided(cmp) >= 20, f"XDP decided only {_xdp_decided(cmp)} probes"
