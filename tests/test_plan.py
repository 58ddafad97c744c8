# SPDX-License-Identifier: GPL-2.0-only
"""Planner decisions (tests/plan/*.t) and flattening semantics checked by hand against iptables'.

The expected verdicts below were worked out from iptables semantics (first match wins, RETURN
resumes after the jump, a goto'd chain returns to the caller of its caller, policy decides last),
not from the planner.
"""
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from dataclasses import replace

from ipt2xdp.classifier import CtClass, PacketKey, Verdict, evaluate, validate
from ipt2xdp.hostinfo import Device, HostContext, RouteType
from ipt2xdp.parse import parse
from ipt2xdp.plan import RuleRef, plan

ROUTES = (RouteType(IPv4Network("10.77.1.2/32"), "LOCAL", 5, 255),
          RouteType(IPv4Network("10.77.1.255/32"), "BROADCAST", 5, 255),
          RouteType(IPv4Network("10.88.0.1/32"), "LOCAL", 6, 255),
          RouteType(IPv4Network("127.0.0.0/8"), "LOCAL", 1, 255),
          RouteType(IPv4Network("10.77.1.0/24"), "UNICAST", 5, 254),
          RouteType(IPv4Network("0.0.0.0/0"), "UNICAST", 5, 254))
HOST = HostContext(devices=(Device("lo", 1), Device("veth0", 5, "veth"), Device("eth1", 6)),
                   local_destinations=(IPv4Network("10.77.1.2/32"), IPv4Network("10.77.1.255/32"),
                                       IPv4Network("10.88.0.1/32"), IPv4Network("127.0.0.0/8"),
                                       IPv4Network("224.0.0.0/4")),
                   attached=("veth0",), ct_external_helpers=False, route_types=ROUTES)
LOCAL = int(IPv4Address("10.77.1.2"))


def ruleset(body: str, policy: str = "ACCEPT", chains: str = "", extra_tables: str = ""):
    text = f"*filter\n:INPUT {policy} [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{chains}{body}\nCOMMIT\n"
    return parse(extra_tables + text, "test.rules")


def decision_lines():
    for path in sorted((Path(__file__).parent / "plan").glob("*.t")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line and not line.startswith("#"):
                rule, expected = line.rsplit(";", 1)
                yield pytest.param(rule, expected, id=f"{path.name}:{number}")


@pytest.mark.parametrize("rule, expected", list(decision_lines()))
def test_decision_table(rule, expected):
    result = plan(ruleset(rule), HOST)
    decision = next(d for d in result.decisions if d.ref == RuleRef("filter", "INPUT", 1))
    assert f"{decision.kind}:{decision.code}" == expected, decision.why
    assert decision.why
    validate(result.rules, result.default)


def packet(src="198.51.100.7", proto=6, dport=22, sport=40000, iif=5, dst=LOCAL, flags=0x02, ct=None, icmp=None):
    tcp_or_udp = proto in (6, 17)
    if ct is None:
        ct = CtClass.NONE if tcp_or_udp else CtClass.NOT_LOOKED_UP
    return PacketKey(int(IPv4Address(src)), dst, proto, sport if tcp_or_udp else None,
                     dport if tcp_or_udp else None, iif, icmp, flags if proto == 6 else None, ct)


def verdict(result, pkt):
    return evaluate(result.rules, result.default, pkt)[0]


def test_return_resumes_after_the_jump():
    rs = ruleset("-A INPUT -j CHECK\n-A INPUT -p tcp -m tcp --dport 22 -j DROP\n"
                 "-A CHECK -s 10.0.0.0/8 -j RETURN\n-A CHECK -p tcp -j ACCEPT",
                 chains=":CHECK - [0:0]\n")
    result = plan(rs, HOST)
    assert verdict(result, packet(src="10.1.2.3")) == Verdict.DROP      # RETURN, then rule 2 drops
    assert verdict(result, packet(src="192.0.2.1")) == Verdict.ACCEPT   # CHECK accepts tcp first
    assert verdict(result, packet(src="10.1.2.3", dport=80)) == Verdict.ACCEPT  # falls to policy


def test_goto_returns_to_the_callers_caller():
    # INPUT -j A; A -g B; B RETURN  => resumes in INPUT after "-j A", skipping the rest of A.
    rs = ruleset("-A INPUT -j A\n-A INPUT -s 10.0.0.0/8 -j DROP\n"
                 "-A A -g B\n-A A -j ACCEPT\n-A B -p udp -j ACCEPT\n-A B -p tcp -j RETURN",
                 policy="ACCEPT", chains=":A - [0:0]\n:B - [0:0]\n")
    result = plan(rs, HOST)
    assert verdict(result, packet(src="10.1.1.1", proto=6)) == Verdict.DROP    # RETURN from B
    assert verdict(result, packet(src="10.1.1.1", proto=47)) == Verdict.DROP   # end of B, same
    assert verdict(result, packet(src="10.1.1.1", proto=17)) == Verdict.ACCEPT


def test_return_from_input_means_policy():
    rs = ruleset("-A INPUT -s 10.0.0.0/8 -j RETURN\n-A INPUT -j ACCEPT", policy="DROP")
    result = plan(rs, HOST)
    assert verdict(result, packet(src="10.9.9.9")) == Verdict.DROP
    assert verdict(result, packet(src="192.0.2.9")) == Verdict.ACCEPT


def test_unknown_rule_defers_only_where_its_modelled_part_matches():
    rs = ruleset("-A INPUT -p tcp -m limit --limit 1/sec -j ACCEPT\n-A INPUT -j DROP")
    result = plan(rs, HOST)
    assert verdict(result, packet(proto=6)) == Verdict.DEFER
    assert verdict(result, packet(proto=17)) == Verdict.DROP


def test_packets_not_for_this_host_are_deferred():
    result = plan(ruleset("-A INPUT -j DROP"), HOST)
    assert verdict(result, packet(dst=int(IPv4Address("10.77.1.99")))) == Verdict.DEFER
    assert verdict(result, packet()) == Verdict.DROP


def test_earlier_chains_defer_what_they_may_touch():
    nat = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
           ":POSTROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT "
           "--to-destination 10.77.1.2:80\nCOMMIT\n")
    result = plan(ruleset("-A INPUT -p tcp -j DROP", extra_tables=nat), HOST)
    assert verdict(result, packet(dport=8080)) == Verdict.DEFER
    assert verdict(result, packet(dport=8081)) == Verdict.DROP
    dnat = next(d for d in result.decisions if d.ref == RuleRef("nat", "PREROUTING", 1))
    assert dnat.kind == "netfilter" and dnat.code == "earlier.nat-prerouting"


def test_raw_policy_drop_defers_everything():
    raw = "*raw\n:PREROUTING DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    result = plan(ruleset("-A INPUT -j DROP", extra_tables=raw), HOST)
    assert verdict(result, packet()) == Verdict.DEFER


def test_oversized_chain_degrades_to_defer():
    body = "\n".join(f"-A BIG -s 10.0.{i // 250}.{i % 250}/32 -j DROP" for i in range(300))
    rs = ruleset("-A INPUT -j BIG\n-A INPUT -j DROP\n" + body, chains=":BIG - [0:0]\n")
    result = plan(rs, HOST, max_rules=100)
    assert verdict(result, packet(src="10.0.0.1")) == Verdict.DEFER
    jump = next(d for d in result.decisions if d.ref == RuleRef("filter", "INPUT", 1))
    assert jump.code == "chain.too-large"


def test_bond_slave_is_seen_as_the_bond_and_bridge_ports_are_ambiguous():
    host = HostContext(devices=(Device("bond0", 7, "bond"), Device("eth2", 8, master=7),
                                Device("br0", 9, "bridge"), Device("eth3", 10, master=9)),
                       local_destinations=(IPv4Network("10.77.1.2/32"),), attached=("eth2", "eth3"))
    result = plan(ruleset("-A INPUT -i bond0 -j DROP\n-A INPUT -i eth3 -j DROP"), host)
    assert verdict(result, packet(iif=8)) == Verdict.DROP      # eth2 -> netfilter sees bond0
    assert verdict(result, packet(iif=10)) == Verdict.DEFER    # bridge port: netfilter may see br0


@pytest.mark.parametrize("above", [
    (Device("br0", 9, "bridge"),),                     # a bond in a bridge (Proxmox's vmbr0 over bond0)
    (Device("vrf0", 9, "vrf"),),                       # a bond in a VRF
    (Device("bond0.5", 9, "vlan", link=7),),           # a VLAN of the bond (rx VLAN offload on the slave)
    (Device("mv0", 9, "macvlan", link=7),),            # a macvlan on the bond
    (Device("bond1", 9, "bond", master=11), Device("br1", 11, "bridge")),  # bonds of bonds in a bridge
])
def test_a_bond_slave_is_ambiguous_when_its_bond_hands_packets_on(above):
    # netfilter sees the bridge, the VRF or the upper device, never bond0: `-i bond0 -j DROP` (or
    # `! -i vmbr0 -j DROP`) must not be taken for what arrives on the slave
    master = 9 if above[0].kind in ("bridge", "vrf", "bond") else None
    host = HostContext(devices=(Device("bond0", 7, "bond", master=master), Device("eth2", 8, master=7)) + above,
                       local_destinations=(IPv4Network("10.77.1.2/32"),), attached=("eth2",))
    result = plan(ruleset("-A INPUT -i bond0 -j DROP\n-A INPUT ! -i br0 -j DROP"), host)
    assert verdict(result, packet(iif=8)) == Verdict.DEFER


def test_a_slave_of_nested_bonds_is_seen_as_the_outer_bond():
    host = HostContext(devices=(Device("bond1", 6, "bond"), Device("bond0", 7, "bond", master=6),
                                Device("eth2", 8, master=7)),
                       local_destinations=(IPv4Network("10.77.1.2/32"),), attached=("eth2",))
    result = plan(ruleset("-A INPUT -i bond0 -j ACCEPT\n-A INPUT -i bond1 -j DROP"), host)
    assert verdict(result, packet(iif=8)) == Verdict.DROP


def test_a_master_not_among_the_devices_makes_the_device_ambiguous():
    host = HostContext(devices=(Device("eth2", 8, master=42),),
                       local_destinations=(IPv4Network("10.77.1.2/32"),), attached=("eth2",))
    result = plan(ruleset("-A INPUT -i eth2 -j DROP"), host)
    assert verdict(result, packet(iif=8)) == Verdict.DEFER


def test_a_device_under_a_vlan_device_is_ambiguous():
    # With rx VLAN offload XDP sees eth0.100's frames untagged on eth0; netfilter sees eth0.100.
    host = HostContext(devices=(Device("eth0", 2), Device("eth0.100", 3, "vlan", link=2), Device("eth1", 4)),
                       local_destinations=(IPv4Network("10.77.1.2/32"),), attached=("eth0", "eth1"))
    result = plan(ruleset("-A INPUT -i eth0.100 -j ACCEPT\n-A INPUT -i eth0 -j DROP\n-A INPUT -i eth1 -j DROP"),
                  host)
    assert verdict(result, packet(iif=2)) == Verdict.DEFER
    assert verdict(result, packet(iif=4)) == Verdict.DROP


def test_a_slave_of_a_bond_in_open_vswitch_defers_everything():
    host = HostContext(devices=(Device("ovs-system", 5, "openvswitch"), Device("bond0", 3, "bond", master=5),
                                Device("eth0", 2, master=3), Device("eth1", 4)),
                       local_destinations=(IPv4Network("10.77.1.2/32"),), attached=("eth0", "eth1"))
    result = plan(ruleset("-A INPUT -s 198.51.100.7/32 -j DROP"), host)
    assert verdict(result, packet(iif=2, src="198.51.100.7")) == Verdict.DEFER
    assert verdict(result, packet(iif=4, src="198.51.100.7")) == Verdict.DROP


def test_an_open_vswitch_port_defers_everything():
    host = HostContext(devices=(Device("ovs-system", 5, "openvswitch"), Device("eth0", 2, master=5),
                                Device("eth1", 4)),
                       local_destinations=(IPv4Network("10.77.1.2/32"),), attached=("eth0", "eth1"))
    result = plan(ruleset("-A INPUT -s 198.51.100.7/32 -j DROP"), host)
    assert verdict(result, packet(iif=2, src="198.51.100.7")) == Verdict.DEFER
    assert verdict(result, packet(iif=4, src="198.51.100.7")) == Verdict.DROP
    assert any(note.startswith("foreign.ovs: eth0 ") for note in result.notes)


def test_counter_paths_name_the_jump_and_the_deciding_rule():
    rs = ruleset("-A INPUT -j BL\n-A BL -s 203.0.113.0/24 -j DROP", chains=":BL - [0:0]\n")
    result = plan(rs, HOST)
    rule_id = evaluate(result.rules, result.default, packet(src="203.0.113.9"))[1]
    assert result.counter_paths[rule_id] == (RuleRef("filter", "INPUT", 1), RuleRef("filter", "BL", 1))


# --- connection state -------------------------------------------------------------------------------

SERVER = ("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
          "-A INPUT -m conntrack --ctstate INVALID -j DROP\n"
          "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
          "-A INPUT -p tcp -m tcp --dport 25 -m state --state NEW -j ACCEPT\n")


def test_established_related_is_no_match_without_an_entry():
    result = plan(ruleset(SERVER, policy="DROP"), HOST)
    validate(result.rules, result.default)
    # no conntrack entry: NEW or INVALID, never ESTABLISHED/RELATED; a closed port meets the policy
    assert verdict(result, packet(dport=80)) == Verdict.DROP
    assert verdict(result, packet(proto=17, dport=53)) == Verdict.DROP
    # a tracked flow (ESTABLISHED, or a SYN retransmit still NEW, or INVALID): netfilter decides
    assert verdict(result, packet(dport=80, ct=CtClass.FOUND)) == Verdict.DEFER
    # ICMP is never looked up (an error may be RELATED)
    assert verdict(result, packet(proto=1, icmp=3 * 256 + 3)) == Verdict.DEFER
    # the INVALID DROP rule is stepped past; an ACCEPT after it defers (netfilter may drop INVALID)
    assert verdict(result, packet(dport=22)) == Verdict.DEFER
    assert verdict(result, packet(dport=25)) == Verdict.DEFER


def test_expectations_make_no_entry_possibly_related():
    raw = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
           "-A PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp\nCOMMIT\n")
    result = plan(ruleset(SERVER, policy="DROP", extra_tables=raw), HOST)
    assert verdict(result, packet(dport=80)) == Verdict.DEFER
    result = plan(ruleset(SERVER, policy="DROP"), replace(HOST, ct_external_helpers=True))
    assert verdict(result, packet(dport=80)) == Verdict.DEFER


def test_negated_state_drop_is_exact_for_new_packets():
    rs = ruleset("-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -p tcp -j DROP\n-A INPUT -j ACCEPT")
    result = plan(rs, HOST)
    assert verdict(result, packet(dport=80)) == Verdict.DROP
    assert verdict(result, packet(dport=80, ct=CtClass.FOUND)) == Verdict.DEFER
    assert verdict(result, packet(proto=17, dport=80)) == Verdict.ACCEPT


def test_state_in_user_chain_with_return():
    rs = ruleset("-A INPUT -j CHK\n-A INPUT -p udp -j ACCEPT\n"
                 "-A CHK -m state --state ESTABLISHED,RELATED -j RETURN\n-A CHK -p tcp -j DROP",
                 chains=":CHK - [0:0]\n")
    result = plan(rs, HOST)
    validate(result.rules, result.default)
    assert verdict(result, packet(dport=80)) == Verdict.DROP
    assert verdict(result, packet(dport=80, ct=CtClass.FOUND)) == Verdict.DEFER
    assert verdict(result, packet(proto=17, dport=53)) == Verdict.ACCEPT
    assert verdict(result, packet(proto=17, dport=53, ct=CtClass.FOUND)) == Verdict.DEFER


def test_maybe_drop_never_skips_side_effects():
    rs = ruleset("-A INPUT -p tcp -m recent --rcheck --name x -j DROP\n-A INPUT -p tcp -j DROP")
    assert verdict(plan(rs, HOST), packet(dport=80)) == Verdict.DEFER
    rs = ruleset("-A INPUT -p tcp -m length --length 0:64 -j DROP\n-A INPUT -p tcp -j DROP")
    assert verdict(plan(rs, HOST), packet(dport=80)) == Verdict.DROP


def test_ufw_not_local_returns_for_the_hosts_destination_types():
    """ufw's not-local chain: local, multicast and broadcast destinations RETURN (xt_addrtype), so
    the rate-limited logging and the DROP after them never see a packet XDP decides."""
    chains = ":ufw-not-local - [0:0]\n:ufw-logging-deny - [0:0]\n"
    body = ("-A INPUT -j ufw-not-local\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
            "-A ufw-not-local -m addrtype --dst-type LOCAL -j RETURN\n"
            "-A ufw-not-local -m addrtype --dst-type MULTICAST -j RETURN\n"
            "-A ufw-not-local -m addrtype --dst-type BROADCAST -j RETURN\n"
            "-A ufw-not-local -m limit --limit 3/min --limit-burst 10 -j ufw-logging-deny\n"
            "-A ufw-not-local -j DROP\n"
            "-A ufw-logging-deny -j LOG --log-prefix \"[UFW BLOCK] \"")
    result = plan(ruleset(body, policy="DROP", chains=chains), HOST)
    assert verdict(result, packet(dport=22)) == Verdict.ACCEPT
    assert verdict(result, packet(dport=23)) == Verdict.DROP
    assert verdict(result, packet(proto=17, dst=int(IPv4Address("10.77.1.255")))) == Verdict.DROP
    assert verdict(result, packet(proto=17, dst=int(IPv4Address("224.0.0.251")))) == Verdict.DROP
    unknown_routes = plan(ruleset(body, policy="DROP", chains=chains), replace(HOST, route_types=None))
    assert verdict(unknown_routes, packet(dport=23)) == Verdict.DEFER


def test_limit_iface_in_compares_the_route_device_with_the_input_device():
    host = replace(HOST, attached=("veth0", "eth1"))
    result = plan(ruleset("-A INPUT -m addrtype --dst-type LOCAL --limit-iface-in -j DROP"), host)
    veth0_local, eth1_local = int(IPv4Address("10.77.1.2")), int(IPv4Address("10.88.0.1"))
    assert verdict(result, packet(iif=5, dst=veth0_local)) == Verdict.DROP
    assert verdict(result, packet(iif=6, dst=veth0_local)) == Verdict.ACCEPT  # UNICAST on eth1
    assert verdict(result, packet(iif=6, dst=eth1_local)) == Verdict.DROP


STATEFUL = ("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
            "-A INPUT -m conntrack --ctstate INVALID -j DROP\n"
            "-A INPUT -p tcp -m tcp --dport 22 -m state --state NEW -j ACCEPT\n"
            "-A INPUT -p udp -m udp --dport 53 -m state --state NEW -j ACCEPT\n")
SYN, SYN_FIN, ACK, SYN_ACK, SYN_PSH_URG = 0x02, 0x03, 0x10, 0x12, 0x2A
VERIFIED = CtClass.NONE_VERIFIED


def test_new_versus_invalid_for_packets_without_an_entry():
    """Worked out from tcp_error/tcp_new: with the length and checksum verified, SYN is NEW, ACK is
    NEW with tcp_loose (INVALID without), every other flag combination INVALID; unverified, NEW
    and INVALID both stay possible, but an INVALID-only combination is INVALID either way."""
    result = plan(ruleset(STATEFUL, policy="DROP"), HOST)
    validate(result.rules, result.default)
    assert verdict(result, packet(dport=22, ct=VERIFIED)) == Verdict.ACCEPT
    assert verdict(result, packet(dport=22, flags=SYN_PSH_URG, ct=VERIFIED)) == Verdict.ACCEPT
    assert verdict(result, packet(dport=31337, ct=VERIFIED)) == Verdict.DROP
    assert verdict(result, packet(proto=17, dport=53, ct=VERIFIED)) == Verdict.ACCEPT
    assert verdict(result, packet(proto=17, dport=31337, ct=VERIFIED)) == Verdict.DROP
    assert verdict(result, packet(dport=22, flags=ACK, ct=VERIFIED)) == Verdict.ACCEPT  # picked up (loose)
    for flags in (SYN_FIN, SYN_ACK, 0x00, 0x04, 0x11):  # invalid or refused without an entry: INVALID
        assert verdict(result, packet(dport=22, flags=flags, ct=VERIFIED)) == Verdict.DROP
        assert verdict(result, packet(dport=22, flags=flags)) == Verdict.DROP
    # checksum not verified: INVALID (-> DROP) or NEW (-> ACCEPT): netfilter decides; drops either way
    assert verdict(result, packet(dport=22)) == Verdict.DEFER
    assert verdict(result, packet(proto=17, dport=53)) == Verdict.DEFER
    assert verdict(result, packet(dport=31337)) == Verdict.DROP
    assert verdict(result, packet(dport=22, ct=CtClass.FOUND)) == Verdict.DEFER


def test_host_sysctls_and_helpers_change_new_versus_invalid():
    strict = plan(ruleset(STATEFUL, policy="DROP"), replace(HOST, ct_tcp_loose=False))
    assert verdict(strict, packet(dport=22, flags=ACK, ct=VERIFIED)) == Verdict.DROP   # not picked up: INVALID
    assert verdict(strict, packet(dport=22, ct=VERIFIED)) == Verdict.ACCEPT
    unchecked = plan(ruleset(STATEFUL, policy="DROP"), replace(HOST, ct_checksum=False))
    assert verdict(unchecked, packet(dport=22)) == Verdict.ACCEPT        # a bad TCP checksum is not looked at
    assert verdict(unchecked, packet(proto=17, dport=53)) == Verdict.DEFER  # a UDP length may still be bad
    helpers = plan(ruleset(STATEFUL, policy="DROP"), replace(HOST, ct_external_helpers=True))
    assert verdict(helpers, packet(dport=31337, ct=VERIFIED)) == Verdict.DEFER  # an expectation: RELATED


def test_ctproto_is_the_packets_protocol_when_it_has_an_entry():
    rs = ruleset("-A INPUT -m conntrack --ctstate NEW,RELATED --ctproto 6 -j DROP\n"
                 "-A INPUT -m conntrack --ctstate INVALID --ctproto 6 -j ACCEPT\n")
    result = plan(rs, HOST)
    assert verdict(result, packet(dport=80, ct=VERIFIED)) == Verdict.DROP
    assert verdict(result, packet(proto=17, dport=80, ct=VERIFIED)) == Verdict.ACCEPT  # policy
    # INVALID has no entry, so --ctproto 6 is not tested: a UDP packet that may be INVALID may match
    assert verdict(result, packet(proto=17, dport=80)) == Verdict.DEFER
    assert verdict(result, packet(dport=80, flags=SYN_FIN, ct=VERIFIED)) == Verdict.ACCEPT
    assert verdict(result, packet(proto=17, dport=80, ct=CtClass.FOUND)) == Verdict.DEFER


def test_raw_notrack_only_changes_the_packets_it_matches():
    """NOTRACK in raw PREROUTING: its packets are deferred by the earlier-chain guard, the rest are
    never UNTRACKED, so a valid SYN from outside is still surely NEW. A helper (CT --helper) makes
    expectations, so any packet without an entry may be RELATED."""
    notrack = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -i lo -j CT --notrack\n"
               "-A PREROUTING -p udp -m udp --dport 123 -j NOTRACK\n-A OUTPUT -o lo -j NOTRACK\nCOMMIT\n")
    result = plan(ruleset(STATEFUL, policy="DROP", extra_tables=notrack), HOST)
    assert verdict(result, packet(dport=31337, ct=VERIFIED)) == Verdict.DROP
    assert verdict(result, packet(dport=22, ct=VERIFIED)) == Verdict.ACCEPT
    assert verdict(result, packet(proto=17, dport=123, ct=VERIFIED)) == Verdict.DEFER  # the guard
    helper = notrack.replace("-j NOTRACK\n-A OUTPUT", "-j CT --helper ftp\n-A OUTPUT")
    result = plan(ruleset(STATEFUL, policy="DROP", extra_tables=helper), HOST)
    assert verdict(result, packet(dport=31337, ct=VERIFIED)) == Verdict.DEFER


def test_the_input_device_addrtype_compares_is_the_outer_bond_or_unknown_in_a_vrf():
    from ipt2xdp.hostmatch import _nf_ifindex

    devices = (Device("bond1", 6, "bond"), Device("bond0", 7, "bond", master=6), Device("eth2", 8, master=7),
               Device("vrf0", 9, "vrf"), Device("bond2", 10, "bond", master=9), Device("eth3", 11, master=10),
               Device("eth4", 12, master=42), Device("eth5", 13))
    host = HostContext(devices=devices, local_destinations=(IPv4Network("10.77.1.2/32"),))
    assert _nf_ifindex(host, 8) == 6       # the outer bond of nested bonds
    assert _nf_ifindex(host, 11) is None   # a bond in a VRF: the VRF's table
    assert _nf_ifindex(host, 12) is None   # a master not known
    assert _nf_ifindex(host, 13) == 13


def test_helpers_on_a_nat_host_leave_tcp_and_udp_drops_to_netfilter():
    # an expectation of a NATed master connection NATs the expected connection's first packet
    # (no entry yet, no nat rule matching it): plan.nat_expectations -> abi.NAT_EXPECT
    raw = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
           "-A PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp\nCOMMIT\n")
    nat = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
           "-A POSTROUTING -o eth9 -j MASQUERADE\nCOMMIT\n")
    host = replace(HOST, ct_external_helpers=False)
    both = plan(ruleset("-A INPUT -s 198.51.100.7/32 -j DROP", extra_tables=raw + nat), host)
    assert both.nat_flows and both.nat_expectations
    assert any(note.startswith("nat.expectations:") for note in both.notes)
    assert not plan(ruleset("-A INPUT -s 198.51.100.7/32 -j DROP", extra_tables=raw), host).nat_expectations
    nat_only = plan(ruleset("-A INPUT -s 198.51.100.7/32 -j DROP", extra_tables=nat), host)
    assert nat_only.nat_flows and not nat_only.nat_expectations


def test_an_icmp_dnat_guard_covers_the_flow_on_every_device():
    # conntrack DNATs every later echo request of a ping the rule matched once, whatever device it
    # arrives on or however long it is; may_be_natted takes echo requests as never NATed
    nat = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
           "-A PREROUTING -i veth0 -d 10.77.1.2/32 -p icmp -m length --length 0:100 "
           "-j DNAT --to-destination 10.88.0.1\n"
           "-A PREROUTING -i veth0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.88.0.1:8080\nCOMMIT\n")
    host = replace(HOST, attached=("veth0", "eth1"))
    result = plan(ruleset("-A INPUT -d 10.77.1.2/32 -j DROP", extra_tables=nat), host)
    local = int(IPv4Address("10.77.1.2"))
    echo = dict(proto=1, dst=local, icmp=8 * 256)
    assert verdict(result, packet(iif=6, **echo)) == Verdict.DEFER   # the flow's request on eth1
    # TCP is covered by its conntrack entry (NAT_FLOWS), not by a widened guard
    assert verdict(result, packet(iif=6, dst=local, dport=80)) == Verdict.DROP
