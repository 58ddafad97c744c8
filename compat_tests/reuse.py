# SPDX-License-Identifier: GPL-2.0-only
"""Receivers with ipt2xdp attached, kept from one ruleset to the next.

Why: a fresh `ipt2xdp import` in a new namespace spends about 1.4 s in the BPF verifier; a re-import
onto a program that is already attached only swaps a generation of maps (what every rule change does
in production). Hundreds of rulesets per backend fit in CI only this way.

What is kept: the namespaces, the veth, the attached program and its pinned state. What is reset
before each ruleset, so nothing carries over that netfilter alone (always a fresh testbed) would not
have: every table of both backends (emptied first, so xt_recent lists and limit buckets die with the
rules that own them), ipsets, conntrack entries and expectations, and the extra local addresses.
A leftover that did survive could only make the two sides disagree, never agree by accident.
"""
from __future__ import annotations

import atexit
from typing import Dict, Sequence, Tuple

from compat_tests import harness

_BEDS: Dict[Tuple[str, str, bool, str], "ReusedBed"] = {}
# Empty builtin chains per legacy table, restored to drop every rule of the previous ruleset.
_EMPTY = {"filter": "INPUT FORWARD OUTPUT", "nat": "PREROUTING INPUT OUTPUT POSTROUTING",
          "mangle": "PREROUTING INPUT FORWARD OUTPUT POSTROUTING", "raw": "PREROUTING OUTPUT",
          "security": "INPUT FORWARD OUTPUT"}


class ReusedBed(harness.Testbed):
    """A Testbed that outlives one ruleset; `reset` makes it look fresh to netfilter."""

    def __init__(self, receiver_if: str, forwarding: bool):
        super().__init__((), receiver_if=receiver_if, forwarding=forwarding)
        self.local_addrs: Sequence[str] = ()
        self.imports = 0
        self._next_ip_id = 0

    def ip_id_offset(self, ruleset: str, corpus: harness.Corpus) -> int:
        """A fresh range of IP ids for every run: fragment queues (and late ICMP time-exceeded
        replies) of earlier runs live 30 s, keyed by addresses and IP id, and would otherwise meet
        this run's fragments. 65,536 ids last for 200+ runs of 200 probes, well over 30 s. A ruleset
        that reads packet bytes with -m u32 could see the id, so it keeps the ids netfilter alone saw."""
        if "u32" in ruleset:
            return 0
        span = max((p.id for p in corpus.probes), default=0) + 1
        offset = self._next_ip_id
        self._next_ip_id = (offset + span) & 0xFFFF
        return offset

    def reset(self, local_addrs: Sequence[str], sysctls: Sequence[Tuple[str, str]] = ()) -> None:
        legacy_tables = self.receiver.run(["cat", "/proc/net/ip_tables_names"], check=False).stdout.split()
        empty = "".join(f"*{t}\n" + "".join(f":{c} ACCEPT [0:0]\n" for c in _EMPTY[t].split()) + "COMMIT\n"
                        for t in legacy_tables if t in _EMPTY)
        if empty:
            self.receiver.run(["iptables-legacy-restore", "-w"], input=empty)
        self.receiver.sh("\n".join([
            "nft flush ruleset",
            "ipset destroy 2>/dev/null || true",
            "conntrack -F 2>/dev/null || true",
            "conntrack -F expect 2>/dev/null || true",
            *[f"ip addr del {a}/32 dev lo" for a in self.local_addrs],
            *[f"ip addr replace {a}/32 dev lo" for a in local_addrs],
            # before the import, which reads them (nf_conntrack_tcp_loose)
            *[f"sysctl -qw {k}={v}" for k, v in sysctls]]))
        self.local_addrs = tuple(local_addrs)


def bed(backend: str, mode: str, forwarding: bool, receiver_if: str) -> ReusedBed:
    key = (backend, mode, forwarding, receiver_if)
    if key not in _BEDS:
        _BEDS[key] = ReusedBed(receiver_if, forwarding)
    return _BEDS[key]


def close_all() -> None:
    """Delete every kept namespace (netns.delete_namespace also unpins its XDP state)."""
    while _BEDS:
        _, kept = _BEDS.popitem()
        kept.close()


atexit.register(close_all)
