# SPDX-License-Identifier: GPL-2.0-only
"""Netfilter hooks the planned iptables ruleset does not show, that see a packet before filter/INPUT
(and tc's ingress hook, which runs between XDP and netfilter: tcingress.py).

The planner reads one backend's iptables-save text. Two other sources of hooks can act on a packet
before that backend's filter/INPUT drops it, and so can be skipped by an XDP drop:

1. The other iptables backend's tables (iptables-legacy tables on a host planned from iptables-nft,
   iptables-nft's tables on a host planned from legacy: Docker on one, the admin on the other).
   Their raw/mangle/nat PREROUTING and mangle INPUT chains run before filter/INPUT; their
   filter/INPUT runs at the same priority (0) as the planned one, in an order the planner cannot
   know. They are read as iptables-save text and guarded like the planned backend's earlier
   chains (guards.guard_chain: XDP defers every packet a rule there may touch); their filter/INPUT
   policy is left alone: a packet XDP drops is dropped by the planned filter/INPUT anyway.
2. Native nftables base chains (firewalld's `inet firewalld`, a hand-written /etc/nftables.conf,
   kube-proxy's nftables mode, netdev ingress chains). Read with `nft -j list` (nftlist.py: the
   tables iptables-nft-save shows left out, see below; read_netfilter) and judged by
   nftchains.py: a chain on a hook before filter/INPUT is *neutral* (only matches, and the
   verdicts accept, drop, continue and return) or has *effects*, and XDP defers the IPv4 packets
   an effect may act on, code foreign.nft.
   Caveat of `drop` being neutral: a packet a native chain drops first still counts in XDP's
   counters of the filter/INPUT rule that would have dropped it.

Which nf_tables tables are iptables-nft's: iptables-nft-save reads the family ip tables named
filter, mangle, raw, nat and security and prints a table it cannot translate as a comment
("Table `filter' is incompatible, use 'nft' tool.") instead of rules (nft 1.0.6 marks nothing
reliably: its "managed by iptables-nft" warning only appears for tables holding xt expressions).
So a table with such a name is iptables-nft's when iptables-nft-save shows it; otherwise it is
native, and its chains are judged as native chains (plan time: `native_chains`).
"""
from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from ipt2xdp.nftchains import XTABLES_TABLES, NativeChain, classify, passed_devices
from ipt2xdp.tcingress import TcIngress

# The tables of the other backend the planner guards: they hold every chain that runs before (or,
# for filter/INPUT, beside) the planned filter/INPUT.
OTHER_TABLES = ("raw", "mangle", "nat", "filter")


@dataclass(frozen=True)
class Foreign:
    """What the planner must know about hooks outside the planned ruleset (part of HostContext)."""

    planned: str                          # the backend the plan reads: "legacy" or "nft"
    native: Tuple[NativeChain, ...] = ()  # incl. chains of ip tables named like iptables-nft's
    other_text: str = ""                  # the other backend's raw/mangle/nat/filter tables, canonical text
    other_tables: Tuple[str, ...] = ()    # the tables other_text holds
    unreadable: Tuple[str, ...] = ()      # what could not be read: XDP defers everything
    nat_hooks: Tuple[str, ...] = ()       # native nftables chains of type nat (any hook): NATed flows
    tc_ingress: Tuple[TcIngress, ...] = ()  # non-empty tc ingress hooks packets pass (tcingress.py)

    @property
    def other(self) -> str:
        return "legacy" if self.planned == "nft" else "nft"


# ------------------------------------------------------------------------------ plan-time questions

def native_chains(foreign: Foreign, planned_tables: Iterable[str], other_tables: Iterable[str] = ()
                  ) -> List[NativeChain]:
    """The chains to judge as native: all but those of the tables iptables-nft-save shows (the
    planned ruleset's when planning from nft, the other backend's text when planning from legacy)."""
    seen_by_iptables = set(planned_tables) if foreign.planned == "nft" else set(other_tables)
    return [c for c in foreign.native if not (c.xtables_named and c.table in seen_by_iptables)]


# ------------------------------------------------------------------------------ reading the host

def read_nft_json(skip_ip: Optional[Iterable[str]] = None) -> Tuple[Optional[dict], Optional[str], str]:
    """(document, error, raw text) of `nft -j list ruleset` in this network namespace; with skip_ip,
    of the tables that may hold native hooks only (nftlist.list_relevant: not the family ip tables
    named there, which iptables-nft-save shows)."""
    from ipt2xdp import nftlist

    return nftlist.list_ruleset() if skip_ip is None else nftlist.list_relevant(skip_ip)


def _canonical_other(text: str, path: str) -> Tuple[str, Tuple[str, ...]]:
    from ipt2xdp import ir
    from ipt2xdp.parse import parse
    from ipt2xdp.render import render

    ruleset = parse(text, path)
    kept = tuple(t for t in ruleset.tables if t.name in OTHER_TABLES)
    return render(ir.Ruleset(kept).without_positions()), tuple(t.name for t in kept)


def _read_other(planned: str, document: Optional[dict]) -> Tuple[str, Tuple[str, ...]]:
    from ipt2xdp import live

    if planned == "nft":
        tables = [t for t in live.legacy_tables() if t in OTHER_TABLES]
        if not tables:
            return "", ()
        text = "".join(live._save_text(["iptables-legacy-save", "-t", t]) for t in tables)
        return _canonical_other(text, "<iptables-legacy-save>")
    names = {i["table"]["name"] for i in (document or {}).get("nftables", [])
             if "table" in i and i["table"].get("family") == "ip"} & set(OTHER_TABLES)
    if not names:
        return "", ()
    # Tables iptables-nft-save cannot translate come out as comments (stripped): their chains
    # stay in `native` and are judged there.
    return _canonical_other(live._save_text(["iptables-nft-save"]), "<iptables-nft-save>")


_DEVICE = re.compile(r'hook ingress (?:device "?([^";\s]+)"?|devices = \{([^}]*)\})')


def fill_ingress_devices(document: dict, list_chain) -> None:
    """nft 1.0.6's JSON leaves out the device of an ingress chain; read it from the chain's text
    (list_chain(family, table, name) -> `nft list chain` output). Unreadable: left out (any device)."""
    for item in document.get("nftables", []):
        chain = item.get("chain")
        if not chain or chain.get("hook") != "ingress" or "dev" in chain:
            continue
        found = _DEVICE.search(list_chain(chain.get("family"), chain.get("table"), chain.get("name")) or "")
        if found:
            names = found.group(1) or found.group(2)
            chain["dev"] = [n.strip().strip('"') for n in names.split(",") if n.strip()]


def _list_chain(family: str, table: str, name: str) -> str:
    try:
        out = subprocess.run(["nft", "list", "chain", family, table, name], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def read_foreign(planned: str, devices: Sequence = (), attached: Iterable[str] = (), nft=None,
                 planned_tables: Optional[Iterable[str]] = None) -> Foreign:
    """Read both sources in the current network namespace (nft: read_nft_json()'s result if already
    read; planned_tables: see read_netfilter). Never raises: what cannot be read is recorded in
    `unreadable`, which makes the planner defer everything."""
    if nft is None:
        return read_netfilter(planned, devices, attached, planned_tables)[1]
    document, error, _ = nft
    other, other_error = None, None
    if document is not None or planned == "nft":
        other, other_error = _other_or_error(planned, document)
    return _foreign(planned, devices, attached, nft, other, [other_error] if other_error else [])


def read_netfilter(planned: str, devices: Sequence = (), attached: Iterable[str] = (),
                   planned_tables: Optional[Iterable[str]] = None,
                   other: Optional[Tuple[str, Tuple[str, ...]]] = None) -> Tuple[tuple, Foreign]:
    """(the nft listing read, Foreign) with only the nf_tables tables that can hold native chains
    listed: not those iptables-nft-save shows, whose chains native_chains() leaves out anyway
    (planned "nft": planned_tables, the planned ruleset's tables, None = list every table;
    planned "legacy": the other backend's tables, read first). other: the other backend's
    (text, tables) when known to be unchanged (planned "nft" and no legacy change since)."""
    from ipt2xdp import nftlist

    errors: List[str] = []
    if planned == "nft":
        nft = read_nft_json(None if planned_tables is None else set(planned_tables) & set(XTABLES_TABLES))
        if other is None:
            other, error = _other_or_error(planned, nft[0])
            errors += [error] if error else []
        return nft, _foreign(planned, devices, attached, nft, other, errors)
    try:
        names = nftlist.tables() if nftlist.nft_binary() else None
    except OSError:
        names = None
    if names is None:  # the whole listing, the other backend's tables found in it
        nft = read_nft_json()
        return nft, read_foreign(planned, devices, attached, nft)
    if {n for f, n in names if f == "ip"} & set(OTHER_TABLES):
        try:
            from ipt2xdp import live

            other = _canonical_other(live._save_text(["iptables-nft-save"]), "<iptables-nft-save>")
        except Exception as error:  # noqa: BLE001 - any failure means: not known, defer
            other, errors = None, [_other_unreadable(planned, error)]
    else:
        other = ("", ())
    nft = nftlist.list_relevant(other[1] if other else (), names)
    return nft, _foreign(planned, devices, attached, nft, other, errors)


def _other_or_error(planned: str, document) -> Tuple[Optional[Tuple[str, Tuple[str, ...]]], Optional[str]]:
    try:
        return _read_other(planned, document), None
    except Exception as error:  # noqa: BLE001 - any failure means: not known, defer
        return None, _other_unreadable(planned, error)


def _other_unreadable(planned: str, error) -> str:
    return f"the iptables-{'legacy' if planned == 'nft' else 'nft'} tables could not be read: {error}"


def _foreign(planned, devices, attached, nft, other, errors: List[str]) -> Foreign:
    from ipt2xdp import tcingress

    document, error, text = nft
    unreadable = ([error] if error else []) + errors
    try:
        tc = tcingress.read(devices, attached)
    except Exception as tc_error:  # noqa: BLE001 - not known: defer
        tc, unreadable = (), unreadable + [f"the tc ingress hooks could not be read: {tc_error}"]
    native: Tuple[NativeChain, ...] = ()
    if document is not None:
        fill_ingress_devices(document, _list_chain)
        native = classify(document, passed_devices(devices, attached), text)
    other_text, other_tables = other or ("", ())
    return Foreign(planned, native, other_text, other_tables, tuple(unreadable), nat_hooks(document), tc)


def nat_hooks(document) -> Tuple[str, ...]:
    """Labels of the IPv4 nftables base chains of type nat in a listing (postrouting and output too:
    a masquerade there NATs the flows whose replies come back in)."""
    out = []
    for item in (document or {}).get("nftables", []):
        chain = item.get("chain") if isinstance(item, dict) else None
        if isinstance(chain, dict) and chain.get("type") == "nat" and chain.get("family") in ("ip", "inet"):
            out.append(f"table {chain.get('family')} {chain.get('table')} chain {chain.get('name')}")
    return tuple(sorted(out))


@functools.lru_cache(maxsize=8)
def other_ruleset(foreign: Foreign):
    """The other backend's tables as an ir.Ruleset (None when it holds none)."""
    if not foreign.other_text:
        return None
    from ipt2xdp.parse import parse

    return parse(foreign.other_text, f"<iptables-{foreign.other}-save>")

