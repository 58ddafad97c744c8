# SPDX-License-Identifier: GPL-2.0-only
"""Printer details the .t tables do not reach: file layout, counters, quoting, limit rates."""
from ipt2xdp.parse import parse
from ipt2xdp.render import limit_rate, render, render_rule, save_string

TEXT = """*filter
:INPUT DROP [5:300]
:zeta - [0:0]
:alpha - [0:0]
[7:420] -A INPUT -p tcp --dport 22 -s 10.0.0.1 -j alpha
-A zeta -j RETURN
-A alpha -j zeta
COMMIT
"""


def test_layout_builtins_then_user_chains_sorted():
    out = render(parse(TEXT))
    assert out.splitlines() == [
        "*filter", ":INPUT DROP [5:300]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":alpha - [0:0]", ":zeta - [0:0]",
        "-A INPUT -s 10.0.0.1/32 -p tcp -m tcp --dport 22 -j alpha",
        "-A alpha -j zeta", "-A zeta -j RETURN", "COMMIT"]


def test_counters():
    rule = parse(TEXT).table("filter").chain("INPUT").rules[0]
    assert render_rule(rule, counters=True).startswith("[7:420] -A INPUT ")
    assert "[7:420] -A INPUT" in render(parse(TEXT), counters=True)


def test_save_string_matches_xtables():
    assert save_string("abc_-1") == "abc_-1"
    assert save_string("") == '""'
    assert save_string('a "b"') == '"a \\"b\\""'
    assert save_string("it's") == '"it\\\'s"'


def test_limit_rates():
    assert limit_rate(10000 // 5) == "5/sec"
    assert limit_rate(10000 * 60 // 3) == "3/min"
    assert limit_rate(10000 * 3600 // 3) == "3/hour"


def test_comma_lists_expand_like_iptables():
    text = "*filter\n-A INPUT -s 1.1.1.1,2.2.2.2 -d 3.3.3.3,4.4.4.4 -j DROP\nCOMMIT\n"
    lines = [render_rule(r) for r in parse(text).table("filter").rules]
    assert lines == ["-A INPUT -s 1.1.1.1/32 -d 3.3.3.3/32 -j DROP", "-A INPUT -s 1.1.1.1/32 -d 4.4.4.4/32 -j DROP",
                     "-A INPUT -s 2.2.2.2/32 -d 3.3.3.3/32 -j DROP", "-A INPUT -s 2.2.2.2/32 -d 4.4.4.4/32 -j DROP"]
