# SPDX-License-Identifier: GPL-2.0-only
"""The structure of an iptables-save file (tables, chain declarations, rule lines, COMMIT) built into
an ir.Ruleset, one item at a time, with a diagnostic for each structural error (_Builder), and the
memo of rule lines already parsed in this process (ParseMemo)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import chain as chained, groupby
from operator import itemgetter
from typing import Dict, List, Optional, Tuple

from ipt2xdp import ir
from ipt2xdp.errors import Diagnostic, ParseError, SourceSpan
from ipt2xdp.fastinit import fast_constructor
from ipt2xdp.ruleparse import RuleParser
from ipt2xdp.rulewords import KNOWN_TARGET_EXTENSIONS, RuleError
from ipt2xdp.savegrammar import split_words, word_regex, words as _words

_new_span = fast_constructor(SourceSpan)

_COUNTERS_RE = re.compile(r"\[(\d+):(\d+)\]")
_BUILTIN_POLICIES = ("ACCEPT", "DROP")


@dataclass
class _Chain:
    name: str
    policy: Optional[str]
    counters: ir.Counters
    rules: List[ir.Rule] = field(default_factory=list)


@dataclass
class _Table:
    name: str
    line: int
    chains: Dict[str, _Chain] = field(default_factory=dict)


class ParseMemo:
    """Rule lines parsed before in this process, to parse them again fast: `ipt2xdp import` parses
    the file, restores it, then parses what iptables-save prints back, mostly the same lines.

    Pass one to parse() calls that may see the same lines. A line's rules depend on its text and
    on the user chains its table has declared so far (`-j NAME` is a jump only to a declared
    chain; an undeclared NAME is an error), so a table's recorded lines are reused only while it
    has declared every user chain that was declared when any of them was recorded. It keeps every
    line it sees: a long-lived user should drop it now and then.
    """

    def __init__(self) -> None:
        # table name -> (user chains some recording was made under, line text -> its rules)
        self.tables: Dict[str, Tuple[set, Dict[str, List[ir.Rule]]]] = {}
        # table name -> its last run of rule lines (_Block); see _Builder._same_lines
        self.blocks: Dict[str, _Block] = {}
        self.seen = None  # the last file lark parsed (savesplice.Seen)


# A line's outcome in a run: (chain name, its rules), or None where it took the slow path (rule()).
_Done = Optional[Tuple[str, List[ir.Rule]]]


@dataclass
class _Block:
    """A table's run of rule lines as read last time: where it started, its raw lines, and what
    each line gave."""
    path: str
    line: int
    col: int
    lines: List[str]
    results: List[_Done]


def _same_ends(old: List[str], new: List[str], at_start: bool) -> Tuple[int, int]:
    """How many lines two runs share at their start (none unless at_start), and then at their end
    (not overlapping)."""
    head = _common_start(old, new, min(len(old), len(new))) if at_start else 0
    most = min(len(old), len(new)) - head
    if most and old[-1] != new[-1]:
        return head, 0
    tail = _common_start(old[::-1][:most], new[::-1][:most], most)
    return head, tail


def _common_start(old: List[str], new: List[str], most: int) -> int:
    """How many of the first `most` lines two runs share: halving the lines left, each half
    compared as a list (in C; a change leaves 10k-line runs the same but for a line or two)."""
    same, left = 0, most
    while left:
        half = (left + 1) // 2
        if old[same:same + half] == new[same:same + half]:
            same += half
            left -= half
        else:
            left = half - 1 if half > 1 else 0
    return same


def _extend_unchanged(chains: Dict[str, "_Chain"], results: List[_Done]) -> bool:
    """Append the rules of a run's unchanged first lines to their chains a chain at a time
    (iptables-save prints a chain's rules together; an append at 10k rules leaves all but one
    line as it was). False, appending nothing, if one of them took the slow path last time or
    names a chain not declared now: then they are taken line by line."""
    if None in results:
        return False
    groups = [(name, list(group)) for name, group in groupby(results, key=itemgetter(0))]
    targets = [chains.get(name) for name, _ in groups]
    if None in targets:
        return False
    for target, (_, group) in zip(targets, groups):
        target.rules.extend(chained.from_iterable(map(itemgetter(1), group)))
    return True


def _with_span(rule: ir.Rule, span) -> ir.Rule:
    """The same rule read at another place (every other field shared)."""
    fields = rule.__dict__.copy()
    fields["span"] = span
    copy = object.__new__(ir.Rule)
    object.__setattr__(copy, "__dict__", fields)
    return copy


class _Builder:
    """Consume the items of a file in order (table, chain, rules, commit) and build the Ruleset."""

    def __init__(self, path: str, memo: Optional[ParseMemo] = None):
        self.path = path
        self.memo = memo
        self.diagnostics: List[Diagnostic] = []
        self.tables: Dict[str, ir.Table] = {}
        self.current: Optional[_Table] = None
        self.rule_parser = RuleParser(())

    def error(self, line, col, end_col, message, hint=None, code="parse"):
        self.diagnostics.append(Diagnostic("error", code, message, SourceSpan(self.path, line, col, end_col), hint))

    def table(self, text: str, line: int, col: int) -> None:
        name = text[1:]
        if self.current is not None:
            self.error(line, col, col + len(text), f"COMMIT expected before the next table (table '{self.current.name}' "
                       f"opened at line {self.current.line})", code="commit")
        if name not in ir.BUILTIN_CHAINS:
            self.error(line, col + 1, col + len(text), f"unknown table '{name}'",
                       hint="tables: " + ", ".join(ir.BUILTIN_CHAINS), code="table")
            self.current = _Table(name, line)  # still read its lines, to report their errors
        else:
            self.current = _Table(name, line)
        self.rule_parser = RuleParser(set())

    def chain(self, decl: str, policy: str, counters: Optional[str], line: int, col: int) -> None:
        name = decl[1:]
        end = col + len(decl)
        if self.current is None:
            self.error(line, col, end, "chain declared outside a table", hint="start the table with '*filter'")
            return
        builtins = ir.BUILTIN_CHAINS.get(self.current.name, ())
        if name in self.current.chains:
            self.error(line, col + 1, end, f"chain '{name}' declared twice", code="chain")
            return
        if name in builtins:
            if policy not in _BUILTIN_POLICIES and policy != "-":
                self.error(line, end + 1, end + 1 + len(policy), f"bad policy '{policy}' for built-in chain {name}",
                           hint="ACCEPT or DROP")
                return
            policy = "ACCEPT" if policy == "-" else policy
        else:
            if policy != "-":
                self.error(line, end + 1, end + 1 + len(policy),
                           f"can't set policy '{policy}' on user chain '{name}'", hint="write '-'")
                return
            if len(name) > 28 or name.startswith("-") or name == "!" or name in KNOWN_TARGET_EXTENSIONS:
                self.error(line, col + 1, end, f"invalid chain name '{name}'", code="chain")
                return
            policy = None
        self.current.chains[name] = _Chain(name, policy, _counters(counters))
        if policy is None:
            self.rule_parser.user_chains.add(name)

    def rules(self, block: str, line: int, col: int) -> None:
        """A run of rule lines (one RULE_BLOCK token starting at line:col).

        The common line (`-A CHAIN ...` of a known chain, no counters) is handled
        inline; any other line, and any line whose rule is in error, goes through rule().
        """
        rule = self.rule
        table = self.current
        if table is None:
            chains, parse = {}, None
        else:
            chains, parse = table.chains, self.rule_parser.parse
        path, zero, new_span, findall, derived = self.path, ir.ZERO, _new_span, word_regex().findall, ir.DERIVED
        known, record = self._memo_lines()
        lines = block.split("\n")
        results: List[_Done] = [None] * len(lines)
        before, head, tail_from, shift = self._same_lines(lines, line, col, known)
        tail_moved = before is not None and before.line + shift != line
        start = 0
        if head and _extend_unchanged(chains, before.results[:head]):
            results[:head] = before.results[:head]
            start = head
        for offset, text in enumerate(lines[start:], start):
            if offset < head or offset >= tail_from:
                # the same raw line as last time: at the same line number (head), or `shift` lines
                # away (tail), where its spans may have another line number
                in_tail = offset >= tail_from
                done = before.results[offset + shift if in_tail else offset]
                target_chain = chains.get(done[0]) if done is not None else None
                if target_chain is not None:
                    if in_tail and tail_moved and done[1]:
                        old = done[1][0].span
                        span = new_span(path, line + offset, old.col, old.end_col)
                        done = (done[0], [_with_span(r, span) for r in done[1]])
                    target_chain.rules.extend(done[1])
                    results[offset] = done
                    continue
            c = col if offset == 0 else 1
            if text[0] in " \t\f\r":
                stripped = text.lstrip(" \t\f\r")
                c += len(text) - len(stripped)
                text = stripped
            if text[-1] in " \t\f\r":
                text = text.rstrip(" \t\f\r")
            if not text.startswith("-A "):
                rule(text, line + offset, c)
                continue
            again = known.get(text) if known is not None else None
            if again is not None and '"' not in text:
                # a line read before: only its chain's word is needed (what text.split()[1] is)
                target_chain = chains.get(text.split(None, 2)[1])
                if target_chain is not None:
                    span = new_span(path, line + offset, c, c + len(text))
                    rules = [_with_span(r, span) for r in again]
                    target_chain.rules.extend(rules)
                    results[offset] = (target_chain.name, rules)
                    continue
            words = findall(text) if '"' in text else text.split()  # see _words
            target_chain = chains.get(words[1])
            if target_chain is None:
                rule(text, line + offset, c)
                continue
            span = new_span(path, line + offset, c, c + len(text))
            if again is not None:
                rules = [_with_span(r, span) for r in again]
                target_chain.rules.extend(rules)
                results[offset] = (target_chain.name, rules)
                continue
            try:
                rules = parse(words[1], words[2:], zero, span)
            except RuleError:
                rule(text, line + offset, c)  # parses it again, the same way, and reports the error
                continue
            target_chain.rules.extend(rules)
            results[offset] = (target_chain.name, rules)
            if record is not None:
                for r in rules:  # shared with the copies read again at other lines (ir.DERIVED)
                    r.__dict__.setdefault(derived, {})  # the parser may have given its text
                record[text] = rules
        if record is not None:
            self.memo.blocks[table.name] = _Block(path, line, col, lines, results)

    def _same_lines(self, lines: List[str], line: int, col: int, reusable) -> Tuple[Optional[_Block], int, int, int]:
        """What this run may take from the table's run last time: (that run, how many lines at its
        start are the same at the same line numbers, the offset from which its lines are the same
        as that run's last ones, old index - new index of those). A change leaves the run as it was
        but for a few lines, and reading a line again (even from the line memo) is most of a
        parse's time.

        The lines' rules stand while the table declares every user chain it did then, as for the
        line memo (reusable is None otherwise); a line's chain must still be declared (checked
        where it is used)."""
        nothing = None, 0, len(lines), 0
        if reusable is None:
            return nothing
        before = self.memo.blocks.get(self.current.name)
        if before is None or before.path != self.path:
            return nothing
        # the start is taken only where its spans are the same; the tail's are made again if need be
        head, tail = _same_ends(before.lines, lines, before.line == line and before.col == col)
        shift = len(before.lines) - len(lines)
        tail_from = len(lines) - tail
        if tail:
            # only the first line of a run starts past column 1: a tail line that is, or was, a
            # first line keeps its spans' columns only where the two runs start at the same column
            was = before.col if tail_from + shift == 0 else 1
            now = col if tail_from == 0 else 1
            if was != now:
                tail_from += 1
        return before, head, tail_from, shift

    def _memo_lines(self):
        """(recorded lines this block may reuse or None, where to record its lines or None)."""
        if self.memo is None or self.current is None:
            return None, None
        chains, lines = self.memo.tables.setdefault(self.current.name, (set(), {}))
        user_chains = self.rule_parser.user_chains
        reusable = lines if chains <= user_chains else None
        chains |= user_chains  # what this block's lines are parsed under
        return reusable, lines

    def rule(self, text: str, line: int, col: int) -> None:
        words = _words(text)
        i = 0
        counters = ir.ZERO
        if words and words[0].startswith("["):
            counters = _counters(words[0])
            i = 1
        action = words[i]
        if len(words) <= i + 1:
            self.error(line, col, None, f"{action} needs a chain name")
            return
        chain_name = words[i + 1]
        span = _new_span(self.path, line, col, col + len(text))
        if self.current is None:
            self.error(line, col, col + len(text), "rule outside a table", hint="start the table with '*filter'")
            return
        start = i + 2
        position = None
        if action in ("-I", "--insert") and start < len(words) and words[start].isdigit():
            position = int(words[start])
            start += 1
        table = self.current
        target_chain = table.chains.get(chain_name)
        if target_chain is None and chain_name in ir.BUILTIN_CHAINS.get(table.name, ()):
            # iptables-restore lets a table use its built-in chains without declaring them
            target_chain = table.chains[chain_name] = _Chain(chain_name, "ACCEPT", ir.ZERO)
        if target_chain is None:
            chain_col = split_words(text)[i + 1][1]
            self.error(line, col + chain_col, col + chain_col + len(chain_name),
                       f"rule for undefined chain '{chain_name}' in table '{table.name}'",
                       hint=f"declare it with ':{chain_name} - [0:0]' before its rules", code="chain")
            return
        try:
            rules = self.rule_parser.parse(chain_name, words[start:], counters, span)
        except RuleError as e:
            located = split_words(text)
            word, wcol = located[start + e.word_index] if start + e.word_index < len(located) else located[-1]
            self.error(line, col + wcol, col + wcol + len(word), e.message, e.hint, code="rule")
            return
        if position is None and action in ("-I", "--insert"):
            position = 1
        if position is None:
            target_chain.rules.extend(rules)
        elif position - 1 > len(target_chain.rules) or position < 1:
            self.error(line, col, None, f"index of insertion too big ({position})")
        else:
            target_chain.rules[position - 1:position - 1] = rules

    def commit(self, line: int, col: int) -> None:
        if self.current is None:
            self.error(line, col, col + 6, "COMMIT without a table", code="commit")
            return
        table = self.current
        self.current = None
        if table.name not in ir.BUILTIN_CHAINS:
            return
        builtins = ir.BUILTIN_CHAINS[table.name]
        chains = [table.chains.get(n) or _Chain(n, "ACCEPT", ir.ZERO) for n in builtins]
        # user chains by name, as the kernel keeps them and iptables-save lists them
        chains += sorted((c for n, c in table.chains.items() if n not in builtins), key=lambda c: c.name)
        self.tables[table.name] = ir.Table(table.name, tuple(
            ir.Chain(c.name, c.policy, c.counters, tuple(c.rules)) for c in chains))

    def finish(self, last_line: int) -> ir.Ruleset:
        if self.current is not None:
            self.error(last_line, 1, None, f"COMMIT expected at the end of table '{self.current.name}' "
                       f"(opened at line {self.current.line})", code="commit")
        if self.diagnostics:
            raise ParseError(self.diagnostics)
        return ir.Ruleset(tuple(self.tables.values()))


def _counters(text: Optional[str]) -> ir.Counters:
    if not text:
        return ir.ZERO
    m = _COUNTERS_RE.fullmatch(text)
    return ir.Counters(int(m.group(1)), int(m.group(2))) if m else ir.ZERO


def _feed(builder: _Builder, item, line_no: Optional[int] = None) -> None:
    """Hand one parsed item (a lark Tree or a COMMENT token) to the builder."""
    from lark import Token
    if isinstance(item, Token):
        return  # COMMENT
    kind = item.data
    toks = item.children
    first = toks[0]
    line = line_no or first.line
    if kind == "table_header":
        builder.table(str(first), line, first.column)
    elif kind == "chain_header":
        builder.chain(str(first), str(toks[1]), str(toks[2]) if len(toks) > 2 else None, line, first.column)
    elif kind == "commit":
        builder.commit(line, first.column)
    elif kind == "rules":
        builder.rules(str(first), line, first.column)
