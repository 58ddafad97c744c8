# SPDX-License-Identifier: GPL-2.0-only
"""What compile keeps between compiles (matchmemo: what the fast-path analysis and group_slots ask
of each Match; mapencode's array index keys; slots.py's per-Match shapes and set keys) never makes
its maps differ from a fresh compile's: a sequence of edited plans, made the way `ipt2xdp watch`
makes them (parse.ParseMemo and plan.TERM_MEMO hand back the Match objects of the rules that did
not change), compiles to exactly what a compile with nothing kept makes, and a kept entry is
served only for the very Match object it was made from."""
import random
from dataclasses import replace

import pytest

from ipt2xdp import abi, classifier, identitymemo, mapencode, matchmemo, plan as planner, slots, tuplefast, tuplestretch
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


KEPT = [(matchmemo, "FACTS", dict), (matchmemo, "FIELD_BITS", dict), (mapencode, "_INDEX_KEYS", bytes),
        (slots, "_MATCH_SHAPES", dict), (slots, "_SET_KEYS", dict), (slots, "_UNIONS", dict),
        (tuplestretch, "LAST", lambda: None), (tuplefast, "_LAST_KEYS", lambda: [[], None, b""]),
        (matchmemo, "_FACTS_AT", identitymemo.Positional), (matchmemo, "_FIELD_BITS_AT", identitymemo.Positional),
        (classifier, "_VALIDATED", lambda: [[]])]


def fresh(result):
    """The compile of a process that kept nothing (every table compile keeps, emptied meanwhile)."""
    kept = [getattr(module, name) for module, name, _ in KEPT]
    for module, name, empty in KEPT:
        setattr(module, name, empty())
    try:
        return compiled(result)
    finally:
        for (module, name, _), table in zip(KEPT, kept):
            setattr(module, name, table)


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
    matchmemo.FIELD_BITS.clear()
    yield
    planner.TERM_MEMO = None
    matchmemo.FACTS.clear()
    matchmemo.FIELD_BITS.clear()


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
        matchmemo.FIELD_BITS[id(rule.match)] = (other, 0b11111)
    same_tables(compiled(result), fresh(result))


def test_trim_forgets_only_beyond_the_bound(warm):
    matchmemo.FACTS.update({i: (None, None) for i in range(1500)})
    matchmemo.trim(300)
    assert len(matchmemo.FACTS) == 1500  # 2 * 300 + 1000 = 1600: kept
    matchmemo.trim(200)
    assert not matchmemo.FACTS


def test_bulk_packing_is_the_per_entry_packing():
    """tuplefast.encode (column by column) and mapencode's bulk packs give the bytes the per-entry
    packs gave (struct ipt2xdp_exact_key: network order, then set_id and proto in host order)."""
    import struct

    from ipt2xdp import tuplefast
    from ipt2xdp.compile import MapContents

    rng = random.Random(3)
    shapes = [(tuplefast.K_SRC | tuplefast.K_PROTO | tuplefast.K_DPORT, 32, 0),
              (tuplefast.K_SRC | tuplefast.K_DST | tuplefast.K_PROTO, 24, 32), (tuplefast.K_DST | tuplefast.K_PROTO, 0, 16)]
    entries = [((rng.choice(shapes), rng.getrandbits(32), rng.getrandbits(32), rng.choice((6, 17, 1)),
                 rng.getrandbits(16), rng.getrandbits(16)), rng.getrandbits(32), rng.getrandbits(32)) for _ in range(300)]
    for probed in (shapes, shapes[:2], shapes[2:], []):
        index = {shape: i for i, shape in enumerate(probed)}
        keys = [struct.pack("!IIHH", src, dst, sport, dport) + struct.pack("=HBB", index[shape], proto, 0)
                for (shape, src, dst, proto, sport, dport), _, _ in entries if shape in index]
        values = [struct.pack("=II", rule_id, code) for box, rule_id, code in entries if box[0] in index]
        assert tuplefast.encode(entries, probed) == (b"".join(keys), b"".join(values), len(keys))
    bounds = {"src": [(0, 0), (0x0A000000, 1), (0x0A000100, 0)]}
    _, packed = mapencode.encode_addresses(bounds, {"src": 7})
    assert packed.values == b"".join(struct.pack("=II", s, 7 + r) for s, r in bounds["src"])
    for n in (100, 5, 0, 300, 7):  # a prefix of the longest kept, or packed anew
        assert mapencode.index_keys(n) == struct.pack(f"={n}I", *range(n))
    assert mapencode.pack_array("x", [b"ab", b"cd", b"ef"], 2) == MapContents(
        "x", 3, 4, 2, b"".join(struct.pack("=I", i) for i in range(3)), b"abcdef")
    intervals = {"dport": [(0, 0), (22, 1), (23, 0), (65536, 2)], "proto": [(0, 0), (6, 1), (7, 0)]}
    rows = [0] * abi.VC_ENTRIES
    for name, row_base in (("dport", 5), ("proto", 1)):
        base, size = mapencode.VALUE_REGIONS[name]
        for i, (start, cls) in enumerate(intervals[name]):
            end = intervals[name][i + 1][0] if i + 1 < len(intervals[name]) else size
            rows[base + start:base + end] = [row_base + cls] * (end - start)
    assert mapencode.encode_value_class(intervals, {"dport": 5, "proto": 1}).values == struct.pack(f"={len(rows)}I", *rows)


def stretch_edits():
    """(what, INPUT rules) of edits of a list of exact tuples (one long leading stretch of single
    sources, namesakes among them: a repeated box is shadowed), each editing the one before."""
    rng = random.Random(11)
    lines = [f"-A INPUT -s 10.2.0.{rng.randrange(120)}/32 -p tcp -m tcp --dport {rng.choice((22, 80, 443))} "
             f"-j {rng.choice(('DROP', 'DROP', 'DROP', 'ACCEPT'))}" for _ in range(300)]
    steps = [("start", list(lines))]
    lines.append("-A INPUT -s 10.2.0.7/32 -p tcp -m tcp --dport 22 -j DROP")
    steps.append(("append a namesake", list(lines)))
    lines.append("-A INPUT -s 192.0.2.1/32 -p udp -m udp --dport 53 -j DROP")
    steps.append(("append", list(lines)))
    del lines[150]
    steps.append(("delete", list(lines)))
    lines[200] = lines[200].replace("-j DROP", "-j ACCEPT") if "-j DROP" in lines[200] else lines[200].replace(
        "-j ACCEPT", "-j DROP")
    steps.append(("action changed", list(lines)))
    lines.insert(0, "-A INPUT -s 10.2.0.9/32 -p tcp -m tcp --dport 80 -j ACCEPT")
    steps.append(("insert first", list(lines)))
    lines.append("-A INPUT -p udp -m udp --dport 53 -j ACCEPT")
    steps.append(("append a rule on a port", list(lines)))
    lines = lines[:-1] + ["-A INPUT -s 10.2.0.9/32 -p tcp -m tcp --dport 8080 -j DROP"]
    steps.append(("replace the last", list(lines)))
    return steps


def _replanned_compiles():
    """[(what, rules the leading stretch took from the last compile, whether the maps equal a
    fresh compile's)] over stretch_edits(), planned and compiled as `ipt2xdp watch` does."""
    parse_memo, out = ParseMemo(), []
    tuplestretch.LAST = None
    for what, lines in stretch_edits():
        result = planner.plan(parse(text_of(lines), "x.rules", parse_memo), HOST)
        taken = []
        real = tuplestretch._same_rules
        tuplestretch._same_rules = lambda old, new: taken.append(real(old, new)) or taken[-1]
        try:
            tables = compiled(result)
        finally:
            tuplestretch._same_rules = real
        reference = fresh(result)
        out.append((what, taken[0] if taken else 0, tables.dump() == reference.dump()
                    and tables.fast_path.tuples == reference.fast_path.tuples))
    return out


def test_the_leading_stretch_taken_over_compiles_as_fresh(warm):
    """tuplefast keeps the last leading stretch's entries for the ClassifierRule objects a re-plan
    takes over (planprefix): the maps are a fresh compile's after each edit, and it took some."""
    steps = _replanned_compiles()
    assert all(same for _, _, same in steps), steps
    assert max(taken for _, taken, _ in steps) > 100, steps


def test_a_stretch_taken_without_comparing_the_rules_is_caught(warm, monkeypatch):
    monkeypatch.setattr(tuplestretch, "_same_rules", lambda old, new: min(len(old), len(new)))
    assert not all(same for _, _, same in _replanned_compiles())
