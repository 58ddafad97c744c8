# SPDX-License-Identifier: GPL-2.0-only
"""Kill the updating process at random points, under traffic: afterwards the old or the new ruleset
is in force (never a mix, never nothing), the pins still work, and no packet that both rulesets
accept was ever dropped."""
import random
import socket
import sys
import threading
import time

import pytest

from ipt2xdp import abi, loader
from ipt2xdp.classifier import ACCEPT, DROP, ClassifierRule, IntervalSet, Match
from ipt2xdp.compile import compile
from ipt2xdp.netns import veth_pair
from tests.nsutil import inside, iptables_count, send_udp, udp_receiver, unload_and_close

pytestmark = pytest.mark.kernel

OLD_ONLY, NEW_ONLY, BOTH_ACCEPT = 9001, 9002, 7777
UDP = frozenset({17})


def old_rules():
    return [ClassifierRule(Match(proto=UDP, dport=IntervalSet.single(OLD_ONLY)), DROP, 0)]


UPDATER = """
import sys
from ipt2xdp import loader
from ipt2xdp.classifier import ACCEPT, DROP, ClassifierRule, IntervalSet, Match
from ipt2xdp.compile import compile
rules = [ClassifierRule(Match(proto=frozenset({17}), dport=IntervalSet.single(%d)), DROP, 0)]
# a big, mixed second part so the update takes long enough to be hit anywhere
rules += [ClassifierRule(Match(src=IntervalSet.range(0x0B000000 + i * 7, 0x0B000000 + i * 7 + 3),
                               proto=frozenset({6}), dport=IntervalSet.range(i %% 1000, i %% 1000 + 5)), DROP, 1 + i)
          for i in range(3000)]
tables = compile(rules, ACCEPT)
print("ready", flush=True)
stop_at = sys.stdin.readline().strip()

def hook(step):
    if step == stop_at:  # park here until killed
        print("at " + step, flush=True)
        import time
        time.sleep(3600)
loader.apply(tables, [], pause_hook=hook)
print("done", flush=True)
""" % NEW_ONLY


def ruleset_in_force(p):
    """'old' or 'new', judged by which probe netfilter still sees."""
    before = (iptables_count(p.receiver, f"dpt:{OLD_ONLY}"), iptables_count(p.receiver, f"dpt:{NEW_ONLY}"))
    send_udp(p.sender, p.receiver_ip, OLD_ONLY, count=3)
    send_udp(p.sender, p.receiver_ip, NEW_ONLY, count=3)
    time.sleep(0.1)
    seen_old = iptables_count(p.receiver, f"dpt:{OLD_ONLY}") - before[0]
    seen_new = iptables_count(p.receiver, f"dpt:{NEW_ONLY}") - before[1]
    if (seen_old, seen_new) == (0, 3):
        return "old"
    if (seen_old, seen_new) == (3, 0):
        return "new"
    return f"mixed/none: old-only probe passed {seen_old}/3, new-only probe passed {seen_new}/3"


class Traffic(threading.Thread):
    """Paced UDP to a port both rulesets accept; counts what was sent."""

    def __init__(self, p):
        super().__init__(daemon=True)
        self.p, self.sent, self.stop = p, 0, threading.Event()
        with inside(p.sender):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def run(self):
        while not self.stop.is_set():
            self.sock.sendto(b"y" * 16, (self.p.receiver_ip, BOTH_ACCEPT))
            self.sent += 1
            time.sleep(0.0005)


def test_killed_updates_leave_old_or_new_and_never_drop_common_traffic():
    import subprocess

    rng = random.Random(4)
    p = veth_pair()
    try:
        for port in (OLD_ONLY, NEW_ONLY):
            p.receiver.run(["iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(port)])
        p.sender.run(["ping", "-c", "1", "-W", "1", p.receiver_ip], check=False)
        sink = udp_receiver(p.receiver, BOTH_ACCEPT)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        received = [0]

        def receive():
            sink.settimeout(0.5)
            while True:
                try:
                    sink.recv(64)
                    received[0] += 1
                except socket.timeout:
                    if traffic.stop.is_set():
                        return
        with inside(p.receiver):
            loader.apply(compile(old_rules(), ACCEPT), [p.receiver_if], "native")
        assert ruleset_in_force(p) == "old"
        traffic = Traffic(p)
        receiver_thread = threading.Thread(target=receive, daemon=True)
        traffic.start()
        receiver_thread.start()

        def start_updater():
            proc = subprocess.Popen(p.receiver.argv([sys.executable, "-c", UPDATER]), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
            return proc
        # how long an uninterrupted update takes
        proc = start_updater()
        started = time.monotonic()
        proc.stdin.write("never\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        duration = time.monotonic() - started
        proc.wait()
        assert ruleset_in_force(p) == "new"

        outcomes = []
        for attempt in range(10):
            with inside(p.receiver):
                loader.apply(compile(old_rules(), ACCEPT), [])
            assert ruleset_in_force(p) == "old"
            proc = start_updater()
            proc.stdin.write("never\n")
            proc.stdin.flush()
            time.sleep(rng.uniform(0, duration * 1.1))
            proc.kill()
            proc.wait()
            state = ruleset_in_force(p)
            assert state in ("old", "new"), f"attempt {attempt}: {state}"
            with inside(p.receiver):
                info = loader.status()
            assert info["loaded"] and info["devices"][p.receiver_if]["attached"]
            outcomes.append(state)

        traffic.stop.set()
        traffic.join()
        receiver_thread.join()
        assert traffic.sent > 500
        assert received[0] == traffic.sent, "a packet both rulesets accept was dropped"
        # the random points landed on both sides of the flip at least once (else the test is weak)
        print("outcomes:", outcomes, "update seconds:", round(duration, 3))
        assert "old" in outcomes
    finally:
        unload_and_close(p)


STEPS = [f"filled {n}" for n in abi.GEN_MAPS] + [f"installed {n}" for n in abi.GEN_MAPS] + ["flipped"]


def test_kill_at_every_step_of_the_update():
    """Deterministic companion: park the updater at each step, kill it there, check what is in force."""
    import subprocess

    p = veth_pair()
    try:
        for port in (OLD_ONLY, NEW_ONLY):
            p.receiver.run(["iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(port)])
        p.sender.run(["ping", "-c", "1", "-W", "1", p.receiver_ip], check=False)
        with inside(p.receiver):
            loader.apply(compile(old_rules(), ACCEPT), [p.receiver_if], "native")
        for step in STEPS:
            with inside(p.receiver):
                loader.apply(compile(old_rules(), ACCEPT), [])
            proc = subprocess.Popen(p.receiver.argv([sys.executable, "-c", UPDATER]), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
            proc.stdin.write(step + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "at " + step
            assert ruleset_in_force(p) == ("new" if step == "flipped" else "old"), f"parked at {step}"
            proc.kill()
            proc.wait()
            assert ruleset_in_force(p) == ("new" if step == "flipped" else "old"), f"killed at {step}"
    finally:
        unload_and_close(p)
