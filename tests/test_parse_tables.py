# SPDX-License-Identifier: GPL-2.0-only
"""The tests/parse/*.t tables (netfilter's `rule;canonical-or-=;OK|FAIL` format) against our parser.

A line may start with `:CHAIN ` to put the rule in another filter chain (INPUT by default). The
same tables are checked against the real iptables binaries in test_parse_kernel.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest

from ipt2xdp import options
from ipt2xdp.errors import ParseError
from ipt2xdp.parse import parse
from ipt2xdp.render import render_rule

TABLES = Path(__file__).parent / "parse"
USER_CHAIN = "USERCHAIN"


@dataclass(frozen=True)
class Case:
    file: str
    line: int
    chain: str
    rule: str
    canonical: str
    ok: bool

    @property
    def description(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}"

    def restore_text(self) -> str:
        return wrap(f"-A {self.chain} {self.rule}".rstrip())

    @property
    def expected(self) -> str:
        text = self.rule if self.canonical == "=" else self.canonical
        return f"-A {self.chain} {text}".rstrip()


def wrap(*rule_lines: str) -> str:
    return ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            f":{USER_CHAIN} - [0:0]\n" + "".join(r + "\n" for r in rule_lines) + "COMMIT\n")


def load_cases() -> List[Case]:
    cases = []
    for path in sorted(TABLES.glob("*.t")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            rule, canonical, verdict = line.rsplit(";", 2)
            chain = "INPUT"
            if rule.startswith(":"):
                chain, rule = rule[1:].split(" ", 1)
            assert verdict in ("OK", "FAIL"), f"{path.name}:{number}: verdict must be OK or FAIL"
            cases.append(Case(path.name, number, chain, rule, canonical, verdict == "OK"))
    return cases


CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_table_line(case: Case):
    if case.ok:
        ruleset = parse(case.restore_text(), case.file)
        rules = ruleset.table("filter").chain(case.chain).rules
        assert len(rules) == 1, case.description
        assert render_rule(rules[0]) == case.expected, case.description
        # the canonical form is a fixed point
        again = parse(wrap(case.expected), case.file).table("filter").chain(case.chain).rules
        assert again[0].without_positions() == rules[0].without_positions()
    else:
        with pytest.raises(ParseError) as info:
            parse(case.restore_text(), case.file)
        for diag in info.value.diagnostics:
            assert diag.span is not None and diag.span.line >= 1 and diag.span.col >= 1


def test_every_option_has_a_table_line():
    """The `iptables-test.py --missing` idea: each known option appears in some OK line."""
    ok_text = "\n".join(f"{c.rule}" for c in CASES if c.ok)
    missing = []
    # iptables-nft 1.8.9 drops --nflog-range when saving, so no line can be OK on both backends
    unportable = {("NFLOG", "--nflog-range")}
    for kind, ext, option in options.all_option_keys():
        if (ext, option) in unportable:
            continue
        if kind == "match" and f"-m {ext}" not in ok_text and f"-p {ext}" not in ok_text:
            missing.append(f"-m {ext}")
        if kind == "target" and f"-j {ext}" not in ok_text:
            missing.append(f"-j {ext}")
        if option is not None:
            spec = (options.MATCHES if kind == "match" else options.TARGETS)[ext].lookup(option)
            if not any(s in ok_text.split() for s in (spec.name,) + spec.aliases):
                missing.append(f"{ext} {option}")
    assert not missing, "options without an OK line in tests/parse/*.t: " + ", ".join(missing)
