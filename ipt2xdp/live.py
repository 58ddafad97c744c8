# SPDX-License-Identifier: GPL-2.0-only
"""Read the rules in force in the current network namespace into an `ir.Ruleset`.

Three readers, one result (counters and spans aside):
- `read_legacy_iptc()`: the legacy x_tables backend through python-iptables (libiptc). Each
  extension prints its own options with its save() function, exactly as iptables-save would; the
  rule header comes from the kernel entry. The line is then parsed by ipt2xdp.parse, so option
  meaning is decided in one place.
- `read_nft()`: the nf_tables backend, through `iptables-nft-save` text (python-iptables cannot
  see nf_tables).
- `read_save()`: plain `iptables-save` of whichever backend the alternatives system selects.

No reader creates a table that does not exist: the legacy reader only opens the tables listed in
/proc/net/ip_tables_names (opening any other would load its kernel module).
"""
from __future__ import annotations

import ipaddress
import subprocess
from typing import List, Optional, Sequence

from ipt2xdp import ir
from ipt2xdp.errors import Ipt2xdpError
from ipt2xdp.parse import parse

TABLES_FILE = "/proc/net/ip_tables_names"
TABLE_ORDER = ("raw", "mangle", "filter", "nat", "security")
_STANDARD_TARGETS = ("ACCEPT", "DROP", "RETURN", "QUEUE")
_GOTO_FLAG = 0x02  # IPT_F_GOTO in struct ipt_ip.flags (IPT_F_FRAG is 0x01)


def legacy_tables() -> List[str]:
    """The legacy tables that exist in this namespace (never loads a module)."""
    try:
        with open(TABLES_FILE) as f:
            names = {line.strip() for line in f if line.strip()}
    except OSError:
        return []
    return [t for t in TABLE_ORDER if t in names] + sorted(names - set(TABLE_ORDER))


def _save_text(argv: Sequence[str]) -> str:
    try:
        # a comment may hold any byte: kept as surrogates (cli.py prints them back as they were)
        result = subprocess.run(list(argv), capture_output=True, text=True, errors="surrogateescape")
    except FileNotFoundError:
        raise Ipt2xdpError(f"{argv[0]} is not installed; install the iptables package") from None
    if result.returncode != 0:
        raise Ipt2xdpError(f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr.strip()}")
    # Comments (date lines, the nft "legacy tables present" warning) carry no rules.
    return "".join(line + "\n" for line in result.stdout.splitlines() if not line.startswith("#"))


def ordered(ruleset: ir.Ruleset) -> ir.Ruleset:
    """Tables in one fixed order (iptables-legacy-save and iptables-nft-save list them differently)."""
    rank = {name: i for i, name in enumerate(TABLE_ORDER)}
    return ir.Ruleset(tuple(sorted(ruleset.tables, key=lambda t: rank.get(t.name, len(rank)))))


def read_nft(counters: bool = True) -> ir.Ruleset:
    argv = ["iptables-nft-save"] + (["-c"] if counters else [])
    return ordered(parse(_save_text(argv), path="<iptables-nft-save>"))


def read_save(counters: bool = True, binary: str = "iptables-save") -> ir.Ruleset:
    return ordered(parse(_save_text([binary] + (["-c"] if counters else [])), path=f"<{binary}>"))


def read_legacy_save(counters: bool = True) -> ir.Ruleset:
    """iptables-legacy-save, restricted to existing tables (a bare call would create none, but -t would)."""
    text = "".join(_save_text(["iptables-legacy-save", "-t", t] + (["-c"] if counters else []))
                   for t in legacy_tables())
    return ordered(parse(text, path="<iptables-legacy-save>"))


# ----------------------------------------------------------------------------- python-iptables

def _import_iptc():
    try:
        import iptc  # noqa: F401 - python-iptables, needs libxtables at run time
        from iptc import ip4tc
    except Exception as error:  # ImportError, or XTablesError when libxtables is missing
        raise Ipt2xdpError(f"python-iptables is unusable ({error}); install libxtables12 or read with "
                           "iptables-legacy-save") from None
    return ip4tc


def _address_words(flag: str, text: str) -> List[str]:
    """python-iptables gives '[!]addr/dotted-mask'; print it the iptables-save way."""
    negated = text.startswith("!")
    net = ipaddress.IPv4Network(text.lstrip("!"), strict=False)
    if net.prefixlen == 0 and not negated:
        return []
    return (["!"] if negated else []) + [flag, str(net)]


def _interface_words(flag: str, text: Optional[str]) -> List[str]:
    if not text:
        return []
    negated = text.startswith("!")
    return (["!"] if negated else []) + [flag, text.lstrip("!")]


def _extension_text(ext, ip) -> str:
    buf = ext._get_saved_buf(ip)
    if buf is None:
        return ""
    text = buf.decode("utf-8", "surrogateescape") if isinstance(buf, bytes) else buf
    return " " + " ".join(text.split("\n")).strip() if text.strip() else ""


def _rule_line(ip4tc, chain_name: str, rule, chain_names) -> str:
    words = ["-A", chain_name]
    words += _address_words("-s", rule.src) + _address_words("-d", rule.dst)
    words += _interface_words("-i", rule.in_interface) + _interface_words("-o", rule.out_interface)
    entry_ip = rule.get_ip()
    if entry_ip.proto:
        negated = bool(entry_ip.invflags & ip4tc.XT_INV_PROTO)
        words += (["!"] if negated else []) + ["-p", str(entry_ip.proto)]
    if entry_ip.flags & 0x01:  # IPT_F_FRAG
        words += (["!"] if entry_ip.invflags & 0x01 else []) + ["-f"]
    text = " ".join(words)
    for match in rule.matches:
        text += f" -m {match.name}{_extension_text(match, entry_ip)}"
    target = rule.target
    if target is not None and target.name:
        if entry_ip.flags & _GOTO_FLAG:
            text += f" -g {target.name}"
        else:
            plain = target.name in _STANDARD_TARGETS or target.name in chain_names
            text += f" -j {target.name}{'' if plain else _extension_text(target, entry_ip)}"
    packets, octets = rule.get_counters()
    return f"[{packets}:{octets}] {text}"


def legacy_save_text(tables: Optional[Sequence[str]] = None) -> str:
    """The legacy ruleset as iptables-save -c text, built from libiptc through python-iptables."""
    ip4tc = _import_iptc()
    existing = legacy_tables()
    # python-iptables probes every table (Table(name), which creates it) when it resolves a
    # target name; tell it up front which tables do not exist so that it never creates one.
    for name in ip4tc.Table.ALL:
        if name not in existing:
            ip4tc.Table.existing_table_names[name] = False
    out = []
    for name in tables or existing:
        table = ip4tc.Table(name, autocommit=False)
        table.refresh()
        out.append(f"*{name}")
        chains = table.chains
        names = {c.name for c in chains}
        for chain in chains:
            policy = chain.get_policy() if chain.is_builtin() else None
            if policy is not None:
                packets, octets = chain.get_counters()
                out.append(f":{chain.name} {policy.name} [{packets}:{octets}]")
            else:
                out.append(f":{chain.name} - [0:0]")
        for chain in chains:
            out.extend(_rule_line(ip4tc, chain.name, rule, names) for rule in chain.rules)
        out.append("COMMIT")
    return "".join(line + "\n" for line in out)


def read_legacy_iptc(tables: Optional[Sequence[str]] = None) -> ir.Ruleset:
    return ordered(parse(legacy_save_text(tables), path="<python-iptables>"))


def read_live(counters: bool = True) -> ir.Ruleset:
    """The ruleset in force: python-iptables on a legacy host, iptables-nft-save otherwise (the
    backend `iptables` runs, or IPT2XDP_BACKEND's, as `import --live` reads it)."""
    from ipt2xdp.backend import active_backend

    if active_backend() == "legacy":
        return read_legacy_iptc()
    return read_nft(counters)
