# SPDX-License-Identifier: GPL-2.0-only
"""The native launcher (launcher/launch.c) behind the iptables names, in namespaces, both backends.

- With `ipt2xdp watch` running, the fail2ban, Docker and ufw sequences and the bad arguments give
  the real binary's output and exit code, XDP is in step with a fresh import after every command,
  and every change was handed to the watcher by the launcher itself (its "launched" count), not by
  the Python wrapper it falls back to.
- Listings with counters, iptables-save and iptables-restore go through the Python wrapper, with
  XDP's drops in the counters.
- Without a watcher, and while another caller holds the wrapper's lock, the launcher runs the
  Python wrapper, with the same result.
- A real tool killed by a signal ends the launcher by that signal, and the watcher re-reads the
  kernel; a real tool that cannot be run fails the call and leaves XDP enforcing the old plan.
"""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from ipt2xdp import resources
from ipt2xdp.wrapper import cmdline
from tests.nsutil import read_log
from tests.test_watch_serve_kernel import QUIET_SECONDS, status, wait_for, watched  # noqa: F401 - fixture
from tests.test_wrapper_kernel import BAD, BIN, DOCKER, FAIL2BAN, UFW, in_step, real, send_udp

pytestmark = pytest.mark.kernel
NAMES = ("iptables", "iptables-save", "iptables-restore")


@pytest.fixture(scope="module")
def launcher_dir(tmp_path_factory):
    """What `ipt2xdp alternatives install` makes: the launcher beside the Python wrapper, and the
    three names (here symlinks, there update-alternatives' links) pointing at it."""
    directory = tmp_path_factory.mktemp("launcher")
    shutil.copy(resources.launcher_path(), directory / "ipt2xdp-launch")
    (directory / "ipt2xdp-iptables").symlink_to(BIN / "ipt2xdp-iptables")
    for name in NAMES:
        (directory / name).symlink_to(directory / "ipt2xdp-launch")
    return directory


def launched(launcher_dir, ns, backend, tool, args, input=None, env=()):
    return ns.run(["env", f"IPT2XDP_BACKEND={backend}", *env, str(launcher_dir / tool), *args], check=False,
                  input=input)


def assert_in_step(ns, backend, what):
    state = in_step(ns, backend)
    assert state == dict(state, deferring=False, key_matches=True, same=True), (what, state)


def changes(commands) -> int:
    return sum(cmdline.parse_iptables(args).changes_planned_tables for args in commands)


@pytest.mark.parametrize("sequence", ["fail2ban", "docker", "ufw", "bad"])
def test_sequences_through_the_launcher_match_the_real_binary(watched, launcher_dir, sequence):
    backend, pair, _proc, log = watched
    ns = pair.receiver
    if backend == "legacy":
        for table in ("filter", "nat", "mangle", "raw"):
            real(pair.sender, backend, ["iptables", "-t", table, "-S"])
    for each in (pair.sender, ns):
        each.run(["ipset", "-exist", "create", "f2b-ips", "hash:ip", "timeout", "0", "maxelem", "65536"])
    commands = {"fail2ban": FAIL2BAN, "docker": DOCKER, "ufw": UFW, "bad": BAD}[sequence]
    before = status(ns, backend)["watcher"]
    for args in commands:
        want = real(pair.sender, backend, ["iptables", *args])
        got = launched(launcher_dir, ns, backend, "iptables", args)
        assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr), args
        assert_in_step(ns, backend, args)
    after = status(ns, backend)["watcher"]
    assert after["launched"] - before["launched"] == changes(commands), read_log(log)
    assert "could not" not in read_log(log)


def test_counters_save_and_restore_through_the_launcher(watched, launcher_dir):
    backend, pair, _proc, log = watched
    ns = pair.receiver
    run = lambda tool, *args, input=None: launched(launcher_dir, ns, backend, tool, list(args), input=input)
    for args in (["-N", "BL"], ["-A", "INPUT", "-j", "BL"], ["-A", "BL", "-p", "udp", "--dport", "9999", "-j", "DROP"]):
        assert run("iptables", *args).returncode == 0
    send_udp(pair, 9999, 5)
    lines = run("iptables", "-L", "BL", "-v", "-x", "-n").stdout.splitlines()
    assert lines[2].split()[:3] == ["5", str(5 * 36), "DROP"]  # XDP's drops, added by the Python wrapper
    assert f"[5:{5 * 36}] -A BL -p udp" in run("iptables-save", "-c").stdout
    text = "*filter\n:BL - [0:0]\n-A BL -s 203.0.113.0/24 -j DROP\nCOMMIT\n"
    got, want = run("iptables-restore", "--noflush", input=text), real(pair.sender, backend, ["iptables-restore", "--noflush"], input=text)
    assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr)
    assert "-A BL -s 203.0.113.0/24 -j DROP" in run("iptables", "-S", "BL").stdout
    assert_in_step(ns, backend, "restore")


def test_without_a_watcher_the_launcher_runs_the_python_wrapper(watched, launcher_dir):
    backend, pair, proc, log = watched
    ns = pair.receiver
    proc.terminate()  # the fixture's stop_watch() then finds it stopped
    proc.wait(timeout=30)
    got = launched(launcher_dir, ns, backend, "iptables", ["-w", "-A", "INPUT", "-s", "192.0.2.44", "-j", "DROP"])
    assert (got.returncode, got.stdout, got.stderr) == (0, "", "")
    assert "-A INPUT -s 192.0.2.44/32 -j DROP" in real(ns, backend, ["iptables", "-S"]).stdout
    assert_in_step(ns, backend, "no watcher")


def test_a_busy_wrapper_lock_sends_the_launcher_to_the_python_wrapper(watched, launcher_dir):
    from ipt2xdp import pins

    backend, pair, _proc, log = watched
    ns = pair.receiver
    before = status(ns, backend)["watcher"]
    fd = os.open(f"/run/lock/ipt2xdp-wrapper-{pins.netns_id_of(ns.path)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    release = threading.Timer(1.0, os.close, (fd,))
    release.start()
    try:
        got = launched(launcher_dir, ns, backend, "iptables", ["-A", "INPUT", "-s", "192.0.2.45", "-j", "DROP"])
    finally:
        release.join()
    assert (got.returncode, got.stderr) == (0, "")
    after = status(ns, backend)["watcher"]
    # The Python wrapper waited for the lock, then asked the watcher over its own protocol.
    assert (after["launched"], after["served"]) == (before["launched"], before["served"] + 1), read_log(log)
    assert_in_step(ns, backend, "lock busy")


def test_a_real_tool_killed_by_a_signal_and_one_that_cannot_run(watched, launcher_dir, tmp_path):
    backend, pair, _proc, log = watched
    ns = pair.receiver
    fake = tmp_path / f"xtables-{backend}-multi"
    fake.write_text("#!/bin/sh\nkill -TERM $$\n")
    fake.chmod(0o755)
    got = launched(launcher_dir, ns, backend, "iptables", ["-A", "INPUT", "-j", "ACCEPT"],
                   env=(f"IPT2XDP_SBIN={tmp_path}",))
    assert got.returncode == -signal.SIGTERM, (got.returncode, got.stderr)
    wait_for(lambda: "ended without finishing its change" in read_log(log), "the watcher to notice")
    wait_for(lambda: not status(ns, backend)["deferring_all"], "the watcher's re-import")
    assert_in_step(ns, backend, "killed")
    fake.unlink()
    generation = status(ns, backend)["generation"]
    got = launched(launcher_dir, ns, backend, "iptables", ["-A", "INPUT", "-j", "ACCEPT"],
                   env=(f"IPT2XDP_SBIN={tmp_path}",))
    assert got.returncode == 1 and f"cannot run {fake}" in got.stderr, got.stderr
    time.sleep(QUIET_SECONDS)
    after = status(ns, backend)
    assert (after["generation"], after["deferring_all"]) == (generation, False), read_log(log)


def test_odd_arguments_reach_the_real_tool_as_given(watched, launcher_dir):
    """The launcher runs the real tool with its own argv: a comment with spaces, quotes
    and a byte that is not UTF-8, and an empty argument, arrive as the real binary would get them
    (the watcher only reads them, hex-encoded, to decide and predict)."""
    backend, pair, _proc, log = watched
    ns = pair.receiver
    comment = b"ban 'x' \"y\" \xff"
    for each, run in ((pair.sender, lambda args: real(pair.sender, backend, ["iptables", *args])),
                      (ns, lambda args: launched(launcher_dir, ns, backend, "iptables", args))):
        got = run([b"-A", b"INPUT", b"-s", b"192.0.2.9", b"-m", b"comment", b"--comment", comment, b"-j", b"DROP"])
        assert got.returncode == 0, got.stderr
        bad = run(["-A", "INPUT", "", "-j", "DROP"])
        assert bad.returncode == 2, bad.stderr
    listed = [subprocess.run(each.argv([f"iptables-{backend}", "-S", "INPUT"]), capture_output=True, check=True).stdout
              for each in (pair.sender, ns)]  # bytes: the comment is not UTF-8
    assert listed[0] == listed[1] and b"\xff" in listed[1] and b"192.0.2.9" in listed[1], listed
    assert_in_step(ns, backend, "odd arguments")


def test_with_nothing_loaded_the_launcher_runs_the_real_tool(watched, launcher_dir):
    backend, pair, _proc, log = watched
    ns = pair.receiver
    assert ns.run(["env", f"IPT2XDP_BACKEND={backend}", sys.executable, "-m", "ipt2xdp", "detach", "--all"],
                  check=False).returncode == 0
    # status shows no watcher when nothing is loaded: ask the watcher itself
    ask = [sys.executable, "-c", "from ipt2xdp.wrapper.client import ask_status; print(ask_status())"]
    before = json.loads(ns.run(ask).stdout)  # answers: detach --all left its socket in place
    got = launched(launcher_dir, ns, backend, "iptables", ["-A", "INPUT", "-s", "192.0.2.10", "-j", "DROP"])
    assert (got.returncode, got.stderr) == (0, "")
    assert "192.0.2.10" in real(ns, backend, ["iptables", "-S"]).stdout
    after = json.loads(ns.run(ask).stdout)
    assert (after["launched"], after["served"]) == (before["launched"], before["served"]), read_log(log)


def test_counts_follow_each_launched_change(watched, launcher_dir):
    """The watcher saves a launched flip's plan record and carries the counts after its answer,
    still holding the wrapper's lock: a counted rule keeps XDP's drops across an insert before it,
    and deleting it by number takes them away from its identical twin, as netfilter's own do."""
    backend, pair, _proc, log = watched
    ns = pair.receiver
    run = lambda *args: launched(launcher_dir, ns, backend, "iptables", list(args))
    dropping = ["-p", "udp", "--dport", "9999", "-j", "DROP"]
    before = status(ns, backend)["watcher"]
    for args in (["-N", "BL"], ["-A", "INPUT", "-j", "BL"], ["-A", "BL", *dropping]):
        assert run(*args).returncode == 0
    send_udp(pair, 9999, 5)
    counts = lambda: [line.split()[:2] for line in run("-L", "BL", "-v", "-x", "-n").stdout.splitlines()[2:]]
    assert run("-I", "BL", "1", "-s", "198.51.100.1", "-j", "DROP").returncode == 0
    assert counts() == [["0", "0"], ["5", str(5 * 36)]]
    assert run("-A", "BL", *dropping).returncode == 0  # its twin, nothing counted
    assert counts() == [["0", "0"], ["5", str(5 * 36)], ["0", "0"]]
    assert run("-D", "BL", "2").returncode == 0
    assert counts() == [["0", "0"], ["0", "0"]]
    after = status(ns, backend)["watcher"]
    assert after["launched"] - before["launched"] == 6, read_log(log)  # every change, none by the Python wrapper
    assert "failed" not in read_log(log)
    assert_in_step(ns, backend, "counted")


def test_status_waits_for_the_record_of_a_flip_being_finished(watched, launcher_dir):
    """While the watcher finishes a launched change, the generation in force has no plan record yet
    and the wrapper's lock is held: `ipt2xdp status` (which takes no lock) reads the record once
    the lock is free, not a plan-less generation."""
    from ipt2xdp import pins, planstore

    backend, pair, _proc, log = watched
    ns = pair.receiver
    assert launched(launcher_dir, ns, backend, "iptables", ["-A", "INPUT", "-s", "192.0.2.46", "-j", "DROP"]).returncode == 0
    netns = pins.netns_id_of(ns.path)
    key = status(ns, backend)["ruleset"]["source_digest"]
    record = os.path.join(planstore._directory(netns), f"plan-{key}.json")
    fd = os.open(f"/run/lock/ipt2xdp-wrapper-{netns}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(record, record + ".later")
    try:
        reader = subprocess.Popen(ns.argv(["env", f"IPT2XDP_BACKEND={backend}", sys.executable, "-m", "ipt2xdp",
                                           "status", "--json"]), stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert reader.poll() is None  # waiting for the lock
    finally:
        os.rename(record + ".later", record)
        os.close(fd)
    out, _ = reader.communicate(timeout=60)
    shown = json.loads(out)
    assert shown["plan_summary"] is not None and shown["plan_summary"]["rules"] >= 1
    # without the record, the host the plan was made for is unknown: drift would say it changed
    assert (shown["drift"]["ruleset_changed"], shown["drift"]["host_changed"]) == (False, False), shown["drift"]
