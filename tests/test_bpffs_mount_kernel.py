# SPDX-License-Identifier: GPL-2.0-only
"""A host without a mounted bpffs (booted without systemd) gets one at /sys/fs/bpf, as bpftool and
libxdp do; under `ip netns exec` none is mounted, since it would vanish with the command.

Each case runs in a private mount namespace with /sys/fs/bpf unmounted there, so the host's mounts
are never touched.
"""
import os
import subprocess
import sys

import pytest

import ipt2xdp
from ipt2xdp import pins

pytestmark = pytest.mark.kernel

PROBE = ("from ipt2xdp import pins, errors\n"
         "try:\n"
         "    print('mounted', pins.mount_bpffs(), pins._is_bpffs('/sys/fs/bpf'))\n"
         "except errors.LoadError as e:\n"
         "    print('refused', e)\n")
UNMOUNT = "umount -R /sys/fs/bpf 2>/dev/null; grep -c ' /sys/fs/bpf bpf ' /proc/self/mounts; "


def _private_mount_namespace(script: str, fork: bool) -> list:
    """Runs script (with the probe as $0) in a fresh mount namespace; with fork, the probe's parent
    is a shell inside it, without, the probe's parent is this test, outside it (as `ip netns exec`)."""
    command = ["unshare", "--mount", "--propagation", "private"] + (["--fork"] if fork else [])
    result = subprocess.run(command + ["sh", "-c", script, PROBE], capture_output=True, text=True, timeout=60)
    return result.stdout.splitlines()


def test_mounts_bpffs_where_none_is():
    lines = _private_mount_namespace(
        UNMOUNT + f"{sys.executable} -c \"$0\"; grep ' /sys/fs/bpf bpf ' /proc/self/mounts", fork=True)
    assert lines[0] == "0", lines  # none there before
    assert lines[1] == "mounted /sys/fs/bpf True", lines
    assert "mode=700" in lines[2], lines


def test_does_not_mount_where_the_mount_would_vanish():
    lines = _private_mount_namespace(
        UNMOUNT + f"exec {sys.executable} -c \"$0\"", fork=False)
    assert lines[0] == "0", lines
    assert lines[1].startswith("refused no BPF filesystem at /sys/fs/bpf in the host's mount namespace"), lines
    assert "outside `ip netns exec`" in lines[1], lines


def test_readers_leave_the_mounts_alone_and_an_import_mounts(tmp_path):
    """status and a dry run on a host without bpffs report nothing loaded and mount nothing; an
    import (in a fresh network namespace, gone with the test's process) mounts one and pins there."""
    rules = os.path.join(os.path.dirname(ipt2xdp.__file__), "examples", "server.rules")
    tool = f"{sys.executable} -m ipt2xdp"
    script = (UNMOUNT + "ip link set lo up; "
              f"{tool} status --json | {sys.executable} -c 'import json,sys; print(json.load(sys.stdin)[\"loaded\"])'; "
              f"{tool} import --dry-run --json {rules} > /dev/null; echo dry-run $?; "
              "grep -c ' /sys/fs/bpf bpf ' /proc/self/mounts; "
              f"{tool} import --iface lo --mode generic {rules} > /dev/null; echo import $?; "
              "grep -c ' /sys/fs/bpf bpf ' /proc/self/mounts; "
              "ls /sys/fs/bpf/ipt2xdp/*/prog | wc -l; "
              f"{sys.executable} -c 'from ipt2xdp import pins; print(pins.netns_id())'")
    # A new PID namespace and its /proc: the host's processes, whose roots would reach its bpffs
    # (pins._candidates), are out of sight.
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "--net", "--pid", "--fork",
                             "--mount-proc", "sh", "-c", script],
                            capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    try:
        assert lines[:7] == ["0", "False", "dry-run 0", "0", "import 0", "1", "1"], (lines, result.stderr)
    finally:
        if lines and lines[-1].isdigit():  # the state files of a namespace that is gone now
            pins._remove_state_files(int(lines[-1]))
