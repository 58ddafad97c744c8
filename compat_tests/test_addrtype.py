# SPDX-License-Identifier: GPL-2.0-only
"""-m addrtype against the kernel: a ufw-style not-local chain, --limit-iface-in and source types,
netfilter alone compared with netfilter + ipt2xdp, probe by probe, on both backends. The corpus
aims at local (on the receiver's lo: UNICAST with --limit-iface-in, as the route's device is lo),
non-local, multicast and broadcast destinations and sources.
XDP must also decide some of them itself, or the comparison would prove nothing about addrtype."""
import pytest

from compat_tests import harness, packets

pytestmark = pytest.mark.kernel

RULESET = """*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:not-local - [0:0]
-A INPUT -j not-local
-A INPUT -p udp -m addrtype --dst-type UNICAST --limit-iface-in -j ACCEPT
-A INPUT -p tcp -m addrtype --dst-type LOCAL --limit-iface-in -m tcp --dport 22 -j ACCEPT
-A INPUT -m addrtype --src-type MULTICAST -j DROP
-A INPUT -p udp -m addrtype ! --src-type LOCAL,BROADCAST -m udp --dport 53 -j ACCEPT
-A INPUT -d 198.51.100.0/24 -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 80 -j ACCEPT
-A INPUT -s 224.0.0.0/4 -j ACCEPT
-A INPUT -p udp -m addrtype --dst-type MULTICAST,BROADCAST -j ACCEPT
-A not-local -m addrtype --dst-type LOCAL -j RETURN
-A not-local -m addrtype --dst-type MULTICAST -j RETURN
-A not-local -m addrtype --dst-type BROADCAST -j RETURN
-A not-local -j DROP
COMMIT
"""


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_addrtype_fates_match_netfilter_alone(mode):
    corpus = packets.generate(RULESET, n=300, seed=3)
    cmp = harness.compare(RULESET, corpus, attach=harness.ipt2xdp_attach(mode))
    assert not cmp.disagreements, cmp.report()
    for _, attached in cmp.runs:
        xdp_dropped = [pid for pid, fate in attached.fates.items() if not fate.ingress]
        assert len(xdp_dropped) >= 20, f"XDP decided only {len(xdp_dropped)} probes: addrtype left to netfilter?"
