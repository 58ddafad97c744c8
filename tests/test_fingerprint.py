# SPDX-License-Identifier: GPL-2.0-only
"""Every stage of an import (IR, render, plan, report, compiled maps) of the shared rulesets, the
bench shapes and 150 random rulesets, on two hosts, is exactly what tests/fingerprints.json recorded
before the speed work (see tests/fingerprint.py)."""
import json

import pytest

from tests.fingerprint import GOLDEN, cases, fingerprint

CASES = cases()
RECORDED = json.loads(GOLDEN.read_text())


def test_every_case_was_recorded():
    assert sorted(CASES) == sorted(RECORDED)
    planned = [r for r in RECORDED.values() if "tables" in r]
    assert len(planned) >= 200  # most cases get through every stage, not just a parse error


@pytest.mark.parametrize("name", sorted(CASES))
def test_fingerprint_unchanged(name):
    text, host = CASES[name]
    assert fingerprint(text, host) == RECORDED[name]
