# SPDX-License-Identifier: GPL-2.0-only
"""tc's ingress hook: filters and BPF programs that see a packet after XDP and before netfilter.

A packet XDP passes meets, before any netfilter hook, the tc ingress hook of the device it arrived
on and of every device it is handed to (a bridge or bond master, a vlan upper: the same devices
whose nftables ingress chains see it, nftchains.passed_devices). What runs there can redirect the
packet to another device (Cilium's and Calico's eBPF data paths send node-port and pod traffic
straight to a pod this way), rewrite its addresses, or drop it, so filter/INPUT may never see the
packet, or see another one. An XDP drop taken from filter/INPUT would then drop what the host
delivers: a tc hook holding anything at all makes XDP defer every packet arriving on the attached
device that passes it (code foreign.tc). What the filters do is not read: a BPF program cannot be
judged, and a filter that only passes packets is rare enough not to be worth modelling.

Read for each device: the filters of its ingress or clsact qdisc (rtnetlink, rtnl.py; this covers
cls_bpf programs too) and the programs on its tcx ingress hook (BPF_PROG_QUERY, Linux >= 6.6).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Set, Tuple


@dataclass(frozen=True)
class TcIngress:
    """A device's non-empty tc ingress hook, and the attached device whose packets pass it."""

    attached: str   # the device XDP is attached to ("" when nothing is: every device counts)
    device: str     # the device the hook belongs to: the attached one, or a master or upper device
    holds: str      # "tc filters u32, bpf", "1 tcx program"...

    def describe(self) -> str:
        where = f"{self.device}'s tc ingress hook"
        if self.attached and self.attached != self.device:
            where += f" (which packets arriving on {self.attached} pass)"
        return f"{self.holds} on {where}"


def hook_contents(ifindex: int, qdiscs: Optional[Set[int]] = None) -> str:
    """What a device's tc ingress hook holds, in words ("" when nothing). qdiscs: the devices with
    an ingress or clsact qdisc (rtnl.ingress_qdisc_devices), when known: no filter dump for others."""
    from ipt2xdp import libbpf, rtnl

    kinds = rtnl.ingress_filter_kinds(ifindex) if qdiscs is None or ifindex in qdiscs else ()
    programs = libbpf.tcx_ingress_count(ifindex)
    held = []
    if kinds:
        held.append(f"tc filters {', '.join(kinds)}")
    if programs:
        held.append(f"{programs} tcx program{'s' if programs > 1 else ''}")
    return " and ".join(held)


def read(devices: Sequence, attached: Iterable[str]) -> Tuple[TcIngress, ...]:
    """The non-empty tc ingress hooks packets arriving on the attached devices pass (every device's
    when nothing is attached). devices: hostinfo.Device records of this namespace."""
    from ipt2xdp.nftchains import passed_devices

    by_name = {d.name: d for d in devices}
    attached = list(attached)
    contents: Dict[str, str] = {}

    def held(name: str) -> str:
        if name not in contents:
            device = by_name.get(name)
            contents[name] = hook_contents(device.ifindex) if device is not None else ""
        return contents[name]

    if not attached:
        return tuple(TcIngress("", name, held(name)) for name in sorted(by_name) if held(name))
    found = []
    for name in sorted(attached):
        passed = passed_devices(devices, [name]) or {name}
        found += [TcIngress(name, other, held(other)) for other in sorted(passed) if held(other)]
    return tuple(found)
