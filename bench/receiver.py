# SPDX-License-Identifier: GPL-2.0-only
"""The receiver's side of bench/e2e.py's veth pairs: how a receiver namespace is prepared and what
it counts. Everything is read inside the receiver namespace, from the receiver's own counters:
rx packets of its veth (/proc/net/dev), the veth's XDP drop counter (ethtool statistics,
rx_queue_N_xdp_drops), netfilter rule counters, UdpNoPorts (/proc/net/snmp); and the CPU time of
ksoftirqd on the generator's CPU, where the kernel defers receive work it could not finish inline."""
from __future__ import annotations

import json
import os
import re

def receiver_ethtool(pair, call):
    """call(IoctlEthtool of the receiver veth), made inside the receiver namespace."""
    from pyroute2.ethtool.ioctl import IoctlEthtool
    with pair.receiver.entered():  # the ioctl names a device of the current namespace
        dev = IoctlEthtool(pair.receiver_if)
        try:
            return call(dev)
        finally:
            dev.close()


def prepare_receiver(pair, src: str) -> None:
    """GRO on (NAPI on the veth ring, which frames from the peer's XDP need), a route and a
    permanent neighbour entry for src (replies such as ICMP port unreachable need no ARP)."""
    def gro_on(dev):
        features = dev.get_features()
        features["rx-gro"] = True
        dev.set_features(features)
        return dev.get_features()["rx-gro"]

    if not receiver_ethtool(pair, gro_on):
        raise RuntimeError(f"could not turn GRO on for {pair.receiver_if}")
    sender_mac = link_mac(pair.sender, pair.sender_if)
    pair.receiver.run(["ip", "route", "add", f"{src}/32", "dev", pair.receiver_if])
    pair.receiver.run(["ip", "neigh", "replace", src, "lladdr", sender_mac, "dev", pair.receiver_if,
                       "nud", "permanent"])


def link_mac(ns, ifname: str) -> str:
    return json.loads(ns.run(["ip", "-j", "link", "show", ifname]).stdout)[0]["address"]


def xdp_drops(pair) -> int:
    """The receiver veth's own XDP drop counter (ethtool -S rx_queue_N_xdp_drops)."""
    stats = receiver_ethtool(pair, lambda dev: dev.get_statistics())
    return sum(v for k, v in stats if k.startswith("rx_queue_") and k.endswith("_xdp_drops"))


def read_counters(pair, counter: str) -> dict:
    out = pair.receiver.run(["cat", "/proc/net/dev", "/proc/net/snmp"]).stdout
    rx = None
    for line in out.splitlines():
        if line.strip().startswith(pair.receiver_if + ":"):
            rx = int(line.split(":", 1)[1].split()[1])  # packets (column 0 is bytes)
    udp_lines = [line.split() for line in out.splitlines() if line.startswith("Udp:")]
    udp = dict(zip(udp_lines[0][1:], map(int, udp_lines[1][1:])))
    c = {"rx": rx, "udp_noports": udp["NoPorts"]}
    if counter == "xdp":
        c["filter"] = xdp_drops(pair)
    elif counter.startswith("iptables-"):
        text = pair.receiver.run([counter, "-w", "-t", "filter", "-nvxL", "INPUT"]).stdout
        c["filter"] = sum(int(line.split()[0]) for line in text.splitlines()[2:] if line.strip())
    elif counter == "nft":
        text = pair.receiver.run(["nft", "list", "table", "ip", "bench"]).stdout
        c["filter"] = sum(int(m) for m in re.findall(r"counter packets (\d+)", text))
    return c


def dropped(counter: str, before: dict, after: dict) -> int:
    key = "udp_noports" if counter == "stack" else "filter"
    return after[key] - before[key]


def ksoftirqd_ns(cpu: int) -> int:
    """CPU time of ksoftirqd/cpu so far (softirq work the kernel deferred from the generator's context)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() != f"ksoftirqd/{cpu}":
                        continue
                with open(f"/proc/{pid}/schedstat") as f:
                    return int(f.read().split()[0])
            except OSError:
                continue
    raise RuntimeError(f"no ksoftirqd/{cpu}")
