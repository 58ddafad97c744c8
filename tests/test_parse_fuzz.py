# SPDX-License-Identifier: GPL-2.0-only
"""Time-bounded fuzz of mutated real rulesets: ParseError or a Ruleset, never another exception,
and every diagnostic carries a position inside the file."""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

from ipt2xdp.errors import ParseError
from ipt2xdp.parse import parse
from ipt2xdp.render import render

SEEDS = sorted(p for p in Path(os.environ["IPT2XDP_SHARED_RULESETS"]).rglob("*")
               if p.is_file() and p.name != "MANIFEST.txt" and p.stat().st_size < 20000)
TOKENS = ["!", "-s", "-d", "-p", "tcp", "-m", "tcp", "--dport", "22", "-j", "ACCEPT", '"', "\\", ":",
          "-A", "INPUT", "COMMIT", "*filter", "[1:2]", "--comment", "0.0.0.0/0", "300.1.1.1", ",",
          "-g", "--syn", "65536", "1:", "\n", "#", "-m multiport --dports", "\t", "-I INPUT 99"]
BUDGET_SECONDS = 4.0


def mutate(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        words = lines[i].split(" ")
        op = rng.randrange(6)
        j = rng.randrange(len(words))
        if op == 0:
            words.insert(j, rng.choice(TOKENS))
        elif op == 1 and len(words) > 1:
            del words[j]
        elif op == 2:
            words[j] = rng.choice(TOKENS)
        elif op == 3 and words[j]:
            k = rng.randrange(len(words[j]))
            words[j] = words[j][:k] + chr(rng.randrange(32, 127)) + words[j][k + 1:]
        elif op == 4:
            lines.insert(i, lines[rng.randrange(len(lines))])
        else:
            del lines[i]
            continue
        lines[i] = " ".join(words)
    return "\n".join(lines)


def test_fuzz_mutated_rulesets():
    rng = random.Random(20261121)
    deadline = time.monotonic() + BUDGET_SECONDS
    runs = rejected = 0
    while time.monotonic() < deadline:
        text = mutate(rng, rng.choice(SEEDS).read_text(errors="replace"))
        line_count = text.count("\n") + 1
        runs += 1
        try:
            ruleset = parse(text, "fuzz")
        except ParseError as error:
            rejected += 1
            assert error.diagnostics
            for d in error.diagnostics:
                assert d.span is not None and 1 <= d.span.line <= line_count and d.span.col >= 1, (d, text)
            continue
        # what we accept we can print, and the print reads back the same
        again = parse(render(ruleset), "fuzz-render")
        assert again.without_positions() == ruleset.without_positions(), text
    assert runs > 50 and rejected > 0
