# SPDX-License-Identifier: GPL-2.0-only
"""The real iptables binaries of the active backend: which one is active, restore and save through it.

ipt2xdp never writes netfilter rules itself: the real iptables-restore does, so netfilter keeps the
complete, authoritative ruleset and XDP is built from what the kernel then holds.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
from typing import List, Optional

from ipt2xdp.errors import EXIT_PARAMETER, Ipt2xdpError, UsageError

BACKENDS = ("legacy", "nft")
_WAIT_SECONDS = "5"


class BackendError(Ipt2xdpError):
    """The real iptables tool failed; carries its exit code and message unchanged."""

    def __init__(self, tool: str, exit_code: int, stderr: str):
        self.exit_code = exit_code if exit_code in (1, 2, 3, 4) else 1
        message = stderr.strip() or f"exit status {exit_code}"
        super().__init__(f"{tool} failed (exit {exit_code}): {message}")


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        raise Ipt2xdpError(f"{name} not found; install it with: apt-get install iptables")
    return path


def active_backend() -> str:
    """The backend `iptables` runs now: "nft" or "legacy", from `iptables --version`."""
    override = os.environ.get("IPT2XDP_BACKEND")
    if override:
        return resolve(override)
    result = subprocess.run([_binary("iptables"), "--version"], capture_output=True, text=True)
    return "nft" if "nf_tables" in result.stdout else "legacy"


def resolve(backend: Optional[str]) -> str:
    if backend in (None, "", "auto"):
        return active_backend()
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'; use one of: auto, legacy, nft")
    return backend


def _argv(tool: str, backend: str, extra: List[str]) -> List[str]:
    argv = [_binary(f"iptables-{backend}-{tool}")] + extra
    if backend == "legacy" and tool == "restore":  # iptables-legacy-save 1.8.9 has no -w
        # Legacy serialises on /run/xtables.lock; wait like Docker and kube-proxy do instead of failing.
        argv += ["-w", _WAIT_SECONDS]
    return argv


def restore(text: str, backend: str, test: bool = False, counters: bool = False) -> None:
    """Replace the tables named in `text` atomically, as `iptables-restore` does."""
    start_restore(text, backend, test, counters).wait()


class Restoring:
    """An iptables-restore running in the background (start_restore); wait() for its outcome."""

    def __init__(self, backend: str, process: subprocess.Popen, stderr):
        self.backend, self.process, self.stderr = backend, process, stderr

    def wait(self) -> None:
        """Block until the restore ends; raise BackendError if it failed. Never kills it: a restore
        stopped half way could leave some of its tables committed and others not."""
        try:
            code = self.process.wait()
            self.stderr.seek(0)
            message = self.stderr.read().decode(errors="replace")
        finally:
            self.stderr.close()
        if code != 0:
            raise BackendError(f"iptables-{self.backend}-restore", code, message)


def start_restore(text: str, backend: str, test: bool = False, counters: bool = False) -> Restoring:
    """Start `iptables-restore` on `text` and return at once, so that the caller can work while the
    kernel takes the rules (2.6 s for 100,000 legacy rules on the test machine). Input and messages go
    through files, not pipes: a pipe would stall the restore until the caller read it."""
    extra = (["--test"] if test else []) + (["--counters"] if counters else [])
    with tempfile.TemporaryFile() as given:
        given.write(text.encode("utf-8", "surrogateescape"))  # the bytes read, comments included
        given.seek(0)
        stderr = tempfile.TemporaryFile()
        try:
            process = subprocess.Popen(_argv("restore", backend, extra), stdin=given, stdout=subprocess.DEVNULL,
                                       stderr=stderr)
        except BaseException:
            stderr.close()
            raise
    return Restoring(backend, process, stderr)


def save(backend: str, counters: bool = False, table: Optional[str] = None) -> str:
    """The ruleset as iptables-save prints it. Through files, not pipes (start_save): a reader of a
    pipe needs the GIL for every chunk, and `ipt2xdp watch` reads back while its planning thread
    holds it (10k rules: 124 ms beside a busy thread through files, 195 ms through a pipe)."""
    extra = (["--counters"] if counters else []) + (["-t", table] if table else [])
    return start_save(backend, extra).text()


def _without_warning(text: str) -> str:
    # iptables-nft prints a warning comment when legacy tables also exist; it is not part of the ruleset.
    return re.sub(r"(?m)^# Warning: iptables-legacy tables present.*\n?", "", text)


class Saving:
    """An iptables-save running in the background (start_save); text() waits for what it printed."""

    def __init__(self, backend: str, process: subprocess.Popen, stdout, stderr):
        self.backend, self.process, self.stdout, self.stderr = backend, process, stdout, stderr

    def text(self) -> str:
        """save()'s answer: the ruleset text, or BackendError."""
        try:
            code = self.process.wait()
            self.stdout.seek(0)
            self.stderr.seek(0)
            # decoded as subprocess.run(text=True) decodes (locale encoding, universal newlines),
            # but a comment may hold any byte (-m comment stores what it was given): kept as
            # surrogates, as Python keeps such bytes of argv and file names
            out = io.TextIOWrapper(self.stdout, errors="surrogateescape").read()
            err = io.TextIOWrapper(self.stderr, errors="replace").read()
        finally:
            self.stdout.close()
            self.stderr.close()
        if code != 0:
            raise BackendError(f"iptables-{self.backend}-save", code, err)
        return _without_warning(out)


def start_save(backend: str, extra: Optional[list] = None) -> Saving:
    """Start `iptables-save` and return at once: save() but with its output through files, so that
    the save never waits on a pipe, and waiting for it (text()) needs no GIL until it has ended
    (another thread of the caller may be working meanwhile)."""
    stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    try:
        process = subprocess.Popen(_argv("save", backend, extra or []), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    except BaseException:
        stdout.close()
        stderr.close()
        raise
    return Saving(backend, process, stdout, stderr)


__all__ = ["BACKENDS", "BackendError", "Restoring", "Saving", "active_backend", "resolve", "restore", "save",
           "start_restore", "start_save",
           "EXIT_PARAMETER"]
