#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Where the XDP program's time goes per packet: BPF_PROG_TEST_RUN of timing-only variants of
bpf/ipt2xdp.bpf.c that each skip one stage, on rulesets planned the way an import plans them.

    sudo .venv/bin/python bench/stage_cost.py [--objects a.bpf.o,b.bpf.o] [--forwarding 0|1]
                                              [--rules N] [--repeat R] [--rounds K] [--cpu C]

Without --objects it builds the variants from the work tree's bpf/ into a temporary directory:
  full          the program as it is
  parse_only    parsing, then XDP_PASS (no classification, no counters)
  stop_gen      + state and generation config
  stop_rows     + class rows of every field (conntrack lookup and checksum included)
  stop_cand     + candidate words
  stop_loop     + the matching loop (set probes included)
  no_count      full without the per-rule and per-reason counters
  no_fib        full without the route check before a DROP (delivered_locally answers yes)
  no_ct         full without the conntrack lookup (every packet NOT_LOOKED_UP)
  no_csum       full without the L4 checksum (every packet without an entry NONE)
  no_fast       full without the fast paths (every packet classified: the program before them),
                given the whole classifier (compile(reduce=False))
  unreduced     full, given the whole classifier beside the fast path (a miss classified against
                the list too: the fast path before fastpath.reduce_classifier)
The stop_*/no_* variants give wrong verdicts on purpose (no_fast excepted: it gives the same ones);
they exist only to be timed.

Rulesets (N blocklisted /32 sources, in a fresh namespace with a veth whose 10.9.0.1 is local):
  blocklist  N `-s A -j DROP`, policy ACCEPT: bl_drop (listed source), bl_pass (other source)
  stateful   `--ctstate ESTABLISHED,RELATED -j ACCEPT`, the N sources, tcp/22 ACCEPT, tcp/23 DROP:
             st_est (a TCP flow with a conntrack entry, inserted with `conntrack -I`), st_bl_drop
             (listed source, SYN), st_pass (no rule, SYN), st_rule_drop (SYN to 23)
  tuples     N `-s A -p udp --dport P -j DROP` (bench/e2e.py's shape): tu_drop (the last rule's
             tuple), tu_pass (its source, another port)
--forwarding 1 makes the route check do a real FIB lookup (with forwarding off the kernel answers
FWD_DISABLED first). The objects are timed interleaved, round by round; each figure is the minimum
over rounds (least disturbed by the other work on a shared machine) of ns per run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bpf_stats_off  # noqa: E402

DST = "10.9.0.1"
HEAD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"

# (function signature or statement the guard goes after, macro, statement the guard runs)
_SKIPS = [
    ("static __always_inline int delivered_locally", "SKIP_FIB", "return 1;"),
    ("__noinline int ct_class", "SKIP_CT", "return 0;"),
    ("static __noinline int l4_verified", "SKIP_CSUM", "return 0;"),
    ("static __always_inline void count_rule", "SKIP_COUNT", "return;"),
    ("static __always_inline void count_stat", "SKIP_COUNT", "return;"),
    ("static __always_inline __u32 classify", "SKIP_CLASSIFY", "return IPT2XDP_STAT_CLASSIFIED;"),
    ("static __always_inline struct ipt2xdp_fast_entry *src_fast_hit", "SKIP_FAST", "return NULL;"),
    ("static __always_inline struct ipt2xdp_fast_entry *tuple_fast_hit", "SKIP_FAST", "return NULL;"),
]
# (statement the guard goes before, macro, statement the guard runs): a fast-path hit counts in its
# entry, not through count_rule
_BEFORE = [
    ("\tif (fast) { /* this CPU's share of the entry", "SKIP_COUNT", "fast = NULL;"),
]
_STOPS = [
    ("\tif (load_generation(state->active, gen) < 0)\n\t\treturn IPT2XDP_STAT_DEFER_ALL;", "STOP_GEN"),
    ("\t\tm.members[g] = row;\n\t}", "STOP_ROWS"),
    ("\tcandidate_words(&m);", "STOP_CAND"),
    ("\tbpf_loop(IPT2XDP_MAX_STEPS, match_step, &m, 0);", "STOP_LOOP"),
]
VARIANTS = {
    "full": [], "parse_only": ["SKIP_CLASSIFY", "SKIP_COUNT"], "stop_gen": ["STOP_GEN", "SKIP_COUNT"],
    "stop_rows": ["STOP_ROWS", "SKIP_COUNT"], "stop_cand": ["STOP_CAND", "SKIP_COUNT"],
    "stop_loop": ["STOP_LOOP", "SKIP_COUNT"], "no_count": ["SKIP_COUNT"], "no_fib": ["SKIP_FIB"],
    "no_ct": ["SKIP_CT"], "no_csum": ["SKIP_CSUM"], "no_fast": ["SKIP_FAST"], "unreduced": [],
}
WHOLE_CLASSIFIER = ("no_fast", "unreduced")  # objects given compile(reduce=False)


def build_variants(src: Path, out: Path) -> list:
    """Timing-only copies of ipt2xdp.bpf.c with a guard per stage; returns the object paths."""
    text = (src / "ipt2xdp.bpf.c").read_text()
    for anchor, macro, body in _SKIPS:
        if anchor not in text:
            raise SystemExit(f"stage_cost: {anchor!r} not found in bpf/ipt2xdp.bpf.c; update _SKIPS")
        at = text.index("{", text.index(anchor)) + 1
        text = text[:at] + f"\n#ifdef {macro}\n{body}\n#endif\n" + text[at:]
    for anchor, macro, body in _BEFORE:
        if text.count(anchor) != 1:
            raise SystemExit(f"stage_cost: {anchor!r} not found once in bpf/ipt2xdp.bpf.c; update _BEFORE")
        at = text.index(anchor)
        text = text[:at] + f"#ifdef {macro}\n{body}\n#endif\n" + text[at:]
    for anchor, macro in _STOPS:
        if text.count(anchor) != 1:
            raise SystemExit(f"stage_cost: {anchor!r} not found once in bpf/ipt2xdp.bpf.c; update _STOPS")
        at = text.index(anchor) + len(anchor)
        text = text[:at] + f"\n#ifdef {macro}\nreturn IPT2XDP_STAT_CLASSIFIED;\n#endif\n" + text[at:]
    for header in src.glob("*.h"):
        shutil.copy(header, out)
    (out / "variant.bpf.c").write_text(text)
    multiarch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    paths = []
    for name, macros in VARIANTS.items():
        path = out / f"{name}.bpf.o"
        subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I", str(out), f"-I/usr/include/{multiarch}",
                        *[f"-D{m}" for m in macros], "-c", str(out / "variant.bpf.c"), "-o", str(path)], check=True)
        paths.append(path)
    return paths


def _ip(value: int) -> str:
    return ".".join(str(value >> s & 255) for s in (24, 16, 8, 0))


def rulesets(n: int):
    from scapy.all import IP, TCP, UDP, Ether, raw

    listed = [_ip(0x0A400000 + i) for i in range(n)]
    drops = "".join(f"-A INPUT -s {a}/32 -j DROP\n" for a in listed)
    stateful = (HEAD + "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n" + drops
                + "-A INPUT -p tcp --dport 22 -j ACCEPT\n-A INPUT -p tcp --dport 23 -j DROP\nCOMMIT\n")

    # bench/e2e.py's shape: exact source, protocol and port (the exact-tuple fast path's)
    tuples = "".join(f"-A INPUT -s {a}/32 -p udp -m udp --dport {1000 + i % 50000} -j DROP\n"
                     for i, a in enumerate(listed))

    def udp(src, dport):
        return raw(Ether() / IP(src=src, dst=DST) / UDP(sport=40000, dport=dport))

    def syn(src, sport=40000, dport=80):
        return raw(Ether() / IP(src=src, dst=DST) / TCP(sport=sport, dport=dport, flags="S"))
    return {
        "blocklist": (HEAD + drops + "COMMIT\n", {"bl_drop": syn(listed[-1]), "bl_pass": syn("198.18.0.9")}),
        "stateful": (stateful, {"st_est": syn("198.18.0.2", 40000, 22), "st_bl_drop": syn(listed[-1]),
                                "st_pass": syn("198.18.0.9", 40001, 80), "st_rule_drop": syn("198.18.0.9", 40001, 23)}),
        "tuples": (HEAD + tuples + "COMMIT\n", {"tu_drop": udp(listed[-1], 1000 + (n - 1) % 50000),
                                                "tu_pass": udp(listed[-1], 999)}),
    }


def _fast_path_off(tables):
    """The generation with no prefix length to probe: the program skips the fast path at its first
    test, as the program before it had none."""
    import dataclasses

    from ipt2xdp import abi

    cfg = abi.GenConfig.from_buffer_copy(tables.maps["cfg"].values)
    for i in range(abi.SRC_FAST_PLENS):
        cfg.src_fast_plens[i] = 0
    for i in range(abi.TUPLE_FAST_SHAPES):
        cfg.tuple_fast_fields[i] = 0
    maps = dict(tables.maps, cfg=dataclasses.replace(tables.maps["cfg"], values=bytes(cfg)))
    return dataclasses.replace(tables, maps=maps)


def measure(objects, n: int, forwarding: int, repeat: int, rounds: int, cpu: int) -> dict:
    from ipt2xdp import libbpf, netns
    from ipt2xdp.compile import compile as compile_tables
    from ipt2xdp.dataplane import Dataplane
    from ipt2xdp.hostinfo import read_host_context
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan

    ns = netns.create_namespace("stage")
    results = {}
    try:
        for argv in (["ip", "link", "set", "lo", "up"], ["ip", "link", "add", "stg0", "type", "veth", "peer", "name", "stg1"],
                     ["ip", "link", "set", "stg0", "up"], ["ip", "link", "set", "stg1", "up"],
                     ["ip", "addr", "add", DST + "/24", "dev", "stg0"], ["sysctl", "-qw", f"net.ipv4.ip_forward={forwarding}"],
                     ["conntrack", "-I", "-p", "tcp", "-s", "198.18.0.2", "-d", DST, "--sport", "40000", "--dport", "22",
                      "--state", "ESTABLISHED", "-u", "SEEN_REPLY", "-t", "3000"]):
            ns.run(argv)
        with ns.entered():
            ifindex = socket.if_nametoindex("stg0")
            host = read_host_context(attached=["stg0"])
            os.sched_setaffinity(0, {cpu})
            dps = {}
            try:
                for path in objects:
                    dps[Path(path).name.replace(".bpf.o", "")] = Dataplane.load(str(path))
                with bpf_stats_off():
                    for name, (text, packets) in rulesets(n).items():
                        result = plan(parse(text, name), host)
                        tables = compile_tables(result.rules, result.default, overflow="defer")
                        whole = compile_tables(result.rules, result.default, overflow="defer", reduce=False)
                        for oname, dp in dps.items():
                            dp.apply_generation(_fast_path_off(whole) if oname == "no_fast" else
                                                whole if oname in WHOLE_CLASSIFIER else tables)
                        runs = {}
                        for _ in range(rounds):
                            for pname, packet in packets.items():
                                for oname, dp in dps.items():
                                    verdict, ns_per_run, _ = libbpf.test_run(dp.prog_fd, packet, repeat, ifindex)
                                    runs.setdefault(pname, {}).setdefault(oname, []).append((ns_per_run, verdict))
                        for pname, per_object in runs.items():
                            results[pname] = {o: (min(r[0] for r in rs), {1: "DROP", 2: "PASS"}.get(rs[0][1], rs[0][1]))
                                              for o, rs in per_object.items()}
            finally:
                for dp in dps.values():
                    dp.close()
    finally:
        netns.delete_namespace(ns.name)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--objects", help="comma-separated BPF objects to compare (default: build the stage variants)")
    p.add_argument("--forwarding", type=int, choices=(0, 1), default=1)
    p.add_argument("--rules", type=int, default=10000)
    p.add_argument("--repeat", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--cpu", type=int, default=1)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ipt2xdp-stage-") as tmp:
        objects = a.objects.split(",") if a.objects else build_variants(ROOT / "bpf", Path(tmp))
        results = measure(objects, a.rules, a.forwarding, a.repeat, a.rounds, a.cpu)
    names = [Path(o).name.replace(".bpf.o", "") for o in objects]
    print(f"{'ns/packet (min)':16}" + "".join(f"{n:>13}" for n in names))
    for pname, per_object in results.items():
        print(f"{pname:16}" + "".join(f"{per_object[n][0]:>8} {per_object[n][1]:>4}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
