# SPDX-License-Identifier: GPL-2.0-only
"""`nft -j` listings of the nf_tables tables that can hold native hooks, not of iptables-nft's own.

foreign.py judges native nftables chains from an `nft -j list ruleset` document. That listing holds
iptables-nft's tables too: at 10k iptables-nft rules it is 3.5 MB of JSON and 0.35 s of nft 1.0.6,
paid by `ipt2xdp watch` on every nf_tables change it serves, although the chains of the tables
iptables-nft-save shows are never judged as native (foreign.native_chains leaves them out).
`nft list tables` is no cheaper (nft 1.0.6 fills its whole cache first: 0.12 s at 10k rules), so
the table names come from one NFT_MSG_GETTABLE netlink dump (under a millisecond) and `nft -j list
table` runs for each table that may matter (about 5 ms each). Left out:

- family ip tables named in `skip_ip`: those iptables-nft-save shows (the caller knows which);
- ip6 and arp tables: their hooks never see an IPv4 packet (nor do the `ct helper` statements in
  them assign a helper to one).

Whenever something does not fit (the table dump fails, a table vanished between the dump and its
listing, a family without a name), the whole ruleset is listed instead, as before.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from typing import Iterable, List, Optional, Tuple

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFTA_TABLE_NAME = 1
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
IPV4_BLIND = ("ip6", "arp")  # families whose hooks never see an IPv4 packet

Listing = Tuple[Optional[dict], Optional[str], str]  # (document, error, raw text)


def nft_binary() -> Optional[str]:
    return shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)


def nf_tables_loaded() -> bool:
    return os.path.exists("/sys/module/nf_tables")


def run_json(nft: str, words: List[str]) -> Listing:
    """(document, error, raw text) of `nft -j <words>`."""
    command = " ".join(["nft", "-j"] + words)
    try:
        out = subprocess.run([nft, "-j"] + words, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"`{command}` failed: {error}", ""
    if out.returncode != 0:
        return None, f"`{command}` failed (exit {out.returncode}): {out.stderr.strip()}", ""
    try:
        return json.loads(out.stdout or '{"nftables": []}'), None, out.stdout
    except ValueError as error:
        return None, f"`{command}` printed no JSON: {error}", out.stdout


def tables() -> List[Tuple[str, str]]:
    """(family, name) of every nf_tables table in this namespace, read over netlink (as `nft list`
    does, this may load nf_tables; /sys/module does not show it built in). Raises OSError."""
    from ipt2xdp import rtnl

    request = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE
    body = struct.pack("=BBH", 0, 0, 0)  # struct nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id
    out = []
    for kind, payload in rtnl._dump(request, body, NETLINK_NETFILTER):
        if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE or len(payload) < 4:
            continue
        attrs = dict(rtnl._attrs(payload, 4, len(payload)))
        out.append((FAMILIES.get(payload[0], str(payload[0])), rtnl._text(attrs.get(NFTA_TABLE_NAME, b""))))
    return out


def list_ruleset(nft: Optional[str] = None) -> Listing:
    nft = nft or nft_binary()
    if nft is None:
        if not nf_tables_loaded():
            return {"nftables": []}, None, ""
        return None, "nf_tables is loaded but `nft` is not installed (apt-get install nftables)", ""
    return run_json(nft, ["list", "ruleset"])


def list_relevant(skip_ip: Iterable[str], names: Optional[List[Tuple[str, str]]] = None) -> Listing:
    """One document of every table but those left out (see the module's doc); names: tables()'s
    answer if the caller already has it."""
    nft = nft_binary()
    if nft is None:
        return list_ruleset(nft)
    skip = set(skip_ip)
    try:
        names = tables() if names is None else names
    except OSError:
        return list_ruleset(nft)
    items, texts = [], []
    for family, name in names:
        if family in IPV4_BLIND or (family == "ip" and name in skip):
            continue
        if family not in FAMILIES.values():
            return list_ruleset(nft)
        document, _, text = run_json(nft, ["list", "table", family, name])
        if document is None:  # e.g. deleted since the dump: its notification brings another read
            return list_ruleset(nft)
        items += [item for item in document.get("nftables", []) if "metainfo" not in item]
        texts.append(text)
    return {"nftables": items}, None, "".join(texts)
