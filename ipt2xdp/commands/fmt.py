# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp fmt`: print a ruleset in the canonical form iptables-save prints."""
from __future__ import annotations

import sys

HELP = "print a ruleset (file, stdin or --live) in iptables-save's canonical form"


def add_arguments(parser):
    parser.add_argument("file", nargs="?", default="-", help="iptables-save file, or - for stdin (default)")
    parser.add_argument("--live", action="store_true", help="read the rules of the current network namespace")
    parser.add_argument("--counters", "-c", action="store_true", help="print [packets:bytes] before each rule")


def load(args):
    """The Ruleset named by FILE/-/--live (shared with `check`)."""
    from ipt2xdp.errors import UsageError
    from ipt2xdp.parse import parse
    if args.live:
        if args.file != "-":
            raise UsageError("give either FILE or --live, not both")
        from ipt2xdp.live import read_live
        return read_live(), "<live>"
    if args.file == "-":
        return parse(sys.stdin.read(), "<stdin>"), "<stdin>"
    from ipt2xdp.commands import read_ruleset_file

    return parse(read_ruleset_file(args.file), args.file), args.file


def run(args) -> int:
    from ipt2xdp.render import render
    ruleset, _ = load(args)
    sys.stdout.write(render(ruleset, counters=args.counters))
    return 0
