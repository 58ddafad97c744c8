# SPDX-License-Identifier: GPL-2.0-only
"""Add XDP's drops to the counters in the real tool's output, keeping its exact format.

The real tool prints everything; we only touch counter fields, and only for rules XDP dropped
packets for. The formats are those of iptables 1.8.9 (xshared.c print_header/print_firewall,
xtables.c xtables_print_num): `-L -v` exact is "%8llu " for packets and bytes (the header pads "bytes" to 10); abbreviated
is "%5llu " up to 99999, else the value divided (rounding) by 1000 until it fits "%4llu" plus a
K/M/G/T suffix. Abbreviated numbers cannot be added to, so the wrapper asks the real tool for
exact numbers (-x) and abbreviates itself (see listing_needs_exact()).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

Counts = Dict[Tuple[str, str, int], Tuple[int, int]]


def abbreviate(number: int, table: bool = True) -> str:
    if number <= 99999:
        return f"{number:5d} " if table else f"{number} "
    for suffix in "KMGT":
        number = (number + 500) // 1000
        if number <= 9999 or suffix == "T":
            return f"{number:4d}{suffix} " if table else f"{number}{suffix} "
    raise AssertionError("unreachable")


def _num(value: int, exact: bool, width: int) -> str:
    return f"{value:{width}d} " if exact else abbreviate(value)


_CHAIN = re.compile(r"^Chain (\S+) \(policy (\S+) (\d+) packets, (\d+) bytes\)$")
_USER_CHAIN = re.compile(r"^Chain (\S+) \(")


def listing(text: str, counts: Counts, table: str, exact: bool, line_numbers: bool,
            single: Optional[Tuple[str, int]] = None) -> str:
    """`-L -v` output (produced with -x) with XDP's counts added; abbreviated unless exact.

    single: (chain, N) for `-L CHAIN N`, which prints rule N's line alone, without headers."""
    out: List[str] = []
    chain: Optional[str] = single[0] if single else None
    index = single[1] - 1 if single else 0
    for line in text.split("\n"):
        m = _CHAIN.match(line)
        if m:
            chain, index = m.group(1), 0
            p, b = counts.get((table, chain, 0), (0, 0))
            p, b = int(m.group(3)) + p, int(m.group(4)) + b
            if exact:
                out.append(f"Chain {chain} (policy {m.group(2)} {p} packets, {b} bytes)")
            else:
                out.append(f"Chain {chain} (policy {m.group(2)} {abbreviate(p, False)}packets, "
                           f"{abbreviate(b, False)}bytes)")
            continue
        m = _USER_CHAIN.match(line)
        if m:
            chain, index = m.group(1), 0
            out.append(line)
            continue
        if chain is None or not line or line.startswith(("num ", "    pkts")) or line.lstrip().startswith("pkts "):
            if not exact and chain is not None and line:
                line = _header(line, line_numbers)
            out.append(line)
            continue
        index += 1
        out.append(_rule_line(line, counts.get((table, chain, index), (0, 0)), exact, line_numbers))
    return "\n".join(out)


def _header(line: str, line_numbers: bool) -> str:
    # exact header "    pkts      bytes target" -> abbreviated " pkts bytes target"
    prefix = "num  " if line_numbers else ""
    body = line[len(prefix):] if line_numbers else line
    m = re.match(r"^\s*pkts\s+bytes (.*)$", body)
    return prefix + " pkts bytes " + m.group(1) if m else line


def _rule_line(line: str, add: Tuple[int, int], exact: bool, line_numbers: bool) -> str:
    if line_numbers:
        m = re.match(r"^(\d+)( +)(\d+) +(\d+) (.*)$", line)
        if not m:
            return line
        num, p, b, rest = m.group(1), int(m.group(3)), int(m.group(4)), m.group(5)
        prefix = f"{num:<4} "
    else:
        m = re.match(r"^ *(\d+) +(\d+) (.*)$", line)
        if not m:
            return line
        p, b, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        prefix = ""
    p, b = p + add[0], b + add[1]
    return prefix + _num(p, exact, 8) + _num(b, exact, 8) + rest


def _last_unquoted(pattern: re.Pattern, line: str):
    best = None
    for m in pattern.finditer(line):
        if line.count('"', 0, m.start()) % 2 == 0:
            best = m
    return best


_RULE_C = re.compile(r" -c (\d+) (\d+)")


def rules(text: str, counts: Counts, table: str, chain_filter: Optional[str], rulenum: Optional[int]) -> str:
    """`-S -v` output with XDP's counts added to `-c P B`."""
    out: List[str] = []
    seen: Dict[str, int] = {}
    for line in text.split("\n"):
        key = None
        if line.startswith("-P "):
            key = (table, line.split()[1], 0)
        elif line.startswith("-A "):
            chain = line.split()[1]
            seen[chain] = seen.get(chain, 0) + 1
            key = (table, chain, rulenum if rulenum is not None else seen[chain])
        add = counts.get(key) if key else None
        if add:
            m = _last_unquoted(_RULE_C, line)
            if m:
                line = (line[:m.start()] + f" -c {int(m.group(1)) + add[0]} {int(m.group(2)) + add[1]}"
                        + line[m.end():])
        out.append(line)
    return "\n".join(out)


_SAVE_POLICY = re.compile(r"^:(\S+) (\S+) \[(\d+):(\d+)\]$")
_SAVE_RULE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) ")


def save(text: str, counts: Counts) -> str:
    """iptables-save output: policies always carry [p:b]; rules with -c carry a [p:b] prefix."""
    out: List[str] = []
    table = None
    seen: Dict[str, int] = {}
    for line in text.split("\n"):
        if line.startswith("*"):
            table, seen = line[1:], {}
        m = _SAVE_POLICY.match(line)
        if m and table:
            add = counts.get((table, m.group(1), 0))
            if add:
                line = f":{m.group(1)} {m.group(2)} [{int(m.group(3)) + add[0]}:{int(m.group(4)) + add[1]}]"
        elif line.startswith(("-A ", "[")) and table:
            m = _SAVE_RULE.match(line)
            chain = m.group(3) if m else line.split()[1]
            seen[chain] = seen.get(chain, 0) + 1
            add = counts.get((table, chain, seen[chain]))
            if add and m:
                line = f"[{int(m.group(1)) + add[0]}:{int(m.group(2)) + add[1]}]" + line[m.end(2) + 1:]
        out.append(line)
    return "\n".join(out)
