# SPDX-License-Identifier: GPL-2.0-only
"""Locate the files that ship with the package: the lark grammar, the compiled BPF objects and the
wrapper's native launcher.

An installed package carries them in ipt2xdp/_data (copied by setup.py); an editable install or a
source checkout finds them in the repository's grammar/ and bpf/ directories.
"""
from __future__ import annotations

from pathlib import Path

from ipt2xdp.errors import Ipt2xdpError

_PACKAGE = Path(__file__).resolve().parent
_REPO = _PACKAGE.parent


def _find(name: str, source_dir: str, hint: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _REPO / source_dir / name):
        if candidate.is_file():
            return candidate
    raise Ipt2xdpError(f"{name} is not installed with ipt2xdp; {hint}")


def grammar_path(name: str = "iptables_save.lark") -> Path:
    return _find(name, "grammar", "reinstall the package")


def bpf_object_path(name: str = "ipt2xdp.bpf.o") -> Path:
    return _find(name, "bpf", "build it with `make bpf` (needs clang and libbpf-dev) or reinstall the package")


def launcher_path() -> Path:
    """The wrapper's native launcher (launcher/launch.c), which `ipt2xdp alternatives install` puts
    beside the Python wrapper."""
    return _find("ipt2xdp-launch", "launcher", "build it with `make bpf` (needs a C compiler) or reinstall the package")
