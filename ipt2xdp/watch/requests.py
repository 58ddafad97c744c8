# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp watch`'s answers to the wrapper's requests over its socket (server.py; the protocol is
in wrapper/client.py for the Python wrapper and launcher/launch.c for the native launcher): a
part of service.Watcher (a base class of it), apart from the watching itself.

begin / run    XDP defers (and, for the launcher, the wrapper's lock is taken for it); the
               caller's change is recorded for the counts and its effect planned meanwhile
done <rc>      the sync that ends the deferral, answered once XDP is in step
status         the watcher's pid and what it served
"""
from __future__ import annotations

import json
import os
import time
from typing import List, Optional

from ipt2xdp.watch import log
from ipt2xdp.watch.server import Session
from ipt2xdp.watch.triggers import Change


class WrapperRequests:
    """Needs of the class it is mixed into: server, warm, backend, triggers, pending, retry_at,
    retry_delay, launched, _check() and _add()."""

    def _changing_caller(self) -> Optional[int]:
        """The pid of a served caller between its "begin" and its "done", if there is one."""
        if self.server is None:
            return None
        return next((s.pid for s in self.server.sessions.values() if s.begun is not None), None)

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
        self.warm.hurry()
        # A launcher's lock is the watcher's (taken in _run()): the flip's record and counts are
        # finished after the answer, before it is released. A Python wrapper lets its own go once
        # answered: everything is done before.
        later: Optional[list] = [] if session.lock is not None else None
        try:
            answer = self._sync_for(session, rc, enforcing, mark, started, later)
        except BaseException:
            self._finish(session, later)
            raise
        if later:
            then = session.after_reply
            session.after_reply = lambda: self._finish(session, later, then)
        else:
            self._finish(session, later)
        return answer

    def _finish(self, session: Session, later: Optional[list], then=None) -> None:
        """What the flip left for after the answer, then the change record and the lock let go."""
        try:
            for step in later or ():
                step()
        except Exception as error:  # noqa: BLE001 - the plan is in force; its record or counts are not
            log(f"wrapper pid {session.pid}: after the flip, saving its plan record or carrying the counts "
                f"failed: {error}; re-importing")
            self._add([Change("wrapper", f"pid {session.pid}'s plan record or counts not saved")], time.monotonic())
        finally:
            self._forget_change(session)
            session.release_lock()
        if then is not None:
            then()

    def _sync_for(self, session: Session, rc: int, enforcing: bool, mark: int, started: float,
                  later: Optional[list] = None) -> str:
        from ipt2xdp.watch import holding
        from ipt2xdp.watch.service import RETRY_FIRST
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
            what = self.warm.sync(self.backend, counts_pid=session.pid, later=later)  # its counts follow its command
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

