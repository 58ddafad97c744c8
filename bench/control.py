# SPDX-License-Identifier: GPL-2.0-only
"""Control plane: time to import N rules (parse, plan, compile, load separately through the Python
API, then the whole `ipt2xdp import` CLI), and the memory of the BPF maps at each size.

    sudo .venv/bin/python -m bench.control [--sizes 1000,10000,100000] [--repeats 3]

Ruleset: bench/e2e.py's rules_ruleset(N): N-1 `-s A/32 -p udp -m udp --dport P -j DROP` rules and
the deciding rule last. Each repeat runs in a fresh veth namespace pair (nothing loaded before):
  API: a worker process (`python -m bench.control --worker`) inside the receiver namespace times
       parse() -> plan() -> compile() -> loader.apply() (native XDP on the veth), with
       time.perf_counter() around each step; the first step excludes the interpreter start and
       imports (the grammar load is timed separately as "grammar").
  CLI: wall time of `python -m ipt2xdp import FILE --iface IF --mode native --backend legacy` in
       another fresh namespace: process start, restore into iptables-legacy, save, re-parse, plan,
       compile, load, attach.
Map memory: bytes_memlock (bpftool) of every map the attached program uses or ipt2xdp pinned beside
it (counter_rules, the metadata), plus the inner maps of the map-in-map slots, summed. Figures are medians over repeats. The one-rule change through the
CLI at 10k rules is bench/wrapper_bench.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import PY, median, stamp, use_tree, write_json  # noqa: E402

use_tree()


def _bpftool(*argv):
    return json.loads(subprocess.run(["bpftool", *argv, "-j"], capture_output=True, text=True, check=True).stdout)


def map_memory(prog_id: int, also=()) -> dict:
    """also: ids of maps the program does not use (userspace's: counter_rules, the metadata)."""
    ids = list(_bpftool("prog", "show", "id", str(prog_id)).get("map_ids", [])) + list(also)
    seen, total, count = set(), 0, 0
    while ids:
        mid = ids.pop()
        if mid in seen:
            continue
        seen.add(mid)
        info = _bpftool("map", "show", "id", str(mid))
        total += info.get("bytes_memlock", 0)
        count += 1
        if info.get("type") in ("array_of_maps", "hash_of_maps"):
            for entry in _bpftool("map", "dump", "id", str(mid)):
                value = entry.get("formatted", {}).get("value", entry.get("value"))
                if isinstance(value, int):
                    ids.append(value)
                elif isinstance(value, list) and value:
                    ids.append(int.from_bytes(bytes(int(b, 16) for b in value[:4]), "little"))
    return {"bytes_memlock": total, "maps": count}


def worker(path: str, iface: str) -> dict:
    """Runs inside the receiver namespace: the import through the Python API, step by step."""
    t = {}
    start = time.perf_counter()
    from ipt2xdp import gcpause, loader
    from ipt2xdp.compile import compile as compile_tables
    from ipt2xdp.hostinfo import read_host_context
    from ipt2xdp.parse import lark_parser, parse
    from ipt2xdp.plan import plan
    t["imports"] = time.perf_counter() - start
    start = time.perf_counter()
    lark_parser()
    t["grammar"] = time.perf_counter() - start
    text = Path(path).read_text()
    with gcpause.paused():  # as `ipt2xdp import` runs the pipeline
        start = time.perf_counter()
        ruleset = parse(text, path)
        t["parse"] = time.perf_counter() - start
        start = time.perf_counter()
        host = read_host_context(attached=[iface])
        result = plan(ruleset, host)
        t["plan"] = time.perf_counter() - start
        start = time.perf_counter()
        tables = compile_tables(result.rules, result.default, overflow="defer")
        t["compile"] = time.perf_counter() - start
        start = time.perf_counter()
        applied = loader.apply(tables, [iface], mode="native")
        t["load"] = time.perf_counter() - start
    t["total"] = t["parse"] + t["plan"] + t["compile"] + t["load"]
    from ipt2xdp import libbpf, pins
    from ipt2xdp.dataplane import Dataplane
    dp = Dataplane.open_pinned(pins.pin_dir())
    try:  # every pinned map: those only userspace reads are not among the program's
        prog_id = dp.prog_id
        pinned = [libbpf.map_info(fd).id for fd in [*dp.map_fds.values(), dp.meta_fd]]
    finally:
        dp.close()
    mem = map_memory(prog_id, pinned)
    loader.detach(all_devices=True)
    return {"seconds": t, "generation": applied.generation, "slots": tables.slot_count,
            "beyond_capacity": tables.overflowed_rules, **mem}


def run(sizes=(1000, 10000, 100000), repeats=3, log=print) -> dict:
    from bench.e2e import rules_ruleset
    from ipt2xdp import netns

    res = {"meta": {**stamp(), "method": {
        "ruleset": "N-1 `-A INPUT -s A/32 -p udp -m udp --dport P -j DROP` + deciding rule last",
        "api": "worker process in a fresh namespace: perf_counter around parse, plan (incl. host "
               "context), compile, loader.apply (load + native attach), with the cyclic GC paused "
               "as the CLI pauses it; imports and grammar excluded",
        "cli": "wall time of `python -m ipt2xdp import FILE --iface IF --mode native --backend legacy` "
               "in a fresh namespace (process start and iptables-legacy restore included; the package "
               "byte-compiled first, as installed)",
        "memory": "sum of bpftool bytes_memlock over the program's and the pinned maps and their inner maps",
        "repeats": repeats, "statistic": "median"}}, "sizes": {}}
    # An installed package comes byte-compiled; a checkout run with PYTHONDONTWRITEBYTECODE=1 would
    # otherwise compile every module on each CLI start (0.3-0.5 s on the test machine).
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "ipt2xdp")], check=True, capture_output=True)
    for n in sizes:
        with tempfile.NamedTemporaryFile("w", suffix=".rules", delete=False) as f:
            f.write(rules_ruleset(n))
        api, cli = [], []
        try:
            for _ in range(repeats):
                with netns.veth_pair() as pair:
                    r = pair.receiver.run([PY, "-m", "bench.control", "--worker", f.name, "--iface", pair.receiver_if])
                    api.append(json.loads(r.stdout.strip().splitlines()[-1]))
                with netns.veth_pair() as pair:
                    start = time.perf_counter()
                    r = pair.receiver.run([PY, "-m", "ipt2xdp", "import", f.name, "--iface", pair.receiver_if,
                                           "--mode", "native", "--backend", "legacy"], check=False)
                    cli.append(time.perf_counter() - start)
                    if r.returncode:
                        raise RuntimeError(f"ipt2xdp import {n} rules: {r.stderr.strip()}")
                    pair.receiver.run([PY, "-m", "ipt2xdp", "detach", "--all"], check=False)
        finally:
            os.unlink(f.name)
        steps = {k: median([a["seconds"][k] for a in api]) for k in api[0]["seconds"]}
        res["sizes"][str(n)] = {"rules": n, "api_s": steps, "cli_s": median(cli), "cli_samples": cli,
                                "api_samples": [a["seconds"] for a in api],
                                "map_bytes_memlock": median([a["bytes_memlock"] for a in api]),
                                "maps": api[0]["maps"], "slots": api[0]["slots"],
                                "beyond_capacity": api[0]["beyond_capacity"]}
        log(f"  control {n:>6} rules: parse {steps['parse']:.2f} plan {steps['plan']:.2f} compile "
            f"{steps['compile']:.2f} load {steps['load']:.2f} = {steps['total']:.2f} s; CLI {median(cli):.2f} s; "
            f"maps {res['sizes'][str(n)]['map_bytes_memlock'] / 1e6:.1f} MB")
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker")
    p.add_argument("--iface")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.iface)))
        return 0
    res = run([int(x) for x in a.sizes.split(",")], a.repeats)
    print(f"wrote {write_json('control', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
