# SPDX-License-Identifier: GPL-2.0-only
"""What a wrapper call needs done around the real tool, decided once for the Python wrapper
(wrapper/__init__.py) and for `ipt2xdp watch` serving the native launcher (launcher/launch.c).

    REAL      nothing around it: the real tool, run as if called directly (exec)
    CHANGE    a change to a table the planner reads: XDP defers, the tool runs, XDP follows
    COUNTED   its output carries counters (or it zeroes them): XDP's are added
    WRAPPER   the Python wrapper's own path (iptables-save, iptables-restore: input to read,
              counters to add), and what only the launcher hands over: it runs the Python wrapper
"""
from __future__ import annotations

REAL, CHANGE, COUNTED, WRAPPER = "real", "change", "counted", "wrapper"


class Call:
    __slots__ = ("kind", "cmd", "change")

    def __init__(self, kind: str, cmd=None, change: "dict | None" = None):
        self.kind, self.cmd, self.change = kind, cmd, change


def change_record(table: "str | None" = "filter", command: str = "", chain=None, rulenum=None, new_chain=None,
                  legacy: bool = False, replaced_tables=(), touched_tables=(), set_chains=()) -> dict:
    """countmap.Change(...).to_json(), built without importing countmap (its dataclasses cost a
    served call about 15 ms of imports); tests/test_wrapper_unit.py holds them equal."""
    return {"table": table, "command": command, "chain": chain, "rulenum": rulenum, "new_chain": new_chain,
            "legacy": legacy, "replaced_tables": sorted(replaced_tables), "touched_tables": sorted(touched_tables),
            "set_chains": sorted(list(c) for c in set_chains)}


def rule_change(cmd, backend: str) -> dict:
    """What an iptables command does to the kernel's rule objects, for XDP's counts to follow
    (countmap.Change's JSON)."""
    letters = sorted(cmd.commands & set("ADRINEPFX"))
    return change_record(table=cmd.table, command=letters[0] if len(letters) == 1 else "", chain=cmd.chain,
                         rulenum=cmd.position, new_chain=cmd.new_chain, legacy=backend == "legacy")


def iptables_call(args: list, backend: str, loaded) -> Call:
    """An `iptables` command line (IPv4). loaded: a function telling whether ipt2xdp is loaded here,
    asked only when the answer matters."""
    from ipt2xdp.wrapper import cmdline

    cmd = cmdline.parse_iptables(args)
    zeroing = "Z" in cmd.commands and cmd.table in cmdline.PLANNED_TABLES
    counted = zeroing or (cmd.wants_counters and cmd.table in cmdline.PLANNED_TABLES)
    # -C, -L and -S without counters, --version...: nothing to do around them, loaded here or not.
    if not (cmd.changes_planned_tables or counted) or not loaded():
        return Call(REAL, cmd)
    if cmd.changes_planned_tables:
        change = rule_change(cmd, backend)
        # Beside the record, for `ipt2xdp watch` alone: the command line, so that it can plan the
        # ruleset the command should leave while the real binary runs (watch/predict.py).
        change["args"] = list(args)
        return Call(CHANGE, cmd, change)
    return Call(COUNTED, cmd)


def launched_call(name: str, args: list, backend: str, loaded) -> Call:
    """What `ipt2xdp watch` tells the launcher started as name (realbin.applet()) to do."""
    if name.startswith("ip6tables"):  # XDP decides IPv4 only: IPv6 is pure pass-through
        return Call(REAL)
    if name.startswith("iptables") and not name.endswith(("-save", "-restore")):
        call = iptables_call(args, backend, loaded)
        return Call(WRAPPER, call.cmd) if call.kind == COUNTED else call
    return Call(WRAPPER)
