# SPDX-License-Identifier: GPL-2.0-only
"""Pause Python's cyclic garbage collector around the import pipeline.

Parse, plan and compile allocate millions of small objects that live until the generation is
loaded, and make no reference cycles that matter (reference counting frees them). Left on, the
collector rescans that growing heap again and again: about half of a 10k-rule plan's time.
Every path that runs the pipeline (`ipt2xdp import`, the wrapper's and the watcher's re-plan)
runs it inside paused(); the collector's usual thresholds apply again afterwards.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Collector off for the body (nesting is fine: only the outermost turns it back on)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
