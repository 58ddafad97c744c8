# SPDX-License-Identifier: GPL-2.0-only
"""Exact-tuple shapes, where ipt2xdp's exact-tuple fast path (ipt2xdp/tuplefast.py) decides packets
in a box of exact source/destination/protocol/ports before classifying: netfilter alone against
netfilter + ipt2xdp on both backends. Each ruleset mixes bench-shaped and service-shaped DROPs with
what must keep some boxes off the fast path (an earlier ACCEPT, a conntrack, per-device or TCP-flags
rule, a wider DROP, a jump into a user chain, raw/nat rules), and the corpus probes the boxes and
their neighbours with every kind of packet. The plan of each is checked to have entries, and the
class bitmaps to lack their rules, so the comparison really covers the fast path."""
import pytest

from compat_tests.test_blocklist_fastpath import HEAD, assert_fast_path_agrees

pytestmark = pytest.mark.kernel

TUPLES = "".join(f"-A INPUT -s 192.0.2.{i}/32 -p udp -m udp --dport {1000 + i} -j DROP\n" for i in range(1, 20)) \
    + "-A INPUT -s 198.18.7.0/24 -p tcp -m tcp --dport 22 -j DROP\n-A INPUT -p gre -j DROP\n"

RULESETS = {
    "bench shape, services after it": HEAD.format(policy="ACCEPT") + TUPLES
    + "-A INPUT -p tcp --dport 22 -j ACCEPT\n-A INPUT -p udp --dport 53 -j REJECT\nCOMMIT\n",
    "earlier ACCEPT, ct, device, TCP-flags and wider rules for some boxes": HEAD.format(policy="DROP")
    + "-A INPUT -s 192.0.2.3/32 -p udp -j ACCEPT\n"
    + "-A INPUT -s 192.0.2.4/32 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
    + "-A INPUT -s 192.0.2.5/32 -i rcv0 -j ACCEPT\n"
    + "-A INPUT -s 198.18.7.0/24 -p tcp --tcp-flags SYN,ACK SYN -j ACCEPT\n"
    + "-A INPUT -s 192.0.2.6/31 -p udp -j REJECT --reject-with icmp-port-unreachable\n"
    + TUPLES + "-A INPUT -p icmp -j ACCEPT\n-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT\nCOMMIT\n",
    "destination and port boxes, and a user chain with a RETURN": HEAD.format(policy="ACCEPT")
    + ":SVC - [0:0]\n-A INPUT -d 198.51.100.10/32 -p tcp -m tcp --dport 443 -j DROP\n"
    + "-A INPUT -p udp -m udp --sport 53 -j SVC\n-A INPUT -d 198.51.100.10/32 -p udp --dport 53 -j DROP\n"
    + "-A SVC -s 192.0.2.1/32 -j RETURN\n-A SVC -p udp --dport 1001 -j ACCEPT\n" + TUPLES + "COMMIT\n",
    "raw and nat rules on some boxes": "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    + "-A PREROUTING -s 192.0.2.8/32 -j NOTRACK\nCOMMIT\n"
    + "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
    + "-A PREROUTING -s 192.0.2.10/32 -p udp --dport 1010 -j REDIRECT --to-ports 8080\nCOMMIT\n"
    + HEAD.format(policy="ACCEPT") + TUPLES + "COMMIT\n",
}


@pytest.mark.parametrize("name", sorted(RULESETS))
def test_tuple_shape_agrees_with_netfilter(name):
    assert_fast_path_agrees(RULESETS[name], lambda fast: fast.shapes, seed=5)
