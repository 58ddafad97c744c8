# SPDX-License-Identifier: GPL-2.0-only
"""How a one-shot command process ends (the `ipt2xdp` and wrapper commands): flush and os._exit,
skipping the interpreter's teardown (see gcpause). Only os and sys: every wrapper call imports it."""
import os
import sys


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
