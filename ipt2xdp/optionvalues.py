# SPDX-License-Identifier: GPL-2.0-only
"""What the builders of matches and targets share: `Given` (one option collected for one extension
instance), `OptionError`, and the parsers of option values (ports, numbers, ranges, addresses, name
lists) with the checks iptables 1.8.9 makes at parse time.

A builder takes the options of one extension instance as a list of `Given` (canonical option name,
negated, arguments, index of the option's word in the rule) plus the rule's protocol name, and
returns an ir value or raises `OptionError` pointing at the offending word, so a rule ipt2xdp
accepts is one iptables accepts. The match builders are in matchbuilders.py, the target builders in
targetbuilders.py; the option tables and the names iptables resolves are in options.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Dict, List, Optional, Tuple

from ipt2xdp import irmatches
from ipt2xdp.options import service_port


class OptionError(Exception):
    def __init__(self, word_index: int, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.word_index = word_index
        self.message = message
        self.hint = hint


@dataclass
class Given:
    name: str
    negated: bool
    args: Tuple[str, ...]
    index: int


# ----------------------------------------------------------------------------- value parsers

def port(text: str, proto: Optional[str], index: int) -> int:
    if text.isdigit():  # service_port()'s first case without its cache: a big ruleset's ports differ
        value = int(text)
        if value <= 65535:
            return value
    value = service_port(text, proto)
    if value is None:
        raise OptionError(index, f"invalid port/service '{text}' specified")
    return value


def port_range(text: str, proto: Optional[str], index: int) -> irmatches.Range:
    """"22" -> (22, 22); "1024:" -> (1024, 65535); ":4" -> (0, 4); "ssh" -> (22, 22)."""
    if ":" in text:
        lo_text, hi_text = text.split(":", 1)
        lo = port(lo_text, proto, index) if lo_text else 0
        hi = port(hi_text, proto, index) if hi_text else 65535
        if lo > hi:
            raise OptionError(index, f"invalid portrange '{text}' (min > max)")
        return (lo, hi)
    value = port(text, proto, index)
    return (value, value)


def uint(text: str, index: int, what: str, maximum: int) -> int:
    try:
        value = int(text, 0) if text[:2].lower() == "0x" else int(text, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= maximum:
        raise OptionError(index, f"invalid {what} '{text}' (must be 0..{maximum})")
    return value


def uint_range(text: str, index: int, what: str, maximum: int) -> irmatches.Range:
    if ":" in text:
        lo_text, hi_text = text.split(":", 1)
        lo = uint(lo_text, index, what, maximum) if lo_text else 0
        hi = uint(hi_text, index, what, maximum) if hi_text else maximum
    else:
        lo = hi = uint(text, index, what, maximum)
    if lo > hi:
        raise OptionError(index, f"invalid {what} range '{text}' (min > max)")
    return (lo, hi)


def ipv4(text: str, index: int) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise OptionError(index, f"host/network '{text}' not found") from None


def name_set(text: str, allowed: Tuple[str, ...], index: int, what: str) -> frozenset:
    names = set()
    for item in text.split(","):
        upper = item.upper()
        if upper not in allowed:
            raise OptionError(index, f"bad {what} '{item}'", hint="one of " + ",".join(allowed))
        names.add(upper)
    return frozenset(names)


def options_by_name(given: List[Given]) -> Dict[str, Given]:
    """The options by canonical name; one given twice is iptables' "multiple ... flags" error."""
    seen: Dict[str, Given] = {}
    for g in given:
        if g.name in seen:
            raise OptionError(g.index, f"multiple {g.name} flags not allowed")
        seen[g.name] = g
    return seen


def require_protocol(proto: Optional[str], allowed: Tuple[str, ...], ext: str, index: int) -> None:
    if proto not in allowed:
        need = " or ".join(f"-p {p}" for p in allowed)
        raise OptionError(index, f"-m {ext} needs {need}")
