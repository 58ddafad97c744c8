# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp watch`: notice changes made behind the wrapper's back and bring XDP back in step.

triggers.py: what can change (nf_tables notifications, the legacy digest poll, rtnetlink, sysctls,
and whatever other modules register); legacydigest.py: the legacy tables' fingerprint;
service.py: the loop (defer on a relaxing change, then re-import under the wrapper's lock);
requests.py and server.py: the wrapper's requests over the watcher's socket.
"""
import sys


def log(message: str) -> None:
    """One line of the watcher's log (stderr: the journal, under systemd)."""
    print(f"ipt2xdp watch: {message}", file=sys.stderr, flush=True)
