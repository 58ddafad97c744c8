# SPDX-License-Identifier: GPL-2.0-only
"""Keep XDP in step with a change made through the real iptables.

Order (DESIGN §2, "updates are atomic"): XDP defers everything before the real command runs, so
no packet is judged by the old plan against the new ruleset; after the command succeeds the plan
is rebuilt from what the kernel now holds (exactly `ipt2xdp import --live` on the devices already
attached) and the flip to it ends deferring. If the command failed, netfilter is unchanged and the
old plan is still exact, so deferring simply ends. If re-planning fails, XDP keeps deferring:
slower, never wrong.

With `ipt2xdp watch` running in the namespace, the XDP half (defer, re-plan, flip) is asked of it
over its socket (wrapper/client.py), still under this process's lock; without one, or when it
does not answer, this process does it itself.

The whole sequence runs under the wrapper's lock, so two callers (Docker and fail2ban at once)
never interleave "change, re-read, apply": the later one re-reads after the earlier one's change.
It is a separate file from pins.lock(), which loader.apply() takes inside; flock locks on two
open files of the same path would deadlock one process.
"""
from __future__ import annotations

import errno
import fcntl
import os
import sys

from ipt2xdp.wrapper.locate import netns_cookie, pin_dir_fast  # noqa: F401 - also used as sync.<name>

LOCK_DIR = "/run/lock"
STALE_NAME = "stale"  # the stale mark's file in the namespace's state directory (planstore.STATE_ROOT)


class LockTimeout(Exception):
    pass


def lock_path(netns: int | None = None) -> str:
    """The wrapper's lock file of a network namespace (default: the current one)."""
    return os.path.join(LOCK_DIR, f"ipt2xdp-wrapper-{netns if netns is not None else netns_cookie()}.lock")


class wrapper_lock:
    """Serialise wrapper updates in this namespace (a context manager: the lock is held from
    __enter__ to __exit__). wait: None or 0 = wait forever (what Debian's iptables 1.8.9 does with
    and without -w), N = give up after N seconds like `-w N`, a negative number = do not wait at all
    (`ipt2xdp watch`, which must keep serving the wrapper's requests); LockTimeout when given up.
    A class, not contextlib: the wrapper imports nothing it can do without (contextlib and signal
    cost each call a few ms of imports)."""

    def __init__(self, wait: float | None):
        self.wait = wait
        self.fd: int | None = None

    def __enter__(self) -> None:
        wait = self.wait
        os.makedirs(LOCK_DIR, exist_ok=True)
        fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if wait is not None and wait < 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise LockTimeout() from None
            elif wait and wait > 0:
                import signal

                def expired(signum, frame):
                    raise LockTimeout()
                old = signal.signal(signal.SIGALRM, expired)
                signal.setitimer(signal.ITIMER_REAL, wait)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    signal.signal(signal.SIGALRM, old)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def __exit__(self, *exc) -> bool:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        return False


def _note(message: str) -> None:
    print(f"ipt2xdp: {message}", file=sys.stderr)


def _stale_path() -> str:
    from ipt2xdp import planstore

    return os.path.join(planstore.STATE_ROOT, str(_netns()), STALE_NAME)


def _netns() -> int:
    from ipt2xdp import pins

    return pins.netns_id()


def stale_mark() -> int:
    """How many times `ipt2xdp watch` has seen a change it could not rule out as relaxing."""
    try:
        with open(_stale_path()) as f:
            return int(f.read() or 0)
    except (OSError, ValueError):
        return 0


def mark_stale() -> int:
    """The watcher's half of the hand-over: called before it makes XDP defer. A re-plan that read
    the ruleset before this mark moved must not leave XDP enforcing its (possibly stale) plan."""
    path = _stale_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # One fixed-width pwrite, no rename: this runs inside the window it is meant to close. A reader
    # that catches it half written sees "changed", which only costs an extra deferral.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            value = int(os.pread(fd, 32, 0) or 0) + 1
        except ValueError:
            value = 1
        os.pwrite(fd, b"%020d" % value, 0)
    finally:
        os.close(fd)
    return value


class guarded_flip:
    """Around "read the ruleset, plan, flip": if the watcher marked a change after the read began,
    the flip may have ended its deferral with a plan made before that change; defer again (the
    watcher re-imports right after). Leaves a window of one map write, not one re-plan. say: tell
    stderr (never from the wrapper, whose stderr is the real tool's). Nothing is checked when the
    block raises (it flipped nothing, or the error says what it left)."""

    def __init__(self, say: bool = False):
        self.say = say
        self.mark: int | None = None

    def __enter__(self) -> None:
        self.mark = stale_mark()

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None and stale_mark() != self.mark:
            from ipt2xdp import loader

            loader.defer_all(True)
            if self.say:
                _note("the ruleset changed while XDP was re-planned; deferring to netfilter until `ipt2xdp watch` "
                      "re-imports")
        return False


def was_deferring() -> bool:
    from ipt2xdp import loader

    return bool(loader.status(include_counters=False).get("deferring_all"))


def begin() -> tuple[bool, int]:
    """Defer everything before netfilter changes; returns whether XDP was enforcing before, and
    the stale mark, moved first: a re-plan that read the ruleset before this change (`ipt2xdp
    watch` still serving a caller that was killed, or one this caller stopped waiting for) then
    cannot end this deferral with its older plan (guarded_flip)."""
    from ipt2xdp import loader

    mark = mark_stale()
    # One open of the pinned maps for both: was it enforcing (read under the same lock as the
    # write)? A deferral by the watcher just before counts as deferring: it re-imports anyway.
    # The grace period after it runs while the real command does (dataplane.py: a run that read
    # the state before is judged by the ruleset in force when it read it); the flip waits for it.
    enforcing = loader.defer_all(True, wait=False) is not True
    return enforcing, mark


def abort(enforcing_before: bool, mark: int) -> None:
    """The real command failed: netfilter is unchanged by it, so the old plan is exact again,
    unless the watcher has seen another change meanwhile (then it keeps deferring for the watcher)."""
    from ipt2xdp import loader

    if enforcing_before and stale_mark() == mark:
        loader.defer_all(False)


def replan(backend_name: str, ruleset=None, host=None, text=None, counts_pid: int | None = None,
           release_later: bool = False, keep: list | None = None, ahead=None, later: list | None = None):
    """Plan, compile and flip to the kernel's ruleset now (import --live on the attached devices),
    carrying XDP's per-rule counts over to the new plan. ruleset and host: already read by the
    caller, after the point its own changes are covered from; text: the ruleset rendered, if at hand;
    counts_pid: the wrapper process whose change this flip follows (default: this process);
    release_later: the replaced generation's maps are kept (`ipt2xdp watch`: its next flip rewrites in
    them only what differs, dataplane.py; loader.release_replaced() frees them); keep: a list the
    plan and its compiled maps are appended to, so that the caller frees them when it likes
    (`ipt2xdp watch`: after its answer); ahead: an import_._Prepared made before the ruleset was read
    (`ipt2xdp watch`'s prediction), flipped to only if it holds for ruleset and host, as an import's
    plan of its input; later: a list the plan record's save and the counts' carrying are appended
    to instead of being done (`ipt2xdp watch` does them after its answer, under the wrapper's lock
    it holds for a native launcher). Returns the flip's loader.ApplyResult (None: not loaded: read
    here, right before the flip, as `ipt2xdp detach` takes no wrapper lock)."""
    from ipt2xdp import gcpause, loader

    info = loader.status(include_counters=False)
    if not info.get("loaded"):
        return None
    with guarded_flip(), gcpause.paused():
        return _replan(info, backend_name, ruleset, host, text, counts_pid, release_later, keep, ahead, later)


def _replan(info: dict, backend_name: str, ruleset, host, text=None, counts_pid: int | None = None,
            release_later: bool = False, keep: list | None = None, ahead=None, later: list | None = None):
    from ipt2xdp import backend as backends
    from ipt2xdp import planstore, report
    from ipt2xdp.commands.import_ import _offload
    from ipt2xdp.hostinfo import read_host_context
    from ipt2xdp.parse import parse

    old_key = info.get("ruleset", {}).get("source_digest")
    old_plan = planstore.load(old_key)
    devices = sorted(info.get("devices", {}))
    modes = {d["mode"] for d in info.get("devices", {}).values()}
    if ruleset is None:
        ruleset = parse(backends.save(backend_name), f"<iptables-{backend_name}-save>")
    if host is None:
        host = read_host_context(attached=devices, backend=backend_name,
                                 planned_tables=[t.name for t in ruleset.tables])
    import types

    args = types.SimpleNamespace(mode=modes.pop() if len(modes) == 1 else "auto",
                                 ipsets=(old_plan or {}).get("ipsets", "mirror"))
    args.count_pid = counts_pid  # whose pending change record the counts follow (the wrapper's)
    args.release_later = release_later
    args.finish_later = later
    if ahead is not None and ahead.ipset_mode != args.ipsets:
        ahead = None  # planned for another set mode than this re-plan's
    # carries XDP's counts (xdpcounts.after_flip)
    _offload(ruleset, host, devices, args, backend_name, report, text if ruleset is not None else None, ahead=ahead,
             before=info)
    if keep is not None:
        keep.append(getattr(args, "planned", None))
    return getattr(args, "applied", None)


def lock_wait(backend_name: str, wait: float | None) -> float | None:
    """How long to wait for the wrapper's lock: legacy iptables gives up after -w N seconds (and
    1.8.9 waits forever without -w); iptables-nft takes no lock and never fails for one, so the
    wrapper waits for its own (held for one re-plan at most) whatever -w says."""
    return wait if backend_name == "legacy" else None


def busy(wait: float) -> int:
    """The real legacy binary's words and exit code when the lock stays busy for -w N seconds."""
    path = os.environ.get("XTABLES_LOCKFILE") or "/run/xtables.lock"
    print(f"Can't lock {path}: Resource temporarily unavailable\n"
          f"Another app is currently holding the xtables lock. Stopped waiting after {int(wait)}s.",
          file=sys.stderr)
    return 4


def run_changing(backend_name: str, wait: float | None, command, change: dict | None = None) -> int:
    """Run command() (returns the real tool's exit code) with XDP deferring, then bring XDP in step.
    change: what the command does to the rule objects (countmap.Change's JSON), for XDP's counts.

    The wrapper's lock is taken first, then the real legacy binary takes /run/xtables.lock itself
    (the wrapper cannot hold that one for it: the binary's own flock would block on it). So with
    -w N a legacy call waits up to N seconds for each; without -w, like Debian's 1.8.9, forever."""
    wait = lock_wait(backend_name, wait)
    try:
        lock = wrapper_lock(wait)
        lock.__enter__()
    except LockTimeout:
        return busy(wait)
    try:
        from ipt2xdp.wrapper import client

        # `ipt2xdp watch` does the XDP half, if it runs here, and records the change for the counts
        rc, handled = client.run_changing(command, change)
        if handled:
            return rc
        return _run_changing_here(backend_name, command, rc, change)
    finally:
        lock.__exit__(None, None, None)


def _run_changing_here(backend_name: str, command, rc: int | None, change: dict | None = None) -> int:
    """The XDP half in this process. rc: the real command already ran with the watcher's deferral
    in place and the watcher stopped answering; re-plan from the kernel whatever rc was (the
    watcher recorded the change for the counts when it began)."""
    from ipt2xdp.wrapper import xdpcounts

    try:
        if rc is None and change is not None:
            _expect(change)
        return _changing_here(backend_name, command, rc)
    finally:
        xdpcounts.expect(None)


def _expect(change: dict) -> None:
    """This process's next flip follows change (xdpcounts.expect); never blocks the change."""
    from ipt2xdp.wrapper import countmap, xdpcounts

    try:
        xdpcounts.expect(countmap.Change.from_json(change))
    except Exception:  # noqa: BLE001 - counts then follow rule text
        pass


def _changing_here(backend_name: str, command, rc: int | None) -> int:
    if rc is not None:
        _replan_or_keep_deferring(backend_name)
        return rc
    try:
        enforcing, mark = begin()
    except Exception as error:  # noqa: BLE001 - never block the firewall change on XDP
        _note(f"could not make XDP defer ({error}); leaving it untouched")
        return command()
    rc = command()
    if rc != 0:
        abort(enforcing, mark)
        return rc
    _replan_or_keep_deferring(backend_name)
    return rc


def _replan_or_keep_deferring(backend_name: str) -> None:
    try:  # replan() pauses the cycle collector (gcpause)
        replan(backend_name)
    except Exception as error:  # noqa: BLE001 - XDP stays deferring: slower, never wrong
        _note(f"XDP keeps deferring everything to netfilter: re-planning failed: {error}")


__all__ = ["pin_dir_fast", "wrapper_lock", "run_changing", "replan", "LockTimeout", "stale_mark", "mark_stale",
           "guarded_flip", "errno"]
