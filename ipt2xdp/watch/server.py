# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp watch`'s socket: wrapper calls hand it the XDP half of their change (wrapper/client.py
has the protocol). /run/ipt2xdp/<netns>/watch.sock, mode 0600, and only root peers are served.

The caller holds the wrapper's lock from before "begin" until after the answer to "done"; the
watcher checks that it does, so a served change keeps the lock's meaning (no other wrapper call,
import or re-import of the watcher's in between). Requests are read in the watcher's select loop
beside the triggers, one at a time, and while a caller's real command runs the watcher keeps
watching (its own re-import waits for the lock without blocking, tried again shortly); the one other
thread plans the ruleset the caller's command should leave (watch/predict.py), and nothing else.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Callable, Dict, List, Optional

from ipt2xdp.wrapper.client import socket_path

_UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid
MAX_LINE = 1 << 20  # a begin carries its change: a restore --noflush names every chain it sets


class AlreadyServed(Exception):
    pass


class Session:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.begun: Optional[tuple] = None  # (enforcing before, stale mark) between begin and done
        # The wrapper's lock, held by the watcher for a native launcher between "run" and "done"
        # (a Python wrapper holds it itself): released when the session ends.
        self.lock = None
        # Work that need not delay the answer (dispatch() may set it): run right after the reply,
        # while the caller goes on (after "begin": its real command runs meanwhile).
        self.after_reply: Optional[Callable[[], None]] = None
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        self.pid, self.uid = pid, uid

    def release_lock(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            lock.__exit__(None, None, None)

    def reply(self, line: str) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(5.0)
            self.sock.sendall(line.encode() + b"\n")
        except OSError:
            pass  # the caller is gone; what it asked for is done (or recorded) regardless
        finally:
            self.sock.setblocking(False)


class SyncServer:
    """Listens; handle() reads what is ready and calls dispatch(session, words) -> answer line
    (words: the request line split in at most three: "begin", the pid, the change's JSON; or
    "run", the launcher's argv and environment),
    or gone(session) when a caller's connection ends between begin and done."""

    def __init__(self, netns: int, dispatch: Callable[[Session, List[str]], str], gone: Callable[[Session], None]):
        self.path = socket_path(netns)
        self.dispatch, self.gone = dispatch, gone
        self.sessions: Dict[int, Session] = {}
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        if _answers(self.path):
            raise AlreadyServed(self.path)
        try:
            os.unlink(self.path)  # left by a watcher that was killed
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # root-only from the start, no chmod window
        try:
            self.listener.bind(self.path)
        finally:
            os.umask(old_umask)
        self.listener.listen(64)
        self._inode = os.stat(self.path).st_ino

    def fds(self) -> List[int]:
        return [self.listener.fileno(), *self.sessions]

    def handle(self, readable) -> bool:
        """Serve what is ready among readable fds; whether anything was."""
        served = False
        if self.listener.fileno() in readable:
            self._accept()
            served = True
        for fd in [fd for fd in readable if fd in self.sessions]:
            self._read(self.sessions[fd])
            served = True
        return served

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            session = Session(sock)
            if session.uid != 0:  # the socket is 0600 in a root-only place; refuse anyway
                session.reply("error only root may ask ipt2xdp watch for a sync")
                sock.close()
                continue
            self.sessions[sock.fileno()] = session
            self._read(session)  # the request usually came with the connection

    def _read(self, session: Session) -> None:
        while True:
            try:
                data = session.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self._close(session)
                return
            session.buffer += data
            if len(session.buffer) > MAX_LINE:
                session.reply("error request too long")
                self._close(session)
                return
        while b"\n" in session.buffer:
            line, session.buffer = session.buffer.split(b"\n", 1)
            words = line.decode("utf-8", "replace").split(None, 2)  # begin's third word: JSON
            if words and words[0] in ("begin", "run") and _peer_closed(session.sock):
                continue  # the caller gave up waiting: do not defer on behalf of nobody
            session.reply(self.dispatch(session, words))
            after, session.after_reply = session.after_reply, None
            if after is not None:
                after()

    def _close(self, session: Session) -> None:
        self.sessions.pop(session.sock.fileno(), None)
        if session.begun is not None:
            self.gone(session)
        session.release_lock()
        session.sock.close()

    def close(self) -> None:
        for session in list(self.sessions.values()):
            self._close(session)
        self.listener.close()
        try:
            if os.stat(self.path).st_ino == self._inode:  # not a newer watcher's socket
                os.unlink(self.path)
        except OSError:
            pass


def _peer_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _answers(path: str) -> bool:
    """Whether a live watcher listens on path (another `ipt2xdp watch` in this namespace)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        return True
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ECONNREFUSED):
            return isinstance(error, socket.timeout)
        return False
    finally:
        probe.close()
