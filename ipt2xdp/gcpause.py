# SPDX-License-Identifier: GPL-2.0-only
"""Pause Python's cyclic garbage collector around the import pipeline.

Parse, plan and compile allocate millions of small objects that live until the generation is
loaded, and make no reference cycles that matter (reference counting frees them). Left on, the
collector rescans that growing heap again and again: about half of a 10k-rule plan's time.
Every path that runs the pipeline (`ipt2xdp import`, the wrapper's and the watcher's re-plan)
runs it inside paused(); the collector's usual thresholds apply again afterwards.

A process that runs one command and exits (the `ipt2xdp` and wrapper commands, not `ipt2xdp
watch`) gains nothing from the collector after the pipeline, and pays for it: when paused() ends,
the first collection scans every object allocated during the pause, and Python's teardown then
frees each one. At 100k rules those were 2 s of an 8.5 s import. Such a process calls
one_shot() first and leaves through exit_now().
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
from typing import Iterator

_ONE_SHOT = False


def one_shot() -> None:
    """This process runs one command and exits: paused() leaves the collector off."""
    global _ONE_SHOT
    _ONE_SHOT = True


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


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Collector off for the body (nesting is fine: only the outermost turns it back on)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting and not _ONE_SHOT:
            gc.enable()
