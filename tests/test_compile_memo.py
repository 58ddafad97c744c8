# SPDX-License-Identifier: GPL-2.0-only
"""What compile keeps between compiles (matchmemo.FACTS: what the fast-path analysis asks of each
Match; mapencode's array index keys) never makes its maps differ from a fresh compile's: a sequence of edited plans,
made the way `ipt2xdp watch` makes them (parse.ParseMemo and plan.TERM_MEMO hand back the Match
objects of the rules that did not change), compiles to exactly what a compile with nothing kept
makes, and a kept entry is served only for the very Match object it was made from."""
import random
from dataclasses import replace

import pytest

from ipt2xdp import matchmemo, mapencode, plan as planner
from ipt2xdp.compile import compile as compile_tables
from ipt2xdp.parse import ParseMemo, parse
from tests.test_plan import HOST

HEAD = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]


def base_lines(n: int = 240):
    """Exact tuples (the bench's shape), a blocklist, prefixes with ports, port ranges and ACCEPTs
    among them, so both fast paths and the classifier beside them hold rules."""
    rng = random.Random(8)
    lines = []
    for i in range(n):
        address = f"10.1.{i // 256}.{i % 256}"
        kind = rng.choice("tttbbpra")
        if kind == "t":
            lines.append(f"-A INPUT -s {address}/32 -p tcp -m tcp --dport {1 + i} -j DROP")
        elif kind == "b":
            lines.append(f"-A INPUT -s {address}/32 -j DROP")
        elif kind == "p":
            lines.append(f"-A INPUT -s 172.16.{i % 256}.0/24 -p udp -m udp --dport {100 + i} -j DROP")
        elif kind == "r":
            lines.append(f"-A INPUT -s {address}/32 -p tcp -m tcp --dport 1000:{1000 + i} -j DROP")
        else:
            lines.append(f"-A INPUT -s 10.1.{i // 256}.{(i * 7) % 256}/32 -p tcp -m tcp --dport 22 -j ACCEPT")
    return lines


def text_of(lines):
    return "\n".join(HEAD + lines + ["COMMIT", ""])


def edits():
    """(what, the INPUT rules after it) for each step; each step edits the previous one's rules."""
    lines = base_lines()
    steps = [("start", list(lines))]
    lines = lines + ["-A INPUT -s 192.0.2.1/32 -p tcp -m tcp --dport 443 -j DROP"]
    steps.append(("append", list(lines)))
    lines = ["-A INPUT -s 10.1.0.9/32 -p tcp -m tcp --dport 10 -j DROP"] + lines  # shadows a later box
    steps.append(("insert first", list(lines)))
    del lines[17]
    steps.append(("delete", list(lines)))
    lines[40] = lines[40].replace("-j DROP", "-j ACCEPT") if "-j DROP" in lines[40] else lines[40] + " -m comment"
    steps.append(("action changed", list(lines)))
    lines = lines[1:] + ["-A INPUT -p tcp -m tcp --dport 8080 -j DROP"]  # the shadow goes; a rule on ports alone
    steps.append(("delete first, append", list(lines)))
    return steps


def compiled(result):
    return compile_tables(result.rules, result.default, overflow="defer")


def fresh(result):
    """The compile of a process that kept nothing."""
    kept_boxes, kept_keys = dict(matchmemo.FACTS), dict(mapencode._INDEX_KEYS)
    matchmemo.FACTS.clear()
    mapencode._INDEX_KEYS.clear()
    try:
        return compiled(result)
    finally:
        matchmemo.FACTS.update(kept_boxes)
        mapencode._INDEX_KEYS.update(kept_keys)


def same_tables(a, b):
    assert a.dump() == b.dump()
    assert {name: (m.max_entries, m.keys, m.values) for name, m in a.maps.items()} == \
           {name: (m.max_entries, m.keys, m.values) for name, m in b.maps.items()}
    assert (a.rule_ids, a.slot_count, a.set_count, a.notes) == (b.rule_ids, b.slot_count, b.set_count, b.notes)
    assert (a.fast_path.tuples, a.fast_path.entries) == (b.fast_path.tuples, b.fast_path.entries)


@pytest.fixture
def warm():
    """plan.TERM_MEMO and an empty compile memo, as a fresh `ipt2xdp watch` has them."""
    planner.TERM_MEMO = {"host": HOST, "terms": {}}
    matchmemo.FACTS.clear()
    yield
    planner.TERM_MEMO = None
    matchmemo.FACTS.clear()


def test_edited_plans_compile_as_fresh_ones(warm):
    parse_memo, host = ParseMemo(), HOST
    served = []
    for what, lines in edits() + [("host changed", edits()[-1][1])]:
        if what == "host changed":  # new host facts: the planner translates every rule anew
            host = replace(HOST, local_destinations=HOST.local_destinations[1:])
            planner.TERM_MEMO = {"host": host, "terms": {}}
        result = planner.plan(parse(text_of(lines), "x.rules", parse_memo), host)
        matches = [rule.match for rule in result.rules]
        before = sum(id(m) in matchmemo.FACTS and matchmemo.FACTS[id(m)][0] is m for m in matches)
        tables = compiled(result)
        used = sum(id(m) in matchmemo.FACTS and matchmemo.FACTS[id(m)][0] is m for m in matches)
        served.append((before, used))
        same_tables(tables, fresh(result))
        assert tables.fast_path.tuples and tables.fast_path.entries, what  # both fast paths hold rules
    # the memo served the unchanged rules' boxes (else this test would not exercise it) ...
    assert served[0][0] == 0 and all(before >= used - 5 and used > 200 for before, used in served[1:-1]), served
    assert served[-1][0] < 10, served  # ... and new host facts gave new Match objects


def test_an_entry_is_served_only_for_its_own_match(warm):
    """An entry under a Match's id that holds another object (an id reused after the object went)
    is not served: the facts are derived from the Match asked about."""
    result = planner.plan(parse(text_of(edits()[1][1]), "x.rules"), HOST)
    impostor = parse(text_of(["-A INPUT -s 198.51.100.7/32 -p udp -m udp --dport 9 -j DROP"]), "y.rules")
    other = planner.plan(impostor, HOST).rules[1].match
    wrong = matchmemo.derive(other)
    assert wrong[4] is not None and wrong[2] is not None  # a box and a source address, both wrong
    for rule in result.rules:
        matchmemo.FACTS[id(rule.match)] = wrong
    same_tables(compiled(result), fresh(result))


def test_trim_forgets_only_beyond_the_bound(warm):
    matchmemo.FACTS.update({i: (None, None) for i in range(1500)})
    matchmemo.trim(300)
    assert len(matchmemo.FACTS) == 1500  # 2 * 300 + 1000 = 1600: kept
    matchmemo.trim(200)
    assert not matchmemo.FACTS
