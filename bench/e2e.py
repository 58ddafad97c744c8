# SPDX-License-Identifier: GPL-2.0-only
"""End to end: 64-byte UDP from a generator namespace to a receiver namespace over veth, one CPU.

Every configuration gets its own veth pair (generator namespace + receiver namespace), all set up
before timing, so the rounds interleave the configurations (round r measures each one in turn)
and all see the same traffic: one 64-byte UDP frame from SRC to the receiver's address, port 9,
checksums valid, the receiver's MAC as destination; the receiver has a route and a permanent
neighbour entry for SRC (its ICMP replies need no ARP) and GRO on (veth then polls its ring with
NAPI, which XDP frames from the peer need; the same for every configuration).

Generator: bench/livegen.py, BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES of an XDP_TX program
on the generator's veth, pinned to CPU `cpu`. Frames land in the receiver veth's ring and the
receiver's softirq (XDP, IP, netfilter) runs when each batch of 64 is flushed, on the same CPU.
A probe of 4,096 frames must all arrive before timing; if it fails (kernel < 5.18, ...) the run
falls back to bench/pktgen.py (AF_PACKET + sendmmsg, pinned with taskset) and records why.

Configurations (N = rule counts, B = blocklist sizes):
  none             no filter: UDP to a closed port (dropped by the stack, UdpNoPorts)
  empty_drop       bpf/empty_drop.bpf.o attached (native): the floor, generator + veth + XDP_DROP
  legacy-N, nft-N  iptables-legacy / iptables-nft: N-1 non-matching `-s A/32 -p udp --dport P -j DROP`
                   rules, then the deciding rule last: `-s SRC/32 -p udp --dport 9 -j DROP`
  ipt2xdp-N        `ipt2xdp import` of the same ruleset, native XDP on the receiver veth
  ipset-B          ipset hash:ip of B addresses (SRC last) + iptables-legacy `-m set --match-set` DROP
  nftset-B         nft table, ipv4_addr set of B addresses, `ip saddr @bl drop` in an input hook
  ipt2xdp-bl-B     `ipt2xdp import` of B rules `-s A/32 -j DROP` (SRC last), native
  xdpfilter-bl-B   xdp-filter (ipv4 feature, default policy allow: listed sources dropped) with B
                   source addresses, native; its map holds at most 10,000 addresses, so it runs at
                   min(B, 10000) beside ipt2xdp-bl there
  ipt2xdp-base-N, ipt2xdp-bl-base-B
                   with --baseline DIR only: the same imports by another ipt2xdp tree (DIR holds its
                   ipt2xdp/, grammar/ and built bpf/, e.g. `git archive` of an older commit), for a
                   before/after comparison in one run
Counted in the receiver namespace, per round and configuration: frames that arrived (rx packets of
the receiver veth, /proc/net/dev) and where they were dropped (the veth's XDP drop counter for XDP
filters, the rule counters for netfilter, UdpNoPorts for no filter). The rate is arrived frames
over the CPU time spent: with the live generator the kernel's own timing of the runs plus the
CPU's ksoftirqd runtime over the sample (receiver work deferred there); with AF_PACKET, and as a
cross-check for both, wall time. Figures are medians over rounds.
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

from bench.common import PY, bpf_stats_off, median, stamp, use_tree, write_json  # noqa: E402
from bench.receiver import dropped, ksoftirqd_ns, link_mac, prepare_receiver, read_counters  # noqa: E402

use_tree()
from ipt2xdp import netns  # noqa: E402
from ipt2xdp.resources import bpf_object_path  # noqa: E402

SRC = "198.18.0.1"
DPORT = 9


def _addr(i: int) -> str:  # 100.64.0.0/10 ordinal i (never SRC)
    v = 0x64400000 + i
    return ".".join(str(v >> s & 255) for s in (24, 16, 8, 0))


def rules_ruleset(n: int) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    for i in range(n - 1):
        lines.append(f"-A INPUT -s {_addr(i)}/32 -p udp -m udp --dport {1000 + i % 50000} -j DROP")
    lines.append(f"-A INPUT -s {SRC}/32 -p udp -m udp --dport {DPORT} -j DROP")
    return "\n".join(lines + ["COMMIT", ""])


def blocklist_ruleset(b: int) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f"-A INPUT -s {_addr(i)}/32 -j DROP" for i in range(b - 1)]
    lines.append(f"-A INPUT -s {SRC}/32 -j DROP")
    return "\n".join(lines + ["COMMIT", ""])


def blocklist_addrs(b: int):
    return [_addr(i) for i in range(b - 1)] + [SRC]


# --- per-configuration setup: returns the name of the drop counter reader ----------------------
BASELINE = {"tree": None}  # run(baseline=...): the other ipt2xdp tree of the *-base configurations


def _ipt2xdp(kind: str) -> list:
    """argv prefix running the ipt2xdp CLI a configuration measures (the baseline tree's for *-base)."""
    if kind.endswith("-base"):
        return ["env", f"PYTHONPATH={BASELINE['tree']}", PY, "-m", "ipt2xdp"]
    return [PY, "-m", "ipt2xdp"]


def _ipt2xdp_import(pair, text: str, backend: str = "legacy", kind: str = "ipt2xdp") -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".rules", delete=False) as f:
        f.write(text)
    try:
        r = pair.receiver.run([*_ipt2xdp(kind), "import", f.name, "--iface", pair.receiver_if,
                               "--mode", "native", "--backend", backend], check=False)
        if r.returncode:
            raise RuntimeError(f"ipt2xdp import failed: {r.stderr.strip()}")
    finally:
        os.unlink(f.name)


def setup(kind: str, size: int, pair) -> str:
    rcv = pair.receiver
    if kind == "none":
        return "stack"
    if kind == "empty_drop":
        rcv.run(["ip", "link", "set", "dev", pair.receiver_if, "xdpdrv", "obj",
                 str(bpf_object_path("empty_drop.bpf.o")), "sec", "xdp"])
        return "xdp"
    if kind in ("legacy", "nft"):
        rcv.run([f"iptables-{kind}-restore"], input=rules_ruleset(size))
        return f"iptables-{kind}"
    if kind in ("ipt2xdp", "ipt2xdp-base"):
        _ipt2xdp_import(pair, rules_ruleset(size), kind=kind)
        return "xdp"
    if kind in ("ipt2xdp-bl", "ipt2xdp-bl-base"):
        _ipt2xdp_import(pair, blocklist_ruleset(size), kind=kind)
        return "xdp"
    if kind == "ipset":
        name = "bench_bl"
        text = f"create {name} hash:ip family inet hashsize 65536 maxelem {max(size, 65536)}\n" + "".join(
            f"add {name} {a}\n" for a in blocklist_addrs(size))
        rcv.run(["ipset", "restore"], input=text)
        rcv.run(["iptables-legacy", "-A", "INPUT", "-m", "set", "--match-set", name, "src", "-j", "DROP"])
        return "iptables-legacy"
    if kind == "nftset":
        elems = ", ".join(blocklist_addrs(size))
        text = ("table ip bench {\n set bl { type ipv4_addr; size %d; elements = { %s } }\n"
                " chain input { type filter hook input priority 0; policy accept;\n"
                "  ip saddr @bl counter drop\n }\n}\n") % (max(size, 65536), elems)
        rcv.run(["nft", "-f", "-"], input=text)
        return "nft"
    if kind == "xdpfilter-bl":
        # default policy allow: the listed sources are dropped
        rcv.run(["xdp-filter", "load", pair.receiver_if, "-m", "native", "-f", "ipv4"])
        batch = "".join("map update pinned /sys/fs/bpf/xdp-filter/filter_ipv4 key %s value 1 0 0 0 0 0 0 0\n"
                        % " ".join(a.split(".")) for a in blocklist_addrs(size))
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write(batch)
        try:
            subprocess.run(["bpftool", "batch", "file", f.name], check=True, capture_output=True)
        finally:
            os.unlink(f.name)
        return "xdp"
    raise ValueError(kind)


def teardown(kind: str, pair) -> None:
    if kind == "xdpfilter-bl":
        pair.receiver.run(["xdp-filter", "unload", pair.receiver_if], check=False)
    if kind.startswith("ipt2xdp"):
        pair.receiver.run([*_ipt2xdp(kind), "detach", "--all"], check=False)


# --- the generator -----------------------------------------------------------------------------------
def generate(pair, mac: str, cpu: int, generator: str, seconds: float = 0, frames: int = 0) -> dict:
    args = ["--iface", pair.sender_if, "--dst-mac", mac, "--src", SRC, "--dst", pair.receiver_ip,
            "--dport", str(DPORT)]
    if generator == "live":
        argv = [PY, "-m", "bench.livegen", *args, "--cpu", str(cpu)]
        argv += ["--frames", str(frames)] if frames else ["--seconds", str(seconds)]
    else:
        argv = ["taskset", "-c", str(cpu), PY, "-m", "bench.pktgen", *args, "--seconds", str(seconds)]
    soft_before = ksoftirqd_ns(cpu)
    r = pair.sender.run(argv)
    gen = json.loads(r.stdout.strip().splitlines()[-1])
    gen["ksoftirqd_seconds"] = (ksoftirqd_ns(cpu) - soft_before) / 1e9
    if "busy_seconds" in gen:
        gen["busy_seconds"] += gen["ksoftirqd_seconds"]
    return gen


PROBE_FRAMES = 4096


def choose_generator(pair, counter: str, cpu: int) -> tuple:
    """("live", None) if PROBE_FRAMES live frames all reach the receiver, else ("af_packet", why)."""
    mac = link_mac(pair.receiver, pair.receiver_if)
    try:
        before = read_counters(pair, counter)
        gen = generate(pair, mac, cpu, "live", frames=PROBE_FRAMES)
        after = read_counters(pair, counter)
    except (RuntimeError, ValueError) as error:
        return "af_packet", f"live-frames generator failed: {str(error)[-300:]}"
    arrived, handled = after["rx"] - before["rx"], dropped(counter, before, after)
    if gen["sent"] != PROBE_FRAMES or arrived < PROBE_FRAMES or handled < PROBE_FRAMES:
        return "af_packet", (f"live-frames probe: sent {gen['sent']}, receiver saw {arrived} and "
                             f"counted {handled} of {PROBE_FRAMES}")
    return "live", None


GENERATORS = {
    "live": "bench/livegen.py: BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES of a 2-instruction XDP_TX "
            "program on the generator's veth, batch_size 64, one 60-byte frame (64 on the wire) IPv4/UDP "
            + SRC + " -> receiver:9, checksums valid",
    "af_packet": "bench/pktgen.py: AF_PACKET SOCK_RAW + sendmmsg (ctypes), 256 frames per call, one 60-byte "
                 "frame (64 on the wire) IPv4/UDP " + SRC + " -> receiver:9, checksums valid",
}


def configurations(rule_sizes, bl_sizes, baseline: bool = False):
    configs = [("none", 0), ("empty_drop", 0)]
    for n in rule_sizes:
        configs += [("legacy", n), ("nft", n), ("ipt2xdp", n)] + [("ipt2xdp-base", n)] * baseline
    for b in bl_sizes:
        configs += [("ipset", b), ("nftset", b), ("ipt2xdp-bl", b)] + [("ipt2xdp-bl-base", b)] * baseline
    xf = min(max(bl_sizes), 10000)
    configs.append(("xdpfilter-bl", xf))
    if ("ipt2xdp-bl", xf) not in configs:
        configs += [("ipt2xdp-bl", xf)] + [("ipt2xdp-bl-base", xf)] * baseline
    return configs


def label(kind: str, size: int) -> str:
    return kind if not size else f"{kind}-{size}"


def summarize(kind: str, size: int, counter: str, setup_s: float, s: list) -> dict:
    wall_pps = median([x["rx"] / x["seconds"] for x in s])
    busy = [x["rx"] / x["busy_seconds"] for x in s if x.get("busy_seconds")]
    rx_pps = median(busy) if busy else wall_pps
    return {"kind": kind, "size": size, "counted_at": counter, "setup_s": round(setup_s, 2),
            "rx_pps": rx_pps, "wall_rx_pps": wall_pps, "sent_pps": median([x["sent"] / x["seconds"] for x in s]),
            "arrived_fraction": median([x["rx"] / x["sent"] if x["sent"] else 0 for x in s]),
            "dropped_fraction": median([x["dropped"] / x["rx"] if x["rx"] else 0 for x in s]),
            "ns_per_packet": 1e9 / rx_pps if rx_pps else None, "samples": s}


def run(rule_sizes=(1000, 10000), bl_sizes=(100000,), seconds=2.0, rounds=5, cpu=1, generator="auto",
        log=print, baseline=None) -> dict:
    BASELINE["tree"] = baseline
    configs = configurations(rule_sizes, bl_sizes, baseline is not None)
    pairs, counters, setup_s = {}, {}, {}
    results = {"meta": stamp(), "rule_sizes": list(rule_sizes), "bl_sizes": list(bl_sizes), "configs": {}}
    if baseline:
        results["meta"]["baseline_tree"] = baseline
    try:
        for kind, size in configs:
            name = label(kind, size)
            pair = netns.veth_pair()
            pairs[name] = pair
            started = time.perf_counter()
            prepare_receiver(pair, SRC)
            counters[name] = setup(kind, size, pair)
            setup_s[name] = time.perf_counter() - started
            log(f"  e2e setup {name}: {setup_s[name]:.1f} s")
        macs = {name: link_mac(pair.receiver, pair.receiver_if) for name, pair in pairs.items()}
        fallback_reason = "requested with --generator af_packet" if generator == "af_packet" else None
        if generator == "auto":
            generator, fallback_reason = choose_generator(pairs["none"], counters["none"], cpu)
        log(f"  e2e generator: {generator}" + (f" ({fallback_reason})" if fallback_reason else ""))
        results["meta"]["method"] = {
            "generator": GENERATORS[generator], "generator_kind": generator, "fallback_reason": fallback_reason,
            "cpu_pinning": f"generator pinned to CPU {cpu}; the receiver's softirq runs in the generator's "
                           "context (or that CPU's ksoftirqd) on the same CPU",
            "seconds_per_sample": seconds, "rounds": rounds, "interleaved": True,
            "statistic": ("median over rounds of arrived frames / (kernel-timed run time + ksoftirqd time)"
                          if generator == "live" else "median over rounds of arrived frames / sending time"),
            "ns_per_packet": "1e9 / rx pps: one CPU busy for generator + receiver",
            "bpf_stats_enabled_during_timing": 0}
        samples = {name: [] for name in pairs}
        with bpf_stats_off():
            for r in range(rounds):
                for kind, size in configs:
                    name = label(kind, size)
                    pair = pairs[name]
                    before = read_counters(pair, counters[name])
                    gen = generate(pair, macs[name], cpu, generator, seconds=seconds)
                    after = read_counters(pair, counters[name])
                    samples[name].append({**gen, "rx": after["rx"] - before["rx"],
                                          "dropped": dropped(counters[name], before, after),
                                          "loadavg": os.getloadavg()[0]})
                log(f"  e2e round {r + 1}/{rounds}: " + ", ".join(
                    f"{n} {s[-1]['rx'] / s[-1].get('busy_seconds', s[-1]['seconds']) / 1e3:.0f}k"
                    for n, s in samples.items()))
        for kind, size in configs:
            name = label(kind, size)
            results["configs"][name] = summarize(kind, size, counters[name], setup_s[name], samples[name])
    finally:
        for name, pair in pairs.items():
            kind = name.rsplit("-", 1)[0] if name[-1].isdigit() else name
            try:
                teardown(kind, pair)
            finally:
                pair.close()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rules", default="1000,10000", help="rule counts; empty: blocklist shapes only")
    p.add_argument("--blocklist", default="100000")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpu", type=int, default=1)
    p.add_argument("--generator", choices=("auto", "live", "af_packet"), default="auto")
    p.add_argument("--baseline", help="another ipt2xdp tree (ipt2xdp/, grammar/, built bpf/) measured beside "
                                      "this one: configurations ipt2xdp-base-N and ipt2xdp-bl-base-B")
    a = p.parse_args()
    if os.environ.get("IPT2XDP_BENCH_TREE") is None:
        print("note: measuring the work tree; `python -m bench` measures a HEAD snapshot by default")
    res = run([int(x) for x in a.rules.split(",") if x], [int(x) for x in a.blocklist.split(",") if x],
              a.seconds, a.rounds, a.cpu, a.generator, baseline=a.baseline)
    for name, c in res["configs"].items():
        print(f"{name:22} rx {c['rx_pps'] / 1e3:8.0f} kpps  {c['ns_per_packet']:8.0f} ns/pkt  "
              f"dropped {c['dropped_fraction'] * 100:5.1f}% at {c['counted_at']}")
    print(f"wrote {write_json('e2e', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
