# SPDX-License-Identifier: GPL-2.0-only
"""`python -m bench` (make bench): every benchmark in one run, JSON in bench/out/, then bench/RESULTS.md
and PNG plots regenerated from that JSON (bench/report.py). `--quick` (make bench-quick) is a smoke
run of every benchmark at small sizes; `--smoke` is the smallest slice (the pytest smoke test).

    sudo .venv/bin/python -m bench [--quick|--smoke] [--only control,wrapper,parse,prog_run,e2e]
                                   [--src head|tree] [--out DIR] [--no-results]

By default the ipt2xdp measured is a snapshot of the committed HEAD (git archive + BPF build in /tmp),
because the shared work tree is often mid-change; `--src tree` measures the work tree.
`python -m bench --render` only regenerates RESULTS.md and the plots from bench/out/*-latest.json.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The control-plane sections first: right after e2e (a dozen namespaces holding 10k-rule tables,
# 100k-entry sets and XDP programs torn down) the whole-CLI import measured 1.5-1.7x slower for
# minutes, with the CPUs idle (settle() saw nothing to wait for); a fresh namespace is what an
# import meets. prog_run and e2e time with the kernel's clocks, not the wall.
MODULES = {"control": "control", "wrapper": "wrapper_bench", "parse": "parse_bench", "prog_run": "prog_run",
           "e2e": "e2e"}
SECTIONS = tuple(MODULES)

PROFILES = {
    "full": {
        # repeat/rounds sized for a loaded shared 2-vCPU VM (1M x 5 took ~2 min per configuration there)
        "prog_run": dict(sizes=(1, 10, 100, 1000, 10000, 100000), repeat=200_000, rounds=3),
        # 20 short rounds rather than 5 of 1 s (same time): other work on the shared CPU moves a
        # configuration's rate by +-25% from one sample to the next, and the median of 5 samples
        # flipped comparisons 10 ns apart (docs/fast-path-cost.md)
        "e2e": dict(rule_sizes=(1000, 10000), bl_sizes=(100000,), seconds=0.25, rounds=20),
        "control": dict(sizes=(1000, 10000, 100000), repeats=2),
        # six rounds: the per-operation medians (-A, -D) of the served change move by 10-20 ms at two
        "wrapper": dict(rules=10000, rounds=6),
        "parse": dict(n=100000, repeats=2),
    },
    "quick": {
        "prog_run": dict(sizes=(1, 100, 1000), repeat=100_000, rounds=3),
        "e2e": dict(rule_sizes=(100,), bl_sizes=(1000,), seconds=0.5, rounds=2),
        "control": dict(sizes=(100, 1000), repeats=1),
        "wrapper": dict(rules=100, rounds=1),
        "parse": dict(n=1000, repeats=1),
    },
    "smoke": {
        "prog_run": dict(sizes=(1, 10), shapes=("exact5",), repeat=10_000, rounds=1),
        "e2e": dict(rule_sizes=(10,), bl_sizes=(100,), seconds=0.2, rounds=1),
        "control": dict(sizes=(10,), repeats=1),
        "wrapper": dict(rules=10, rounds=1),
        "parse": dict(n=100, repeats=1),
    },
}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="smoke run of every benchmark, small sizes (~2 min)")
    g.add_argument("--smoke", action="store_true", help="smallest slice (under a minute)")
    p.add_argument("--only", default=",".join(SECTIONS))
    p.add_argument("--src", choices=("head", "tree"), default="head")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--no-results", action="store_true", help="do not rewrite bench/RESULTS.md and plots")
    p.add_argument("--render", action="store_true", help="only regenerate RESULTS.md and plots from the JSON")
    a = p.parse_args()
    out = Path(a.out)
    from bench import common

    if a.render:
        from bench import report
        report.write(out)
        return 0
    if os.geteuid() != 0:
        print("python -m bench: needs root (BPF, XDP, network namespaces)", file=sys.stderr)
        return 1
    if a.src == "head":
        print(f"measuring a snapshot of HEAD in {common.snapshot_head()}", flush=True)
    common.use_tree()
    profile = "smoke" if a.smoke else "quick" if a.quick else "full"
    params = PROFILES[profile]
    failed = []
    log = lambda m: print(m, flush=True)  # noqa: E731
    started_all = time.perf_counter()
    with common.bpf_stats_off() as stats_before:
        print(f"kernel.bpf_stats_enabled: was {stats_before}, 0 for the run", flush=True)
        for section in a.only.split(","):
            print(f"== {section} ({profile}): {params[section]}", flush=True)
            settled = common.settle(log)
            started = time.perf_counter()
            try:
                res = importlib.import_module(f"bench.{MODULES[section]}").run(log=log, **params[section])
            except Exception:  # noqa: BLE001 - one broken benchmark must not lose the others
                traceback.print_exc()
                failed.append(section)
                continue
            res.setdefault("meta", {})["profile"] = profile
            res["meta"]["settled_before"] = settled
            res["meta"]["params"] = {k: list(v) if isinstance(v, tuple) else v for k, v in params[section].items()}
            res["meta"]["command"] = " ".join(["python -m bench", *sys.argv[1:]])
            res["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
            res["meta"]["loadavg_after"] = os.getloadavg()
            res["meta"]["bpf_stats_enabled"] = {"before_run": stats_before, "during": common.read_bpf_stats()}
            print(f"   wrote {common.write_json(section, res, out)} ({res['meta']['elapsed_s']} s)", flush=True)
    print(f"kernel.bpf_stats_enabled restored to {common.read_bpf_stats()}", flush=True)
    print(f"all benchmarks: {time.perf_counter() - started_all:.0f} s", flush=True)
    if not a.no_results:
        from bench import report
        report.write(out)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
