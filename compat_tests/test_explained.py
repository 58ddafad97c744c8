# SPDX-License-Identifier: GPL-2.0-only
"""A disagreement report names, per disagreeing probe, the rule ipt2xdp explain says decides it."""
from scapy.all import IP, TCP, UDP, raw

from compat_tests.harness import Comparison, Disagreement
from compat_tests.observe import Fate
from compat_tests.packets import Corpus, Probe

RULESET = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -j BLOCK
-A INPUT -p tcp -m tcp --dport 23 -j LOG
-A BLOCK -s 192.0.2.0/24 -p tcp -j DROP
COMMIT
"""


def probe(pid, *frames, dst="10.77.3.2"):
    return Probe(pid, f"probe {pid}", tuple(raw(f) for f in frames), "192.0.2.9", dst, 6)


def test_report_explains_each_disagreeing_probe():
    # BLOCK is not declared: the report declares it as the harness does before explaining
    probes = [probe(1, IP(src="192.0.2.9", dst="10.77.3.2") / TCP(sport=1, dport=80, flags="S")),
              probe(2, IP(src="198.51.100.7", dst="10.77.3.2") / TCP(sport=1, dport=23, flags="S")),
              probe(3, IP(src="192.0.2.9", dst="10.77.3.2", flags="MF") / UDP(sport=1, dport=2),
                    IP(src="192.0.2.9", dst="10.77.3.2", options=b"\x01\x01\x01\x00") / TCP()),
              probe(4, IP(src="192.0.2.9", dst="203.0.113.1") / TCP(sport=1, dport=80), dst="203.0.113.1")]
    corpus = Corpus(probes, ())
    cmp = Comparison(RULESET, corpus, [], [Disagreement("legacy", p, Fate(True), Fate(False, ingress=False))
                                           for p in probes])
    report = cmp.report().splitlines()
    at = {line.split(":")[0].split()[-1]: i for i, line in enumerate(report) if line.startswith("[legacy] probe")}
    assert report[at["1"] + 3] == ("    explain: DROP by filter/BLOCK #1: -A BLOCK -s 192.0.2.0/24 -p tcp -j DROP "
                                   "<- filter/INPUT #1 [ok.drop: XDP drops matching packets in the driver]")
    assert report[at["2"] + 3].startswith("    explain: PASS by filter/INPUT #2: -A INPUT -p tcp -m tcp --dport 23 "
                                          "-j LOG [target.log: ")
    assert report[at["3"] + 3].startswith("    explain frame 1: PASS by no rule [packet.fragment: ")
    assert report[at["3"] + 4].startswith("    explain frame 2: XDP passes it before classifying (IP options")
    assert report[at["4"] + 3].startswith("    explain: PASS by no rule [guard.not-local: ")


def test_a_ruleset_explain_cannot_parse_still_gives_the_report():
    p = probe(1, IP(src="192.0.2.9", dst="10.77.3.2") / TCP(sport=1, dport=80))
    cmp = Comparison("*filter\n-A INPUT -s 300.1.1.1 -j DROP\nCOMMIT\n", Corpus([p], ()), [],
                     [Disagreement("nft", p, Fate(True), Fate(False))])
    report = cmp.report()
    assert "[nft] probe 1: probe 1" in report and "explain: the ruleset does not parse:" in report
