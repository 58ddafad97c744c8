# SPDX-License-Identifier: GPL-2.0-only
"""The targets table's wording (bench/report.py): a miss must never read like a tie or a pass."""
from pathlib import Path

from bench.report import Report


def _row(ratio, goal):
    report = Report(Path("."))
    report.at_least("target", ratio, goal)
    return report.table()[-1]


def test_a_ratio_that_reaches_its_goal_is_met():
    assert _row(1.02, 1) == "| target | 1.02x | >= 1x | **met** |"


def test_a_clear_miss_says_by_what_factor():
    assert _row(11.44, 30) == "| target | 11.44x | >= 30x | **missed** by a factor 2.62 |"


def test_a_miss_within_rounding_shows_three_digits_and_the_share():
    # 0.998 prints as 1.00 to two digits: the row must show the difference, not "a factor 1.00"
    assert _row(0.9981, 1) == "| target | 0.998x | >= 1x | **missed** by 0.19% |"
