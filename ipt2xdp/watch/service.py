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

The watcher also serves the wrapper (server.py, wrapper/client.py): a wrapper call holding the
wrapper's lock asks it to defer, runs the real command, and asks it to sync. The sync first drains
every trigger, so the notification of the caller's own change is covered by that one re-plan and
does not start another; the planning stack, the grammar and the host facts stay warm (warm.py).
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from typing import List, Optional

from ipt2xdp.watch.server import AlreadyServed, Session, SyncServer
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


def log(message: str) -> None:
    print(f"ipt2xdp watch: {message}", file=sys.stderr, flush=True)


class Watcher:
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
        self.launched = 0  # native launchers' changes begun here (the rest of `served` came from Python wrappers)

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

    def _changing_caller(self) -> Optional[int]:
        """The pid of a served caller between its "begin" and its "done", if there is one."""
        if self.server is None:
            return None
        return next((s.pid for s in self.server.sessions.values() if s.begun is not None), None)

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

    # ------------------------------------------------------------------- the wrapper's requests
    def dispatch(self, session: Session, words: List[str]) -> str:
        try:
            if words == ["status"]:
                return "ok " + json.dumps({"pid": os.getpid(), "served": self.warm.served, "launched": self.launched,
                                           "last": self.warm.last})
            if len(words) in (2, 3) and words[0] == "begin":
                return self._begin(session, json.loads(words[2]) if len(words) == 3 else None)
            if len(words) in (2, 3) and words[0] == "run":
                return self._run(session, words[1], words[2] if len(words) == 3 else "")
            if len(words) == 2 and words[0] == "done" and words[1].lstrip("-").isdigit():
                return self._done(session, int(words[1]))
        except Exception as error:  # noqa: BLE001 - answer, keep watching
            log(f"wrapper pid {session.pid}: {' '.join(words[:1])} failed: {error}")
            return f"error {error}".replace("\n", " ")
        return "error unknown request"

    def _run(self, session: Session, argv_hex: str, env_hex: str) -> str:
        """A native launcher's call (launcher/launch.c has the protocol): what it is to do, and for
        a change, the watcher's half done as for a Python wrapper's "begin", with the wrapper's lock
        taken here for the launcher, which holds none. argv and env: NUL-separated, hex-encoded."""
        from ipt2xdp.wrapper import locate, realbin, route, sync

        argv = [word.decode("utf-8", "surrogateescape") for word in bytes.fromhex(argv_hex).split(b"\0")]
        pairs = bytes.fromhex(env_hex).decode("utf-8", "surrogateescape").split("\0") if env_hex else []
        env = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        backend = realbin.backend(env)
        call = route.launched_call(realbin.applet(argv[0]), argv[1:], backend, lambda: locate.pin_dir_fast() is not None)
        real = realbin.multi_binary(backend, env.get("IPT2XDP_SBIN", realbin.DEFAULT_SBIN))
        if call.kind == route.REAL:
            return f"exec {real}"
        if call.kind != route.CHANGE:
            return "python"
        lock = sync.wrapper_lock(-1)
        try:
            lock.__enter__()
        except sync.LockTimeout:
            return "python"  # another caller's change: the Python wrapper waits for it, as -w says
        session.lock = lock
        try:
            answer = self._begin(session, call.change)
        finally:
            if session.begun is None:
                session.release_lock()
        if answer != "ok":
            return "python"
        self.launched += 1
        return f"spawn {real}"

    def _begin(self, session: Session, data: Optional[dict] = None) -> str:
        """data: what the caller's command does to the rule objects (countmap.Change's
        JSON, with the command line beside it as "args" for an iptables command); recorded for the
        flip that ends this deferral, bound to the generation in force (the caller holds the lock:
        no other flip comes in between), right after the answer: while the caller's real command
        runs, and before its "done" is read. Then the ruleset the command should leave is planned
        in a thread (warm.Warm.predict)."""
        from ipt2xdp import loader
        from ipt2xdp.wrapper import countmap, sync, xdpcounts

        try:
            with sync.wrapper_lock(-1):
                return "error the caller does not hold the wrapper's lock"
        except sync.LockTimeout:
            pass  # held, as it must be: by the caller
        # Checked before deferring: a record this watcher cannot read makes the caller re-plan
        # itself (it records the change its own way), not lose the counts' positions.
        args = data.pop("args", None) if isinstance(data, dict) else None  # the command line, if an iptables one
        change = countmap.Change.from_json(data) if data is not None else None
        session.begun = sync.begin()

        def meanwhile() -> None:
            if change is not None:
                try:
                    xdpcounts.expect(change, pid=session.pid, after=loader.generation_ident() or "")
                except Exception as error:  # noqa: BLE001 - counts then follow rule text
                    log(f"wrapper pid {session.pid}: could not record its change for the counts: {error}")
            try:  # the ruleset the command should leave, planned while it runs (warm.py)
                self.warm.predict(self.backend, args if isinstance(args, list) else None, session.pid,
                                  ran_on=None if change is None else "legacy" if change.legacy else "nft")
            except Exception as error:  # noqa: BLE001 - only a head start
                log(f"wrapper pid {session.pid}: could not predict its change: {error}")
        session.after_reply = meanwhile
        return "ok"

    def _done(self, session: Session, rc: int) -> str:
        """The caller's real command ended with rc, the wrapper's lock still held by the caller."""
        started = time.monotonic()
        if session.begun is None:
            return "error done without begin"
        enforcing, mark = session.begun
        session.begun = None
        try:
            return self._sync_for(session, rc, enforcing, mark, started)
        finally:
            self._forget_change(session)
            session.release_lock()  # a launcher's: taken in _run()

    def _sync_for(self, session: Session, rc: int, enforcing: bool, mark: int, started: float) -> str:
        from ipt2xdp.watch import holding
        from ipt2xdp.wrapper import sync

        if rc != 0:
            sync.abort(enforcing, mark)
            return "ok unchanged"
        # Everything the triggers noticed so far, the caller's own change included, is covered by
        # the read below: it is planned once, here, and not again when its notification is read.
        changes = [c for t in self.triggers for c in self._check(t)]
        self.warm.note(changes + self.pending)
        self.pending, self.retry_at, self.retry_delay = [], None, RETRY_FIRST
        try:
            what = self.warm.sync(self.backend, counts_pid=session.pid)  # its counts follow its command
        except Exception as error:  # noqa: BLE001 - XDP keeps deferring; retried like a failed re-import
            self.retry_at = time.monotonic() + self.retry_delay
            log(f"wrapper pid {session.pid}: re-planning failed, XDP keeps deferring to netfilter; retrying in "
                f"{self.retry_delay:.0f} s: {error}")
            return f"error re-planning failed: {error}".replace("\n", " ")
        self.warm.served += 1
        log(f"wrapper pid {session.pid}: served sync #{self.warm.served} in {time.monotonic() - started:.2f} s: {what}")
        if self.warm.unverified == session.pid:  # read back once the burst is over (watch/holding.py)
            self._add([Change(holding.SOURCE, f"the ruleset wrapper pid {session.pid}'s change left, not read back",
                              relaxing=False)], time.monotonic())
        session.after_reply = self._prepare_prediction  # the next caller's head start, once this one has its answer
        return "ok " + what

    def _prepare_prediction(self) -> None:
        try:
            self.warm.prepare_prediction()
        except Exception as error:  # noqa: BLE001 - only a head start: a prediction makes it itself
            log(f"could not lay out the last read-back for the next prediction: {error}")

    def _gone(self, session: Session) -> None:
        """A caller vanished between begin and done: its command may or may not have changed
        netfilter (and may still be running). XDP keeps deferring; re-import once the lock is free."""
        self._forget_change(session)
        self._add([Change("wrapper", f"pid {session.pid} ended without finishing its change")], time.monotonic())

    def _forget_change(self, session: Session) -> None:
        """The caller's change record, if the flip did not use it (it failed, or did not happen)."""
        from ipt2xdp.wrapper import xdpcounts

        try:
            xdpcounts.expect(None, pid=session.pid)
        except Exception:  # noqa: BLE001 - a leftover record names a generation no flip replaces again
            pass

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
