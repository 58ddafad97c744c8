# SPDX-License-Identifier: GPL-2.0-only
"""Blocklist shapes, where ipt2xdp's fast path (ipt2xdp/fastpath.py) decides listed sources before
classifying: netfilter alone against netfilter + ipt2xdp on both backends. Each ruleset mixes the
list with what must keep some listed sources off the fast path (an earlier ACCEPT, a conntrack or
per-device rule, a protocol-specific DROP, raw/nat/mangle rules, a user chain), and the corpus
probes the listed addresses and their neighbours with every kind of packet. The plan of each is
checked to have a fast path, so the comparison really covers it."""
import pytest

from compat_tests import differential, harness, packets

pytestmark = pytest.mark.kernel

HEAD = "*filter\n:INPUT {policy} [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
LIST = "".join(f"-A INPUT -s 192.0.2.{i}/32 -j DROP\n" for i in range(1, 30)) + "-A INPUT -s 198.18.7.0/24 -j DROP\n"

RULESETS = {
    "plain list, services after it": HEAD.format(policy="ACCEPT") + LIST
    + "-A INPUT -p tcp --dport 22 -j ACCEPT\n-A INPUT -p udp --dport 53 -j REJECT\nCOMMIT\n",
    "earlier ACCEPT, ct, device and protocol rules for some listed sources": HEAD.format(policy="DROP")
    + "-A INPUT -s 192.0.2.3/32 -p tcp --dport 22 -j ACCEPT\n"
    + "-A INPUT -s 192.0.2.4/32 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
    + "-A INPUT -s 192.0.2.5/32 -i rcv0 -j ACCEPT\n"
    + "-A INPUT -s 192.0.2.6/32 -p udp -j REJECT --reject-with icmp-port-unreachable\n"
    + "-A INPUT -s 198.18.7.128/25 -p icmp -j ACCEPT\n"
    + LIST + "-A INPUT -p icmp -j ACCEPT\n-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT\nCOMMIT\n",
    "list in a user chain with a RETURN, LOG before a listed source": HEAD.format(policy="ACCEPT")
    + ":BL - [0:0]\n-A INPUT -s 192.0.2.7/32 -j LOG --log-prefix \"i2x \"\n-A INPUT -j BL\n"
    + LIST.replace("-A INPUT", "-A BL") + "-A BL -j RETURN\n-A INPUT -p tcp -j DROP\nCOMMIT\n",
    "raw, mangle and nat rules on listed sources": "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    + "-A PREROUTING -s 192.0.2.8/32 -j NOTRACK\nCOMMIT\n"
    + "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    + ":POSTROUTING ACCEPT [0:0]\n-A PREROUTING -s 192.0.2.9/32 -j MARK --set-mark 1\nCOMMIT\n"
    + "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
    + "-A PREROUTING -s 192.0.2.10/32 -p tcp --dport 80 -j REDIRECT --to-ports 8080\nCOMMIT\n"
    + HEAD.format(policy="ACCEPT") + LIST + "COMMIT\n",
}


@pytest.mark.parametrize("name", sorted(RULESETS))
def test_blocklist_shape_agrees_with_netfilter(name):
    assert_fast_path_agrees(RULESETS[name], lambda fast: fast.plens, seed=3)


def assert_fast_path_agrees(text: str, has_entries, seed: int) -> None:
    """The plan of text has fast-path entries (has_entries(FastPath)) whose rules left the class
    bitmaps, and netfilter + ipt2xdp agrees with netfilter alone on the corpus."""
    from ipt2xdp import hostinfo
    from ipt2xdp.compile import compile
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan

    host = hostinfo.HostContext(devices=(hostinfo.Device("rcv0", 5, "veth"),), attached=("rcv0",))
    result = plan(parse(text, "fastpath.rules"), host)
    tables = compile(result.rules, result.default)
    assert has_entries(tables.fast_path), "the plan must have entries on this fast path"
    held, whole = _classified(tables), _classified(compile(result.rules, result.default, reduce=False))
    assert held < whole, "the class bitmaps must lack some rule the fast path decides"
    corpus = packets.generate(text, differential.env_int("IPT2XDP_COMPAT_PROBES", 200), seed=seed)
    cmp = harness.compare(text, corpus, attach=differential.attach_from_env(), receiver_if="rcv0")
    assert not cmp.disagreements, cmp.report()


def _classified(tables):
    """The rule ids the class bitmaps hold: slot counters and exact-set members."""
    import struct

    slots = tables.maps["slots"]
    ids = {struct.unpack_from("=I", slots.values, i * slots.value_size)[0] for i in range(tables.slot_count)}
    return ids | {struct.unpack("=I", value)[0] for _, value in tables.maps["exact_set"].entries()}
