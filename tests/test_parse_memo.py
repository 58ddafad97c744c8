# SPDX-License-Identifier: GPL-2.0-only
"""parse(text, path, memo): lines met before are not parsed again, and the result, spans included,
is what a parse without the memo gives; a line is not reused where its table lacks a user chain
that was declared when it was recorded."""
import os
from pathlib import Path

import pytest

from ipt2xdp.errors import ParseError
from ipt2xdp.parse import ParseMemo, parse
from tests.fingerprint import canonical, random_ruleset

RULESETS = sorted(p for p in Path(os.environ["IPT2XDP_SHARED_RULESETS"]).rglob("*")
                  if p.is_file() and p.name != "MANIFEST.txt")


def _parsed(text, path, memo=None):
    try:
        return canonical(parse(text, path, memo))  # canonical() includes the spans
    except ParseError as error:
        return str(error)


@pytest.mark.parametrize("path", RULESETS[:30], ids=lambda p: p.name)
def test_second_parse_with_memo_is_a_plain_parse(path):
    text = path.read_text(errors="replace")
    memo = ParseMemo()
    assert _parsed(text, "first", memo) == _parsed(text, "first")
    again = _parsed(text, "second", memo)
    assert again == _parsed(text, "second")


@pytest.mark.parametrize("seed", range(20))
def test_memo_across_different_random_rulesets(seed):
    memo = ParseMemo()
    for offset in range(3):
        text = random_ruleset(seed * 3 + offset)
        assert _parsed(text, f"r{offset}", memo) == _parsed(text, f"r{offset}")


def test_lines_are_reused_only_with_the_user_chains_they_were_parsed_with():
    with_chain = "*filter\n:INPUT ACCEPT [0:0]\n:web - [0:0]\n-A INPUT -p tcp -j web\n-A web -j DROP\nCOMMIT\n"
    without = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -j web\nCOMMIT\n"
    memo = ParseMemo()
    parse(with_chain, "a", memo)
    with pytest.raises(ParseError, match="undefined chain or unknown target 'web'"):
        parse(without, "b", memo)
    reused = parse(with_chain, "c", memo)
    assert reused == parse(with_chain, "d")
    assert reused.table("filter").chain("INPUT").rules[0].span.path == "c"


def test_a_line_is_recorded_under_the_chains_declared_so_far():
    # `-j X` before `:X` is an error whether or not the memo has seen `-j X` with X declared.
    later = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j X\n:X - [0:0]\nCOMMIT\n"
    memo = ParseMemo()
    parse("*filter\n:INPUT ACCEPT [0:0]\n:X - [0:0]\n-A INPUT -j X\nCOMMIT\n", "a", memo)
    assert _parsed(later, "b", memo) == _parsed(later, "b")
