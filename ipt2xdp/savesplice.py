# SPDX-License-Identifier: GPL-2.0-only
"""A file that differs from the last one a parse memo saw only inside one run of rule lines,
built without lexing it again.

Lexing the run of rule lines (one RULE_BLOCK token, checked by one regex) is most of what is left
of a parse when the memo knows the lines: about 20 ms for 10k lines. When a change (`ipt2xdp
watch` re-reading the ruleset after one rule changed) leaves every line outside one run as it was,
and every new line in it is a whole rule line by itself, lark would give the same items as last
time, that run's text changed and the items after it some lines later: they are handed to the
builder so, and lark is not run.

Why the same items: the run's token is RULE_LINE (LINE_BREAK RULE_LINE)*+ (possessive), so each
line joins it where RULE_LINE's first match at its start (past its leading blanks) ends at the
end of that line, and the run ends at the first line that does not; the run's first line and
the line after it are unchanged, and last time the run ended at the end of a line (checked when
recorded).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

_RULE_LINE: Optional[re.Pattern] = None
_BLANKS = " \t\f\r"


@dataclass
class Seen:
    """A file lark parsed: its path and lines (_compared), the builder calls its items made (method
    name, arguments), and for each run of rule lines (index of its call, its first and last line,
    0-based)."""
    path: str
    lines: List[str]
    calls: List[Tuple[str, tuple]]
    runs: List[Tuple[int, int, int]]


def record(path: str, text: str, calls: List[Tuple[str, tuple]]) -> Optional[Seen]:
    """What a later splice needs of a file lark parsed without error, or None if it cannot use it."""
    if not text.endswith("\n"):
        return None
    lines = text.split("\n")
    runs = []
    for index, (name, args) in enumerate(calls):
        if name != "rules":
            continue
        block, line, col = args
        first, last = line - 1, line - 1 + block.count("\n")
        if _run_text(lines, first, last, col) != block:
            return None  # the token did not end at the end of its last line
        runs.append((index, first, last))
    return Seen(path, _compared(lines, text), calls, runs)


def _compared(lines: List[str], text: str) -> List[str]:
    """The lines (text split at its newlines) as compared: a line starting with "#" is one COMMENT
    token whatever follows, which makes no item, so every such line compares the same
    (iptables-save's first and last lines carry the time it ran). Found in the text: there are a
    few of them among 10k lines."""
    out = list(lines)
    if text.startswith("#"):
        out[0] = "#"
    index, counted = 0, 0  # the line at offset `counted` of the text
    start = text.find("\n#") + 1
    while start:
        index += text.count("\n", counted, start)
        counted = start
        out[index] = "#"
        start = text.find("\n#", start) + 1
    return out


def _run_text(lines: List[str], first: int, last: int, col: int) -> str:
    return "\n".join([lines[first][col - 1:]] + lines[first + 1:last + 1])


def _whole_rule_line(line: str) -> bool:
    global _RULE_LINE
    if _RULE_LINE is None:
        from ipt2xdp.savegrammar import lark_parser
        _RULE_LINE = re.compile(lark_parser().get_terminal("RULE_LINE").pattern.to_regexp())
    stripped = line.lstrip(_BLANKS)
    match = _RULE_LINE.match(stripped)
    return match is not None and match.end() == len(stripped)


def splice(seen: Optional[Seen], path: str, text: str) -> Optional[List[Tuple[str, tuple]]]:
    """The builder calls lark's items of text would make, or None where that is not known
    without lexing it."""
    from ipt2xdp.savefile import _same_ends

    if seen is None or seen.path != path or not text.endswith("\n"):
        return None
    lines = text.split("\n")
    head, tail = _same_ends(seen.lines, _compared(lines, text), True)
    old_end, new_end = len(seen.lines) - tail, len(lines) - tail  # the changed lines: [head, *_end)
    if old_end == head and new_end == head:
        return list(seen.calls)
    run = next(((index, first, last) for index, first, last in seen.runs if first < head and old_end <= last + 1),
               None)
    if run is None or not all(_whole_rule_line(line) for line in lines[head:new_end]):
        return None
    index, first, last = run
    shift = new_end - old_end
    _, (block, line, col) = seen.calls[index]
    calls = seen.calls[:index] + [("rules", (_run_text(lines, first, last + shift, col), line, col))]
    for name, args in seen.calls[index + 1:]:
        # every builder method takes (..., line, col) last
        calls.append((name, args[:-2] + (args[-2] + shift, args[-1])))
    return calls


def same_content(text: str, other: str) -> bool:
    """Whether two files hold the same lines once comment lines and blank lines are left out.
    Such files parse to the same rulesets but for the line numbers of their positions: a comment
    or blank line makes no item, and every other line is read on its own (a rule line's rules
    depend on its text and on the lines before it only). `ipt2xdp import` so tells that what
    iptables-save prints back after the restore is the file it restored (its first and last lines
    are comments) without parsing it again."""
    # the usual case first: the file, and what iptables-save prints of it (a comment line before
    # and after), are the same text between those lines; equal middles give equal contents
    return _middle(text) == _middle(other) or _content(text) == _content(other)


def _middle(text: str) -> str:
    """text without the lines starting with "#" at its start and at its end (whole lines: what is
    left out has no line but comment lines, and the cut leaves only empty lines at the ends)."""
    start = 0
    while text.startswith("#", start):
        newline = text.find("\n", start)
        if newline < 0:
            return ""
        start = newline + 1
    end = len(text)
    while end > start:
        body_end = end - 1 if text[end - 1] == "\n" else end  # the last line, without its newline
        line_start = max(text.rfind("\n", start, body_end) + 1, start)
        if not text.startswith("#", line_start, body_end):
            break
        end = line_start
    return text[start:end]


def _content(text: str) -> List[str]:
    return [line for line in text.split("\n") if line[:1] != "#" and line.strip(_BLANKS)]
