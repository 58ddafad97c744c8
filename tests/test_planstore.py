# SPDX-License-Identifier: GPL-2.0-only
"""planstore: a record read back from its file (not from the process's cache) is the record saved,
decisions included (written as columns, each "why" once); a record whose decisions do not fit the
columns is kept as it was given."""
import json

import pytest

from ipt2xdp import planstore
from ipt2xdp.parse import parse
from ipt2xdp.plan import plan
from ipt2xdp.report import decision_records
from tests.fingerprint import HOSTS, random_ruleset


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(planstore, "STATE_ROOT", str(tmp_path))
    monkeypatch.setattr(planstore, "_RECENT", planstore.OrderedDict())
    return tmp_path


def _read_back(key):
    planstore._RECENT.clear()  # from the file, as another process reads it
    return planstore.load(key)


@pytest.mark.parametrize("seed", range(6))
def test_a_plan_record_reads_back_as_saved(store, seed):
    result = plan(parse(random_ruleset(seed)), HOSTS["receiver"])
    record = {"backend": "nft", "decisions": decision_records(result), "devices": ["rcv0"],
              "counter_paths": [[["filter", "INPUT", 1]]]}
    assert record["decisions"]
    planstore.save("k", record)
    with open(next(store.rglob("plan-k.json"))) as f:
        assert "decisions" not in json.load(f)  # the columns were written
    assert _read_back("k") == record
    assert list(_read_back("k")["decisions"][0]) == list(record["decisions"][0])  # keys in their order


def test_decisions_with_two_sentences_for_one_code_are_kept_as_given(store):
    decisions = [{"table": "filter", "chain": "INPUT", "index": i, "kind": "xdp", "code": "ok.drop",
                  "why": f"sentence {i}", "text": f"-A INPUT -s 10.0.0.{i}/32 -j DROP"} for i in (1, 2)]
    planstore.save("k", {"decisions": decisions})
    assert _read_back("k") == {"decisions": decisions}


def test_a_damaged_record_is_no_record(store):
    planstore.save("k", {"decisions": decision_records(plan(parse(random_ruleset(1)), HOSTS["receiver"]))})
    path = next(store.rglob("plan-k.json"))
    record = json.loads(path.read_text())
    record["decision_columns"]["kind"].pop()
    path.write_text(json.dumps(record))
    assert _read_back("k") is None
