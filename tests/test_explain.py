# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp explain` on small rulesets: verdict, deciding rule (with the path through user chains)
and reason code per packet. The expectations were worked out from iptables semantics and the
planner's rules (DESIGN.md sections 2 and 3), not copied from the output."""
import json
from ipaddress import IPv4Network

import pytest

from ipt2xdp import cli
from ipt2xdp.explain import explain, render_text
from ipt2xdp.explain_loaded import ProgramRun, disagreements
from ipt2xdp.hostinfo import Device, HostContext
from ipt2xdp.packetspec import parse_packet
from ipt2xdp.parse import parse
from ipt2xdp.plan import plan

HOST = HostContext(devices=(Device("lo", 1), Device("veth0", 5, "veth"), Device("eth1", 6)),
                   local_destinations=(IPv4Network("10.77.1.2/32"), IPv4Network("224.0.0.0/4")),
                   attached=("veth0",), ct_external_helpers=False)
L = "10.77.1.2"  # the host's address

RULESETS = {
    "chains": ("ACCEPT", ":CHECK - [0:0]\n",
               "-A INPUT -j CHECK\n-A INPUT -p tcp -m tcp --dport 22 -j DROP\n"
               "-A CHECK -s 10.0.0.0/8 -j RETURN\n-A CHECK -p tcp -j ACCEPT\n"),
    "nested": ("DROP", ":A - [0:0]\n:B - [0:0]\n",
               "-A INPUT -s 192.0.2.0/24 -j A\n-A INPUT -p udp -j ACCEPT\n"
               "-A A -p tcp -j B\n-A A -j DROP\n-A B -p tcp -m tcp --dport 80 -j RETURN\n-A B -j ACCEPT\n"),
    "conntrack": ("DROP", "", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                              "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"),
    "log": ("ACCEPT", "", '-A INPUT -p tcp -m tcp --dport 23 -j LOG --log-prefix "telnet "\n'
                          "-A INPUT -p tcp -m tcp --dport 23 -j DROP\n-A INPUT -s 192.0.2.0/24 -j DROP\n"),
    "iface": ("ACCEPT", "", "-A INPUT -i veth0 -p udp -m udp --dport 53 -j DROP\n"
                            "-A INPUT -i eth1 -p udp -j DROP\n"),
    "maybe-drop": ("ACCEPT", "", "-A INPUT -m mark --mark 0x1 -j DROP\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
                                 "-A INPUT -p tcp -m tcp --dport 25 -j DROP\n"),
}
NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n" \
      "-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.77.1.2:80\nCOMMIT\n"


def ruleset(name):
    policy, chains, body = RULESETS[name]
    text = f"*filter\n:INPUT {policy} [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{chains}{body}COMMIT\n"
    return parse((NAT if name == "conntrack" else "") + text, f"{name}.rules")


# ruleset; packet; "VERDICT code deciding-rule [via jump,jump]": via, every rule the packet matched on its way
# (a jump it came back from and the RETURN it came back by too: netfilter counts them)
TABLE = """
chains; tcp 10.1.2.3:1 > L:22; DROP ok.drop filter/INPUT#2 via filter/INPUT#1,filter/CHECK#1
chains; tcp 192.0.2.1:1 > L:22; PASS ok.accept filter/CHECK#2 via filter/INPUT#1
chains; tcp 10.1.2.3:1 > L:80; PASS ok.policy filter/INPUT#0
chains; udp 192.0.2.1:1 > L:22; PASS ok.policy filter/INPUT#0
nested; tcp 192.0.2.1:1 > L:22; PASS ok.accept filter/B#2 via filter/INPUT#1,filter/A#1
nested; tcp 192.0.2.1:1 > L:80; DROP ok.drop filter/A#2 via filter/INPUT#1,filter/A#1,filter/B#1
nested; udp 192.0.2.1:1 > L:53; DROP ok.drop filter/A#2 via filter/INPUT#1
nested; udp 198.51.100.7:1 > L:53; PASS ok.accept filter/INPUT#2
nested; tcp 198.51.100.7:1 > L:80; DROP ok.policy filter/INPUT#0
conntrack; tcp 198.51.100.7:4242 > L:80 flags S; DROP ok.policy filter/INPUT#0
conntrack; tcp 198.51.100.7:4242 > L:80 flags A; DROP ok.policy filter/INPUT#0
conntrack; udp 198.51.100.7:4242 > L:53; DROP ok.policy filter/INPUT#0
conntrack; tcp 198.51.100.7:4242 > L:22; PASS ok.accept filter/INPUT#2
conntrack; tcp 198.51.100.7:4242 > L:80 ct established; PASS match.ctstate-unsure filter/INPUT#1
conntrack; tcp 198.51.100.7:4242 > L:80 ct invalid; DROP ok.policy filter/INPUT#0
conntrack; icmp 198.51.100.7 > L type echo-request; PASS match.ctstate-unsure filter/INPUT#1
conntrack; gre 198.51.100.7 > L; PASS match.ctstate-unsure filter/INPUT#1
conntrack; tcp 198.51.100.7:4242 > L:8080; PASS earlier.nat-prerouting nat/PREROUTING#1
conntrack; tcp 198.51.100.7:4242 > 203.0.113.9:22; PASS guard.not-local -
conntrack; tcp 198.51.100.7:4242 > L:80 iface eth1; PASS packet.not-attached -
conntrack; udp 198.51.100.7:4242 > L:80 frag more; PASS packet.fragment -
conntrack; tcp 198.51.100.7:4242 > 224.0.0.5:80; DROP ok.policy filter/INPUT#0
log; tcp 198.51.100.7:1 > L:23; PASS target.log filter/INPUT#1
log; tcp 192.0.2.9:1 > L:23; PASS target.log filter/INPUT#1
log; tcp 192.0.2.9:1 > L:24; DROP ok.drop filter/INPUT#3
log; udp 198.51.100.7:1 > L:24; PASS ok.policy filter/INPUT#0
iface; udp 198.51.100.7:1 > L:53 iface veth0; DROP ok.drop filter/INPUT#1
iface; udp 198.51.100.7:1 > L:54 iface veth0; PASS ok.policy filter/INPUT#0
maybe-drop; tcp 198.51.100.7:1 > L:25; DROP ok.drop filter/INPUT#3
maybe-drop; tcp 198.51.100.7:1 > L:22; PASS after.maybe-drop filter/INPUT#2
maybe-drop; tcp 198.51.100.7:1 > L:80; PASS after.maybe-drop filter/INPUT#0
"""


def rows():
    for line in TABLE.strip().splitlines():
        name, packet, expected = (part.strip() for part in line.split(";"))
        yield pytest.param(name, packet.replace(" L", " " + L).replace(" L:", " " + L + ":"), expected,
                           id=f"{name}: {packet}")


def summary(e) -> str:
    rule = f"{e.rule.table}/{e.rule.chain}#{e.rule.index}" if e.rule else "-"
    via = ",".join(f"{s.table}/{s.chain}#{s.index}" for s in e.path)
    return f"{e.verdict} {e.code} {rule}" + (f" via {via}" if via else "")


@pytest.mark.parametrize("name, packet, expected", list(rows()))
def test_explain_table(name, packet, expected):
    rs = ruleset(name)
    e = explain(plan(rs, HOST), parse_packet(packet), HOST, rs)
    assert summary(e) == expected, "\n".join(render_text(e))
    assert e.why and not e.why.startswith("-m ")  # a real sentence, not the unmodelled-match fallback
    assert e.outcome == {"DROP": "drop"}.get(e.verdict, e.outcome)
    if e.rule is not None:
        assert e.rule.text  # iptables-save text of the deciding rule


def test_text_names_rule_path_and_reason():
    rs = ruleset("nested")
    lines = render_text(explain(plan(rs, HOST), parse_packet(f"tcp 192.0.2.1:1 > {L}:22 iface veth0"), HOST, rs))
    assert lines == [
        f"packet:   tcp 192.0.2.1:1 > {L}:22 flags S iface veth0 ct none",
        "verdict:  PASS (netfilter accepts it)",
        "rule:     filter/B #2: -A B -j ACCEPT",
        "  via     filter/INPUT #1: -A INPUT -s 192.0.2.0/24 -j A",
        "  via     filter/A #1: -A A -p tcp -j B",
        "reason:   ok.accept: XDP passes matching packets on; netfilter accepts them",
        lines[6]]
    assert lines[6].startswith("xdp:      classifier rule ") and lines[6].endswith("conntrack lookup NONE_VERIFIED")


def test_missing_iface_is_the_first_attached_device_and_said_so():
    rs = ruleset("iface")
    e = explain(plan(rs, HOST), parse_packet(f"udp 198.51.100.7:1 > {L}:53"), HOST, rs)
    assert summary(e) == "DROP ok.drop filter/INPUT#1"
    assert "no iface given: the packet is taken to arrive on veth0" in e.notes


def test_maybe_drop_names_the_rule_that_may_drop():
    rs = ruleset("maybe-drop")
    e = explain(plan(rs, HOST), parse_packet(f"tcp 198.51.100.7:1 > {L}:22"), HOST, rs)
    assert any(n.startswith("filter/INPUT #1 may drop it: -A INPUT -m mark --mark 0x1 -j DROP") for n in e.notes)


def test_model_program_disagreements():
    rs = ruleset("conntrack")
    model = explain(plan(rs, HOST), parse_packet(f"tcp 198.51.100.7:4242 > {L}:80"), HOST, rs)
    rid = model.rule_id
    assert (model.verdict, rid) == ("DROP", len(plan(rs, HOST).rules) - 1)  # the policy: the last rule
    assert disagreements(model, ProgramRun("DROP", f"rule {rid}", rid)) == []
    assert disagreements(model, ProgramRun("PASS", f"rule {rid}", rid)) == ["verdict: model DROP, program PASS"]
    assert disagreements(model, ProgramRun("DROP", "rule 2", 2)) == [f"deciding classifier rule: model {rid}, program 2"]
    assert disagreements(model, ProgramRun("DROP", "unclear")) == []  # other traffic moved counters too
    assert disagreements(model, ProgramRun("PASS", "overflow")) == []  # beyond capacity: deferred by design
    assert disagreements(model, ProgramRun("PASS", "none", passed_before_classifying="malformed")) == [
        "verdict: model DROP, program PASS", f"deciding classifier rule: model {rid}, program none"]


def test_cli_text_json_and_bad_spec(tmp_path, capsys):
    path = tmp_path / "rules.v4"
    policy, chains, body = RULESETS["conntrack"]
    path.write_text(f"*filter\n:INPUT {policy} [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{body}COMMIT\n")
    # lo exists in every namespace; 127.0.0.1 is local everywhere
    assert cli.main(["explain", str(path), "--iface", "lo", "--packet", "tcp 192.0.2.1:1 > 127.0.0.1:22"]) == 0
    out = capsys.readouterr().out
    assert "verdict:  PASS (netfilter accepts it)" in out and "filter/INPUT #2" in out
    assert cli.main(["explain", str(path), "--iface", "lo", "--json", "--packet", "udp 192.0.2.1:1 > 127.0.0.1:9"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["model"]["verdict"] == "DROP"
    assert document["model"]["rule"] == {"table": "filter", "chain": "INPUT", "index": 0, "text": "-P INPUT DROP"}
    assert cli.main(["explain", str(path), "--packet", "tcp 192.0.2.1:1 > 127.0.0.1:99999"]) == 2
    err = capsys.readouterr().err
    assert "<packet>:1:29: error: invalid destination port '99999'" in err and "^" in err
    assert cli.main(["explain", str(path), "--live", "--packet", "tcp 192.0.2.1:1 > 127.0.0.1:22"]) == 2
    assert "not both" in capsys.readouterr().err
