#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""In-kernel cost of the ipt2xdp program per packet (BPF_PROG_TEST_RUN, large repeat count), at
1, 1k, 10k and 100k rules, for a packet matching the first, middle, last or no rule, for two rule
shapes, beside bpf/empty_drop.bpf.o measured in the same run.

    sudo .venv/bin/python bench/prog_run.py [--repeat N] [--rounds R] [--sizes 1,1000,...]

Shapes:
  exact5  exact 5-tuples (src/32, dst/32, proto, sport, dport) -> DROP; runs merge into one
          hash-set slot, so n rules cost one hash probe.
  mixed   rule i cycles through four shapes that never form a mergeable run: a /24 source prefix
          with a tcp port range; a source address range (not a prefix) with udp/53; a /28 source
          with any protocol and port; any source to a /32 destination with a tcp port range.
          Every rule owns its address block, so the probe for rule i matches rule i first.
          Beyond the classifier's slot capacity (abi.MAX_SLOTS) the rest is compiled with
          overflow="defer" and reported as such.
kernel.bpf_stats_enabled is set to 0 while timing (it adds 20-45 ns per run) and restored after;
the process is pinned to one CPU (BPF_PROG_TEST_RUN runs on the caller's CPU), --cpu.
Writes bench/out/prog_run-<time>.json. Each figure is the median of --rounds runs of --repeat.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bpf_stats_off, stamp, use_tree  # noqa: E402

use_tree()

from scapy.all import IP, TCP, UDP, Ether, raw  # noqa: E402

from ipt2xdp import libbpf  # noqa: E402
from ipt2xdp.classifier import ACCEPT, DROP, ClassifierRule, IntervalSet, Match  # noqa: E402
from ipt2xdp.compile import compile  # noqa: E402
from ipt2xdp.dataplane import Dataplane  # noqa: E402
from ipt2xdp.resources import bpf_object_path  # noqa: E402

TCP_, UDP_ = frozenset({6}), frozenset({17})


def _ip(value: int) -> str:
    return ".".join(str(value >> s & 255) for s in (24, 16, 8, 0))


# --- rule shapes and their probes ----------------------------------------------------------------
def exact5_rule(i: int) -> ClassifierRule:
    return ClassifierRule(Match(src=IntervalSet.single(0x0A000000 + i), dst=IntervalSet.single(0xC0000201),
                                proto=TCP_, sport=IntervalSet.single(40000 + i % 20000),
                                dport=IntervalSet.single(443)), DROP, i)


def exact5_probe(i: int) -> bytes:
    return raw(Ether() / IP(src=_ip(0x0A000000 + i), dst="192.0.2.1") / TCP(sport=40000 + i % 20000, dport=443))


def mixed_rule(i: int) -> ClassifierRule:
    block = 0x0B000000 + i * 256
    kind = i % 4
    if kind == 0:
        m = Match(src=IntervalSet.range(block, block + 255), proto=TCP_, dport=IntervalSet.range(1000, 2000))
    elif kind == 1:
        m = Match(src=IntervalSet.range(block + 10, block + 200), proto=UDP_, dport=IntervalSet.single(53))
    elif kind == 2:
        m = Match(src=IntervalSet.range(block + 16, block + 31))
    else:
        m = Match(dst=IntervalSet.single(0xAC100000 + i), proto=TCP_,
                  dport=IntervalSet.range(20000 + i % 40000, 20010 + i % 40000))
    return ClassifierRule(m, DROP, i)


def mixed_probe(i: int) -> bytes:
    block = 0x0B000000 + i * 256
    kind = i % 4
    if kind == 0:
        return raw(Ether() / IP(src=_ip(block + 1), dst="192.0.2.1") / TCP(dport=1500))
    if kind == 1:
        return raw(Ether() / IP(src=_ip(block + 50), dst="192.0.2.1") / UDP(dport=53))
    if kind == 2:
        return raw(Ether() / IP(src=_ip(block + 20), dst="192.0.2.1") / TCP(dport=9))
    return raw(Ether() / IP(src="198.18.0.1", dst=_ip(0xAC100000 + i)) / TCP(dport=20005 + i % 40000))


NO_MATCH = raw(Ether() / IP(src="203.0.113.9", dst="192.0.2.99") / TCP(sport=1, dport=7))
SHAPES = {"exact5": (exact5_rule, exact5_probe), "mixed": (mixed_rule, mixed_probe)}


# --- measurement ---------------------------------------------------------------------------------
def measure(prog_fd: int, packet: bytes, repeat: int, rounds: int):
    runs = []
    verdict = None
    for _ in range(rounds):
        verdict, ns, _ = libbpf.test_run(prog_fd, packet, repeat)
        runs.append(ns)
    return statistics.median(runs), verdict


def run(sizes=(1, 1000, 10000, 100000), shapes=("exact5", "mixed"), repeat=1_000_000, rounds=7, cpu=1,
        log=print) -> dict:
    os.sched_setaffinity(0, {cpu})
    results = {"meta": {
        **stamp(), "repeat": repeat, "rounds": rounds, "bpf_stats_enabled_during_timing": 0, "pinned_cpu": cpu,
        "method": "BPF_PROG_TEST_RUN, same packet repeated, median of rounds; ns/packet as reported "
                  "by the kernel (duration field)"},
        "empty_drop": [], "runs": []}
    empty = libbpf.BpfObject(str(bpf_object_path("empty_drop.bpf.o")))
    empty.load()
    empty_fd = empty.program_fd("xdp_drop_all")
    dp = Dataplane.load()
    try:
        with bpf_stats_off():
            for shape in shapes:
                make_rule, make_probe = SHAPES[shape]
                for n in sizes:
                    started = time.monotonic()
                    rules = [make_rule(i) for i in range(n)]
                    tables = compile(rules, ACCEPT, overflow="defer")
                    compile_s = time.monotonic() - started
                    started = time.monotonic()
                    dp.apply_generation(tables)
                    apply_s = time.monotonic() - started
                    probes = {"first": make_probe(0), "middle": make_probe(n // 2), "last": make_probe(n - 1),
                              "none": NO_MATCH}
                    row = {"shape": shape, "rules": n, "slots": tables.slot_count, "sets": tables.set_count,
                           "rules_beyond_capacity": tables.overflowed_rules, "compile_s": round(compile_s, 2),
                           "apply_s": round(apply_s, 2), "ns": {}, "verdict": {}}
                    for where, packet in probes.items():
                        ns, verdict = measure(dp.prog_fd, packet, repeat, rounds)
                        row["ns"][where] = ns
                        row["verdict"][where] = {1: "DROP", 2: "PASS"}.get(verdict, verdict)
                    # the empty program in the same run, next to each configuration
                    e_ns, _ = measure(empty_fd, NO_MATCH, repeat, rounds)
                    results["empty_drop"].append(e_ns)
                    row["empty_drop_ns"] = e_ns
                    results["runs"].append(row)
                    note = f" ({tables.overflowed_rules} beyond capacity -> DEFER)" if tables.overflowed_rules else ""
                    log(f"  {shape:7} {n:>6} rules {tables.slot_count:>6} slots: "
                        + "  ".join(f"{w} {row['ns'][w]:>4} ns {row['verdict'][w]}" for w in probes)
                        + f"  | empty {e_ns} ns | compile {compile_s:.1f}s apply {apply_s:.1f}s{note}")
    finally:
        dp.close()
        empty.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--sizes", default="1,1000,10000,100000")
    parser.add_argument("--shapes", default="exact5,mixed")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args()
    results = run([int(s) for s in args.sizes.split(",")], args.shapes.split(","), args.repeat, args.rounds,
                  args.cpu, log=lambda m: print(m, flush=True))
    from bench.common import write_json
    print(f"wrote {write_json('prog_run', results, Path(args.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
