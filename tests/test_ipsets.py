# SPDX-License-Identifier: GPL-2.0-only
"""-m set without the kernel: reading `ipset save`, the decision table (tests/plan/ipset/*.t), the
verdicts the plan gives members and non-members, and which DROPs carry which guard bits."""
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from ipt2xdp import ipsets
from ipt2xdp.classifier import GUARD_ADDITIONS, GUARD_REMOVALS, IntervalSet, Verdict, evaluate, validate
from ipt2xdp.plan import RuleRef, plan
from tests.test_plan import HOST, packet, ruleset

TABLES = Path(__file__).parent / "plan" / "ipset"
NOW = 1_000 * ipsets.NS


def table(path):
    sets, lines = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("@"):
            sets.append(line[1:])
        elif line and not line.startswith("#"):
            lines.append((number, line))
    return tuple(ipsets.parse_save("\n".join(sets), NOW).values()), lines


def decision_lines():
    for path in sorted(TABLES.glob("*.t")):
        sets, lines = table(path)
        for number, line in lines:
            rule, expected = line.rsplit(";", 1)
            yield pytest.param(rule, expected, sets, id=f"{path.name}:{number}")


def host_with(sets, ruleset_=None):
    if ruleset_ is not None:
        changed = ipsets.changed_by_rules(ruleset_)
        sets = tuple(ipsets.IpSet(s.name, unsupported="set-target") if s.name in changed else s for s in sets)
    return replace(HOST, ipsets=sets)


@pytest.mark.parametrize("rule, expected, sets", list(decision_lines()))
def test_decision_table(rule, expected, sets):
    rs = ruleset(rule)
    result = plan(rs, host_with(sets, rs))
    decision = next(d for d in result.decisions if d.ref == RuleRef("filter", "INPUT", 1))
    assert f"{decision.kind}:{decision.code}" == expected, decision.why
    assert decision.why and "not modelled" not in decision.why
    validate(result.rules, result.default)


def test_parse_save_members_timeouts_and_shapes():
    text = ("create a hash:ip family inet hashsize 64 maxelem 8 timeout 600 counters comment bucketsize 12 initval 0x1\n"
            "add a 192.0.2.2 timeout 0 packets 0 bytes 0\n"
            'add a 192.0.2.1 timeout 99 packets 0 bytes 0 comment "two words"\n'
            "create n hash:net family inet hashsize 64 maxelem 8 bucketsize 12 initval 0x2\n"
            "add n 10.0.0.0/8\nadd n 192.0.2.7\n"
            "create m hash:ip family inet hashsize 64 maxelem 8 netmask 24 bucketsize 12 initval 0x3\n"
            "add m 10.9.9.0\n")
    sets = ipsets.parse_save(text, NOW)
    a, n, m = sets["a"], sets["n"], sets["m"]
    assert a.addresses == IntervalSet.of([(int(IPv4Address("192.0.2.1")),) * 2, (int(IPv4Address("192.0.2.2")),) * 2])
    assert a.counters and a.members == 2
    assert a.expiry_ns == NOW + (99 - ipsets.TIMEOUT_MARGIN_S) * ipsets.NS  # timeout 0 is permanent
    assert n.addresses == IntervalSet.cidrs(["10.0.0.0/8", "192.0.2.7/32"]) and n.expiry_ns is None
    assert m.addresses == IntervalSet.cidrs(["10.9.9.0/24"])


def test_members_drop_and_others_pass():
    sets, _ = table(TABLES / "match_set.t")
    result = plan(ruleset("-A INPUT -m set --match-set nets src -j DROP\n-A INPUT -m set --match-set bl dst -j DROP"),
                  host_with(sets))

    def verdict(src, dst="10.77.1.2"):
        pkt = replace(packet(src=src), dst=int(IPv4Address(dst)))
        return evaluate(result.rules, result.default, pkt)[0]
    assert verdict("198.51.100.200") == Verdict.DROP
    assert verdict("198.51.101.1") == Verdict.ACCEPT


def guards(body, policy="ACCEPT", chains=""):
    sets, _ = table(TABLES / "match_set.t")
    result = plan(ruleset(body, policy=policy, chains=chains), host_with(sets))
    return [(r.action.verdict.name, r.action.guard) for r in result.rules if r.action.verdict == Verdict.DROP]


def test_guard_bits_follow_what_a_change_can_do():
    # a member leaving a DROP set is the danger; a negated set fears additions
    assert guards("-A INPUT -m set --match-set bl src -j DROP") == [("DROP", GUARD_REMOVALS)]
    assert guards("-A INPUT -m set ! --match-set bl src -j DROP") == [("DROP", GUARD_ADDITIONS)]
    # an allow-list before a plain DROP: an added member would be accepted by netfilter
    assert guards("-A INPUT -m set --match-set bl src -j ACCEPT\n-A INPUT -p udp -j DROP") == [("DROP", GUARD_ADDITIONS)]
    # a DROP set before a DROP: changes only move drops between the two rules
    assert guards("-A INPUT -m set --match-set bl src -j DROP\n-A INPUT -p udp -j DROP") == \
        [("DROP", GUARD_REMOVALS), ("DROP", 0)]
    # DROPs before any set rule are not guarded; the policy after an allow-list is
    assert guards("-A INPUT -p udp -j DROP\n-A INPUT -m set --match-set bl src -j ACCEPT", policy="DROP") == \
        [("DROP", 0), ("DROP", GUARD_ADDITIONS)]
    # a jump on a set: both ways
    assert guards("-A INPUT -m set --match-set bl src -j CHK\n-A INPUT -p udp -j DROP\n-A CHK -j ACCEPT", chains=":CHK - [0:0]\n") == \
        [("DROP", GUARD_REMOVALS | GUARD_ADDITIONS)]


def test_empty_allow_list_still_guards_later_drops():
    # the ACCEPT never matches today, but an added member would make netfilter accept it
    assert guards("-A INPUT -m set --match-set empty src -j ACCEPT\n-A INPUT -p udp -j DROP") == \
        [("DROP", GUARD_ADDITIONS)]


def test_deadline_is_the_earliest_expiry_a_drop_relies_on():
    sets, _ = table(TABLES / "match_set.t")
    result = plan(ruleset("-A INPUT -m set --match-set f2b src -j DROP"), host_with(sets))
    assert result.set_deadline_ns == NOW + (412 - ipsets.TIMEOUT_MARGIN_S) * ipsets.NS
    assert plan(ruleset("-A INPUT -m set --match-set bl src -j DROP"), host_with(sets)).set_deadline_ns is None


def test_sets_in_earlier_chains_stay_unknown():
    sets, _ = table(TABLES / "match_set.t")
    rs = ruleset("-A INPUT -p udp -j DROP", extra_tables="*raw\n:PREROUTING ACCEPT [0:0]\n"
                 "-A PREROUTING -m set --match-set bl src -j NOTRACK\nCOMMIT\n")
    result = plan(rs, host_with(sets))
    guard = next(r for r in result.rules if r.rule_id > 0)
    assert guard.action.verdict == Verdict.DEFER and guard.match.src is None  # every source deferred


def test_sets_changed_by_set_targets_are_not_mirrored():
    rs = ruleset("-A INPUT -p udp -m udp --dport 9 -j SET --add-set bl src\n-A INPUT -m set --match-set bl src -j DROP")
    assert ipsets.changed_by_rules(rs) == {"bl"}
    sets, _ = table(TABLES / "match_set.t")
    result = plan(rs, host_with(sets, rs))
    decision = next(d for d in result.decisions if d.ref == RuleRef("filter", "INPUT", 2))
    assert (decision.kind, decision.code) == ("netfilter", "match.set-target")


def test_referenced_sets_follow_each_change_of_rules_read_before():
    """A chain that starts with the very rules of the last one asked about (the parse memo's) is
    read again only past them: what changed there, or before, is still seen."""
    from ipt2xdp.parse import ParseMemo, parse

    memo = ParseMemo()
    plain = [f"-A INPUT -s 10.0.{i // 256}.{i % 256} -j DROP" for i in range(300)]

    def sets_of(lines, chains=":BL - [0:0]\n"):
        text = f"*filter\n:INPUT ACCEPT [0:0]\n{chains}" + "\n".join(lines) + "\nCOMMIT\n"
        return ipsets.referenced_sets(parse(text, "memo.rules", memo))

    assert sets_of(plain) == []
    assert sets_of(plain + ["-A INPUT -m set --match-set late src -j DROP"]) == ["late"]
    assert sets_of(plain[:150] + ["-A INPUT -m set --match-set mid src -j DROP"] + plain[150:]
                   + ["-A INPUT -m set --match-set late src -j DROP"]) == ["mid", "late"]
    assert sets_of(["-A BL -m set --match-set first dst -j DROP", "-A INPUT -m set --match-set mid src -j DROP"]
                   + plain) == ["mid", "first"]  # INPUT is declared first
    assert sets_of(plain) == []
