# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp watch`: keep XDP in step with changes made behind the wrapper's back.

The wrapper keeps XDP in step with changes made through it: it defers before the change. A change
made around it (`nft`, iptables-legacy or iptables-nft called directly, iptables-restore from a
boot script, an address added) is seen only afterwards, so the order here is:

  1. a trigger reports a change (nf_tables notification, legacy digest poll, rtnetlink, ...);
  2. if the change may relax the ruleset, XDP defers everything to netfilter at once (and the
     stale mark moves, so a wrapper or import re-plan that read the ruleset before cannot end
     that deferral with its older plan: sync.guarded_flip);
  3. once the changes stop for a moment (debounce), under the wrapper's lock, the live ruleset and
     host facts are read; if they are exactly what the loaded plan was made from (the change was
     the wrapper's own, already planned) deferring just ends, otherwise the plan is rebuilt from
     them with the wrapper's import path (sync.replan), whose flip ends deferring.

The window that remains is between the kernel committing a relaxing change and step 2: the
notification's delivery and one map write for nf_tables (about a millisecond, measured in
tests/test_watch_kernel.py), up to one poll interval for legacy (1 s by default).
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from typing import List, Optional

from ipt2xdp.watch.triggers import Change, Trigger

EXIT_STOPPED = 0      # SIGTERM or SIGINT: stopped cleanly
EXIT_FAILED = 1       # the triggers could not be set up (no CAP_NET_ADMIN, no netlink), or a bug
EXIT_USAGE = 2        # bad arguments

RETRY_FIRST, RETRY_MAX = 2.0, 60.0


def log(message: str) -> None:
    print(f"ipt2xdp watch: {message}", file=sys.stderr, flush=True)


class Watcher:
    def __init__(self, triggers: List[Trigger], backend: Optional[str] = None, debounce: float = 0.2,
                 max_delay: float = 2.0):
        self.triggers = triggers
        self.backend = backend
        self.debounce = debounce
        self.max_delay = max_delay
        self.pending: List[Change] = []
        self.first_at = self.last_at = 0.0
        self.retry_at: Optional[float] = None
        self.retry_delay = RETRY_FIRST
        self.stopping = False
        self.next_poll = {id(t): time.monotonic() + t.poll_interval for t in triggers if t.poll_interval}

    # --------------------------------------------------------------------------- the two halves
    def defer_now(self, changes: List[Change]) -> None:
        """Step 2: a relaxing change is in force in netfilter; XDP's plan may drop what it accepts."""
        from ipt2xdp import loader
        from ipt2xdp.wrapper import sync

        try:
            sync.mark_stale()
            loader.defer_all(True)
        except Exception as error:  # noqa: BLE001 - report and go on to the re-import
            log(f"could not make XDP defer: {error}")
            return
        log("deferring to netfilter: " + "; ".join(f"{c.source}: {c.detail}" for c in changes))

    def reconcile(self, reasons: str) -> None:
        """Step 3, under the wrapper's lock. Raises on failure (XDP stays as it is: deferring if a
        relaxing change was seen)."""
        from ipt2xdp import drift, loader, planstore
        from ipt2xdp.wrapper import realbin, sync

        with sync.wrapper_lock(None):
            for trigger in self.triggers:  # what changes after this point is reported again
                trigger.rebase()
            info = loader.status(include_counters=False)
            if not info.get("loaded"):
                log(f"{reasons}: ipt2xdp is not loaded in this network namespace; nothing to do")
                return
            key = info.get("ruleset", {}).get("source_digest")
            record = planstore.load(key) or {}
            backend = self.backend or record.get("backend") or realbin.backend()
            devices = record.get("devices") or sorted(info.get("devices", {}))
            started = time.monotonic()
            ruleset, live_key, host = drift.live(backend, devices)
            if record and live_key == key and record.get("host_digest") == drift.host_digest(host):
                again = "enforcing again" if info.get("deferring_all") else "nothing to do"
                if info.get("deferring_all"):
                    loader.defer_all(False)
                log(f"{reasons}: in step, the plan in force is that of iptables-{backend}'s ruleset and this "
                    f"host; {again} ({time.monotonic() - started:.2f} s)")
                return
            sync.replan(backend, ruleset, host if sorted(devices) == devices else None)
            generation = loader.status(include_counters=False).get("generation")
            log(f"{reasons}: re-imported iptables-{backend}'s ruleset, generation {generation} "
                f"({time.monotonic() - started:.2f} s)")

    # --------------------------------------------------------------------------------- the loop
    def _check(self, trigger: Trigger) -> List[Change]:
        try:
            return trigger.check()
        except Exception as error:  # noqa: BLE001 - a broken trigger must not stop the others
            return [Change(trigger.name, f"check failed ({error}); assuming a change")]

    def _timeout(self, now: float) -> Optional[float]:
        deadlines = list(self.next_poll.values())
        if self.pending:
            deadlines.append(min(self.last_at + self.debounce, self.first_at + self.max_delay))
        if self.retry_at is not None:
            deadlines.append(self.retry_at)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def step(self, wake_fd: Optional[int] = None) -> None:
        """One turn: wait for an event or a deadline, collect changes, defer, re-import when due."""
        fds = {t.fileno(): t for t in self.triggers if t.fileno() is not None}
        readable, _, _ = select.select(list(fds) + ([wake_fd] if wake_fd is not None else []), [], [],
                                       self._timeout(time.monotonic()))
        if wake_fd is not None and wake_fd in readable:
            try:
                os.read(wake_fd, 512)
            except BlockingIOError:
                pass
        now = time.monotonic()
        changes: List[Change] = []
        for trigger in self.triggers:
            polled = id(trigger) in self.next_poll and now >= self.next_poll[id(trigger)]
            if trigger.fileno() in readable or polled:
                changes += self._check(trigger)
            if polled:
                self.next_poll[id(trigger)] = now + trigger.poll_interval
        if changes:
            if any(c.relaxing for c in changes):
                self.defer_now(changes)
            if not self.pending:
                self.first_at = now
            self.pending += changes
            self.last_at = now
        due = self.pending and (now - self.last_at >= self.debounce or now - self.first_at >= self.max_delay)
        retry = self.retry_at is not None and now >= self.retry_at
        if due or retry:
            self._reimport()

    def _reimport(self) -> None:
        sources = sorted({c.source for c in self.pending}) or ["retry"]
        reasons = "change in " + ", ".join(sources)
        self.pending = []
        try:
            self.reconcile(reasons)
        except Exception as error:  # noqa: BLE001 - keep watching; XDP keeps deferring meanwhile
            self.retry_at = time.monotonic() + self.retry_delay
            log(f"{reasons}: re-import failed, XDP keeps deferring to netfilter; retrying in "
                f"{self.retry_delay:.0f} s: {error}")
            self.retry_delay = min(self.retry_delay * 2, RETRY_MAX)
            return
        self.retry_at, self.retry_delay = None, RETRY_FIRST

    def run(self) -> int:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

        def stop(signum, frame):
            self.stopping = True
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(write_fd)
        try:
            log(f"watching network namespace {_netns()} with triggers: "
                + ", ".join(t.name for t in self.triggers))
            self.pending = [Change("start", "checking the plan against the kernel")]
            self.first_at = self.last_at = time.monotonic() - self.max_delay
            while not self.stopping:
                self.step(read_fd)
            log("stopped")
            return EXIT_STOPPED
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(read_fd)
            os.close(write_fd)
            for trigger in self.triggers:
                trigger.close()


def _netns() -> str:
    from ipt2xdp import pins

    return str(pins.netns_id())
