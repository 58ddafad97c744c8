# SPDX-License-Identifier: GPL-2.0-only
"""One rule change through ipt2xdp-iptables against the real binary, at N rules (default 10k).

Two namespaces hold the same N-rule filter table (restored with the real iptables-restore); in one
ipt2xdp is loaded on a veth. Each round appends and deletes one rule (`-A INPUT -s 192.0.2.1 -j
DROP`, then `-D` of it) with the real binary in the plain namespace and with the wrapper in the XDP
namespace (which defers, runs the real binary, re-plans from the kernel and flips). Also timed:
pass-through `-C` (read-only; exec()s the real binary) and `--version`. Wall time per call,
median of the rounds, process start included, as a caller like fail2ban sees it.

    sudo .venv/bin/python bench/wrapper_bench.py [--rules 10000] [--rounds 10] [--backend nft]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
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


def run(rules: int = 10000, rounds: int = 10, backend: str = "nft", log=print) -> dict:
    real = ["env", f"IPT2XDP_BACKEND={backend}"]
    res = {"meta": {**stamp(), "method": {
        "rules": rules, "rounds": rounds, "backend": backend,
        "change": "median wall ms of `-w -A INPUT -s 192.0.2.1 -j DROP` and the matching `-D`, per process "
                  "(Python start and nsenter included); real binary in a plain namespace, ipt2xdp-iptables "
                  "in a namespace with ipt2xdp imported (--live) on a veth",
        "check_version": "pass-through calls, median of rounds"}}}
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
            for who, ns, argv0 in (("real", plain, [real_bin]),
                                   ("wrapper", xdp, real + [str(BIN / "ipt2xdp-iptables")])):
                add, delete = [], []
                for _ in range(rounds):
                    add.append(timed(ns, argv0 + ["-w", "-A", *rule], 1))
                    delete.append(timed(ns, argv0 + ["-w", "-D", *rule], 1))
                results[who] = {"change": statistics.median(add + delete),
                                "check": timed(ns, argv0 + ["-w", "-C", *rule], rounds),
                                "version": timed(ns, argv0 + ["--version"], rounds)}
        finally:
            xdp.run(real + [sys.executable, "-m", "ipt2xdp", "detach", "--all"], check=False)
    res["ms"] = results
    log(f"  {rules} rules, backend {backend}, {rounds} rounds, median wall ms per call")
    log(f"  {'call':<10} {'real':>10} {'wrapper':>10} {'added':>10}")
    for key in ("change", "check", "version"):
        a, b = results["real"][key], results["wrapper"][key]
        log(f"  {key:<10} {a:>10.1f} {b:>10.1f} {b - a:>10.1f}")
    return res


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backend", default="nft", choices=("nft", "legacy"))
    args = parser.parse_args()
    run(args.rules, args.rounds, args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
