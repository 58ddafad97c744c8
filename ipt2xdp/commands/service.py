# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp service install|remove|show`: the systemd units that keep XDP in step across reboots.

The units ship with the package (ipt2xdp/systemd/); install writes them with the absolute path of
this ipt2xdp command (a venv's or /usr/bin's), writes the boot import's devices to
/etc/default/ipt2xdp, and enables them when systemd runs. --unit-dir/--env-file/--no-enable exist
for tests and for packagers.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

HELP = "install the systemd units: re-import at boot (ipt2xdp-boot) and watch for drift (ipt2xdp-watch)"
UNITS = ("ipt2xdp-boot.service", "ipt2xdp-watch.service", "ipt2xdp-watch@.service")
ENABLED = ("ipt2xdp-boot.service", "ipt2xdp-watch.service")
SOURCE = Path(__file__).resolve().parent.parent / "systemd"


def add_arguments(parser):
    parser.add_argument("action", choices=("install", "remove", "show"))
    parser.add_argument("--iface", action="append", default=[], metavar="IF",
                        help="device(s) the boot unit attaches XDP to (repeatable)")
    parser.add_argument("--mode", choices=("native", "generic", "auto"), default="auto",
                        help="XDP attach mode for the boot unit (default auto)")
    parser.add_argument("--unit-dir", default="/etc/systemd/system", help="where to write the units")
    parser.add_argument("--env-file", default="/etc/default/ipt2xdp", help="the boot unit's settings")
    parser.add_argument("--no-enable", action="store_true", help="write the files only")


def command_path() -> str:
    """The ipt2xdp console script of this installation (units need an absolute path)."""
    beside = os.path.join(os.path.dirname(sys.executable), "ipt2xdp")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("ipt2xdp")
    if found:
        return os.path.abspath(found)
    from ipt2xdp.errors import Ipt2xdpError

    raise Ipt2xdpError("cannot find the ipt2xdp command to put in the units; install the package with pip first")


def render(command: str) -> Dict[str, str]:
    return {name: (SOURCE / name).read_text().replace("@IPT2XDP@", command) for name in UNITS}


def environment(args) -> str:
    words: List[str] = []
    for name in args.iface:
        words += ["--iface", name]
    words += ["--mode", args.mode]
    return ("# Read by ipt2xdp-boot.service: arguments of `ipt2xdp import --live` at boot.\n"
            f"IPT2XDP_IMPORT_ARGS={shlex.quote(' '.join(words))}\n")


def _systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def _systemctl(*words: str) -> None:
    result = subprocess.run(["systemctl", *words], capture_output=True, text=True)
    if result.returncode != 0:
        from ipt2xdp.errors import Ipt2xdpError

        raise Ipt2xdpError(f"systemctl {' '.join(words)} failed: {result.stderr.strip()}")


def install(args) -> int:
    from ipt2xdp.errors import UsageError

    if not args.iface and not os.path.exists(args.env_file):
        raise UsageError("give the device(s) to attach XDP to at boot: --iface IF")
    os.makedirs(args.unit_dir, exist_ok=True)
    for name, text in render(command_path()).items():
        path = os.path.join(args.unit_dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        print(f"ipt2xdp: wrote {path}")
    if args.iface:
        os.makedirs(os.path.dirname(args.env_file) or ".", exist_ok=True)
        with open(args.env_file, "w") as f:
            f.write(environment(args))
        print(f"ipt2xdp: wrote {args.env_file}")
    if args.no_enable:
        return 0
    if not _systemd_running():
        print("ipt2xdp: systemd is not running here; enable later with: systemctl enable " + " ".join(ENABLED))
        return 0
    _systemctl("daemon-reload")
    _systemctl("enable", *ENABLED)
    print("ipt2xdp: enabled " + " ".join(ENABLED) + "; start the watcher now with: systemctl start ipt2xdp-watch")
    return 0


def remove(args) -> int:
    if not args.no_enable and _systemd_running():
        subprocess.run(["systemctl", "disable", "--now", *ENABLED], capture_output=True)
    for name in UNITS:
        path = os.path.join(args.unit_dir, name)
        if os.path.exists(path):
            os.unlink(path)
            print(f"ipt2xdp: removed {path}")
    if not args.no_enable and _systemd_running():
        _systemctl("daemon-reload")
    return 0


def show(args) -> int:
    for name, text in render(command_path()).items():
        print(f"# {name}\n{text}")
    return 0


def run(args) -> int:
    return {"install": install, "remove": remove, "show": show}[args.action](args)
