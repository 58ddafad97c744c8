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

from ipt2xdp import foreign, nftbound, nftchains, planstore
from ipt2xdp.classifier import IntervalSet, Match, Verdict
from ipt2xdp.explain import explain
from ipt2xdp.foreign import Foreign
from ipt2xdp.hostinfo import Device, HostContext
from ipt2xdp.packetspec import parse_packet
from ipt2xdp.parse import parse
from ipt2xdp.nftchains import Effect, NativeChain
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
    return {c.chain: re.sub(r"rule handle \d+: ", "", c.blocker) for c in nftchains.classify(document(name), passed)}


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
    # a verdict map of accept and drop only is neutral
    ("native_statements", {"limit_in": "limit", "vmap_pre": "", "setupd": "set", "queue_in": "quota",
                           "notrack_pre": "notrack"}),
    ("ip_filter_native", {"INPUT": "mangle"}),
    # iptables-nft's own tables: every rule it writes carries a counter, REDIRECT is an xt target
    ("xtables", {"INPUT": "counter", "PREROUTING": "counter"}),
])
def test_blockers(name, expected):
    assert chains(name) == expected


def bounds(name):
    return {c.chain: [(re.sub(r"rule handle \d+: ", "", e.where), nftbound.describe(e.bound)) for e in c.effects]
            for c in nftchains.classify(document(name))}


def test_effects_are_bounded_by_the_matches_on_their_path():
    assert bounds("native_bounds") == {"pre": [
        ("jump x: counter", "src 10.0.0.0/8"),           # the jump's match bounds the chain it enters
        # ip6 saddr / meta nfproto ipv6: no IPv4 packet, nothing to defer
        ("counter", "dst 192.0.2.1,192.0.2.7 proto 17 dport 53,5353"),
        ("mangle", "proto 6"),                           # a negated port is left out: all of TCP
        # a verdict map's chain is entered under the key of its element (tcp dport 80)
        ("vmap jump web: log", "src 198.51.100.0/24 proto 6 dport 80"),
    ]}
    assert bounds("native_statements") == {"limit_in": [("limit", "every packet")], "vmap_pre": [],
                                           "setupd": [("set", "every packet")],
                                           "queue_in": [("quota", "proto 17 dport 9")],
                                           "notrack_pre": [("notrack", "proto 17 dport 53")]}
    assert bounds("native_deep_jump") == {"pre": [("jump a: goto b: mangle", "proto 6 dport 22")]}
    # reads that change state: a lookup in a set that counts its elements, numgen inc (a plain set
    # lookup is neutral)
    assert bounds("native_stateful_reads") == {"pre": [("lookup in @counted, whose elements count", "proto 17 dport 5000"),
                                                       ("numgen inc", "proto 6 dport 6000")]}


def test_kube_proxy_nftables_effects_are_bounded_by_service_elements():
    # kube-proxy's nftables mode: every DNAT, mark and reject is reached through a verdict map
    # keyed by `ip daddr . meta l4proto . th dport` (or `ip daddr @nodeport-ips` and `meta
    # l4proto . th dport`): each is bounded by its element, so XDP defers the service addresses
    # and ports only, not every packet
    found = bounds("native_kube_proxy")
    assert found["filter-prerouting"] == []  # firewall-check only drops: neutral
    assert found["filter-input"] == [("jump service-endpoints-check: vmap goto reject-chain: reject",
                                      "dst 10.96.0.20 proto 6 dport 80")]
    assert sorted(set(bound for _, bound in found["nat-prerouting"])) == [
        "dst 10.77.1.2 proto 6 dport 30080",          # nodeport-ips . service-nodeports
        "dst 10.96.0.1 proto 6 dport 443",
        "dst 10.96.0.10 proto 17 dport 53",
        "dst 192.0.2.50 proto 6 dport 443",
        "src 10.244.1.5 dst 10.96.0.10 proto 17 dport 53",  # hairpin masquerade mark of one endpoint
        "src 10.244.2.5 dst 10.96.0.10 proto 17 dport 53",
    ]
    assert ("jump services: vmap goto service-dns: vmap goto endpoint-dns-a: dnat",
            "dst 10.96.0.10 proto 17 dport 53") in found["nat-prerouting"]


def _kube_like(set_flags=(), updates=False):
    """A verdict map keyed by daddr . l4proto . th dport, optionally one the data path changes."""
    rule = lambda chain, *expr: {"rule": {"family": "ip", "table": "t", "chain": chain, "handle": 1, "expr": list(expr)}}
    key = {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}},
                      {"payload": {"protocol": "th", "field": "dport"}}]}
    items = [{"chain": {"family": "ip", "table": "t", "name": "pre", "hook": "prerouting", "prio": -100, "type": "nat"}},
             {"chain": {"family": "ip", "table": "t", "name": "svc"}},
             {"map": {"family": "ip", "table": "t", "name": "m", "map": "verdict", "flags": list(set_flags),
                      "elem": [[{"concat": ["10.96.0.1", "tcp", 443]}, {"goto": {"target": "svc"}}]]}},
             rule("pre", {"vmap": {"key": key, "data": "@m"}}),
             rule("svc", {"dnat": {"addr": "10.0.0.9"}})]
    if updates:
        items.append(rule("pre", {"map": {"op": "update", "elem": key, "data": {"goto": {"target": "svc"}}, "map": "@m"}}))
    return {"nftables": items}


@pytest.mark.parametrize("flags, updates, expected", [
    ((), False, [("vmap goto svc: dnat", "dst 10.96.0.1 proto 6 dport 443")]),
    # elements the data path may add: the key bounds nothing, the chain is still walked
    (("dynamic",), False, [("vmap jump svc: dnat", "every packet")]),
    ((), True, [("vmap jump svc: dnat", "every packet"), ("map", "every packet")]),
])
def test_only_fixed_maps_bound_by_their_elements(flags, updates, expected):
    native = nftchains.classify(_kube_like(flags, updates))
    assert [(re.sub(r"rule handle \d+: ", "", e.where), nftbound.describe(e.bound)) for e in native[0].effects] == expected


def test_named_set_lookups_bound_like_their_elements():
    rule = lambda *expr: {"rule": {"family": "inet", "table": "t", "chain": "pre", "handle": 1, "expr": list(expr)}}
    daddr = {"payload": {"protocol": "ip", "field": "daddr"}}
    document = {"nftables": [
        {"chain": {"family": "inet", "table": "t", "name": "pre", "hook": "prerouting", "prio": 0, "type": "filter"}},
        {"set": {"family": "inet", "table": "t", "name": "nodes", "type": "ipv4_addr",
                 "elem": ["10.0.0.1", {"prefix": {"addr": "10.1.0.0", "len": 16}}, {"elem": {"val": "10.2.0.1", "comment": "x"}}]}},
        rule({"match": {"op": "==", "left": daddr, "right": "@nodes"}}, {"counter": None}),
        rule({"match": {"op": "==", "left": daddr, "right": "@missing"}}, {"log": None})]}
    effects = nftchains.classify(document)[0].effects
    assert [nftbound.describe(e.bound) for e in effects] == ["dst 10.0.0.1,10.1.0.0/16,10.2.0.1", "every packet"]


def test_transport_header_ports_bound_only_tcp_and_udp():
    s = nftbound.statement_bound
    l4 = lambda right: {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": right}
    th = {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": 53}
    assert s([l4({"set": ["tcp", "udp"]}), th]) == Match(proto=frozenset({6, 17}), dport=IntervalSet.single(53))
    # SCTP ports are not read by the classifier: a port bound would leave SCTP to port 53 out
    assert s([l4({"set": ["udp", "sctp"]}), th]) == Match(proto=frozenset({17, 132}))
    assert s([th]) == Match()
    concat = {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}},
                                             {"payload": {"protocol": "th", "field": "dport"}}]},
              "right": {"set": [{"concat": ["10.0.0.1", "tcp", 80]}, {"concat": ["10.0.0.2", "udp", 53]}]}}
    # a concatenation is bounded by each position's hull (a superset of the two elements)
    assert s([concat]) == Match(dst=IntervalSet.of([(0x0A000001, 0x0A000002)]), proto=frozenset({6, 17}),
                                dport=IntervalSet.of([(53, 53), (80, 80)]))


def test_match_bounds():
    m = nftbound.match_bound
    tcp_dport = {"payload": {"protocol": "tcp", "field": "dport"}}
    assert m({"op": "==", "left": tcp_dport, "right": {"range": [1, 5]}}) == \
        Match(proto=frozenset({6}), dport=IntervalSet.range(1, 5))
    assert m({"op": "!=", "left": tcp_dport, "right": 22}) == Match(proto=frozenset({6}))
    assert m({"op": "==", "left": tcp_dport, "right": "@ports"}) == Match(proto=frozenset({6}))
    assert m({"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
              "right": {"prefix": {"addr": "10.1.0.0", "len": 16}}}) == Match(src=IntervalSet.cidr("10.1.0.0/16"))
    assert m({"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}) == \
        Match(proto=frozenset({6, 17}))
    assert m({"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}) is None
    assert m({"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": 1}) == nftbound.NO_IPV4
    # contradictory matches: no packet reaches the statement
    assert nftbound.statement_bound([{"op": "==", "left": tcp_dport, "right": 1},
                                     {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}]) is None


def test_ingress_devices_read_from_the_chain_text():
    """nft 1.0.6 -j leaves out an ingress chain's device; `nft list chain` prints it."""
    doc = document("netdev_ingress")
    texts = {"on_d0": 'table netdev edge {\n\tchain on_d0 {\n\t\ttype filter hook ingress device "d0" priority filter;',
             "on_d1": "\t\ttype filter hook ingress devices = { d1, eth7 } priority filter; policy accept;"}
    foreign.fill_ingress_devices(doc, lambda family, table, name: texts[name])
    assert {c.chain: c.devices for c in nftchains.classify(doc)} == {"on_d0": ("d0",), "on_d1": ("d1", "eth7")}
    assert [c.chain for c in nftchains.classify(doc, {"d0"})] == ["on_d0"]
    assert [c.chain for c in nftchains.classify(doc, {"eth7"})] == ["on_d1"]
    assert [c.chain for c in nftchains.classify(doc, {"eth9"})] == []


def test_ingress_chain_without_a_known_device_counts_for_every_device():
    assert chains("netdev_ingress") == {"on_d0": "counter", "on_d1": ""}
    assert chains("netdev_ingress", {"eth9"}) == {"on_d0": "counter", "on_d1": ""}


def test_passed_devices_climb_masters_and_uppers():
    devices = (Device("eth0", 2, master=10), Device("bond0", 10, "bond", master=11), Device("br0", 11, "bridge"),
               Device("vlan5", 12, "vlan", link=10), Device("eth1", 3))
    assert nftchains.passed_devices(devices, ["eth0"]) == {"eth0", "bond0", "br0", "vlan5"}
    assert nftchains.passed_devices(devices, ["eth1"]) == {"eth1"}
    assert nftchains.passed_devices(devices, []) is None


# ----------------------------------------------------------------------------- the plan

def with_devices(name):
    doc = document(name)
    foreign.fill_ingress_devices(doc, lambda family, table, chain: f'hook ingress device "{chain[3:]}" priority')
    return doc


def native_host(name, planned="nft", **kwargs):
    return replace(HOST, foreign=Foreign(planned, nftchains.classify(with_devices(name), {"d0"}), **kwargs))


def verdict(result, host, packet, ruleset=None):
    e = explain(result, parse_packet(packet.replace("L", L)), host, ruleset)
    return e.verdict, e.code, e.notes


BOTH = FILTER.replace("COMMIT", "-A INPUT -p tcp -m tcp --dport 2222 -j DROP\n-A INPUT -p udp -m udp --dport 9 -j DROP\n"
                                  "-A INPUT -s 192.0.2.0/24 -j DROP\nCOMMIT")


# fixture; a packet a native statement may act on (netfilter decides it); one XDP still drops, or
# "everything" when a statement cannot be bounded (limit, set update) and XDP defers every packet
NATIVE = [
    ("native_dnat", "tcp 198.51.100.7:1 > L:2222 flags S", "tcp 198.51.100.7:1 > L:22 flags S"),
    ("native_counter_input", "tcp 198.51.100.7:1 > L:22 flags S", "udp 198.51.100.7:1 > L:53"),
    ("native_deep_jump", "tcp 198.51.100.7:1 > L:22 flags S", "tcp 198.51.100.7:1 > L:80 flags S"),
    ("native_statements", "udp 198.51.100.7:1 > L:9", "everything"),
    ("netdev_ingress", "tcp 192.0.2.9:1 > L:80 flags S", "tcp 198.51.100.7:1 > L:80 flags S"),
    # kube-proxy: L is in nodeport-ips, tcp/30080 a node port; other ports of L stay XDP's
    ("native_kube_proxy", "tcp 198.51.100.7:1 > L:30080 flags S", "tcp 198.51.100.7:1 > L:80 flags S"),
]


def check_native(result, host, deferred, dropped):
    got, code, notes = verdict(result, host, deferred + " iface d0")
    assert (got, code) == ("PASS", "foreign.nft")
    assert any("nftables table" in n for n in notes)
    assert any(n.startswith("foreign.nft:") for n in result.notes)
    if dropped == "everything":
        assert result.rules[1].match == Match() and result.rules[1].action.verdict == Verdict.DEFER
    else:
        assert verdict(result, host, dropped + " iface d0")[:2] == ("DROP", "ok.drop")


@pytest.mark.parametrize("name, deferred, dropped", NATIVE)
def test_a_native_chain_with_effects_defers_what_it_may_act_on(name, deferred, dropped):
    host = native_host(name)
    check_native(plan(parse(BOTH, "f.rules"), host), host, deferred, dropped)


def test_an_ip_filter_table_iptables_nft_save_cannot_show_is_native():
    """Its INPUT (`tcp dport 22 ct mark set 5 log`) is judged as a native chain: the planned
    ruleset (here raw's DROPs, standing in for any table iptables-nft-save does show) lacks `filter`."""
    host = native_host("ip_filter_native")
    raw = parse("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", "r.rules")
    result = plan(raw, host)
    assert verdict(result, host, "tcp 198.51.100.7:1 > L:22 flags S iface d0")[:2] == ("PASS", "foreign.nft")
    assert verdict(result, host, "tcp 198.51.100.7:1 > L:23 flags S iface d0")[:2] == ("PASS", "ok.policy")
    assert plan(parse(BOTH, "f.rules"), host).rules == plan(parse(BOTH, "f.rules"), HOST).rules  # shown: planned


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
    on_d1 = replace(HOST, foreign=Foreign("nft", nftchains.classify(with_devices("netdev_ingress"), {"d1"})))
    assert plan(ruleset, on_d1).rules == plan(ruleset, HOST).rules
    on_d0 = native_host("netdev_ingress")
    assert verdict(plan(ruleset, on_d0), on_d0, "udp 192.0.2.9:1 > L:53 iface d0")[:2] == ("PASS", "foreign.nft")


def test_iptables_nft_tables_are_the_planned_ones_when_planning_from_nft():
    ruleset = parse(FILTER + NAT, "fn.rules")
    host = native_host("xtables")
    result = plan(ruleset, host)
    assert result.rules == plan(ruleset, HOST).rules
    assert verdict(result, host, "tcp 198.51.100.7:1 > L:22 flags S iface d0")[:2] == ("DROP", "ok.drop")
    # the same document while the planned ruleset lacks `nat`: iptables-nft-save could not show it,
    # so its chain is judged as a native one (its counter and REDIRECT act on TCP port 80)
    lacking = plan(parse(FILTER, "f.rules"), host)
    assert verdict(lacking, host, "tcp 198.51.100.7:1 > L:80 flags S iface d0")[:2] == ("PASS", "foreign.nft")
    assert verdict(lacking, host, "tcp 198.51.100.7:1 > L:22 flags S iface d0")[:2] == ("DROP", "ok.drop")


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
    effects = (Effect("rule handle 3: log", nftbound.to_bound(Match(proto=frozenset({6}), dport=IntervalSet.single(22)))),
               Effect("rule handle 4: limit"))
    host = replace(HOST, foreign=Foreign("legacy", (NativeChain("inet", "t", "c", "ingress", -5, ("d0",), effects),),
                                         other_text, other_tables, ("x",)))
    record = json.loads(json.dumps(planstore.host_record(host)))
    assert planstore.host_from_record(record) == host
    assert planstore.host_from_record(json.loads(json.dumps(planstore.host_record(HOST)))) == HOST
