# SPDX-License-Identifier: GPL-2.0-only
"""Which plans count XDP's drops on the nat PREROUTING policy (plan.nat_new), and how the counter
they get is added up (counters.per_rule). What the program counts: tests/bpf/test_nat_new.py; against
netfilter's own counts: tests/test_counters_kernel.py."""
import pytest

from ipt2xdp.classifier import DEFER, DROP, ClassifierRule, Match
from ipt2xdp.plan import plan
from tests.test_plan import HOST, ruleset


NAT_HEAD = "*nat\n:PREROUTING {policy} [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"


@pytest.mark.parametrize("nat_rules,policy,expected", [
    (None, "ACCEPT", 0),                                               # no nat table: nothing to count
    ("", "ACCEPT", "on"),
    ("-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.9.9.9:80\n", "ACCEPT", "on"),
    ("-A PREROUTING -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 80\n", "DROP", 0),  # XDP defers everything
    (":DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n", "ACCEPT", 0),  # counts on the jump
    ("-A PREROUTING -s 10.0.0.0/8 -j ACCEPT\n", "ACCEPT", 0),         # ends there, not at the policy
    ("-A PREROUTING -s 10.0.0.0/8 -j RETURN\n", "ACCEPT", 0),         # counted on the RETURN too
    ("-A PREROUTING -s 10.0.0.0/8\n", "ACCEPT", 0),                   # a rule without a target counts
])
def test_nat_prerouting_drops_are_counted_only_where_they_end_at_its_policy(nat_rules, policy, expected):
    from dataclasses import replace

    from ipt2xdp import abi
    from ipt2xdp.plan import nat_new

    extra = "" if nat_rules is None else NAT_HEAD.format(policy=policy) + nat_rules + "COMMIT\n"
    rs = ruleset("-A INPUT -p udp -j DROP", extra_tables=extra)
    assert plan(rs, HOST).nat_new == nat_new(rs, HOST)
    want = abi.NAT_NEW_ON | abi.NAT_NEW_TCP_LOOSE if expected == "on" else 0
    assert nat_new(rs, HOST) == want
    if expected == "on":
        assert nat_new(rs, replace(HOST, ct_tcp_loose=False)) == abi.NAT_NEW_ON


def test_the_nat_counter_adds_to_the_nat_policy_and_the_program_gets_room_for_it():
    from ipt2xdp import abi, counters
    from ipt2xdp.compile import compile

    rules = [ClassifierRule(Match(), DROP, 0)]
    assert compile(rules, DEFER).maps["counters"].max_entries == 3
    tables = compile(rules, DEFER, nat_new=abi.NAT_NEW_ON)
    assert tables.maps["counters"].max_entries == 4  # the rule, the default, the overflow, the nat drops
    record = {"counter_paths": [[["filter", "INPUT", 1]]], "actions": ["DROP"]}
    status = {"0": {"packets": 5, "bytes": 500}, "nat_new": {"packets": 3, "bytes": 300},
              "default": {"packets": 1, "bytes": 9}}
    assert counters.per_rule(status, record) == {("filter", "INPUT", 1): (5, 500), ("nat", "PREROUTING", 0): (3, 300)}
    assert counters.dropped(status, record) == (5, 500)  # the nat drops are the rule's, not more
    # as the wrapper reads them (xdpcounts._status_counters): by number
    assert counters.per_rule({str(abi.NAT_NEW_COUNTER): {"packets": 2, "bytes": 20}}, record) == \
        {("nat", "PREROUTING", 0): (2, 20)}


@pytest.mark.parametrize("where, expected", [
    ("none", False),
    ("planned nat table", True),
    ("other backend's nat table", True),
    ("native nat chain", True),
    ("unreadable hooks", True),
    ("native filter chain only", False),
])
def test_nat_flows_where_conntrack_may_hold_natted_flows(where, expected):
    """plan.nat_flows (abi.NAT_FLOWS): any nat table or native nat chain, whatever its rules (a
    masquerade in POSTROUTING NATs the flows whose replies come back in)."""
    from dataclasses import replace

    from ipt2xdp.foreign import Foreign, nat_hooks

    nat = NAT_HEAD.format(policy="ACCEPT") + "COMMIT\n" if where == "planned nat table" else ""
    chain = lambda kind: {"nftables": [{"chain": {"family": "inet", "table": "t", "name": "c", "type": kind,
                                                  "hook": "postrouting", "prio": 100}}]}
    foreign = {"none": Foreign("legacy"), "planned nat table": Foreign("legacy"),
               "other backend's nat table": Foreign("legacy", other_tables=("filter", "nat")),
               "native nat chain": Foreign("legacy", nat_hooks=nat_hooks(chain("nat"))),
               "unreadable hooks": Foreign("legacy", unreadable=("nft -j list ruleset failed",)),
               "native filter chain only": Foreign("legacy", nat_hooks=nat_hooks(chain("filter")))}[where]
    result = plan(ruleset("-A INPUT -p udp -j DROP", extra_tables=nat), replace(HOST, foreign=foreign))
    assert result.nat_flows is expected
    assert any(n.startswith("nat.flows:") for n in result.notes) is expected
