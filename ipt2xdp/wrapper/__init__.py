# SPDX-License-Identifier: GPL-2.0-only
"""ipt2xdp-iptables, ipt2xdp-iptables-save, ipt2xdp-iptables-restore: one program, named by argv[0].

Every call runs the real backend binary with the same arguments, stdin, stdout, stderr and exit
code. Where nothing needs doing around it (ipt2xdp not loaded here, listing without counters) the
wrapper exec()s it, so the caller talks to the real tool directly. Imports stay inside functions:
fail2ban and Docker call iptables hundreds of times and each call pays Python's startup.
"""
from __future__ import annotations

import os
import sys


def _emit(data: bytes) -> None:
    sys.stdout.flush()
    os.write(1, data) if len(data) < 65536 else sys.stdout.buffer.write(data)
    sys.stdout.flush()


def _iptables(argv0: str, args: list, backend: str) -> int:
    from ipt2xdp.wrapper import realbin, route
    from ipt2xdp.wrapper.locate import pin_dir_fast

    call = route.iptables_call(args, backend, lambda: pin_dir_fast() is not None)
    if call.kind == route.REAL:
        realbin.exec_real(backend, argv0, args)
    if call.kind == route.CHANGE:
        return _changing(backend, call.cmd.wait, call.change,
                         lambda: realbin.run_real(backend, argv0, args).returncode)
    cmd = call.cmd
    return _counted_listing(argv0, args, backend, cmd, "Z" in cmd.commands)


def _restore_change(cmd, text: str, backend: str) -> dict:
    """What an iptables-restore input does to the kernel's counters (countmap.Change's JSON)."""
    tables, chains, table = set(), set(), None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:].strip()
            tables.add(table)
        elif line.startswith(":") and table and len(line) > 1:
            chains.add((table, line[1:].split()[0]))
    if cmd.table:
        tables &= {cmd.table}
        chains = {c for c in chains if c[0] == cmd.table}
    from ipt2xdp.wrapper.route import change_record

    return change_record(command="restore", legacy=backend == "legacy", touched_tables=tables,
                         replaced_tables=() if cmd.noflush else tables,
                         set_chains=chains if cmd.noflush else ())


def _changing(backend: str, wait, change: dict, command) -> int:
    """sync.run_changing(), telling the flip it ends which change XDP's counts follow (change:
    countmap.Change's JSON; handed to `ipt2xdp watch` with the request, or recorded here by
    xdpcounts.expect() when this process re-plans itself)."""
    from ipt2xdp.wrapper import sync

    return sync.run_changing(backend, wait, command, change)


def _counted_listing(argv0, args, backend, cmd, zeroing) -> int:
    from ipt2xdp.wrapper import realbin, rewrite, sync, xdpcounts

    try:
        lock = sync.wrapper_lock(sync.lock_wait(backend, cmd.wait))
        lock.__enter__()
    except sync.LockTimeout:
        return sync.busy(cmd.wait)
    def run() -> int:
        counts = {k: v for k, v in xdpcounts.current().items() if k[0] == cmd.table}
        listing = "L" in cmd.commands and cmd.verbose
        if counts and (listing or "S" in cmd.commands and cmd.verbose):
            real_args = args + ["-x"] if listing and not cmd.exact else args
            result = realbin.run_real(backend, argv0, real_args, capture_stdout=True)
            text = result.stdout.decode("utf-8", "surrogateescape")
            if result.returncode == 0:
                if listing:
                    text = rewrite.listing(text, counts, cmd.table, cmd.exact, cmd.line_numbers,
                                           single=(cmd.chain, cmd.rulenum) if cmd.rulenum else None)
                else:
                    text = rewrite.rules(text, counts, cmd.table, cmd.chain, cmd.rulenum)
            _emit(text.encode("utf-8", "surrogateescape"))
        else:
            result = realbin.run_real(backend, argv0, args)
        return result.returncode

    try:
        if zeroing:
            return xdpcounts.zeroing(run, cmd.table, cmd.chain, cmd.rulenum, legacy=backend == "legacy")
        return run()
    finally:
        lock.__exit__(None, None, None)


def _save(argv0: str, args: list, backend: str) -> int:
    from ipt2xdp.wrapper import realbin
    from ipt2xdp.wrapper.locate import pin_dir_fast

    if pin_dir_fast() is None:
        realbin.exec_real(backend, argv0, args)
    from ipt2xdp.wrapper import rewrite, sync, xdpcounts

    # Under the wrapper's lock: between a flip and its carried counts being stored, the counts
    # are incomplete.
    with sync.wrapper_lock(None):
        counts = xdpcounts.current()
        if not counts:
            realbin.exec_real(backend, argv0, args)
        result = realbin.run_real(backend, argv0, args, capture_stdout=True)
    text = result.stdout.decode("utf-8", "surrogateescape")
    if result.returncode == 0:
        text = rewrite.save(text, counts)
    _emit(text.encode("utf-8", "surrogateescape"))
    return result.returncode


def _restore(argv0: str, args: list, backend: str) -> int:
    from ipt2xdp.wrapper import cmdline, realbin
    from ipt2xdp.wrapper.locate import pin_dir_fast

    cmd = cmdline.parse_restore(args)
    if cmd.test or pin_dir_fast() is None:
        realbin.exec_real(backend, argv0, args)
    # The input says which tables' counters start again; read it here and hand the same bytes on.
    if cmd.file is None:
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(cmd.file, "rb") as f:
                data = f.read()
        except OSError:
            data = b""  # the real tool says what is wrong with the file
    change = _restore_change(cmd, data.decode("utf-8", "surrogateescape"), backend)
    run = (lambda: realbin.run_real(backend, argv0, args, input=data).returncode) if cmd.file is None \
        else (lambda: realbin.run_real(backend, argv0, args).returncode)
    return _changing(backend, cmd.wait, change, run)


def entry() -> None:
    """The wrapper commands as a process: main(), then exit without the interpreter's teardown
    (processexit.exit_now: a re-plan in this process leaves millions of objects to free)."""
    from ipt2xdp import processexit

    processexit.one_shot()
    processexit.exit_now(main())


def main(argv: "list | None" = None) -> int:
    from ipt2xdp.wrapper import realbin

    argv = list(sys.argv if argv is None else argv)
    # The native launcher (launcher/launch.c) execs this script when it cannot hand the call to
    # `ipt2xdp watch`, and says here which name it was called by; the real tool must not see it.
    launched_as = os.environ.pop("IPT2XDP_ARGV0", None)
    if launched_as:
        argv[0] = launched_as
    name = realbin.applet(argv[0])
    backend = realbin.backend()
    try:
        if name.endswith("-save"):
            return _save(argv[0], argv[1:], backend)
        if name.endswith("-restore"):
            return _restore(argv[0], argv[1:], backend)
        if name.startswith("iptables") or name.startswith("ip6tables"):
            if name.startswith("ip6tables"):  # XDP decides IPv4 only: IPv6 is pure pass-through
                realbin.exec_real(backend, argv[0], argv[1:])
            return _iptables(argv[0], argv[1:], backend)
    except BrokenPipeError:
        return 1
    # Unknown name: let the real multi-binary say so, in its words.
    realbin.exec_real(backend, argv[0], argv[1:])
    return 1
