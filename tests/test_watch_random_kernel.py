# SPDX-License-Identifier: GPL-2.0-only
"""A random sequence of rule changes through the wrapper, served by `ipt2xdp watch` (iptables-nft),
each checked against a fresh import of what the kernel then holds: the plan's decisions
(tests/test_wrapper_kernel.py's FRESH) and the maps in force, byte for byte against a fresh
compile. This is everything a served change reuses at once: the prediction planned while the
real binary runs, the generation standing for the read-back (watch/holding.py), the last plan's
leading rules (planprefix.py), the compile memo (matchmemo.py) and the maps rewritten in place
(mapwrite.hash_rewrite)."""
import json
import random
import sys

import pytest

from ipt2xdp import netns
from ipt2xdp.watch.predict import MODE_ENV
from ipt2xdp.watch.warm import PREDICTION_IN_KERNEL
from tests.nsutil import read_log, start_watch, stop_watch, unload_and_close
from tests.test_wrapper_kernel import in_step, real, wrapped

pytestmark = pytest.mark.kernel

FRESH_MAPS = """
import sys, types
from ipt2xdp import backend, loader
from ipt2xdp.commands.import_ import _Prepared
from ipt2xdp.hostinfo import read_host_context
from ipt2xdp.parse import parse
from tests.test_flip_rewrite_kernel import assert_in_force_equals_a_full_write
devices = sorted(loader.status(include_counters=False)["devices"])
ruleset = parse(backend.save("nft"), "<live>")
host = read_host_context(attached=devices, backend="nft")
assert_in_force_equals_a_full_write(_Prepared(ruleset, host, types.SimpleNamespace(ipsets="mirror"), "nft").tables)
print("same maps")
"""


def base_ruleset(rng, jumps_first: bool) -> str:
    """jumps_first: fail2ban's and the blocklist's jumps open INPUT (nothing of the last plan's
    INPUT is taken over); else 300 plain rules come first (planprefix takes them over)."""
    jumps = ["-A INPUT -p tcp -m tcp --dport 22 -j f2b-sshd", "-A INPUT -j BL"]
    plain = [f"-A INPUT -s 10.{rng.randrange(256)}.{rng.randrange(256)}.{n % 256}/32 -p tcp -m tcp --dport "
             f"{1 + rng.randrange(60000)} -j DROP" for n in range(300)]
    return "\n".join(["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
                      ":f2b-sshd - [0:0]", ":BL - [0:0]"] + (jumps + plain if jumps_first else plain + jumps)
                     + ["-A f2b-sshd -j RETURN", "-A BL -s 203.0.113.0/24 -j DROP", "-A BL -j RETURN", "COMMIT", ""])


def commands(rng, count: int):
    """Valid commands, the chains' lengths tracked: fail2ban's bans and unbans, appends and deletes
    at INPUT's end, inserts and replacements anywhere, deletes by number, the blocklist chain."""
    lengths = {"INPUT": 302, "f2b-sshd": 1, "BL": 2}
    banned, appended = [], []
    for _ in range(count):
        address = f"192.0.2.{rng.randrange(1, 255)}"
        kind = rng.choice(["ban", "unban", "append", "delete", "insert", "replace", "delete-n", "blocklist"])
        if kind == "ban" or (kind == "unban" and not banned):
            banned.append(address)
            lengths["f2b-sshd"] += 1
            yield ["-I", "f2b-sshd", "1", "-s", address, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]
        elif kind == "unban":
            address = banned.pop(rng.randrange(len(banned)))
            lengths["f2b-sshd"] -= 1
            yield ["-D", "f2b-sshd", "-s", address, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]
        elif kind == "append" or (kind == "delete" and not appended):
            rule = ["-s", address, "-p", "tcp", "-m", "tcp", "--dport", str(rng.randrange(1, 65536)), "-j", "DROP"]
            appended.append(rule)
            lengths["INPUT"] += 1
            yield ["-A", "INPUT", *rule]
        elif kind == "delete":
            lengths["INPUT"] -= 1
            yield ["-D", "INPUT", *appended.pop(rng.randrange(len(appended)))]
        elif kind == "insert":
            lengths["INPUT"] += 1
            yield ["-I", "INPUT", str(rng.randrange(1, lengths["INPUT"] + 1)), "-s", address, "-j",
                   rng.choice(["ACCEPT", "DROP"])]
        elif kind == "replace":
            yield ["-R", "INPUT", str(rng.randrange(3, lengths["INPUT"] + 1)), "-s", address, "-p", "udp", "-m", "udp",
                   "--dport", str(rng.randrange(1, 65536)), "-j", "DROP"]
        elif kind == "delete-n" and lengths["INPUT"] > 302:
            lengths["INPUT"] -= 1
            yield ["-D", "INPUT", str(rng.randrange(3, lengths["INPUT"] + 2))]
        else:
            lengths["BL"] += 1
            yield ["-I", "BL", "1", "-s", f"198.51.{rng.randrange(256)}.0/24", "-j", "DROP"]


@pytest.mark.parametrize("seed", [1, 2, 4])
def test_random_changes_served_leave_a_fresh_imports_plan_and_maps(seed, monkeypatch):
    monkeypatch.setenv(MODE_ENV, "always")  # whatever the load: the prediction is what is tested
    rng = random.Random(seed)
    pair = netns.veth_pair()
    watcher = None
    try:
        ns = pair.receiver
        assert real(ns, "nft", ["iptables-restore"], input=base_ruleset(rng, jumps_first=seed % 2 == 1)).returncode == 0
        r = ns.run(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-m", "ipt2xdp", "import", "--live", "--iface",
                    pair.receiver_if], check=False)
        assert r.returncode == 0, r.stderr
        watcher = start_watch(ns, ready=(": in step", "re-imported"))
        for args in commands(rng, 24):
            got = wrapped(ns, "nft", "iptables", ["-w", *args])
            assert (got.returncode, got.stderr) == (0, ""), (args, got.stderr)
            state = in_step(ns, "nft")
            assert state == dict(state, deferring=False, key_matches=True, same=True), (args, state)
            maps = ns.run([sys.executable, "-c", FRESH_MAPS], check=False)
            assert maps.stdout.strip() == "same maps", (args, maps.stderr[-3000:])
        log = read_log(watcher[1])
        assert log.count("served sync #") == 24, log
        assert log.count(PREDICTION_IN_KERNEL) >= 12, log  # most took the generation for the read-back
        assert "Traceback" not in log and "could not" not in log, log
    finally:
        if watcher is not None:
            stop_watch(*watcher)
        unload_and_close(pair)


def test_the_random_commands_are_what_they_claim():
    """The generator's bookkeeping: every command is one the wrapper serves, positions in range."""
    from ipt2xdp.watch import predict

    made = list(commands(random.Random(5), 200))
    assert all(predict.read_command(args) is not None for args in made)
    assert {args[0] for args in made} == {"-A", "-D", "-I", "-R"}
    assert json.dumps(made)  # plain words only
