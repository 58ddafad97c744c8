# SPDX-License-Identifier: GPL-2.0-only
"""Parse iptables-save / iptables-restore text into an `ir.Ruleset`.

`parse(text, path)` returns the Ruleset or raises one `ParseError` holding every diagnostic of the
file, each with a position. The lark grammar (grammar/iptables_save.lark) gives the structure of
the file and the shape of a word (savegrammar.py); savefile.py builds tables and chains from its
items, ruleparse.py reads each rule's words, options.py gives the meaning of each option.

Two paths: a whole-file LALR parse (fast: a run of rule lines is one token), and, only when that
fails, a line-by-line re-parse that reports every broken line while still checking the others.
With a memo, a file that differs from the memo's last one only inside one run of rule lines is
built from that file's items without lark (savesplice.py).
"""
from __future__ import annotations

from typing import Optional

from ipt2xdp import gcpause, ir
from ipt2xdp.errors import ParseError
from ipt2xdp.savefile import ParseMemo, _Builder, _feed
from ipt2xdp.savegrammar import lark_parser, split_words

__all__ = ["ParseMemo", "lark_parser", "parse", "split_words"]


def parse(text: str, path: str = "<stdin>", memo: Optional[ParseMemo] = None) -> ir.Ruleset:
    """Parse a whole iptables-save file; raise ParseError with every problem found.

    Args:
        text: the file's contents.
        path: the name used in diagnostics.
        memo: lines parsed by earlier calls with the same memo are not parsed again (ParseMemo).
    Returns:
        The Ruleset, tables in file order.
    """
    # The parse allocates millions of small objects and no cycles; the cyclic collector, left on,
    # rescans the growing heap over and over (it was more than half the time of a 100k-rule parse).
    with gcpause.paused():
        return _parse(text, path, memo)


def _parse(text: str, path: str, memo: Optional[ParseMemo] = None) -> ir.Ruleset:
    from lark.exceptions import UnexpectedInput
    from ipt2xdp import savesplice
    parser = lark_parser()
    builder = _Builder(path, memo)
    calls = savesplice.splice(memo.seen, path, text) if memo is not None else None
    if calls is not None:  # the items lark would give, from the last file's (savesplice.py)
        for name, args in calls:
            getattr(builder, name)(*args)
        memo.seen = savesplice.record(path, text, calls)
    else:
        source = text if text.endswith("\n") or not text else text + "\n"
        try:
            tree = parser.parse(source, start="start")
        except UnexpectedInput:
            tree = None
        if tree is not None:
            recording = _Recording(builder)
            for item in tree.children:
                _feed(recording, item)
            if memo is not None:
                memo.seen = savesplice.record(path, text, recording.calls)
        else:
            _parse_lines(parser, builder, text)
    last_line = text.count("\n") + (0 if text.endswith("\n") else 1)
    try:
        return builder.finish(max(last_line, 1))
    except ParseError as e:
        e.source_lines = {path: text.splitlines()}
        raise


class _Recording:
    """A builder's stand-in that notes each call (method name, arguments) before making it."""

    def __init__(self, builder: _Builder):
        self.builder = builder
        self.calls = []

    def __getattr__(self, name):
        method = getattr(self.builder, name)

        def call(*args):
            self.calls.append((name, args))
            return method(*args)
        return call


def _parse_lines(parser, builder: _Builder, text: str) -> None:
    """The slow path: parse each line on its own so that every broken line is reported."""
    from lark.exceptions import UnexpectedInput
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            tree = parser.parse(line + "\n", start="line")
        except UnexpectedInput as e:
            col = getattr(e, "column", 1)
            col = col if isinstance(col, int) and col > 0 else 1
            builder.error(number, col, None, _syntax_message(line, e, col), code="syntax")
            continue
        for item in tree.children:
            _feed(builder, item, number)


def _syntax_message(line: str, e, col: int) -> str:
    stripped = line.lstrip()
    if stripped.startswith(("-A", "-I", "[")) and stripped.count('"') % 2:
        return "unterminated quoted string"
    if stripped.startswith(("-A", "-I", "--append", "--insert", "[")):
        return "malformed rule line (expected: [packets:bytes] -A CHAIN options...)"
    if stripped.startswith(":"):
        return "malformed chain line (expected: :CHAIN POLICY [packets:bytes])"
    snippet = line[col - 1:col + 19] if col - 1 < len(line) else line
    return f"unexpected text '{snippet.strip()}' (not part of an iptables-save file)"
