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

The watcher also serves the wrapper (server.py, requests.py; wrapper/client.py, launcher/launch.c):
a wrapper call holding the wrapper's lock (or the native launcher, for which the watcher takes it)
asks it to defer, runs the real command, and asks it to sync. The sync first drains
every trigger, so the notification of the caller's own change is covered by that one re-plan and
does not start another; the planning stack, the grammar and the host facts stay warm (warm.py).
"""
from __future__ import annotations

import os
import select
import signal
import time
from typing import List, Optional

from ipt2xdp.watch import log
from ipt2xdp.watch.requests import WrapperRequests
from ipt2xdp.watch.server import AlreadyServed, SyncServer
from ipt2xdp.watch.triggers import Change, Trigger
from ipt2xdp.watch.warm import Warm, warm_up

EXIT_STOPPED = 0      # SIGTERM or SIGINT: stopped cleanly
EXIT_FAILED = 1       # the triggers could not be set up (no CAP_NET_ADMIN, no netlink), or a bug
EXIT_USAGE = 2        # bad arguments

RETRY_FIRST, RETRY_MAX = 2.0, 60.0
# A served sync's cycles are collected (a full collection walks the warm heap: 250-400 ms at 10k
# rules) once no wrapper call has come for this long: callers come in bursts (fail2ban, Docker),
# and the next one's "begin" would otherwise wait for it. What the sync made is freed at once
# after each answer (warm.release(): 20-25 ms, while the next caller starts).
CLEANUP_IDLE = 0.5
# ... or after this many served syncs in a row without a pause: the cycles they leave are few
# (about 270 objects per sync at 10k rules) but a flood of calls must not pile them up forever.
COLLECT_EVERY = 64
# The read-back after served syncs that took the kernel's generation for it (watch/holding.py):
# once no call has come for this long (it costs about 100 ms at 10k rules, which a caller arriving
# meanwhile would wait for), or this long after the first such sync in a stream of calls.
VERIFY_IDLE, VERIFY_LATEST = 1.0, 10.0
LOCK_RETRY = 0.1      # the wrapper's lock was held (a caller mid-change): try the re-import again after


class Watcher(WrapperRequests):
    def __init__(self, triggers: List[Trigger], backend: Optional[str] = None, debounce: float = 0.2,
                 max_delay: float = 2.0, serve_wrapper: bool = True):
        self.triggers = triggers
        self.backend = backend
        self.debounce = debounce
        self.max_delay = max_delay
        self.serve_wrapper = serve_wrapper
        self.pending: List[Change] = []
        self.first_at = self.last_at = 0.0
        self.retry_at: Optional[float] = None
        self.retry_delay = RETRY_FIRST
        self.stopping = False
        self.next_poll = {id(t): time.monotonic() + t.poll_interval for t in triggers if t.poll_interval}
        self.hold_until = 0.0
        self.cleanup_at: Optional[float] = None  # when the last served sync's leftovers are due
        self.warm = Warm(triggers)
        self.server: Optional[SyncServer] = None
        self.launched = 0  # changes the native launcher handed over ("run"), begun here

    # --------------------------------------------------------------------------- the two halves
    def defer_now(self, changes: List[Change]) -> None:
        """Step 2: a relaxing change is in force in netfilter; XDP's plan may drop what it accepts."""
        from ipt2xdp import loader
        from ipt2xdp.wrapper import sync

        serving = self._changing_caller()
        try:
            sync.mark_stale()
            if serving is None:
                loader.defer_all(True)
        except Exception as error:  # noqa: BLE001 - report and go on to the re-import
            log(f"could not make XDP defer: {error}")
            return
        # A served caller's "begin" made XDP defer, and nothing ends that before its "done" (every
        # flip waits for the wrapper's lock, which it holds): deferring again would only delay its
        # answer (the map write waits for running XDP programs: 15-170 ms while its plan is made).
        already = f" (already, for wrapper pid {serving}'s change)" if serving is not None else ""
        log(f"deferring to netfilter{already}: " + "; ".join(f"{c.source}: {c.detail}" for c in changes))

    def reconcile(self, reasons: str) -> None:
        """Step 3, under the wrapper's lock (not waited for: a caller holding it is served here,
        so waiting would deadlock; raises LockTimeout). Raises on failure (XDP stays as it is:
        deferring if a relaxing change was seen)."""
        from ipt2xdp.wrapper import sync

        try:
            with sync.wrapper_lock(-1):
                # What changes after this point is reported again. Checked, not just rebased: the
                # cached host facts follow what each change can move (a legacy change the legacy
                # tables, ...).
                changes = [c for t in self.triggers for c in self._check(t)]
                self.warm.note(changes)
                if any(c.relaxing for c in changes):  # in force until the flip below
                    self.defer_now(changes)
                log(f"{reasons}: {self.warm.sync(self.backend)}")
        finally:
            self.warm.collect()  # also after a failed sync: the collector is on again

    # --------------------------------------------------------------------------------- the loop
    def _check(self, trigger: Trigger) -> List[Change]:
        try:
            return trigger.check()
        except Exception as error:  # noqa: BLE001 - a broken trigger must not stop the others
            return [Change(trigger.name, f"check failed ({error}); assuming a change")]

    def _timeout(self, now: float) -> Optional[float]:
        deadlines = list(self.next_poll.values())
        if self.pending:
            debounce, max_delay = self._delays()
            deadlines.append(max(min(self.last_at + debounce, self.first_at + max_delay), self.hold_until))
        if self.retry_at is not None:
            deadlines.append(max(self.retry_at, self.hold_until))
        if self.cleanup_at is not None:
            deadlines.append(self.cleanup_at)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _delays(self) -> tuple:
        """(debounce, max delay) of the re-import the pending changes call for: a check of what
        served syncs took without reading back waits for a longer pause than a change does."""
        from ipt2xdp.watch import holding

        if all(change.source == holding.SOURCE for change in self.pending):
            return max(self.debounce, VERIFY_IDLE), max(self.max_delay, VERIFY_LATEST)
        return self.debounce, self.max_delay

    def _add(self, changes: List[Change], now: float) -> None:
        self.warm.note(changes)
        if any(c.relaxing for c in changes):
            self.defer_now(changes)
        if not self.pending:
            self.first_at = now
        self.pending += changes
        self.last_at = now

    def step(self, wake_fd: Optional[int] = None) -> None:
        """One turn: wait for an event or a deadline, serve the wrapper's requests, collect
        changes, defer, re-import when due."""
        fds = {t.fileno(): t for t in self.triggers if t.fileno() is not None}
        served = self.server.fds() if self.server is not None else []
        readable, _, _ = select.select(list(fds) + served + ([wake_fd] if wake_fd is not None else []), [], [],
                                       self._timeout(time.monotonic()))
        if wake_fd is not None and wake_fd in readable:
            try:
                os.read(wake_fd, 512)
            except BlockingIOError:
                pass
        if self.server is not None and self.server.handle(readable):
            # A sync drained the triggers; what arrived while it ran is read now, not next turn.
            readable = select.select(list(fds), [], [], 0)[0]
            self.warm.release()  # the caller has its answer; the next one is still starting
            self.cleanup_at = time.monotonic() + CLEANUP_IDLE  # moved on by every request
            if self.warm.uncollected >= COLLECT_EVERY:
                self.cleanup_at = time.monotonic()
        now = time.monotonic()
        if self.cleanup_at is not None and now >= self.cleanup_at:
            self.cleanup_at = None
            self.warm.collect()
        changes: List[Change] = []
        for trigger in self.triggers:
            polled = id(trigger) in self.next_poll and now >= self.next_poll[id(trigger)]
            if trigger.fileno() in readable or polled:
                changes += self._check(trigger)
            if polled:
                self.next_poll[id(trigger)] = now + trigger.poll_interval
        if changes:
            self._add(changes, now)
        if now < self.hold_until:
            return
        debounce, max_delay = self._delays()
        due = self.pending and (now - self.last_at >= debounce or now - self.first_at >= max_delay)
        retry = self.retry_at is not None and now >= self.retry_at
        if due or retry:
            self._reimport()

    def _reimport(self) -> None:
        from ipt2xdp.wrapper import sync

        pending = self.pending
        sources = sorted({c.source for c in pending}) or ["retry"]
        reasons = "change in " + ", ".join(sources)
        self.pending = []
        try:
            self.reconcile(reasons)
        except sync.LockTimeout:
            # A wrapper call holds the lock: its sync (served here, or its own) may cover these
            # changes; if not, this re-import runs once the lock is free.
            self.pending = pending or [Change("retry", "re-import after a failure")]
            self.hold_until = time.monotonic() + LOCK_RETRY
            return
        except Exception as error:  # noqa: BLE001 - keep watching; XDP keeps deferring meanwhile
            self.retry_at = time.monotonic() + self.retry_delay
            log(f"{reasons}: re-import failed, XDP keeps deferring to netfilter; retrying in "
                f"{self.retry_delay:.0f} s: {error}")
            self.retry_delay = min(self.retry_delay * 2, RETRY_MAX)
            return
        self.retry_at, self.retry_delay = None, RETRY_FIRST

    def serve(self, netns: int) -> None:
        """Open the socket the wrapper asks for syncs on; without it the wrapper syncs itself."""
        try:
            self.server = SyncServer(netns, self.dispatch, self._gone)
        except AlreadyServed as error:
            log(f"another ipt2xdp watch serves {error}; this one only watches")
        except OSError as error:
            log(f"cannot open the wrapper's socket ({error}); wrapper calls sync in their own process")

    def run(self) -> int:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

        def stop(signum, frame):
            self.stopping = True
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(write_fd)
        try:
            warm_up()
            if self.serve_wrapper:
                self.serve(int(_netns()))
            log(f"watching network namespace {_netns()} with triggers: "
                + ", ".join(t.name for t in self.triggers)
                + (f"; serving wrapper calls on {self.server.path}" if self.server else ""))
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
            if self.server is not None:
                self.server.close()


def _netns() -> str:
    from ipt2xdp import pins

    return str(pins.netns_id())
