# SPDX-License-Identifier: GPL-2.0-only
"""The `ipt2xdp` command: a table of subcommands, and the one place exceptions become exit codes.

Each subcommand lives in ipt2xdp/commands/<name>.py and exports `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Command modules import their heavy dependencies inside run(), so that startup
stays fast for every command.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from ipt2xdp import __version__
from ipt2xdp.errors import EXIT_OTHER, Ipt2xdpError, ParseError, render_diagnostics

# Order is the order shown in --help.
COMMANDS = ("import", "explain", "status", "watch", "detach", "fmt", "check", "demo", "alternatives", "service")
LONG_LIVED = ("watch", "demo")  # they keep the cyclic collector on after a pipeline run

EPILOG = """examples:
  ipt2xdp check /etc/iptables/rules.v4          validate a ruleset, errors with file:line:col
  ipt2xdp fmt --live                            print the kernel's ruleset in canonical form
  ipt2xdp import rules.v4 --iface eth0          restore rules.v4 and offload what XDP can decide
  ipt2xdp import --live --dry-run               show, rule by rule, what XDP would decide
  ipt2xdp explain --loaded --packet "tcp 198.51.100.7:4242 > 10.0.0.1:22 flags S iface eth0"
                                                what XDP does with that packet, which rule decides, why
  ipt2xdp status                                devices, generation, per-rule XDP counters, drift
  ipt2xdp watch                                 keep XDP in step with changes made around the wrapper
  ipt2xdp detach --all                          leave netfilter alone in charge
  ipt2xdp alternatives install                  make `iptables` the wrapper that keeps XDP in step
  ipt2xdp service install --iface eth0          systemd units: re-import at boot, watch for drift
"""


def _module_name(command: str) -> str:
    # "import" is a keyword, so its module is import_.py.
    return "ipt2xdp.commands." + (command + "_" if command == "import" else command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipt2xdp",
        description="Decide in XDP what an iptables ruleset decides exactly; leave the rest to netfilter.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ipt2xdp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show libbpf's messages and more detail")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        module = importlib.import_module(_module_name(command))
        sub = subparsers.add_parser(command, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def report_error(error: Ipt2xdpError) -> None:
    if isinstance(error, ParseError):
        print(render_diagnostics(error.diagnostics, error.source_lines), file=sys.stderr)
    else:
        print(f"ipt2xdp: {error}", file=sys.stderr)


def entry() -> None:
    """The `ipt2xdp` command as a process: main(), then exit without the interpreter's teardown
    (processexit) unless the command runs for long (`watch`)."""
    from ipt2xdp.processexit import exit_now

    _keep_any_byte()
    exit_now(main(one_shot=True))


def _keep_any_byte() -> None:
    """A ruleset is bytes, and a comment may hold any (-m comment stores what it was given; so do
    iptables-save and -restore): read and print such bytes back as they were, kept as surrogates
    in between, as Python keeps them in argv and file names (backend.py reads iptables-save so)."""
    for stream in (sys.stdin, sys.stdout):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="surrogateescape")


def main(argv: Optional[Sequence[str]] = None, one_shot: bool = False) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    if one_shot and args.command not in LONG_LIVED:
        from ipt2xdp import processexit

        processexit.one_shot()
        processexit.keep(args)  # what the command leaves on it (an import's plan) is never freed
    try:
        return int(args._run(args) or 0)
    except Ipt2xdpError as error:
        report_error(error)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `ipt2xdp fmt | head` closes the pipe early; that is not an error.
        sys.stderr.close()
        return 0
    except Exception as error:  # noqa: BLE001 - the last line of defence: never show a traceback
        if os.environ.get("IPT2XDP_DEBUG"):
            raise
        print(f"ipt2xdp: internal error: {type(error).__name__}: {error}; "
              "rerun with IPT2XDP_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return EXIT_OTHER


if __name__ == "__main__":
    entry()
