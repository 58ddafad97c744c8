# SPDX-License-Identifier: GPL-2.0-only
"""A packet XDP drops counts on every rule netfilter would have counted it on: the jumps it came back
from, the RETURN it came back by, rules without a target, and the deciding rule (ipt2xdp.jumppaths).

The expected counts come from a small interpreter of iptables' traversal written here (first match,
-j returns, -g returns to the caller's caller, RETURN, a builtin chain's end is its policy), not
from the planner; the kernel tests (tests/test_counters_kernel.py) compare with netfilter itself.
"""
import random
from collections import Counter
from ipaddress import IPv4Address

import pytest

from ipt2xdp import ir, irmatches, irtargets, jumppaths
from ipt2xdp.classifier import Verdict, evaluate, validate
from ipt2xdp.plan import RuleRef, plan
from tests.test_plan import HOST, packet, ruleset


def _rule_matches(rule: ir.Rule, pkt) -> bool:
    if rule.source is not None and (int(IPv4Address(pkt.src)) if isinstance(pkt.src, str) else pkt.src) \
            not in range(int(rule.source.network.network_address), int(rule.source.network.broadcast_address) + 1):
        return False
    if rule.protocol is not None and rule.protocol.number != pkt.proto:
        return False
    for match in rule.matches:
        if isinstance(match, (irmatches.UdpMatch, irmatches.TcpMatch)) and match.dport is not None:
            lo, hi = match.dport.range
            if pkt.dport is None or not lo <= pkt.dport <= hi:
                return False
    return True


def netfilter(rs: ir.Ruleset, pkt):
    """(verdict, Counter of the rules counted) of filter/INPUT for pkt, by iptables' traversal."""
    table = rs.table("filter")
    counted = Counter()
    active = []  # the jumps (and gotos) leading to the rule being evaluated

    def run(chain_name):  # -> "ACCEPT" | "DROP" | "RETURN" (end of chain or RETURN)
        for index, rule in enumerate(table.chain(chain_name).rules, start=1):
            if not _rule_matches(rule, pkt):
                continue
            counted[RuleRef("filter", chain_name, index)] += 1
            target = rule.target
            if target is None:
                continue
            if isinstance(target, (irtargets.Accept, irtargets.Drop)):
                LAST["path"] = len(active) + 1
                return target.name
            if isinstance(target, irtargets.Return):
                return "RETURN"
            active.append(index)
            outcome = run(target.chain)
            active.pop()
            if isinstance(target, irtargets.Goto):
                return outcome  # a goto'd chain's end returns from this chain too
            if outcome != "RETURN":
                return outcome
        return "RETURN"

    outcome = run("INPUT")
    if outcome == "RETURN":
        LAST["path"] = 1
        counted[RuleRef("filter", "INPUT", 0)] += 1
        outcome = table.chain("INPUT").policy
    return outcome, counted


def xdp_counted(result, pkt):
    verdict, rule_id = evaluate(result.rules, result.default, pkt)
    path = result.counter_paths[rule_id] if rule_id is not None else ()
    return verdict, Counter(path), result.codes[rule_id] if rule_id is not None else None


STATS = Counter()
LAST = {}  # netfilter(): how many rules the chain of jumps to the deciding rule has, with it


def assert_counts_like_netfilter(rs, packets):
    result = plan(rs, HOST)
    validate(result.rules, result.default)
    dropped = 0
    for pkt in packets:
        want_verdict, want = netfilter(rs, pkt)
        verdict, got, code = xdp_counted(result, pkt)
        if verdict == Verdict.DROP:
            dropped += 1
            assert want_verdict == "DROP", pkt
            assert got == want, (pkt, code)
            # more than the jumps to the deciding rule: what the counter paths used to leave out
            STATS["came back"] += sum(want.values()) > LAST["path"]
        elif verdict == Verdict.ACCEPT:
            assert want_verdict == "ACCEPT", pkt
    return result, dropped


CHAINS = ":BL - [0:0]\n:IN - [0:0]\n"


def test_falling_off_an_unconditionally_jumped_chain_counts_the_jump_without_a_split():
    rs = ruleset("-A INPUT -j BL\n-A INPUT -p udp -m udp --dport 53 -j ACCEPT\n"
                 "-A BL -s 10.0.0.0/8 -j DROP", policy="DROP", chains=CHAINS)
    result, dropped = assert_counts_like_netfilter(rs, [packet(proto=17, dport=53), packet(proto=17, dport=54),
                                                        packet(src="10.1.1.1")])
    assert dropped == 2
    policy = [i for i, path in enumerate(result.counter_paths) if path[-1:] == (RuleRef("filter", "INPUT", 0),)]
    assert len(policy) == 1  # every packet reaching the policy matched -j BL: no second rule
    assert result.counter_paths[policy[0]] == (RuleRef("filter", "INPUT", 1), RuleRef("filter", "INPUT", 0))


def test_a_conditional_jump_splits_a_later_drop_in_two_ordered_rules():
    rs = ruleset("-A INPUT -p tcp -j BL\n-A INPUT -s 10.0.0.0/8 -j DROP\n"
                 "-A BL -p tcp -m tcp --dport 22 -j ACCEPT", chains=CHAINS)
    result, dropped = assert_counts_like_netfilter(rs, [packet(src="10.1.1.1", proto=6, dport=80),
                                                        packet(src="10.1.1.1", proto=17, dport=80),
                                                        packet(src="10.1.1.1", proto=6, dport=22)])
    assert dropped == 2
    drops = [result.counter_paths[i] for i, r in enumerate(result.rules) if r.action.verdict == Verdict.DROP]
    j, s = RuleRef("filter", "INPUT", 1), RuleRef("filter", "INPUT", 2)
    assert drops == [(j, s), (s,)]


def test_a_drop_disjoint_from_the_jump_or_inside_its_conditions_needs_one_rule():
    rs = ruleset("-A INPUT -p tcp -j BL\n-A INPUT -p udp -j DROP\n-A INPUT -p tcp -m tcp --dport 25 -j DROP\n"
                 "-A BL -p tcp -m tcp --dport 22 -j ACCEPT", chains=CHAINS)
    result, dropped = assert_counts_like_netfilter(rs, [packet(proto=17), packet(proto=6, dport=25)])
    assert dropped == 2
    drops = [result.counter_paths[i] for i, r in enumerate(result.rules) if r.action.verdict == Verdict.DROP]
    assert set(drops) == {(RuleRef("filter", "INPUT", 1), RuleRef("filter", "INPUT", 3)), (RuleRef("filter", "INPUT", 2),)}
    assert len(drops) == 2


def test_return_rules_and_the_chain_end_each_count_their_own_way():
    rs = ruleset("-A INPUT -p udp -j BL\n-A INPUT -s 10.0.0.0/8 -j DROP\n"
                 "-A BL -p udp -m udp --dport 53 -j RETURN\n-A BL -p udp -m udp --dport 54:60 -j RETURN\n"
                 "-A BL -p udp -m udp --dport 61 -j DROP",
                 chains=CHAINS)
    packets = [packet(src="10.1.1.1", proto=17, dport=d) for d in (53, 54, 61, 70)] + [packet(src="10.1.1.1")]
    assert assert_counts_like_netfilter(rs, packets)[1] == 5


def test_nested_jumps_gotos_and_rules_without_a_target_count_where_netfilter_does():
    rs = ruleset("-A INPUT -p udp\n-A INPUT -s 10.0.0.0/8 -j BL\n-A INPUT -p udp -m udp --dport 1:100 -j DROP\n"
                 "-A BL -p udp -m udp --dport 5 -g IN\n-A BL -p udp -j IN\n-A BL -p udp -m udp --dport 7 -j DROP\n"
                 "-A IN -p udp -m udp --dport 5:6 -j RETURN\n-A IN -p udp -m udp --dport 8 -j ACCEPT",
                 policy="DROP", chains=CHAINS)
    packets = [packet(src=s, proto=p, dport=d) for s in ("10.1.1.1", "192.0.2.1") for p in (6, 17)
               for d in (5, 6, 7, 8, 9, 200)]
    assert assert_counts_like_netfilter(rs, packets)[1] > 10


def test_beyond_the_split_bound_netfilter_decides_and_counts():
    # Conditional jumps over distinct sources, each returning: a later DROP over all of them would
    # need a rule per jump; past MAX_SPLITS its remaining packets are deferred, never miscounted.
    count = jumppaths.MAX_SPLITS + 3
    jumps = "\n".join(f"-A INPUT -s 10.0.{i}.0/24 -j BL" for i in range(count))
    rs = ruleset(jumps + "\n-A INPUT -p tcp -j DROP\n-A BL -p udp -j ACCEPT", chains=CHAINS)
    packets = [packet(src=f"10.0.{i}.1") for i in range(count)] + [packet(src="192.0.2.1")]
    result, dropped = assert_counts_like_netfilter(rs, packets)
    assert dropped == jumppaths.MAX_SPLITS
    deferred = [pkt for pkt in packets if xdp_counted(result, pkt)[::2] == (Verdict.DEFER, "counters.ways")]
    assert len(deferred) == count - jumppaths.MAX_SPLITS + 1  # the earliest jumps' packets, and those of none
    assert packets[-1] in deferred
    drop = next(d for d in result.decisions if d.ref == RuleRef("filter", "INPUT", count + 1))
    assert (drop.kind, drop.code) == ("partial", "counters.ways") and "counts them" in drop.why


def test_a_long_history_keeps_its_tail_as_one_unknown_way():
    # Each jump overlaps the next: the ways multiply; beyond MAX_WAYS the rest are deferred.
    count = 7
    jumps = "\n".join(f"-A INPUT -p udp -m udp --dport {i}:{i + 40} -j BL" for i in range(1, count + 1))
    rs = ruleset(jumps + "\n-A INPUT -p udp -j DROP\n-A BL -p udp -m udp --dport 1000 -j ACCEPT", chains=CHAINS)
    packets = [packet(proto=17, dport=d) for d in range(1, 60)]
    result, dropped = assert_counts_like_netfilter(rs, packets)
    assert 0 < dropped < len(packets)
    assert len(result.rules) < 200


@pytest.mark.parametrize("seed", range(40))
def test_random_chains_count_like_netfilter(seed):
    random_chains_count_like_netfilter(seed)


@pytest.mark.parametrize("seed", range(40, 80))
def test_random_chains_with_tight_bounds_defer_rather_than_miscount(seed, monkeypatch):
    monkeypatch.setattr(jumppaths, "MAX_SPLITS", 1 + seed % 2)
    monkeypatch.setattr(jumppaths, "MAX_WAYS", 2 + seed % 3)
    random_chains_count_like_netfilter(seed)


def random_chains_count_like_netfilter(seed):
    rng = random.Random(seed)
    chains = ["INPUT", "A", "B", "C"]
    lines = []
    for position, chain in enumerate(chains):
        for _ in range(rng.randint(1, 5)):
            parts = [f"-A {chain}"]
            if rng.random() < 0.4:
                parts.append(rng.choice(["-s 10.0.0.0/8", "-s 10.1.0.0/16", "-s 192.0.2.0/24"]))
            proto = rng.choice([None, "tcp", "udp"])
            if proto:
                parts.append(f"-p {proto}")
                if rng.random() < 0.6:
                    lo = rng.randint(1, 8)
                    parts.append(f"-m {proto} --dport {lo}:{lo + rng.randint(0, 3)}")
            callees = chains[position + 1:]
            targets = ["DROP", "ACCEPT", None] + (["RETURN"] if chain != "INPUT" or rng.random() < 0.3 else [])
            if callees:
                targets += [f"J{c}" for c in callees] * 2 + [f"G{c}" for c in callees]
            target = rng.choice(targets)
            if target is None:
                pass
            elif target[0] in "JG" and len(target) == 2:
                parts.append(f"-{'j' if target[0] == 'J' else 'g'} {target[1]}")
            else:
                parts.append(f"-j {target}")
            lines.append(" ".join(parts))
    rs = ruleset("\n".join(lines), policy=rng.choice(["DROP", "ACCEPT"]), chains=":A - [0:0]\n:B - [0:0]\n:C - [0:0]\n")
    packets = [packet(src=s, proto=p, dport=d) for s in ("10.1.2.3", "10.2.0.1", "192.0.2.5", "198.51.100.1")
               for p in (6, 17, 1) for d in range(0, 13)]
    assert_counts_like_netfilter(rs, packets)


def test_a_chain_whose_last_rule_takes_every_packet_adds_no_way():
    # Nothing falls off L_ACCEPT's end (its last rule accepts all): a later DROP needs one rule.
    rs = ruleset("-A INPUT -p udp -j IN\n-A INPUT -s 10.0.0.0/8 -j BL\n-A INPUT -p tcp -j DROP\n"
                 "-A IN -p udp -m udp --dport 53 -j DROP\n-A IN -j ACCEPT\n-A BL -p tcp -m tcp --dport 22 -j RETURN\n"
                 "-A BL -j RETURN", chains=CHAINS)
    result, dropped = assert_counts_like_netfilter(rs, [packet(proto=17, dport=53), packet(src="10.1.1.1", dport=22),
                                                        packet(src="10.1.1.1", dport=80), packet(dport=80)])
    assert dropped == 4
    drops = [result.counter_paths[i] for i, r in enumerate(result.rules) if r.action.verdict == Verdict.DROP]
    bl, s = RuleRef("filter", "INPUT", 2), RuleRef("filter", "INPUT", 3)
    assert drops == [(RuleRef("filter", "INPUT", 1), RuleRef("filter", "IN", 1)),
                     (bl, RuleRef("filter", "BL", 1), s), (bl, RuleRef("filter", "BL", 2), s), (s,)]


def test_a_blocklist_after_a_conditional_jump_stays_one_run_per_way():
    # Rule by rule the parts would alternate (X1 and tcp, X1, X2 and tcp, ...) and no run of them
    # could merge into a set: grouped by way, they form two runs.
    blocklist = "\n".join(f"-A INPUT -s 10.0.0.{i} -j DROP" for i in range(1, 9))
    rs = ruleset("-A INPUT -p tcp -j BL\n" + blocklist + "\n-A INPUT -p tcp -j DROP\n-A BL -p tcp -m tcp --dport 22 -j ACCEPT",
                 chains=CHAINS)
    packets = [packet(src=f"10.0.0.{i}", proto=p, dport=d) for i in range(0, 10) for p in (6, 17) for d in (22, 80)]
    result, dropped = assert_counts_like_netfilter(rs, packets)
    assert dropped == 8 * 3 + 2
    drops = [(len(result.counter_paths[i]), result.counter_paths[i][-1].index) for i, r in enumerate(result.rules)
             if r.action.verdict == Verdict.DROP]
    assert drops == [(2, i) for i in range(2, 10)] + [(2, 10)] + [(1, i) for i in range(2, 10)]
    from ipt2xdp.compile import build_slots
    assert len(build_slots(result.rules)[0]) < len(result.rules) - 10  # both runs merged


def test_a_rule_split_past_the_bound_keeps_its_place_among_grouped_ones():
    count = jumppaths.MAX_SPLITS + 2
    jumps = "\n".join(f"-A INPUT -s 10.0.{i}.0/24 -j BL" for i in range(count))
    # the first DROP meets every way: past the bound, the packets of the first two jumps defer; the
    # second meets only the first jump's way, and must not take those packets first
    rs = ruleset(jumps + "\n-A INPUT -s 10.0.0.0/16 -p udp -j DROP\n-A INPUT -s 10.0.0.0/24 -p udp -j DROP\n"
                 "-A INPUT -s 10.0.0.0/16 -j DROP\n-A BL -p tcp -j ACCEPT", chains=CHAINS)
    packets = [packet(src=f"10.0.{i}.1", proto=p) for i in range(count + 2) for p in (6, 17, 47)]
    result, dropped = assert_counts_like_netfilter(rs, packets)
    assert 0 < dropped < len(packets)


def test_the_random_rulesets_do_drop_packets_that_came_back_from_a_chain():
    STATS.clear()
    for seed in range(40):
        random_chains_count_like_netfilter(seed)
    assert STATS["came back"] > 50, STATS

