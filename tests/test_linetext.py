# SPDX-License-Identifier: GPL-2.0-only
"""linetext: the text a parsed rule carries from its line (ir.DERIVED "text") is render_rule()'s.

render._rule_text renders from the rule's fields and ignores what the parser left; every rule
that got a text from its words is compared with it, over the shared rulesets, the bench shapes,
random rulesets and lines in other spellings of the same values."""
import pytest

from ipt2xdp import ir
from ipt2xdp.parse import ParseMemo, parse
from ipt2xdp.render import _rule_text
from tests import fingerprint

HEAD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:user - [0:0]\n"

# each group: lines of one template key, the first in render_rule()'s spelling, then others
SPELLINGS = [
    ["-A INPUT -s 10.0.0.1/32 -p udp -m udp --dport 53 -j DROP",
     "-A INPUT -s 10.0.0.2 -p udp -m udp --dport 53 -j DROP",          # no /32
     "-A INPUT -s 10.0.0.3/24 -p udp -m udp --dport 53 -j DROP",       # host bits
     "-A INPUT -s 10.0.0.0/24 -p udp -m udp --dport 053 -j DROP",      # leading zero
     "-A INPUT -s 10.0.0.0/24 -p udp -m udp --dport domain -j DROP",   # service name
     "-A INPUT -s 10.0.0.0/24 -p udp -m udp --dport 0 -j DROP",
     "-A INPUT -s 10.0.0.0/0 -p udp -m udp --dport 1 -j DROP",         # no address at all
     "-A INPUT -s 10.0.0.1/32,10.0.0.2/32 -p udp -m udp --dport 5 -j DROP",
     "-A INPUT -s 10.0.0.9/32 -p udp -m udp --dport 65535 -j DROP",
     "-A INPUT  -s 10.0.0.9/32 -p udp -m udp --dport 7 -j DROP",        # two spaces
     "-A INPUT -s 10.0.0.9/32\t-p udp -m udp --dport 7 -j DROP"],       # a tab
    ["-A INPUT -p tcp --dport 22 -s 10.0.0.1 -j ACCEPT",                # render_rule orders otherwise
     "-A INPUT -p tcp --dport 23 -s 10.0.0.2/32 -j ACCEPT"],
    ["-A INPUT -p 6 -m tcp --sport 22 -j ACCEPT", "-A INPUT -p 6 -m tcp --sport 23 -j ACCEPT"],
    ["-A INPUT ! -s 10.0.0.0/8 -d 192.168.1.1/32 -p tcp -m tcp ! --dport 22 -j user",
     "-A INPUT ! -s 10.0.0.0/8 -d 192.168.1.2/32 -p tcp -m tcp ! --dport 25 -j user",
     "-A INPUT ! -s 10.0.0.0/8 -d 192.168.1.3 -p tcp -m tcp ! --dport 25 -j user"],
    ["-A INPUT -p tcp -m tcp --dport 1000:2000 -j DROP", "-A INPUT -p tcp -m tcp --dport 5:5 -j DROP",
     "-A INPUT -p tcp -m tcp --dport 0:65535 -j DROP", "-A INPUT -p tcp -m tcp --dport :10 -j DROP"],
    ["-A INPUT -p tcp -m tcp --dport 80 -m comment --comment \"web 1\" -j ACCEPT",
     "-A INPUT -p tcp -m tcp --dport 81 -m comment --comment \"web 2\" -j ACCEPT"],
    ["-A INPUT -i eth0 -p icmp -m icmp --icmp-type 8 -j ACCEPT", "-A INPUT -i eth0 -p icmp -j ACCEPT",
     "-A INPUT -j ACCEPT", "-I INPUT 1 -s 10.1.1.1/32 -j DROP", "[3:4] -A INPUT -s 10.1.1.2/32 -j DROP",
     "-A INPUT -s 10.1.1.3/32 -j DROP"],
]


def _texts(ruleset):
    """(rule, the text it carries) for each rule that carries one, and the number of rules."""
    rules = [r for t in ruleset.tables for c in t.chains for r in c.rules]
    carried = [(r, r.__dict__[ir.DERIVED]["text"]) for r in rules
               if "text" in r.__dict__.get(ir.DERIVED, {})]
    return carried, len(rules)


def _check(text, memo=None):
    carried, _ = _texts(parse(text, "linetext.rules", memo))
    for rule, carried_text in carried:
        assert carried_text == _rule_text(rule)
    return carried


@pytest.mark.parametrize("group", range(len(SPELLINGS)))
@pytest.mark.parametrize("memo", [False, True])
def test_other_spellings(group, memo):
    lines = SPELLINGS[group]
    _check(HEAD + "\n".join(lines) + "\nCOMMIT\n", ParseMemo() if memo else None)
    for first in range(1, len(lines)):  # any line may be the first of its key
        _check(HEAD + "\n".join(lines[first:] + lines[:first]) + "\nCOMMIT\n")


def test_bench_shapes_carry_their_text():
    for name, text in fingerprint.bench_rulesets().items():
        carried, count = _texts(parse(text, name))
        if "mixed" in name:  # a quarter -s DROP, a quarter -s tcp --dport; the rest has other words blanked
            assert len(carried) == count // 2, name
        else:  # every line is an address and ports in render_rule's spelling
            assert count and len(carried) == count, name
        for rule, carried_text in carried:
            assert carried_text == _rule_text(rule)


def test_shared_and_random_rulesets():
    carried = 0
    for name, text in fingerprint.shared_rulesets().items():
        try:
            carried += len(_check(text))
        except Exception as error:  # noqa: BLE001 - rulesets that do not parse carry nothing
            if type(error).__name__ != "ParseError":
                raise
    for seed in range(60):
        carried += len(_check(fingerprint.random_ruleset(seed)))
    assert carried > 100  # the comparison above is not vacuous
