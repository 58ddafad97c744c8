# SPDX-License-Identifier: GPL-2.0-only
"""The wrapper's side of `ipt2xdp watch`'s socket: hand the XDP half of a change to the watcher.

The watcher keeps the planner warm (modules imported, grammar built, host facts cached), so a
change costs the real command plus one re-plan, not Python importing the whole planning stack
first. The caller holds the wrapper's lock throughout, as without a watcher. One connection per
change, two exchanges, one line each:

    begin <pid> [<change>]
                  -> ok                  the watcher made XDP defer (the stale mark moved first) and
                                         recorded the change (countmap.Change's JSON, one line) for
                                         the flip that ends it: XDP's counts follow the command
                                         (its "args": an iptables command line, whose effect the
                                         watcher plans meanwhile: watch/predict.py)
    (the real command runs here)
    done <rc>     -> ok <what it did>    rc 0: re-planned and flipped; else deferring ended if exact
                  -> error <why>         XDP keeps deferring; the watcher retries

No socket, a refused connection (a watcher killed), no "ok" within BEGIN_TIMEOUT (a stopped
or hung one), or a broken connection later: the caller does the XDP half itself, as it does
without a watcher. Only the standard library is imported here, and little of it: the C `_socket`
(the `socket` module and `typing` cost a served call about 10 ms of imports).
"""
from __future__ import annotations

import _socket
import os
import sys

SOCKET_NAME = "watch.sock"
# A responsive watcher answers "begin" in milliseconds (one map write); it is not busy re-planning
# for someone else, since callers serialise on the wrapper's lock before they connect.
BEGIN_TIMEOUT = float(os.environ.get("IPT2XDP_WATCH_TIMEOUT", "2"))
# One re-plan: seconds at 10k rules on a loaded machine. Beyond this the caller re-plans itself.
SYNC_TIMEOUT = float(os.environ.get("IPT2XDP_WATCH_SYNC_TIMEOUT", "120"))


def socket_path(netns: int) -> str:
    root = os.environ.get("IPT2XDP_STATE_DIR", "/run/ipt2xdp")
    return os.path.join(root, str(netns), SOCKET_NAME)


class Unavailable(Exception):
    pass


def _exchange(sock: _socket.socket, line: str, timeout: float) -> str:
    """Send one line, return the one-line answer (without the newline)."""
    try:
        sock.settimeout(timeout)
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise Unavailable("the watcher closed the connection")
            data += chunk
    except OSError as error:  # a timeout is an OSError (TimeoutError)
        raise Unavailable(str(error) or type(error).__name__) from None
    return data[:-1].decode("utf-8", "replace")


def compact_json(value) -> str:
    """json.dumps(value, separators=(",", ":")) for what a change record holds (dicts with string
    keys, lists, tuples, strings, ints, booleans, None), without importing json: it imports re and
    enum, a few ms of every wrapper call. Strings go through the C encoder json itself uses
    (ASCII only, so an argument with undecodable bytes travels as json would send it);
    tests/test_wrapper_unit.py holds the two equal."""
    try:
        from _json import encode_basestring_ascii
    except ImportError:  # a Python without json's C part
        import json

        return json.dumps(value, separators=(",", ":"))
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(compact_json(item) for item in value) + "]"
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return "{" + ",".join(encode_basestring_ascii(k) + ":" + compact_json(v) for k, v in value.items()) + "}"
    raise TypeError(f"not in a change record: {type(value).__name__}")


def connect(netns: int | None = None, timeout: float = BEGIN_TIMEOUT) -> _socket.socket | None:
    """A connection to this namespace's watcher, or None when none listens."""
    if netns is None:
        from ipt2xdp.wrapper.locate import netns_cookie

        netns = netns_cookie()
    path = socket_path(netns)
    if not os.path.exists(path):
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError:  # ECONNREFUSED: a watcher killed, its socket file left behind
        sock.close()
        return None
    return sock


def run_changing(command, change: dict | None = None) -> tuple[int | None, bool]:
    """(rc, handled): rc is the real command's exit code, or None when it did not run here (no
    watcher: the caller does everything itself); handled says the watcher did the XDP half.
    change: countmap.Change's JSON, what the command does to the rule objects."""
    sock = connect()
    if sock is None:
        return None, False
    request = f"begin {os.getpid()}"
    if change is not None:
        request += " " + compact_json(change)  # JSON escapes newlines: one line
    try:  # (a C socket: no `with`)
        try:
            answer = _exchange(sock, request, BEGIN_TIMEOUT)
        except Unavailable:
            return None, False
        if answer != "ok":
            return None, False  # e.g. the watcher could not make XDP defer: try it here
        rc = command()
        try:
            answer = _exchange(sock, f"done {rc}", SYNC_TIMEOUT)
        except Unavailable:
            return rc, False
    finally:
        sock.close()
    if answer.startswith("error "):
        # Never the real tool's words: the same note the wrapper gives when its own re-plan fails.
        print(f"ipt2xdp: XDP keeps deferring everything to netfilter: {answer[6:]}", file=sys.stderr)
    return rc, True


def ask_status(netns: int | None = None, timeout: float = 1.0) -> str | None:
    """The watcher's one-line JSON status (served count, pid), or None when none answers."""
    sock = connect(netns, timeout)
    if sock is None:
        return None
    try:
        answer = _exchange(sock, "status", timeout)
    except Unavailable:
        return None
    finally:
        sock.close()
    return answer[3:] if answer.startswith("ok ") else None
