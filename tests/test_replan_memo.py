# SPDX-License-Identifier: GPL-2.0-only
"""A re-plan by a long-lived planner (what `ipt2xdp watch` keeps: a parse.ParseMemo, plan.TERM_MEMO
for one host object, the rules' derived values (ir.DERIVED) and compile's per-Match facts) equals
a fresh parse, plan and compile of the same ruleset after every kind of change: append, insert,
delete, replace, a renamed chain, a policy change, a host-fact change. The memoised values are
the ones the change leaves valid: a rule whose text is unchanged but whose position or jump
context changed is planned for where it is now."""
import struct
from dataclasses import replace

import pytest

from ipt2xdp import compile as compiler
from ipt2xdp import slots
from ipt2xdp.errors import ParseError
from ipt2xdp import plan as planner
from ipt2xdp.parse import ParseMemo, parse
from ipt2xdp.render import render, render_rule
from tests.fingerprint import HOSTS, random_ruleset

RECEIVER, ROUTER = HOSTS["receiver"], HOSTS["router"]
COMPILE_MEMOS = ("_MATCH_SHAPES", "_SET_KEYS", "_UNIONS")  # slots.py's per-Match facts of the last build_slots

BASE = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.77.1.2/32 -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:SSH - [0:0]
:WEB - [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i rcv0 -s 192.0.2.0/24 -j DROP
-A INPUT -i eth0 -s 198.51.100.0/24 -j DROP
-A INPUT -p tcp -m tcp --dport 22 -j SSH
-A INPUT -s 10.0.0.0/8 -p tcp -m multiport --dports 80,443 -j WEB
-A INPUT -s 10.1.0.1/32 -p udp -m udp --dport 1001 -j DROP
-A INPUT -s 10.1.0.2/32 -p udp -m udp --dport 1002 -j DROP
-A INPUT -s 10.1.0.3/32 -p udp -m udp --dport 1003 -j DROP
-A INPUT -s 10.1.0.4/32 -p udp -m udp --dport 1004 -j DROP
-A INPUT -s 10.1.0.5/32 -p udp -m udp --dport 1005 -j DROP
-A INPUT -s 10.1.0.6/32 -p udp -m udp --dport 1006 -j DROP
-A INPUT -s 10.1.0.1/32 -p udp -m udp --dport 1001 -j DROP
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 25 -j LOG --log-prefix "smtp "
-A INPUT -s 10.9.0.0/16 -g WEB
-A SSH -s 10.0.0.0/8 -j RETURN
-A SSH -s 172.16.0.0/12 -j ACCEPT
-A SSH -j DROP
-A WEB -s 10.2.0.0/16 -j DROP
-A WEB -p tcp -m tcp --dport 443 -j ACCEPT
COMMIT
"""


def _edit(text, old, new, count=1):
    assert old in text, old
    return text.replace(old, new, count)


def _before(text, anchor, line):
    """text with `line` inserted before the line that starts with `anchor`."""
    return _edit(text, anchor, line + "\n" + anchor)


def _rename(text, old, new):
    return text.replace(f":{old} - [0:0]", f":{new} - [0:0]").replace(f"-j {old}", f"-j {new}") \
        .replace(f"-A {old} ", f"-A {new} ")


UDP_DROP = "-A INPUT -s {} -p udp -m udp --dport {} -j DROP"
TCP_ACCEPT = "-A INPUT -s 10.1.0.4/32 -p tcp -j ACCEPT"

# (name, edit of the ruleset text): each applied to the result of the one before
CHANGES = [
    ("append", lambda t: _before(t, "-A SSH -s 10.0.0.0/8", "-A INPUT -s 203.0.113.9/32 -j DROP")),
    ("insert first", lambda t: _before(t, "-A INPUT -m conntrack", UDP_DROP.format("203.0.113.7/32", 53))),
    # the merged run keeps its length and shape, one member's address changes
    ("replace inside the merged run", lambda t: _edit(t, "-A INPUT -s 10.1.0.3/32", "-A INPUT -s 10.1.0.33/32")),
    ("insert inside the merged run", lambda t: _before(t, "-A INPUT -s 10.1.0.4/32", TCP_ACCEPT)),
    ("delete", lambda t: _edit(t, UDP_DROP.format("10.1.0.2/32", 1002) + "\n", "")),
    ("delete the insert", lambda t: _edit(t, TCP_ACCEPT + "\n", "")),
    ("replace", lambda t: _edit(t, UDP_DROP.format("10.1.0.5/32", 1005) + "\n",
                                UDP_DROP.format("10.1.0.5/32", 1005).replace("-j DROP", "-j ACCEPT\n"))),
    # the RETURN rule of SSH keeps its text, but its chain is entered under another condition
    ("jump context", lambda t: _edit(t, "--dport 22 -j SSH", "--dport 2222 -j SSH")),
    # the same lines, but the rule that ends the chain moves before them
    ("move within a chain", lambda t: _before(_edit(t, "-A SSH -j DROP\n", ""), "-A SSH -s 10.0.0.0/8",
                                              "-A SSH -j DROP")),
    ("rename chain", lambda t: _rename(t, "SSH", "ADMIN")),
    ("policy", lambda t: _edit(t, ":INPUT ACCEPT [0:0]\n:FORWARD DROP", ":INPUT DROP [0:0]\n:FORWARD DROP")),
    ("earlier chain", lambda t: _before(t, "-A PREROUTING -d 10.77.1.2/32",
                                        "-A PREROUTING -s 10.1.0.0/16 -j MARK --set-xmark 0x1/0xffffffff")),
    ("duplicate lines", lambda t: _before(t, "-A INPUT -p icmp", UDP_DROP.format("10.1.0.6/32", 1006))),
    ("undo", lambda t: BASE),
]


def _stages(ruleset, host):
    result = planner.plan(ruleset, host)
    tables = compiler.compile(result.rules, result.default, overflow="defer")
    return {"ir": ruleset.without_positions(), "render": render(ruleset.without_positions()),
            "texts": [render_rule(r) for t in ruleset.tables for c in t.chains for r in c.rules],
            "plan": result, "tables": (tables.maps, tables.rule_ids, tables.slot_count, tables.set_count,
                                       tables.overflowed_rules, tables.field_mask, tables.notes)}


def _fresh(text, host):
    """A parse, plan and compile that shares nothing with the planner's memos."""
    saved = planner.TERM_MEMO, [getattr(slots, name) for name in COMPILE_MEMOS]
    planner.TERM_MEMO = None
    for name in COMPILE_MEMOS:
        setattr(slots, name, {})
    try:
        return _stages(parse(text, "<fresh>"), host)
    finally:
        planner.TERM_MEMO = saved[0]
        for name, value in zip(COMPILE_MEMOS, saved[1]):
            setattr(slots, name, value)


class Watcher:
    """What ipt2xdp.watch.warm keeps between syncs, driven the same way."""

    def __init__(self):
        self.memo = ParseMemo()

    def sync(self, text, host):
        if planner.TERM_MEMO is None or planner.TERM_MEMO["host"] is not host:
            planner.TERM_MEMO = {"host": host, "terms": {}}
        return _stages(parse(text, "<iptables-save>", self.memo), host)


@pytest.fixture
def watcher():
    yield Watcher()
    planner.TERM_MEMO = None


def test_each_change_replans_to_what_a_fresh_plan_gives(watcher):
    text = BASE
    before = watcher.sync(text, RECEIVER)
    assert before == _fresh(text, RECEIVER)
    for name, change in CHANGES:
        text = change(text)
        after = watcher.sync(text, RECEIVER)
        assert after == _fresh(text, RECEIVER), name
        if name != "undo":
            assert after["plan"] != before["plan"], f"{name}: the change must matter for this test to show anything"
        before = after


def test_a_host_fact_change_replans_every_rule_for_the_new_host(watcher):
    """Back and forth between two hosts (other attached devices, addresses, routes): the -i rules
    translate differently, and a translation kept with a rule is only used for its own host."""
    results = {}
    for host_name in ("receiver", "router", "receiver", "router"):
        host = HOSTS[host_name]
        got = watcher.sync(BASE, host)
        assert got == _fresh(BASE, host), host_name
        results.setdefault(host_name, got)
        assert got == results[host_name]
    assert results["receiver"]["plan"] != results["router"]["plan"]


def test_a_host_object_rebuilt_with_one_fact_changed(watcher):
    watcher.sync(BASE, RECEIVER)
    changed = replace(RECEIVER, attached=("eth0",))
    assert watcher.sync(BASE, changed) == _fresh(BASE, changed)


def test_unchanged_rules_are_not_translated_or_rendered_again(watcher, monkeypatch):
    """The memo is used at all: after a one-rule change only the new rule is translated and
    rendered (the filter table's rules; the earlier chains are planned for a host copy)."""
    from ipt2xdp import render as printer

    watcher.sync(BASE, RECEIVER)
    translated, rendered = [], []
    real_translate, real_text = planner.translate, printer._rule_text
    monkeypatch.setattr(planner, "translate", lambda rule, *a: translated.append(rule) or real_translate(rule, *a))
    monkeypatch.setattr(printer, "_rule_text", lambda rule: rendered.append(rule) or real_text(rule))
    text = _edit(BASE, "-A SSH -s 10.0.0.0/8", "-A INPUT -s 203.0.113.9/32 -j DROP\n-A SSH -s 10.0.0.0/8")
    got = watcher.sync(text, RECEIVER)
    monkeypatch.undo()
    assert [r.chain for r in translated if r.chain != "PREROUTING"] == ["INPUT"]
    assert [render_rule(r) for r in rendered] == ["-A INPUT -s 203.0.113.9/32 -j DROP"]
    assert got == _fresh(text, RECEIVER)


def test_a_merged_set_is_rebuilt_when_its_rules_move(watcher):
    """compile keeps a merged run's union by its Match objects: the same matches at other rule ids
    (an insert before them) give the same union but members with the new ids."""
    first = watcher.sync(BASE, RECEIVER)
    text = CHANGES[1][1](BASE)  # insert first: every rule id moves by one
    second = watcher.sync(text, RECEIVER)
    assert second == _fresh(text, RECEIVER)

    def member_rules(maps):  # exact_set holds counters; counter_rules names their rules
        rule_of = struct.unpack(f"={maps['counter_rules'].count}I", maps["counter_rules"].values)
        return sorted(rule_of[counter] for (counter,) in struct.iter_unpack("=I", maps["exact_set"].values))
    assert [rule + 1 for rule in member_rules(first["tables"][0])] == member_rules(second["tables"][0])


@pytest.mark.parametrize("seed", range(12))
def test_random_rulesets_replanned_after_random_changes(watcher, seed):
    """Random rulesets (tests.fingerprint's generator) changed line by line: the lines of the next
    seed's ruleset are swapped in one at a time, so most rules stay and some move."""
    import random

    rng = random.Random(seed)
    text = random_ruleset(seed)
    try:
        parse(text, "x")
    except ParseError:
        pytest.skip("the generated ruleset does not parse")
    host = HOSTS["receiver" if seed % 2 else "router"]
    assert watcher.sync(text, host) == _fresh(text, host)
    for _ in range(4):
        lines = text.splitlines()
        rule_lines = [i for i, line in enumerate(lines) if line.startswith("-A ")]
        if not rule_lines:
            break
        i = rng.choice(rule_lines)
        action = rng.choice(("delete", "duplicate", "move"))
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(rng.choice(rule_lines), lines[i])
        else:
            line = lines.pop(i)
            chain = line.split()[1]
            same_chain = [k for k, other in enumerate(lines) if other.startswith(f"-A {chain} ")]
            lines.insert(rng.choice(same_chain) if same_chain else i, line)
        text = "\n".join(lines) + "\n"
        assert watcher.sync(text, host) == _fresh(text, host), action


@pytest.mark.parametrize("seed", range(40))
def test_no_translated_disjunct_has_an_empty_field(seed):
    """What plan._inline relies on to take a disjunct as it is under an unconditional chain."""
    from ipt2xdp.translate import translate

    try:
        ruleset = parse(random_ruleset(seed), "x")
    except ParseError:
        pytest.skip("the generated ruleset does not parse")
    for host in HOSTS.values():
        for table in ruleset.tables:
            for rule in table.rules:
                for disjunct in translate(rule, host).disjuncts:
                    assert all(value is None or value for value in vars(disjunct.match).values()), rule


@pytest.mark.parametrize("seed", range(0, 40, 4))
def test_compile_match_shape_is_the_field_shape_of_each_field(seed):
    """slots._match_shape (one unrolled pass) against its definition, _field_shape per field."""
    try:
        ruleset = parse(random_ruleset(seed), "x")
    except ParseError:
        pytest.skip("the generated ruleset does not parse")
    for host in HOSTS.values():
        for rule in planner.plan(ruleset, host).rules:
            values = vars(rule.match)
            spec = tuple(slots._field_shape(name, values[name]) for name in slots.FIELDS) + (("s", values["ct"]),)
            expected = spec if any(kind == "k" for kind, _ in spec) else None
            assert slots._match_shape(rule.match) == expected, rule
