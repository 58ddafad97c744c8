# SPDX-License-Identifier: GPL-2.0-only
"""Where lark may keep the analysed grammar between processes (building it takes about 0.2 s, which
every `ipt2xdp import` and every iptables wrapper call paid; loading it takes a few ms).

Lark stores the parser as a pickle, and loading a pickle runs code, so the file lives only in a
directory that root owns and nobody else can write to (under the state directory, /run/ipt2xdp),
and only a root process uses it; no directory above it may be writable by anyone else. The name holds a digest of everything the parser is made from
(grammar, the terminal edit's source, lark and Python versions); a new file appears under a
temporary name and is renamed into place, so no process reads a half-written one.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import stat
import sys
from typing import Callable, Optional


def _trusted(path: str) -> bool:
    """Whether only root can change path or any directory above it (so nobody can swap the file)."""
    while True:
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def cache_file(grammar: str, edit: Callable, root: Optional[str] = None) -> Optional[str]:
    """The cache file for this grammar (it may not exist yet), or None where none may be used."""
    if os.geteuid() != 0:
        return None
    import lark

    from ipt2xdp import planstore

    state = os.path.abspath(root or planstore.STATE_ROOT)
    directory = os.path.join(state, "grammar")
    try:
        os.makedirs(state, exist_ok=True)  # as planstore makes it
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return None
    if not _trusted(directory):
        return None
    key = hashlib.sha256("\0".join((grammar, inspect.getsource(edit), lark.__version__,
                                    sys.version)).encode()).hexdigest()[:24]
    return os.path.join(directory, f"lalr-{key}.pickle")


def build(make: Callable[[Optional[str]], object], path: Optional[str]):
    """make(cache) -> Lark, with lark's cache at path when it exists, else written there atomically."""
    if path is None:
        return make(None)
    if os.path.exists(path):
        return make(path)
    partial = f"{path}.{os.getpid()}.tmp"
    try:
        parser = make(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return parser
