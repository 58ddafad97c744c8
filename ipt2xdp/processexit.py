# SPDX-License-Identifier: GPL-2.0-only
"""A one-shot command process (the `ipt2xdp` and wrapper commands, not `ipt2xdp watch`): marked
as such (one_shot(): gcpause.paused() then leaves the collector off), and how it ends: flush and
os._exit, skipping the interpreter's teardown (see gcpause). Only os and sys: every wrapper call
imports it."""
import os
import sys

ONE_SHOT = False
# What a one-shot process keeps until os._exit (keep()).
_KEPT: list = []


def one_shot() -> None:
    """This process runs one command and exits."""
    global ONE_SHOT
    ONE_SHOT = True


def keep(*objects) -> None:
    """In a one-shot process, hold objects until the process ends: the pipeline's ruleset, plan and
    memos are millions of small objects, and letting the frames that hold them return would free
    each one before os._exit (0.3 s at 100k rules, 40 ms at 10k). Elsewhere (`ipt2xdp watch`,
    tests) it keeps nothing."""
    if ONE_SHOT:
        _KEPT.append(objects)


def exit_now(code: int) -> None:
    """Flush stdout and stderr and end the process with `code`, skipping the interpreter's teardown
    (nothing of ipt2xdp's needs it: kernel objects are pinned or closed with their descriptors).
    Under a profiler or tracer (cProfile, coverage), which write their results at teardown, it
    exits the usual way."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)
