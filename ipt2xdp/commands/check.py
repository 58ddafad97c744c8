# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp check`: validate a ruleset; diagnostics with FILE:LINE:COL and exit 2 when broken."""
from __future__ import annotations

HELP = "validate a ruleset (file, stdin or --live); errors as FILE:LINE:COL, exit 2"


def add_arguments(parser):
    parser.add_argument("file", nargs="?", default="-", help="iptables-save file, or - for stdin (default)")
    parser.add_argument("--live", action="store_true", help="read the rules of the current network namespace")


def run(args) -> int:
    from ipt2xdp.commands.fmt import load
    ruleset, name = load(args)
    rules = sum(len(t.rules) for t in ruleset.tables)
    chains = sum(1 for t in ruleset.tables for c in t.chains if not c.builtin)
    tables = ", ".join(t.name for t in ruleset.tables) or "none"
    print(f"{name}: OK: {len(ruleset.tables)} table(s) ({tables}), {chains} user chain(s), {rules} rule(s)")
    return 0
