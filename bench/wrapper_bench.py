# SPDX-License-Identifier: GPL-2.0-only
"""One rule change through ipt2xdp-iptables against the real binary, at N rules (default 10k).

Two namespaces hold the same N-rule filter table (restored with the real iptables-restore); in one
ipt2xdp is loaded on a veth. Each round appends and deletes one rule (`-A INPUT -s 192.0.2.1 -j
DROP`, then `-D` of it) with the real binary in the plain namespace and with the wrapper in the XDP
namespace (which defers, runs the real binary, re-plans from the kernel and flips). Also timed:
pass-through `-C` (read-only; exec()s the real binary) and `--version`. Wall time per call,
median of the rounds, process start included, as a caller like fail2ban sees it.

The change is timed twice through the wrapper: alone (it re-plans in its own process, importing the
planning stack first), and with `ipt2xdp watch` running in the namespace (the wrapper hands the
defer and the re-plan to the warm watcher over its socket); the watcher's served count is checked
and its own timing of each sync (read, parse, host facts, plan+flip) is reported beside.

    sudo .venv/bin/python bench/wrapper_bench.py [--rules 10000] [--rounds 10] [--backend nft]
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import stamp, use_tree  # noqa: E402

use_tree()

from ipt2xdp import netns  # noqa: E402

BIN = Path(sys.executable).parent


def ruleset(n: int) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    for i in range(n):
        lines.append(f"-A INPUT -s 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32 -p tcp -m tcp "
                     f"--dport {1 + i % 60000} -j DROP")
    return "\n".join(lines + ["COMMIT", ""])


def timed(ns, argv, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = subprocess.run(ns.argv(argv), capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode not in (0, 1):
            raise RuntimeError(f"{argv}: {result.stderr}")
    return statistics.median(times) * 1000


def changes(ns, argv0, rule, rounds):
    add, delete = [], []
    for _ in range(rounds):
        add.append(timed(ns, argv0 + ["-w", "-A", *rule], 1))
        delete.append(timed(ns, argv0 + ["-w", "-D", *rule], 1))
    return statistics.median(add + delete)


SERVED = re.compile(r"served sync #\d+: .*\(([\d.]+) s: (.*)\)$")


def watched_changes(ns, real, argv0, rule, rounds, log):
    """changes() with `ipt2xdp watch` running in ns; also the watcher's own timings of its syncs."""
    with tempfile.NamedTemporaryFile("w+", prefix="ipt2xdp-bench-watch-") as out:
        watch = subprocess.Popen(ns.argv(real + [sys.executable, "-m", "ipt2xdp", "watch"]), stderr=out,
                                 stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 600
            while "change in start" not in Path(out.name).read_text():
                if watch.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ipt2xdp watch did not start: {Path(out.name).read_text()}")
                time.sleep(0.2)
            median = changes(ns, argv0, rule, rounds)
            st = json.loads(ns.run(real + [sys.executable, "-m", "ipt2xdp", "status", "--json", "--no-drift"],
                                   check=False).stdout)
            served = (st.get("watcher") or {}).get("served")
            if served != 2 * rounds:
                raise RuntimeError(f"the watcher served {served} of {2 * rounds} changes: {Path(out.name).read_text()}")
        finally:
            watch.send_signal(signal.SIGTERM)
            watch.wait(60)
        steps = {}
        for line in Path(out.name).read_text().splitlines():
            m = SERVED.search(line)
            if m:
                steps.setdefault("total", []).append(float(m.group(1)) * 1000)
                for part in m.group(2).split(", "):
                    name, value, _ms = part.rsplit(" ", 2)
                    steps.setdefault(name, []).append(float(value))
    log(f"  watcher's own timing of its syncs (median ms): "
        + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in steps.items()))
    return median, {k: statistics.median(v) for k, v in steps.items()}


def run(rules: int = 10000, rounds: int = 10, backend: str = "nft", log=print) -> dict:
    real = ["env", f"IPT2XDP_BACKEND={backend}"]
    res = {"meta": {**stamp(), "method": {
        "rules": rules, "rounds": rounds, "backend": backend,
        "change": "median wall ms of `-w -A INPUT -s 192.0.2.1 -j DROP` and the matching `-D`, per process "
                  "(Python start and nsenter included); real binary in a plain namespace, ipt2xdp-iptables "
                  "in a namespace with ipt2xdp imported (--live) on a veth",
        "check_version": "pass-through calls, median of rounds",
        "watch": "the same changes with `ipt2xdp watch` running in the XDP namespace (served over its socket, "
                 "count checked); watcher_ms: the watcher's own timing of each sync, median"}}}
    with netns.veth_pair() as pair:
        plain, xdp = pair.sender, pair.receiver
        for ns in (plain, xdp):
            ns.run([f"iptables-{backend}-restore"], input=ruleset(rules))
        r = xdp.run(real + [sys.executable, "-m", "ipt2xdp", "import", "--live", "--iface", pair.receiver_if],
                    check=False)
        if r.returncode:
            raise RuntimeError(r.stderr)
        rule = ["INPUT", "-s", "192.0.2.1", "-j", "DROP"]
        real_bin = f"iptables-{backend}"
        results = {}
        try:
            wrapper = real + [str(BIN / "ipt2xdp-iptables")]
            for who, ns, argv0 in (("real", plain, [real_bin]), ("wrapper", xdp, wrapper)):
                results[who] = {"change": changes(ns, argv0, rule, rounds),
                                "check": timed(ns, argv0 + ["-w", "-C", *rule], rounds),
                                "version": timed(ns, argv0 + ["--version"], rounds)}
            change, steps = watched_changes(xdp, real, wrapper, rule, rounds, log)
            results["wrapper_watch"] = {"change": change}
            res["watcher_ms"] = steps
        finally:
            xdp.run(real + [sys.executable, "-m", "ipt2xdp", "detach", "--all"], check=False)
    res["ms"] = results
    log(f"  {rules} rules, backend {backend}, {rounds} rounds, median wall ms per call")
    log(f"  {'call':<10} {'real':>10} {'wrapper':>10} {'added':>10}")
    for key in ("change", "check", "version"):
        a, b = results["real"][key], results["wrapper"][key]
        log(f"  {key:<10} {a:>10.1f} {b:>10.1f} {b - a:>10.1f}")
    a, b = results["real"]["change"], results["wrapper_watch"]["change"]
    log(f"  {'change, watch running':<10} {a:>10.1f} {b:>10.1f} {b - a:>10.1f}")
    return res


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backend", default="nft", choices=("nft", "legacy"))
    parser.add_argument("--json", metavar="FILE", help="also write the result here")
    args = parser.parse_args()
    res = run(args.rules, args.rounds, args.backend)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
