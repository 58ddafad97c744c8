# SPDX-License-Identifier: GPL-2.0-only
"""Locking through the wrapper, against the real binaries in namespaces.

- The xtables lock held by another process: the wrapper's output and exit code equal the real
  binary's (legacy: -w N gives up with exit 4, no -w waits, as Debian's 1.8.9 does; nft ignores
  the lock), and XDP is left in step, not deferring.
- fail2ban-like and Docker-like callers at once, with `ipt2xdp watch` running beside them: no
  update is lost; the final XDP plan equals a fresh import and the ruleset equals the one the same
  commands leave through the real binary.
The lock file is a private one (XTABLES_LOCKFILE, honoured by iptables 1.8.9): the host's
/run/xtables.lock is never held.
"""
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from ipt2xdp import netns
from tests.test_wrapper_kernel import BIN, in_step, real

pytestmark = pytest.mark.kernel


@pytest.fixture(params=["nft", "legacy"])
def setup(request):
    backend = request.param
    with netns.veth_pair() as pair, tempfile.NamedTemporaryFile(prefix="xtables-", suffix=".lock") as lock:
        try:
            for ns in (pair.sender, pair.receiver):
                if backend == "legacy":
                    for table in ("filter", "nat", "mangle", "raw"):
                        real(ns, backend, ["iptables", "-t", table, "-S"])
            r = pair.receiver.run(["env", f"IPT2XDP_BACKEND={backend}", sys.executable, "-m", "ipt2xdp", "import",
                                   "--live", "--iface", pair.receiver_if], check=False)
            assert r.returncode == 0, r.stderr
            yield backend, pair, lock.name
        finally:
            from tests.nsutil import unload
            unload(pair)


def with_lockfile(ns, lockfile, argv, input=None):
    return ns.run(["env", f"XTABLES_LOCKFILE={lockfile}", *argv], check=False, input=input)


def real_tool(backend, tool):
    return ["bash", "-c", f'exec -a "$0" /usr/sbin/xtables-{backend}-multi "$@"', tool]


def wrapper_tool(backend, tool):
    return ["env", f"IPT2XDP_BACKEND={backend}", str(BIN / f"ipt2xdp-{tool}")]


def held(lockfile, seconds=None):
    """Hold the xtables lock file (released after seconds, or when the returned function is called)."""
    fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = threading.Event()

    def release():
        if not released.is_set():
            released.set()
            os.close(fd)
    if seconds is not None:
        threading.Timer(seconds, release).start()
    return release


def assert_xdp_in_step(pair, backend):
    state = in_step(pair.receiver, backend)
    assert state == dict(state, deferring=False, key_matches=True, same=True), state


CHANGE = ["-A", "INPUT", "-s", "192.0.2.9", "-j", "DROP"]
RESTORE = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 192.0.2.10/32 -j DROP\nCOMMIT\n"


def test_xtables_lock_busy_gives_the_real_binarys_output_and_exit_code(setup):
    backend, pair, lockfile = setup
    cases = [("iptables", ["-w", "1", *CHANGE], None), ("iptables", ["-w1", *CHANGE], None),
             ("iptables", ["--wait=1", *CHANGE], None), ("iptables-restore", ["-w", "1", "--noflush"], RESTORE)]
    for tool, args, text in cases:
        release = held(lockfile)
        try:
            started = time.monotonic()
            want = with_lockfile(pair.sender, lockfile, real_tool(backend, tool) + args, input=text)
            real_seconds = time.monotonic() - started
            started = time.monotonic()
            got = with_lockfile(pair.receiver, lockfile, wrapper_tool(backend, tool) + args, input=text)
            wrapper_seconds = time.monotonic() - started
        finally:
            release()
        assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr), (tool, args)
        if backend == "legacy":
            assert want.returncode == 4 and "Stopped waiting after 1s." in want.stderr
            assert 0.9 < wrapper_seconds < real_seconds + 1.0
        else:
            assert want.returncode == 0  # iptables-nft takes no lock
        assert_xdp_in_step(pair, backend)
    save = lambda ns, tool: with_lockfile(ns, lockfile, tool + []).stdout
    strip = lambda text: "".join(l + "\n" for l in text.splitlines() if not l.startswith("#"))
    assert strip(save(pair.receiver, wrapper_tool(backend, "iptables-save"))) == \
        strip(save(pair.sender, real_tool(backend, "iptables-save")))


def test_without_wait_both_wait_for_the_lock_like_debians_1_8_9(setup):
    backend, pair, lockfile = setup
    # legacy must wait the 1.5 s out; nft must finish while the lock is still held (a re-plan
    # beside other sessions can take a few seconds, so nft gets a long hold to finish within)
    hold = 1.5 if backend == "legacy" else 20.0
    release = held(lockfile, seconds=hold)
    started = time.monotonic()
    got = with_lockfile(pair.receiver, lockfile, wrapper_tool(backend, "iptables") + CHANGE)
    seconds = time.monotonic() - started
    assert (got.returncode, got.stdout, got.stderr) == (0, "", "")
    release()
    if backend == "legacy":
        assert seconds >= 1.3, "legacy 1.8.9 waits for the lock without -w"
    else:
        assert seconds < hold, "iptables-nft does not take the xtables lock"
    assert "-A INPUT -s 192.0.2.9/32 -j DROP" in real(pair.receiver, backend, ["iptables", "-S"]).stdout
    assert_xdp_in_step(pair, backend)


F2B = [["-N", "f2b-sshd"], ["-A", "f2b-sshd", "-j", "RETURN"],
       ["-I", "INPUT", "-p", "tcp", "-m", "multiport", "--dports", "22", "-j", "f2b-sshd"]] + \
      [["-I", "f2b-sshd", "1", "-s", f"192.0.2.{i}", "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]
       for i in range(1, 7)] + \
      [["-D", "f2b-sshd", "-s", f"192.0.2.{i}", "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]
       for i in range(1, 7, 3)] + \
      [["-I", "INPUT", "-s", f"198.51.100.{i}", "-j", "DROP"] for i in range(1, 4)]
DOCKER = [["-t", "nat", "-N", "DOCKER"], ["-N", "DOCKER"], ["-N", "DOCKER-USER"], ["-A", "DOCKER-USER", "-j", "RETURN"],
          ["-I", "FORWARD", "-j", "DOCKER-USER"],
          ["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"]] + \
         [["-t", "nat", "-A", "DOCKER", "!", "-i", "docker0", "-p", "tcp", "-m", "tcp", "--dport", str(8000 + i),
           "-j", "DNAT", "--to-destination", f"172.17.0.{i}:80"] for i in range(2, 6)] + \
         [["-A", "DOCKER", "-d", f"172.17.0.{i}/32", "!", "-i", "docker0", "-o", "docker0", "-p", "tcp", "-m", "tcp",
           "--dport", "80", "-j", "ACCEPT"] for i in range(2, 6)]


def _script(commands, tool):
    import shlex
    return "\n".join(" ".join(shlex.quote(w) for w in tool + ["-w", *args]) + " || echo FAILED $? >&2"
                     for args in commands)


def test_fail2ban_and_docker_at_once_lose_no_update(setup):
    backend, pair, lockfile = setup
    ns = pair.receiver
    log = tempfile.TemporaryFile("w+")
    watch = subprocess.Popen(ns.argv([sys.executable, "-m", "ipt2xdp", "watch"]), stderr=log)
    try:
        callers = [subprocess.Popen(ns.argv(["bash", "-c", _script(seq, wrapper_tool(backend, "iptables"))]),
                                    stderr=subprocess.PIPE, text=True) for seq in (F2B, DOCKER)]
        errors = [c.communicate(timeout=600)[1] for c in callers]
        assert [c.returncode for c in callers] == [0, 0] and errors == ["", ""], errors
        for seq in (F2B, DOCKER):  # the same commands through the real binary, one after the other
            done = pair.sender.run(["bash", "-c", _script(seq, real_tool(backend, "iptables"))], check=False)
            assert done.stderr == ""
        strip = lambda text: "".join(l + "\n" for l in text.splitlines() if not l.startswith("#"))
        assert strip(real(ns, backend, ["iptables-save"]).stdout) == \
            strip(real(pair.sender, backend, ["iptables-save"]).stdout)
        # The watcher saw every change too; once it has caught up, XDP enforces the plan of it all.
        deadline = time.monotonic() + 30
        while True:
            state = in_step(ns, backend)
            if state == dict(state, deferring=False, key_matches=True, same=True) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert state == dict(state, deferring=False, key_matches=True, same=True), state
    finally:
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(20) == 0
        log.seek(0)
        text = log.read()
        log.close()
    assert "Traceback" not in text and "failed" not in text, text
