# SPDX-License-Identifier: GPL-2.0-only
"""Hooks outside the planned ruleset (ipt2xdp.foreign): classification of `nft -j list ruleset`
documents captured on this machine (tests/foreign/capture.sh, nftables 1.0.6), and what the
planner makes of them and of the other iptables backend's tables. The expected blockers were
worked out from the statements in capture.sh, not copied from the output."""
import json
import os
import re
from dataclasses import replace
from ipaddress import IPv4Network

import pytest

from ipt2xdp import foreign, planstore
from ipt2xdp.classifier import Verdict
from ipt2xdp.explain import explain
from ipt2xdp.foreign import Foreign, NativeChain
from ipt2xdp.hostinfo import Device, HostContext
from ipt2xdp.packetspec import parse_packet
from ipt2xdp.parse import parse
from ipt2xdp.plan import plan

HERE = os.path.join(os.path.dirname(__file__), "foreign")
L = "10.77.1.2"
HOST = HostContext(devices=(Device("lo", 1), Device("d0", 5, "veth"), Device("d1", 6, "veth")),
                   local_destinations=(IPv4Network(f"{L}/32"), IPv4Network("224.0.0.0/4")),
                   attached=("d0",), ct_external_helpers=False)
FILTER = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
          "-A INPUT -p tcp -m tcp --dport 22 -j DROP\n-A INPUT -p tcp -m tcp --dport 80 -j DROP\n"
          "-A INPUT -p udp -m udp --dport 53 -j DROP\nCOMMIT\n")
NAT = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
       "-A PREROUTING -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080\nCOMMIT\n")


def document(name):
    with open(os.path.join(HERE, f"{name}.json")) as f:
        return json.load(f)


def chains(name, passed=None):
    """chain -> blocker, rule handles left out (a re-capture numbers them differently)."""
    return {c.chain: re.sub(r"rule handle \d+: ", "", c.blocker) for c in foreign.classify(document(name), passed)}


# ----------------------------------------------------------------------------- classification

def test_neutral_chains_and_hooks_after_filter_input():
    # pre: a set lookup + drop, accept, a jump to a chain of ct-state accept / return: neutral.
    # empty_in: input at priority 0 (same as filter/INPUT, order unknown): judged, empty = neutral.
    # late_in (input priority 10: after filter/INPUT) and out (output hook) are not judged at all.
    assert chains("native_neutral") == {"pre": "", "empty_in": ""}


@pytest.mark.parametrize("name, expected", [
    ("native_dnat", {"pre": "dnat"}),
    ("native_counter_input", {"in": "counter"}),
    ("native_deep_jump", {"pre": "jump a: goto b: mangle"}),
    ("native_statements", {"limit_in": "limit", "vmap_pre": "vmap",
                           "setupd": "set", "queue_in": "quota",
                           "notrack_pre": "notrack"}),
    ("ip_filter_native", {"INPUT": "mangle"}),
    # iptables-nft's own tables: every rule it writes carries a counter, REDIRECT is an xt target
    ("xtables", {"INPUT": "counter", "PREROUTING": "counter"}),
])
def test_blockers(name, expected):
    assert chains(name) == expected


def test_ingress_devices_read_from_the_chain_text():
    """nft 1.0.6 -j leaves out an ingress chain's device; `nft list chain` prints it."""
    doc = document("netdev_ingress")
    texts = {"on_d0": 'table netdev edge {\n\tchain on_d0 {\n\t\ttype filter hook ingress device "d0" priority filter;',
             "on_d1": "\t\ttype filter hook ingress devices = { d1, eth7 } priority filter; policy accept;"}
    foreign.fill_ingress_devices(doc, lambda family, table, name: texts[name])
    assert {c.chain: c.devices for c in foreign.classify(doc)} == {"on_d0": ("d0",), "on_d1": ("d1", "eth7")}
    assert [c.chain for c in foreign.classify(doc, {"d0"})] == ["on_d0"]
    assert [c.chain for c in foreign.classify(doc, {"eth7"})] == ["on_d1"]
    assert [c.chain for c in foreign.classify(doc, {"eth9"})] == []


def test_ingress_chain_without_a_known_device_counts_for_every_device():
    assert chains("netdev_ingress") == {"on_d0": "counter", "on_d1": ""}
    assert chains("netdev_ingress", {"eth9"}) == {"on_d0": "counter", "on_d1": ""}


def test_passed_devices_climb_masters_and_uppers():
    devices = (Device("eth0", 2, master=10), Device("bond0", 10, "bond", master=11), Device("br0", 11, "bridge"),
               Device("vlan5", 12, "vlan", link=10), Device("eth1", 3))
    assert foreign.passed_devices(devices, ["eth0"]) == {"eth0", "bond0", "br0", "vlan5"}
    assert foreign.passed_devices(devices, ["eth1"]) == {"eth1"}
    assert foreign.passed_devices(devices, []) is None


# ----------------------------------------------------------------------------- the plan

def with_devices(name):
    doc = document(name)
    foreign.fill_ingress_devices(doc, lambda family, table, chain: f'hook ingress device "{chain[3:]}" priority')
    return doc


def native_host(name, planned="nft", **kwargs):
    return replace(HOST, foreign=Foreign(planned, foreign.classify(with_devices(name), {"d0"}), **kwargs))


def verdict(result, host, packet, ruleset=None):
    e = explain(result, parse_packet(packet.replace("L", L)), host, ruleset)
    return e.verdict, e.code, e.notes


@pytest.mark.parametrize("name", ["native_dnat", "native_counter_input", "native_deep_jump", "native_statements",
                                  "ip_filter_native"])
def test_a_native_chain_with_effects_defers_everything(name):
    ruleset = parse(FILTER, "f.rules")  # iptables-nft-save showed no table `nat`, nor an incompatible `filter`
    if name == "ip_filter_native":
        ruleset = parse(NAT, "n.rules")  # ...and here `filter` is the native one it cannot show
    host = native_host(name)
    result = plan(ruleset, host)
    got, code, notes = verdict(result, host, "tcp 198.51.100.7:1 > L:22 flags S iface d0")
    assert (got, code) == ("PASS", "foreign.nft")
    assert any("nftables table" in n for n in notes)
    assert all(r.action.verdict != Verdict.DROP for r in result.rules[:2])
    assert any(n.startswith("foreign.nft:") for n in result.notes)


def test_neutral_native_chains_change_nothing():
    ruleset = parse(FILTER, "f.rules")
    bare = plan(ruleset, HOST)
    host = native_host("native_neutral")
    result = plan(ruleset, host)
    assert result.rules == bare.rules and result.decisions == bare.decisions
    assert any("chain pre" in n and "neutral" in n for n in result.notes)
    assert verdict(result, host, "tcp 198.51.100.7:1 > L:22 flags S iface d0")[:2] == ("DROP", "ok.drop")


def test_ingress_chain_on_a_device_xdp_is_not_on_is_ignored():
    ruleset = parse(FILTER, "f.rules")
    on_d1 = replace(HOST, foreign=Foreign("nft", foreign.classify(with_devices("netdev_ingress"), {"d1"})))
    assert plan(ruleset, on_d1).rules == plan(ruleset, HOST).rules
    on_d0 = native_host("netdev_ingress")
    assert verdict(plan(ruleset, on_d0), on_d0, "udp 192.0.2.9:1 > L:53 iface d0")[:2] == ("PASS", "foreign.nft")


def test_iptables_nft_tables_are_the_planned_ones_when_planning_from_nft():
    ruleset = parse(FILTER + NAT, "fn.rules")
    host = native_host("xtables")
    result = plan(ruleset, host)
    assert result.rules == plan(ruleset, HOST).rules
    assert verdict(result, host, "tcp 198.51.100.7:1 > L:22 flags S iface d0")[:2] == ("DROP", "ok.drop")
    # the same document while the planned ruleset lacks `nat`: iptables-nft-save could not show it
    lacking = plan(parse(FILTER, "f.rules"), host)
    assert verdict(lacking, host, "tcp 198.51.100.7:1 > L:22 flags S iface d0")[:2] == ("PASS", "foreign.nft")


def canonical(text):
    return foreign._canonical_other(text, "<other>")


def test_iptables_nft_tables_are_guarded_when_planning_from_legacy():
    other_text, other_tables = canonical(FILTER + NAT)
    host = native_host("xtables", planned="legacy", other_text=other_text, other_tables=other_tables)
    legacy = parse("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                   "-A INPUT -p tcp -j DROP\n-A INPUT -p udp -j DROP\nCOMMIT\n", "legacy.rules")
    result = plan(legacy, host)
    # port 80 is redirected by iptables-nft's nat/PREROUTING first; port 22 and 53 meet its
    # filter/INPUT DROPs (same priority as the planned filter/INPUT): netfilter decides those
    for packet, code in (("tcp 198.51.100.7:1 > L:80 flags S", "foreign.nft-xtables"),
                         ("tcp 198.51.100.7:1 > L:22 flags S", "foreign.nft-xtables"),
                         ("udp 198.51.100.7:1 > L:53", "foreign.nft-xtables")):
        got, got_code, notes = verdict(result, host, packet + " iface d0", legacy)
        assert (got, got_code) == ("PASS", code)
        assert any("iptables-nft" in n for n in notes)
    assert verdict(result, host, "tcp 198.51.100.7:1 > L:443 flags S iface d0")[:2] == ("DROP", "ok.drop")
    assert verdict(result, host, "udp 198.51.100.7:1 > L:54 iface d0")[:2] == ("DROP", "ok.drop")


def test_legacy_tables_are_guarded_when_planning_from_nft():
    other_text, other_tables = canonical(
        NAT.replace("REDIRECT --to-ports 8080", "DNAT --to-destination 10.77.1.2:8080")
        + "*filter\n:INPUT DROP [5:500]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
          "-A INPUT -p udp -m udp --dport 9 -j LOG\n-A INPUT -p tcp -j ACCEPT\nCOMMIT\n")
    assert "[5:500]" not in other_text  # canonical: counters cannot make drift
    host = replace(HOST, foreign=Foreign("nft", (), other_text, other_tables))
    ruleset = parse("*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", "f.rules")
    result = plan(ruleset, host)
    table = {"tcp 198.51.100.7:1 > L:80 flags S": ("PASS", "foreign.legacy"),
             "udp 198.51.100.7:1 > L:9": ("PASS", "foreign.legacy"),
             "udp 198.51.100.7:1 > L:10": ("DROP", "ok.policy"),   # legacy INPUT policy DROP: harmless
             "tcp 198.51.100.7:1 > L:81 flags S": ("DROP", "ok.policy")}  # legacy ACCEPT: a no-op
    for packet, expected in table.items():
        assert verdict(result, host, packet + " iface d0")[:2] == expected, packet
    assert any("nat/PREROUTING #1" in n for n in result.notes)


def test_a_strict_policy_before_filter_input_defers_everything():
    other_text, other_tables = canonical("*raw\n:PREROUTING DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
    host = replace(HOST, foreign=Foreign("nft", (), other_text, other_tables))
    result = plan(parse(FILTER, "f.rules"), host)
    assert verdict(result, host, "tcp 198.51.100.7:1 > L:22 flags S iface d0")[:2] == ("PASS", "foreign.legacy")


def test_unreadable_hooks_defer_everything():
    host = replace(HOST, foreign=Foreign("nft", unreadable=("`nft -j list ruleset` failed (exit 1): boom",)))
    result = plan(parse(FILTER, "f.rules"), host)
    got, code, notes = verdict(result, host, "tcp 198.51.100.7:1 > L:22 flags S iface d0")
    assert (got, code) == ("PASS", "foreign.unreadable") and "boom" in notes[0]


def test_a_helper_in_the_other_backends_raw_table_makes_related_possible():
    other_text, other_tables = canonical("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                                         "-A PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp\nCOMMIT\n")
    ruleset = parse("*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                    "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n", "f.rules")
    without = plan(ruleset, HOST)
    host = replace(HOST, foreign=Foreign("nft", (), other_text, other_tables))
    assert plan(ruleset, host).rules != without.rules
    helpers = [(r.match, r.action) for r in plan(ruleset, replace(HOST, ct_external_helpers=True)).rules]
    with_foreign = [(r.match, r.action) for r in plan(ruleset, host).rules]
    assert with_foreign[1][1].verdict == Verdict.DEFER and with_foreign[1][0].dport is not None  # the CT rule
    assert helpers[1:] == with_foreign[2:]


def test_host_record_round_trip_keeps_foreign():
    other_text, other_tables = canonical(NAT)
    host = replace(HOST, foreign=Foreign("legacy", (NativeChain("inet", "t", "c", "ingress", -5, ("d0",), "log"),),
                                         other_text, other_tables, ("x",)))
    record = json.loads(json.dumps(planstore.host_record(host)))
    assert planstore.host_from_record(record) == host
    assert planstore.host_from_record(json.loads(json.dumps(planstore.host_record(HOST)))) == HOST
