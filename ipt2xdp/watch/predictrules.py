# SPDX-License-Identifier: GPL-2.0-only
"""The ruleset a predicted one-rule edit leaves (-A, -I, -R, -D: predict.predicted_edits), made
from the parsed ruleset it edits instead of parsing the whole predicted text: the rules the edit
leaves before it are the very objects they were, those after it the same rules a line further on
or back (savefile._with_span, as the parse memo makes them), and the rule the command adds is
parsed alone. At 10k rules the parse of the predicted text, even from the memo, cost 7-10 ms on a
served append's critical path; this costs well under one.

It must give what parse() of predicted_text() gives, spans included: a rule's position is in the
plan's decisions and its record (tests/test_watch_predict_unit.py compares the two over random
edits of random rulesets). Where it cannot tell a rule's line (a line of the base text that was
more than one rule, which a prediction leaves to the read-back anyway, or a table laid out
unexpectedly), it gives None and the text is parsed.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import List, Optional, Tuple

from ipt2xdp import ir
from ipt2xdp.savefile import _new_span, _with_span


def edited_ruleset(base: ir.Ruleset, layout, command, edits: list, path: str) -> Optional[ir.Ruleset]:
    """base (parsed from layout.text, at path) with the one edit applied; None: parse the text."""
    if command.letter not in "AIRD" or len(edits) != 1:
        return None
    index, removed, inserted = edits[0]
    if removed > 1 or len(inserted) > 1 or (removed == 0 and not inserted):
        return None
    shift = len(inserted) - removed
    first_moved = index + removed  # the first line after the edit, as numbered before it
    added: Tuple[ir.Rule, ...] = ()
    if inserted:
        from ipt2xdp.watch.predict import parsed_rule_line

        parsed = parsed_rule_line(base, command.table, command.chain, inserted[0])
        if parsed is None or len(parsed) != 1:
            return None
        added = (_with_span(parsed[0], _new_span(path, index + 1, 1, 1 + len(inserted[0]))),)
    tables = []
    for table in base.tables:
        found = layout.table(table.name)
        if found is None:
            return None
        start, end, _declared, rule_lines = found
        if end < index or shift == 0 and table.name != command.table:
            tables.append(table)  # before the edit, or no line moved
            continue
        chains = []
        for chain in table.chains:
            lines = rule_lines.get(chain.name, [])
            if len(lines) != len(chain.rules):
                return None  # a line read as more than one rule: its rules' lines are not known here
            if table.name == command.table and chain.name == command.chain:
                at = bisect_left(lines, index)
                if removed and (at == len(lines) or lines[at] != index):
                    return None
                kept = _moved(chain.rules[at + removed:], shift, path)
                if kept is None:
                    return None
                chains.append(ir.Chain(chain.name, chain.policy, chain.counters,
                                       chain.rules[:at] + added + kept))
                continue
            at = bisect_left(lines, first_moved)
            if at == len(lines) or shift == 0:
                chains.append(chain)
                continue
            moved = _moved(chain.rules[at:], shift, path)
            if moved is None:
                return None
            chains.append(ir.Chain(chain.name, chain.policy, chain.counters, chain.rules[:at] + moved))
        tables.append(ir.Table(table.name, tuple(chains)))
    return ir.Ruleset(tuple(tables))


def _moved(rules, shift: int, path: str) -> Optional[Tuple[ir.Rule, ...]]:
    """The rules `shift` lines on (None if one has no place in the text at path)."""
    if shift == 0:
        return tuple(rules)
    out: List[ir.Rule] = []
    for rule in rules:
        span = rule.span
        if span is None or span.path != path:
            return None
        out.append(_with_span(rule, _new_span(path, span.line + shift, span.col, span.end_col)))
    return tuple(out)


def edited_layout(layout, command, edits: list, text: str):
    """predict.Layout(text) of the text the one edit leaves, with the tables layout had laid out
    (prepare_prediction(): all of them) moved by the edit instead of scanned again (a pass over
    10k lines costs 5-7 ms, paid after every served change before the next caller's prediction)."""
    from ipt2xdp.watch.predict import Layout, edited_lines

    out = Layout.__new__(Layout)
    out.text, out.lines, out._tables = text, edited_lines(layout, edits), {}
    if command.letter not in "AIRD" or len(edits) != 1:
        return out  # laid out when asked
    index, removed, inserted = edits[0]
    shift = len(inserted) - removed

    def moved(line: int) -> int:  # a line the edit neither removed nor inserted
        return line if line < index else line + shift
    for name, found in layout._tables.items():
        if found is None:
            continue
        start, end, declared, rules = found
        if end < index:
            out._tables[name] = found
            continue
        chains = {}
        for chain, lines in rules.items():
            at, past = bisect_left(lines, index), bisect_left(lines, index + removed)
            here = [index] if inserted and name == command.table and chain == command.chain else []
            chains[chain] = lines[:at] + here + [line + shift for line in lines[past:]]
        if inserted and name == command.table and command.chain not in chains:
            chains[command.chain] = [index]
        chains = {chain: lines for chain, lines in chains.items() if lines}  # as a scan finds them
        out._tables[name] = (moved(start), moved(end), {c: moved(i) for c, i in declared.items()}, chains)
    return out
