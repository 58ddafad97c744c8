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
processexit.one_shot() first and leaves through processexit.exit_now().
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator

from ipt2xdp import processexit


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Collector off for the body (nesting is fine: only the outermost turns it back on)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting and not processexit.ONE_SHOT:  # a one-shot process: off until it exits
            gc.enable()
