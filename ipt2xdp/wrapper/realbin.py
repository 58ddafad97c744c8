# SPDX-License-Identifier: GPL-2.0-only
"""The real iptables the wrapper stands in front of, found without running anything.

Startup cost matters (fail2ban and Docker call iptables hundreds of times), so the backend is
found from files: IPT2XDP_BACKEND, then the backend `ipt2xdp alternatives install` recorded, then
where /usr/sbin/iptables resolves to now. Running `iptables --version` (backend.active_backend())
would be slower and, once the wrapper is the alternative, would run the wrapper itself.
"""
from __future__ import annotations

import os

DEFAULT_SBIN, DEFAULT_STATE_FILE = "/usr/sbin", "/var/lib/ipt2xdp/alternatives.json"
SBIN = os.environ.get("IPT2XDP_SBIN", DEFAULT_SBIN)
STATE_FILE = os.environ.get("IPT2XDP_ALT_STATE", DEFAULT_STATE_FILE)


def recorded(state_file: "str | None" = None) -> "dict | None":
    """What `ipt2xdp alternatives install` recorded, or None."""
    try:
        with open(state_file or STATE_FILE) as f:
            return json_value(f.read())
    except (OSError, ValueError):
        return None


class _Scanning:
    """What json's C scanner reads from its decoder: json.loads()'s defaults."""
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


def json_value(text: str):
    """json.loads(text), with the C scanner json itself uses but without importing json (it
    imports re and enum: a few ms of every wrapper call, and the recorded backend is read on each
    one); ValueError when text is not one JSON value. tests/test_wrapper_unit.py holds the two equal."""
    try:
        from _json import make_scanner
    except ImportError:  # a Python without json's C part
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = make_scanner(_Scanning)(text, start)
    except StopIteration:
        raise ValueError("not a JSON value") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError("extra data after a JSON value")
    return value


def _from_link(sbin: "str | None" = None) -> "str | None":
    target = os.path.basename(os.path.realpath(os.path.join(sbin or SBIN, "iptables")))
    if "nft" in target:
        return "nft"
    if "legacy" in target:
        return "legacy"
    return None


def backend(environ: "dict | None" = None) -> str:
    """environ: the caller's IPT2XDP_* variables when it is another process (`ipt2xdp watch`
    deciding for the native launcher); default: this process's."""
    if environ is None:
        override, state_file, sbin = os.environ.get("IPT2XDP_BACKEND"), STATE_FILE, SBIN
    else:
        override = environ.get("IPT2XDP_BACKEND")
        state_file = environ.get("IPT2XDP_ALT_STATE", DEFAULT_STATE_FILE)
        sbin = environ.get("IPT2XDP_SBIN", DEFAULT_SBIN)
    if override in ("nft", "legacy"):
        return override
    state = recorded(state_file)
    if state and state.get("backend") in ("nft", "legacy"):
        return state["backend"]
    found = _from_link(sbin)
    if found:
        return found
    from ipt2xdp import backend as backends  # last resort: ask the binary

    return backends.active_backend()


def multi_binary(name: str, sbin: "str | None" = None) -> str:
    """xtables-<backend>-multi: it picks its applet from argv[0], so we choose argv[0] freely."""
    return os.path.join(sbin or SBIN, f"xtables-{name}-multi")


def applet(argv0: str) -> str:
    """The applet name the real multi-binary gets: what the caller typed, minus our prefix, so that
    messages and version strings are the ones the caller would have seen from the real tool."""
    base = os.path.basename(argv0)
    if base.startswith("ipt2xdp-"):
        base = base[len("ipt2xdp-"):]
    return base


def exec_real(name: str, argv0: str, args: list) -> None:
    """Replace this process with the real tool: byte-identical by construction."""
    os.execv(multi_binary(name), [applet(argv0)] + list(args))


class Ran:
    """What run_real() returns when nothing was captured: the exit code (as CompletedProcess has it)."""

    def __init__(self, returncode: int):
        self.returncode = returncode
        self.stdout = None


def run_real(name: str, argv0: str, args: list, capture_stdout: bool = False,
             input: "bytes | None" = None) -> "subprocess.CompletedProcess | Ran":
    """Run the real tool on our stdin (or input, already read from it), our stderr and our stdout
    unless captured; return its result (.returncode, .stdout). A plain run (a rule change) is one
    posix_spawn: subprocess, imported only to capture or feed the tool, costs a wrapper call about
    5 ms of imports. The tool inherits only stdin, stdout and stderr either way (Python opens every
    other descriptor non-inheritable)."""
    if not capture_stdout and input is None:
        pid = os.posix_spawn(multi_binary(name), [applet(argv0)] + list(args), os.environ)
        try:
            _, status = os.waitpid(pid, 0)
        except BaseException:  # as subprocess.run: the tool does not outlive us (nor our lock)
            import signal

            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        return Ran(os.waitstatus_to_exitcode(status))
    import subprocess

    return subprocess.run([applet(argv0)] + list(args), executable=multi_binary(name), input=input,
                          stdout=subprocess.PIPE if capture_stdout else None)
