#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Program cost of a fast-path hit beside xdp-filter's, BPF_PROG_TEST_RUN, same packet, same process.

    sudo .venv/bin/python bench/fastpath_vs_xdpfilter.py [--objects a.bpf.o,...] [--rounds K] [--repeat R]

bench/e2e.py's shapes at 10,000 rules, the UDP packet it sends (SRC -> 10.9.0.1:9), forwarding off
as in the e2e receiver: `bl10k` is the blocklist (10,000 `-s A/32 -j DROP`, SRC last: src_fast),
`tuple10k` the deciding-rule-last ruleset (10,000 `-s A/32 -p udp --dport P -j DROP`: tuple_fast).
xdp-filter (ipv4 feature, 10,000 sources, SRC among them) runs as libxdp loads it, dispatcher
included, as in e2e. Objects and xdp-filter are timed interleaved, round by round; min and median
over rounds of the kernel's ns per run. xdp-filter is the anchor: objects built against another ABI
cannot share a process, so compare two trees by running this file from each tree (copied into an
older tree's bench/), alternately, each against its own xdp-filter.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bpf_stats_off  # noqa: E402
from bench.e2e import DPORT, SRC, blocklist_addrs, blocklist_ruleset, rules_ruleset  # noqa: E402

DST = "10.9.0.1"
XDP_FILTER_MAP = "/sys/fs/bpf/xdp-filter/filter_ipv4"


def _load_xdp_filter(ns, ifname: str, addrs) -> int:
    """xdp-filter on ifname with addrs blocked; returns the fd of the program attached (the dispatcher)."""
    ns.run(["xdp-filter", "load", ifname, "-m", "skb", "-f", "ipv4"])
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write("".join(f"map update pinned {XDP_FILTER_MAP} key {' '.join(a.split('.'))} value 1 0 0 0 0 0 0 0\n"
                        for a in addrs))
    try:
        subprocess.run(["bpftool", "batch", "file", f.name], check=True, capture_output=True)
    finally:
        os.unlink(f.name)
    link = ns.run(["ip", "-d", "link", "show", ifname]).stdout
    prog_id = int(link.split("prog/xdp id ")[1].split()[0])
    from ipt2xdp import libbpf

    l = libbpf.lib()
    l.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
    return libbpf.check(l.bpf_prog_get_fd_by_id(prog_id), "opening xdp-filter's program")


def measure(objects, rounds: int, repeat: int, cpu: int) -> dict:
    from scapy.all import IP, UDP, Ether, raw

    from ipt2xdp import libbpf, netns
    from ipt2xdp.compile import compile as compile_tables
    from ipt2xdp.dataplane import Dataplane
    from ipt2xdp.hostinfo import read_host_context
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan

    packet = raw(Ether() / IP(src=SRC, dst=DST) / UDP(sport=40000, dport=DPORT) / (b"\0" * 18))
    ns = netns.create_namespace("fpxf")
    results: dict = {}
    try:
        for argv in (["ip", "link", "set", "lo", "up"], ["ip", "link", "add", "fp0", "type", "veth", "peer", "name", "fp1"],
                     ["ip", "link", "set", "fp0", "up"], ["ip", "link", "set", "fp1", "up"],
                     ["ip", "addr", "add", DST + "/24", "dev", "fp0"], ["sysctl", "-qw", "net.ipv4.ip_forward=0"]):
            ns.run(argv)
        fds = {"xdp-filter": _load_xdp_filter(ns, "fp1", blocklist_addrs(10000))}
        with ns.entered():
            ifindex = socket.if_nametoindex("fp0")
            host = read_host_context(attached=["fp0"])
            dps = []
            try:
                for path in objects:
                    dps.append(Dataplane.load(str(path)))
                    fds[Path(path).name.replace(".bpf.o", "")] = dps[-1].prog_fd
                os.sched_setaffinity(0, {cpu})
                for label, text in (("bl10k", blocklist_ruleset(10000)), ("tuple10k", rules_ruleset(10000))):
                    result = plan(parse(text, label), host)
                    tables = compile_tables(result.rules, result.default, overflow="defer")
                    for dp in dps:
                        dp.apply_generation(tables)
                    runs: dict = {name: [] for name in fds}
                    with bpf_stats_off():
                        for _ in range(rounds):
                            for name, fd in fds.items():
                                verdict, ns_per_run, _ = libbpf.test_run(fd, packet, repeat, ifindex)
                                runs[name].append((ns_per_run, verdict))
                    results[label] = {name: (min(t for t, _ in r), statistics.median(t for t, _ in r),
                                             {1: "DROP", 2: "PASS"}.get(r[0][1], r[0][1])) for name, r in runs.items()}
            finally:
                for dp in dps:
                    dp.close()
                os.close(fds["xdp-filter"])
    finally:
        ns.run(["xdp-filter", "unload", "--all"], check=False)
        netns.delete_namespace(ns.name)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--objects", default=str(ROOT / "bpf" / "ipt2xdp.bpf.o"), help="comma-separated BPF objects")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--repeat", type=int, default=20_000)
    p.add_argument("--cpu", type=int, default=1)
    a = p.parse_args()
    results = measure(a.objects.split(","), a.rounds, a.repeat, a.cpu)
    print(f"{'ns/packet':10} {'program':16} {'min':>5} {'median':>7}  verdict")
    for label, per in results.items():
        for name, (low, mid, verdict) in per.items():
            print(f"{label:10} {name:16} {low:5} {mid:7.1f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
