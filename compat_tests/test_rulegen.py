# SPDX-License-Identifier: GPL-2.0-only
"""The random ruleset generator: iptables-restore of both backends accepts what it writes, the same seed
gives the same ruleset, and the shrinker keeps only what a failure needs."""
import pytest

from compat_tests import rulegen
from ipt2xdp import netns

SEEDS = range(150)


def test_same_seed_same_ruleset():
    assert rulegen.render(rulegen.generate(11)) == rulegen.render(rulegen.generate(11))
    assert len({rulegen.render(rulegen.generate(s)) for s in range(50)}) == 50


def test_generator_covers_the_subset():
    text = "".join(rulegen.render(rulegen.generate(s)) for s in SEEDS)
    for needle in ("! -s", "! -d", "-i rcv0", "--dport", "--sport", "-m multiport", "--icmp-type", "--syn",
                   "--tcp-flags", "--ctstate", "--state", "-m limit", "-m recent", "-m mark", "-g chain",
                   "-j chain", "-j RETURN", "-j REJECT", "-j LOG", ":INPUT DROP", ":INPUT ACCEPT", ":", "-f"):
        assert needle in text, needle


def test_forwarding_rulesets_have_forward_rules():
    text = "".join(rulegen.render(rulegen.generate(s, forwarding=True)) for s in range(60))
    for needle in ("-A FORWARD", "-o fwd0", "-d 203.0.113.", "-A FORWARD ! -o", "-A FORWARD -s"):
        assert needle in text, needle
    assert "-j FORWARD" not in text and "-g FORWARD" not in text
    # forwarding off: INPUT only, as before
    assert "-A FORWARD" not in "".join(rulegen.render(rulegen.generate(s)) for s in range(60))


def test_nat_rulesets_have_a_nat_table_and_the_same_filter_rules():
    text = "".join(rulegen.render(rulegen.generate(s, nat=True)) for s in range(60))
    for needle in ("*nat", "-j DNAT --to-destination 198.51.100.", "--to-destination :", "-j REDIRECT --to-ports",
                   "-j REDIRECT\n", "-m tcp --syn -j DNAT", "-j nat0", "-g nat", "-j RETURN", "-j MASQUERADE",
                   "-j SNAT --to-source", ":PREROUTING DROP", "-p icmp -m icmp --icmp-type echo-request",
                   "--ctstate DNAT"):
        assert needle in text, needle
    assert "*nat" not in "".join(rulegen.render(rulegen.generate(s)) for s in range(60))
    for seed in range(20):  # the filter table is the seed's own, plus the rules about the NAT ports
        plain, nat = rulegen.generate(seed), rulegen.generate(seed, nat=True)
        assert plain.policies == nat.policies
        assert all(rule in nat.chains[name] for name, rules in plain.chains.items() for rule in rules)


def test_shrinker_cuts_the_nat_table_too():
    generated = next(g for g in (rulegen.generate(s, nat=True) for s in range(100))
                     if rulegen.rule_count(g) > 10 and "-j REDIRECT" in rulegen.render(g))
    small = rulegen.shrink(generated, lambda text: "-j REDIRECT" in text)
    assert rulegen.rule_count(small) == 1 and not small.chains["INPUT"]
    rule = next(r for rules in small.nat_chains.values() for r in rules)
    assert rule.atoms == [] and rule.target == "-j REDIRECT"


def test_shrinker_keeps_only_what_fails():
    generated = next(g for g in map(rulegen.generate, range(100))
                     if rulegen.rule_count(g) > 6 and "-j DROP" in rulegen.render(g))
    calls = []

    def fails(text):
        calls.append(text)
        return "-j DROP" in text

    small = rulegen.shrink(generated, fails)
    assert rulegen.rule_count(small) == 1
    rule = next(r for rules in small.chains.values() for r in rules)
    assert rule.atoms == [] and rule.target == "-j DROP"
    assert len(calls) <= 200


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_iptables_restore_accepts_every_generated_ruleset(backend):
    ns = netns.create_namespace("gen")
    try:
        refused = []
        for seed in SEEDS:
            # every other seed with forwarding on: FORWARD rules, -o, user chains reached from both;
            # every third with a nat table
            text = rulegen.render(rulegen.generate(seed, forwarding=seed % 2 == 1, nat=seed % 3 == 0))
            result = ns.run([f"iptables-{backend}-restore", "-w"], check=False, input=text)
            if result.returncode != 0:
                refused.append(f"seed {seed}: {result.stderr.strip()}\n{text}")
        assert not refused, "\n".join(refused[:3])
    finally:
        netns.delete_namespace(ns.name)
