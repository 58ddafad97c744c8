# SPDX-License-Identifier: GPL-2.0-only
"""End to end: 64-byte UDP from a generator namespace to a receiver namespace over veth, one CPU.

Every configuration gets its own veth pair (generator namespace + receiver namespace), all set up
before timing, so the rounds interleave the configurations (round r measures each one in turn)
and all see the same traffic: one 64-byte UDP frame from SRC to the receiver, port 9, sent by
bench/pktgen.py (AF_PACKET + sendmmsg) pinned with `taskset -c CPU`. veth hands each frame to the
receiver in the sender's context, so the receiver's softirq (XDP, IP, netfilter) runs on the same
CPU: the receive rate is bounded by generator + receiver cost per packet.

Configurations (N = rule counts, B = blocklist sizes):
  none             no filter: UDP to a closed port (dropped by the stack, UdpNoPorts)
  empty_drop       bpf/empty_drop.bpf.o attached (native): the floor, generator + veth + XDP_DROP
  legacy-N, nft-N  iptables-legacy / iptables-nft: N-1 non-matching `-s A/32 -p udp --dport P -j DROP`
                   rules, then the deciding rule last: `-s SRC/32 -p udp --dport 9 -j DROP`
  ipt2xdp-N        `ipt2xdp import` of the same ruleset, native XDP on the receiver veth
  ipset-B          ipset hash:ip of B addresses (SRC last) + iptables-legacy `-m set --match-set` DROP
  nftset-B         nft table, ipv4_addr set of B addresses, `ip saddr @bl drop` in an input hook
  ipt2xdp-bl-B     `ipt2xdp import` of B rules `-s A/32 -j DROP` (SRC last), native
  xdpfilter-bl-B   xdp-filter (ipv4 feature, default policy allow: listed sources dropped) with B source addresses, native; its map
                   holds at most 10,000 addresses, so it runs at min(B, 10000) beside ipt2xdp-bl there
Per round and configuration: the receiver veth's rx packets (/proc/net/dev in the receiver
namespace) and where they were dropped (filter counters, or rx minus IpInReceives for XDP) over
the generator's sending time. Figures are medians over rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import PY, bpf_stats_off, median, stamp, use_tree, write_json  # noqa: E402

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
def _ipt2xdp_import(pair, text: str, backend: str = "legacy") -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".rules", delete=False) as f:
        f.write(text)
    try:
        r = pair.receiver.run([PY, "-m", "ipt2xdp", "import", f.name, "--iface", pair.receiver_if,
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
    if kind == "ipt2xdp":
        _ipt2xdp_import(pair, rules_ruleset(size))
        return "xdp"
    if kind == "ipt2xdp-bl":
        _ipt2xdp_import(pair, blocklist_ruleset(size))
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
        rcv.run(["xdp-filter", "load", pair.receiver_if, "-m", "native", "-f", "ipv4"])  # policy allow: listed sources dropped
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
        pair.receiver.run([PY, "-m", "ipt2xdp", "detach", "--all"], check=False)


# --- counters --------------------------------------------------------------------------------
def read_counters(pair, counter: str) -> dict:
    out = pair.receiver.run(["cat", "/proc/net/dev", "/proc/net/snmp"]).stdout
    rx = None
    for line in out.splitlines():
        if line.strip().startswith(pair.receiver_if + ":"):
            rx = int(line.split(":", 1)[1].split()[1])  # packets (column 0 is bytes)
    ip_lines = [line.split() for line in out.splitlines() if line.startswith("Ip:")]
    ip = dict(zip(ip_lines[0][1:], map(int, ip_lines[1][1:])))
    udp_lines = [line.split() for line in out.splitlines() if line.startswith("Udp:")]
    udp = dict(zip(udp_lines[0][1:], map(int, udp_lines[1][1:])))
    c = {"rx": rx, "ip_in": ip["InReceives"], "udp_noports": udp["NoPorts"]}
    if counter.startswith("iptables-"):
        text = pair.receiver.run([counter, "-w", "-t", "filter", "-nvxL", "INPUT"]).stdout
        c["filter"] = sum(int(line.split()[0]) for line in text.splitlines()[2:] if line.strip())
    elif counter == "nft":
        text = pair.receiver.run(["nft", "list", "table", "ip", "bench"]).stdout
        c["filter"] = sum(int(m) for m in re.findall(r"counter packets (\d+)", text))
    return c


def dropped(counter: str, before: dict, after: dict) -> int:
    if counter == "xdp":  # dropped before the IP layer
        return (after["rx"] - before["rx"]) - (after["ip_in"] - before["ip_in"])
    if counter == "stack":
        return after["udp_noports"] - before["udp_noports"]
    return after["filter"] - before["filter"]


def receiver_mac(pair) -> str:
    return json.loads(pair.receiver.run(["ip", "-j", "link", "show", pair.receiver_if]).stdout)[0]["address"]


def generate(pair, mac: str, seconds: float, cpu: int) -> dict:
    r = pair.sender.run(["taskset", "-c", str(cpu), PY, "-m", "bench.pktgen", "--iface", pair.sender_if,
                         "--dst-mac", mac, "--src", SRC, "--dst", pair.receiver_ip, "--dport", str(DPORT),
                         "--seconds", str(seconds)])
    return json.loads(r.stdout.strip().splitlines()[-1])


def configurations(rule_sizes, bl_sizes):
    configs = [("none", 0), ("empty_drop", 0)]
    for n in rule_sizes:
        configs += [("legacy", n), ("nft", n), ("ipt2xdp", n)]
    for b in bl_sizes:
        configs += [("ipset", b), ("nftset", b), ("ipt2xdp-bl", b)]
    xf = min(max(bl_sizes), 10000)
    configs.append(("xdpfilter-bl", xf))
    if ("ipt2xdp-bl", xf) not in configs:
        configs.append(("ipt2xdp-bl", xf))
    return configs


def label(kind: str, size: int) -> str:
    return kind if not size else f"{kind}-{size}"


def run(rule_sizes=(1000, 10000), bl_sizes=(100000,), seconds=2.0, rounds=5, cpu=1, log=print) -> dict:
    configs = configurations(rule_sizes, bl_sizes)
    pairs, counters, setup_s = {}, {}, {}
    results = {"meta": {**stamp(), "method": {
        "generator": "bench/pktgen.py: AF_PACKET SOCK_RAW + sendmmsg (ctypes), 256 frames per call, one "
                     "60-byte frame (64 on the wire) IPv4/UDP " + SRC + " -> receiver:9",
        "cpu_pinning": f"generator `taskset -c {cpu}`; the receiver's softirq runs in the sender's "
                       "context on the same CPU",
        "seconds_per_sample": seconds, "rounds": rounds, "interleaved": True,
        "statistic": "median over rounds of receiver rx packets / generator sending time",
        "ns_per_packet": "1e9 / received pps (one CPU busy for generator + receiver)",
        "bpf_stats_enabled_during_timing": 0}},
        "rule_sizes": list(rule_sizes), "bl_sizes": list(bl_sizes), "configs": {}}
    try:
        for kind, size in configs:
            name = label(kind, size)
            pair = netns.veth_pair()
            pairs[name] = pair
            started = time.perf_counter()
            counters[name] = setup(kind, size, pair)
            setup_s[name] = time.perf_counter() - started
            log(f"  e2e setup {name}: {setup_s[name]:.1f} s")
        macs = {name: receiver_mac(pair) for name, pair in pairs.items()}
        samples = {name: [] for name in pairs}
        with bpf_stats_off():
            for r in range(rounds):
                for kind, size in configs:
                    name = label(kind, size)
                    pair = pairs[name]
                    before = read_counters(pair, counters[name])
                    gen = generate(pair, macs[name], seconds, cpu)
                    after = read_counters(pair, counters[name])
                    rx = after["rx"] - before["rx"]
                    samples[name].append({"sent": gen["sent"], "seconds": gen["seconds"], "rx": rx,
                                          "dropped": dropped(counters[name], before, after)})
                log(f"  e2e round {r + 1}/{rounds}: " + ", ".join(
                    f"{n} {s[-1]['rx'] / s[-1]['seconds'] / 1e3:.0f}k" for n, s in samples.items()))
        for kind, size in configs:
            name = label(kind, size)
            s = samples[name]
            rx_pps = median([x["rx"] / x["seconds"] for x in s])
            results["configs"][name] = {
                "kind": kind, "size": size, "counted_at": counters[name], "setup_s": round(setup_s[name], 2),
                "rx_pps": rx_pps, "sent_pps": median([x["sent"] / x["seconds"] for x in s]),
                "dropped_pps": median([x["dropped"] / x["seconds"] for x in s]),
                "dropped_fraction": median([x["dropped"] / x["rx"] if x["rx"] else 0 for x in s]),
                "ns_per_packet": 1e9 / rx_pps if rx_pps else None, "samples": s}
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
    p.add_argument("--rules", default="1000,10000")
    p.add_argument("--blocklist", default="100000")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpu", type=int, default=1)
    a = p.parse_args()
    if os.environ.get("IPT2XDP_BENCH_TREE") is None:
        print("note: measuring the work tree; `python -m bench` measures a HEAD snapshot by default")
    res = run([int(x) for x in a.rules.split(",")], [int(x) for x in a.blocklist.split(",")],
              a.seconds, a.rounds, a.cpu)
    for name, c in res["configs"].items():
        print(f"{name:22} rx {c['rx_pps'] / 1e3:8.0f} kpps  {c['ns_per_packet']:8.0f} ns/pkt  "
              f"dropped {c['dropped_fraction'] * 100:5.1f}% at {c['counted_at']}")
    print(f"wrote {write_json('e2e', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
