# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp alternatives install|remove|status`: put the wrapper behind the `iptables` names.

Registered with update-alternatives, never by overwriting files, so dpkg/rpm keep owning the real
binaries and an iptables upgrade cannot silently drop the wrapper (priority 100 > nft 20 > legacy
10). Debian has one `iptables` group with slaves iptables-save/-restore; Fedora/RHEL have one
`iptables` group whose followers include the ip6tables names. Every slave the group has keeps a
target: the iptables-save/-restore slaves get the wrapper, any other (ip6tables*) keeps the path
the previously selected alternative gave it, so IPv6 tools keep working unchanged.

What is registered is the native launcher (launcher/launch.c), copied beside the Python wrapper as
ipt2xdp-launch, for all three names: it starts in a millisecond and hands the call to `ipt2xdp
watch` when one runs, else runs the Python wrapper (`--no-launcher` registers that one instead).

Before switching, the backend the group pointed to is recorded (realbin.STATE_FILE): the wrapper
runs that real binary, since `iptables` is the wrapper itself afterwards. remove restores the
previous selection (manual or auto).

Debian's separate `ip6tables` group is deliberately left alone (no ipt2xdp-ip6tables): switching
the `iptables` group never touches it, so ip6tables callers keep their real binary, and a
pass-through would only add an exec and a failure point while XDP passes every IPv6 packet and
no plan depends on ip6tables rules. `status` shows where it points, and install/status note when
its backend differs from the one the wrapper runs (IPv4 and IPv6 rules then live in different
backends: not ipt2xdp's doing, but worth knowing). Register a pass-through once XDP plans IPv6.

--altdir/--admindir/--log/--sbin exist for tests: the host's alternatives stay untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

HELP = "register the iptables wrapper with update-alternatives (install, remove, status)"
GROUP = "iptables"
IPV6_GROUP = "ip6tables"  # Debian: its own group, left as it is (see the module docstring)
PRIORITY = 100
LAUNCHER = "ipt2xdp-launch"
OURS = ("ipt2xdp-iptables", LAUNCHER)  # what install registers: the native launcher, or the Python wrapper


def add_arguments(parser):
    parser.add_argument("action", choices=("install", "remove", "status"))
    parser.add_argument("--altdir", help="update-alternatives --altdir (tests)")
    parser.add_argument("--admindir", help="update-alternatives --admindir (tests)")
    parser.add_argument("--log", help="update-alternatives --log (tests)")
    parser.add_argument("--wrapper-dir", help="where ipt2xdp-iptables* are (default: beside this python)")
    parser.add_argument("--state", help="where to record the previous backend (default /var/lib/ipt2xdp)")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.add_argument("--no-launcher", action="store_true",
                        help="register the Python wrapper itself, not the native launcher in front of it")


def _ua(args) -> List[str]:
    tool = shutil.which("update-alternatives") or shutil.which("alternatives")
    if tool is None:
        from ipt2xdp.errors import Ipt2xdpError

        raise Ipt2xdpError("neither update-alternatives nor alternatives is installed")
    argv = [tool]
    for option in ("altdir", "admindir", "log"):
        if getattr(args, option):
            argv += [f"--{option}", getattr(args, option)]
    return argv


def _call(args, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(_ua(args) + list(extra), capture_output=True, text=True)
    if check and result.returncode != 0:
        from ipt2xdp.errors import Ipt2xdpError

        raise Ipt2xdpError(f"update-alternatives {' '.join(extra)} failed: {result.stderr.strip()}")
    return result


def query(args, name: str = GROUP) -> Optional[dict]:
    """The group as {link, status, value, slaves: {name: link}, alternatives: {path: {priority, slaves}}}."""
    result = _call(args, "--query", name, check=False)
    if result.returncode != 0:
        return None
    group: dict = {"slaves": {}, "alternatives": {}}
    current = None
    section = None
    for line in result.stdout.splitlines():
        if not line.strip():
            current, section = None, None
            continue
        if line.startswith(" ") and section == "slaves":
            name, path = line.split(None, 1)
            (current["slaves"] if current is not None else group["slaves"])[name] = path
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "Link":
            group["link"] = value
        elif key == "Status":
            group["status"] = value
        elif key == "Value":
            group["value"] = value
        elif key == "Alternative":
            current = group["alternatives"].setdefault(value, {"slaves": {}})
        elif key == "Priority" and current is not None:
            current["priority"] = int(value)
        elif key == "Slaves":
            section = "slaves"
    return group


def _backend_of(path: Optional[str]) -> Optional[str]:
    name = os.path.basename(path or "")
    return "nft" if "nft" in name else "legacy" if "legacy" in name else None


def _wrapper_dir(args) -> str:
    if args.wrapper_dir:
        return args.wrapper_dir
    beside = os.path.dirname(sys.executable)  # the venv's bin/, where pip put the console scripts
    if os.path.exists(os.path.join(beside, "ipt2xdp-iptables")):
        return beside
    found = shutil.which("ipt2xdp-iptables")
    return os.path.dirname(found) if found else "/usr/sbin"


def _state_file(args) -> str:
    if args.state:
        return args.state
    from ipt2xdp.wrapper import realbin

    return realbin.STATE_FILE


def _read_state(args) -> Dict:
    from ipt2xdp.wrapper import realbin

    return realbin.recorded(_state_file(args)) or {}


def _launcher(args, directory: str) -> Optional[str]:
    """The native launcher (launcher/launch.c), copied beside the Python wrapper it falls back to
    (again on every install: an upgrade brings a new one); None with --no-launcher or when it was
    not built (the Python wrapper is registered then, as it says)."""
    if args.no_launcher:
        return None
    from ipt2xdp import resources
    from ipt2xdp.errors import Ipt2xdpError

    try:
        source = resources.launcher_path()
    except Ipt2xdpError as error:
        print(f"ipt2xdp: {error}; registering the Python wrapper, which starts slower")
        return None
    target = os.path.join(directory, LAUNCHER)
    shutil.copyfile(source, target + ".tmp")
    os.chmod(target + ".tmp", 0o755)
    os.replace(target + ".tmp", target)
    return target


def install(args) -> int:
    group = query(args)
    if group is None:
        from ipt2xdp.errors import Ipt2xdpError

        raise Ipt2xdpError("no `iptables` alternatives group: is the iptables package installed?")
    directory = _wrapper_dir(args)
    launcher = _launcher(args, directory)
    wrapper = launcher or os.path.join(directory, "ipt2xdp-iptables")
    if group.get("value") == wrapper:
        print(f"ipt2xdp: {wrapper} is already the iptables alternative")
        return 0
    recorded = _read_state(args)
    if os.path.basename(group.get("value") or "") in OURS and recorded.get("backend"):
        # Registered before with the other of our two programs: swap it, keeping what came before us.
        _call(args, "--remove", GROUP, group["value"])
        group = query(args) or group
        backend, previous = recorded["backend"], recorded.get("previous_value")
        previous_status = recorded.get("previous_status")
    else:
        backend, previous, previous_status = _backend_of(group.get("value")), group.get("value"), group.get("status")
    if backend is None:
        from ipt2xdp.errors import Ipt2xdpError

        raise Ipt2xdpError(f"iptables points to {group.get('value')}, neither -nft nor -legacy; not touching it")
    previous_slaves = group["alternatives"].get(previous, {}).get("slaves", {})
    extra: List[str] = []
    for name, link in sorted(group["slaves"].items()):
        if name in ("iptables-save", "iptables-restore"):
            target = launcher or os.path.join(directory, f"ipt2xdp-{name}")
        else:
            target = previous_slaves.get(name)  # ip6tables* on Fedora: keep the real ones
        if target:
            extra += ["--slave", link, name, target]
    state = {"backend": backend, "previous_value": previous, "previous_status": previous_status, "wrapper": wrapper}
    path = _state_file(args)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)
    _call(args, "--install", group["link"], GROUP, wrapper, str(PRIORITY), *extra)
    # A manual selection is not overridden by priority: select the wrapper explicitly.
    _call(args, "--set", GROUP, wrapper)
    print(f"ipt2xdp: iptables -> {wrapper} (running iptables-{backend}); undo with `ipt2xdp alternatives remove`")
    note = _ipv6_note(args, backend)
    if note:
        print(f"ipt2xdp: {note}")
    return 0


def _ipv6(args) -> Optional[dict]:
    """Debian's ip6tables group: where it points and its backend (None where it does not exist:
    Fedora's ip6tables names follow the iptables group and keep their real targets, see install)."""
    group = query(args, IPV6_GROUP)
    if group is None:
        return None
    return {"value": group.get("value"), "status": group.get("status"), "backend": _backend_of(group.get("value")),
            "wrapped": False}


def _ipv6_note(args, backend: Optional[str]) -> Optional[str]:
    ipv6 = _ipv6(args)
    if ipv6 is None or backend is None or ipv6["backend"] in (None, backend):
        return None
    return (f"ip6tables runs ip6tables-{ipv6['backend']} while iptables runs iptables-{backend}: IPv4 and IPv6 "
            "rules are in different backends (XDP passes IPv6; ip6tables is not wrapped)")


def remove(args) -> int:
    path = _state_file(args)
    state = _read_state(args)
    group = query(args) or {}
    wrapper = state.get("wrapper") or os.path.join(_wrapper_dir(args), "ipt2xdp-iptables")
    for registered in group.get("alternatives", {}):
        if registered == wrapper or os.path.dirname(registered) == os.path.dirname(wrapper) \
                and os.path.basename(registered) in OURS:
            _call(args, "--remove", GROUP, registered)
    if os.path.basename(wrapper) == LAUNCHER and os.path.exists(wrapper):
        os.unlink(wrapper)  # our copy (install made it)
    previous = state.get("previous_value")
    if state.get("previous_status") == "manual" and previous:
        _call(args, "--set", GROUP, previous)
    elif group:
        _call(args, "--auto", GROUP)
    if os.path.exists(path):
        os.unlink(path)
    now = (query(args) or {}).get("value")
    print(f"ipt2xdp: iptables -> {now}")
    return 0


def status(args) -> int:
    group = query(args) or {}
    state = _read_state(args)
    installed = any(os.path.basename(p) in OURS for p in group.get("alternatives", {}))
    selected = os.path.basename(group.get("value") or "")
    info = {"installed": installed, "selected": selected in OURS, "launcher": selected == LAUNCHER,
            "value": group.get("value"), "status": group.get("status"), "recorded": state, "ip6tables": _ipv6(args)}
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        print(f"iptables -> {info['value']} ({info['status']}); wrapper "
              f"{'registered' if installed else 'not registered'}"
              + (" (native launcher)" if info["launcher"] else "")
              + (f", runs iptables-{state['backend']}" if state.get("backend") else ""))
        if info["ip6tables"]:
            print(f"ip6tables -> {info['ip6tables']['value']} ({info['ip6tables']['status']}); not wrapped: "
                  "XDP passes IPv6")
        note = _ipv6_note(args, state.get("backend") or _backend_of(group.get("value")))
        if note:
            print(f"note: {note}")
    return 0


def run(args) -> int:
    return {"install": install, "remove": remove, "status": status}[args.action](args)
