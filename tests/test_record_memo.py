# SPDX-License-Identifier: GPL-2.0-only
"""The plan record a long-lived planner makes (planrecord.RECORD_PARTS: the last record's decision
records, counter paths, and the JSON of their pieces and of the verdict names) is, after every
edit, byte for byte the record made with nothing kept; and a reuse that does not compare the
objects it takes over is caught by the same comparison."""
import json

import pytest

from ipt2xdp import plan as planner, planrecord, planstore
from ipt2xdp.commands import import_
from ipt2xdp.parse import ParseMemo, parse
from tests.test_compile_memo import stretch_edits, text_of
from tests.test_replan_memo import BASE, CHANGES
from tests.test_plan import HOST


def _record(ruleset, result, host):
    prepared = import_._Prepared.__new__(import_._Prepared)
    prepared.host, prepared.result, prepared.ipset_mode, prepared._record = host, result, "mirror", None
    prepared.text = planrecord.canonical_text(ruleset, result)
    return prepared.plan_record("nft", ["veth0"], ruleset)


def texts():
    """Rulesets in edit order: test_replan_memo's changes, then edits of a list of exact tuples."""
    text = BASE
    out = [text]
    for _, change in CHANGES:
        text = change(text)
        out.append(text)
    return out + [text_of(lines) for _, lines in stretch_edits()]


def _replan_all():
    """[whether the kept record equals the fresh one] over texts(), as `ipt2xdp watch` makes them."""
    memo, same = ParseMemo(), []
    for part in planrecord.RECORD_PARTS.values():
        part.clear()
    for text in texts():
        planner.TERM_MEMO = planner.TERM_MEMO if planner.TERM_MEMO else {"host": HOST, "terms": {}}
        ruleset = parse(text, "<x>", memo)
        result = planner.plan(ruleset, HOST)
        record, encoded = _record(ruleset, result, HOST)
        memo_on, planner.TERM_MEMO = planner.TERM_MEMO, None
        try:
            fresh_record, fresh = _record(ruleset, result, HOST)
        finally:
            planner.TERM_MEMO = memo_on
        same.append(record == fresh_record and encoded == fresh == json.dumps(planstore._stored(fresh_record)))
    return same


@pytest.fixture
def warm():
    yield
    planner.TERM_MEMO = None
    for part in planrecord.RECORD_PARTS.values():
        part.clear()


@pytest.mark.parametrize("chunk", [16, planstore.JSON_CHUNK])  # small: whole pieces are taken over too
def test_kept_records_are_the_fresh_ones(warm, monkeypatch, chunk):
    monkeypatch.setattr(planstore, "JSON_CHUNK", chunk)
    taken = []
    real = planstore._same_start
    monkeypatch.setattr(planstore, "_same_start", lambda old, new: taken.append(real(old, new)) or taken[-1])
    assert all(_replan_all())
    assert max(taken) > 250, "the records reused nothing: this test would not exercise the reuse"


def test_a_reuse_without_comparing_the_objects_is_caught(warm, monkeypatch):
    monkeypatch.setattr(planstore, "JSON_CHUNK", 16)
    monkeypatch.setattr(planstore, "_same_start", lambda old, new: min(len(old or ()), len(new or ())))
    assert not all(_replan_all())


def test_verdict_names_taken_over_without_comparing_are_caught(warm, monkeypatch):
    """The verdict names' JSON alone: pieces taken whatever the names are."""
    monkeypatch.setattr(planstore, "JSON_CHUNK", 16)
    real = planstore._list_json
    monkeypatch.setattr(planstore, "_list_json", lambda items, same, old: real(
        items, len(items) if items and items[0] in ("DEFER", "DROP", "ACCEPT", "CONTINUE") else same, old))
    assert not all(_replan_all())


def test_verdict_names_of_rules_not_compared_are_caught(warm, monkeypatch):
    named = []
    real = planrecord.other_positions
    monkeypatch.setattr(planrecord, "other_positions", lambda old, new: named.append(len(real(old, new))) or real(old, new))
    assert all(_replan_all()) and sorted(named)[len(named) // 2] < 30, named  # most names were kept
    monkeypatch.setattr(planrecord, "other_positions", lambda old, new: list(range(len(old), len(new))))
    assert not all(_replan_all())


@pytest.mark.parametrize("seed", range(30))
def test_canonical_from_the_decisions_is_the_rendered_ruleset(seed, monkeypatch):
    """planrecord.canonical_text takes each chain's rule texts from the plan's decisions: the text is
    render(ruleset.without_positions()) for random rulesets (user chains, other tables, empty
    chains), and every chain's texts are taken, none rendered again."""
    from ipt2xdp.errors import ParseError
    from ipt2xdp import render as printer
    from tests.fingerprint import HOSTS, random_ruleset

    try:
        ruleset = parse(random_ruleset(seed), "<r>")
    except ParseError:
        pytest.skip("the generated ruleset does not parse")
    result = planner.plan(ruleset, HOSTS["receiver"])
    taken = planrecord.chain_texts(ruleset, result.decisions)
    assert set(taken) == {(t.name, c.name) for t in ruleset.tables for c in t.chains if c.rules}
    assert planrecord.canonical_text(ruleset, result) == printer.render(ruleset.without_positions())


def test_canonical_with_texts_out_of_place_is_caught(monkeypatch):
    from ipt2xdp import render as printer

    ruleset = parse(texts()[2], "<r>")
    result = planner.plan(ruleset, HOST)
    chains = planrecord.chain_texts(ruleset, result.decisions)
    wrong = {key: texts[1:] + texts[:1] for key, texts in chains.items()}  # each rule gets its neighbour's text
    assert printer.canonical(ruleset, wrong) != printer.render(ruleset.without_positions())
