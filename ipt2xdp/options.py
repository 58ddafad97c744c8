# SPDX-License-Identifier: GPL-2.0-only
"""The table of matches and targets ipt2xdp knows, their options, and the names iptables accepts.

One `OptionSpec` per option: canonical spelling, aliases, how many arguments, whether `!` may
precede it. `MATCHES`/`TARGETS` map an extension name to its options in the order iptables-save
prints them. Extensions not listed here still parse, generically (see ruleparse.py), so a real ruleset
is never rejected merely for using something ipt2xdp does not model.

Also here: the name tables iptables resolves (protocols, services, ICMP types, REJECT types, LOG
levels), read the same way iptables 1.8.9 reads them. matchbuilders.py and targetbuilders.py turn
the options collected for one match or target into its typed IR value.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class OptionSpec:
    name: str                      # canonical spelling, as iptables-save prints it
    nargs: int = 1                 # words taken after the option
    negatable: bool = True         # `! --opt` allowed
    aliases: Tuple[str, ...] = ()


@dataclass(frozen=True)
class ExtensionSpec:
    name: str
    options: Tuple[OptionSpec, ...]

    def lookup(self, spelling: str) -> Optional[OptionSpec]:
        return _option_index(self).get(spelling)


@lru_cache(maxsize=None)
def _option_index(ext: ExtensionSpec) -> Dict[str, OptionSpec]:
    index = {}
    for opt in ext.options:
        for spelling in (opt.name,) + opt.aliases:
            index[spelling] = opt
    return index


def _o(name, nargs=1, negatable=True, *aliases):
    return OptionSpec(name, nargs, negatable, tuple(aliases))


_PORT_OPTIONS = (_o("--sport", 1, True, "--source-port"), _o("--dport", 1, True, "--destination-port"))

MATCHES: Dict[str, ExtensionSpec] = {e.name: e for e in (
    ExtensionSpec("tcp", _PORT_OPTIONS + (_o("--tcp-option"), _o("--tcp-flags", 2), _o("--syn", 0))),
    ExtensionSpec("udp", _PORT_OPTIONS),
    ExtensionSpec("multiport", (_o("--sports", 1, True, "--source-ports"),
                                _o("--dports", 1, True, "--destination-ports"), _o("--ports"))),
    ExtensionSpec("icmp", (_o("--icmp-type"),)),
    ExtensionSpec("conntrack", (_o("--ctstate"), _o("--ctproto"), _o("--ctorigsrc"), _o("--ctorigdst"),
                                _o("--ctreplsrc"), _o("--ctrepldst"), _o("--ctorigsrcport"),
                                _o("--ctorigdstport"), _o("--ctreplsrcport"), _o("--ctrepldstport"),
                                _o("--ctstatus"), _o("--ctexpire"), _o("--ctdir", 1, False))),
    ExtensionSpec("state", (_o("--state"),)),
    ExtensionSpec("set", (_o("--match-set", 2, True, "--set"), _o("--return-nomatch", 0, False),
                          _o("--update-counters", 0), _o("--update-subcounters", 0),
                          _o("--packets-eq"), _o("--packets-lt", 1, False), _o("--packets-gt", 1, False),
                          _o("--bytes-eq"), _o("--bytes-lt", 1, False), _o("--bytes-gt", 1, False))),
    ExtensionSpec("iprange", (_o("--src-range"), _o("--dst-range"))),
    ExtensionSpec("length", (_o("--length"),)),
    ExtensionSpec("ttl", (_o("--ttl-eq"), _o("--ttl-lt", 1, False), _o("--ttl-gt", 1, False))),
    ExtensionSpec("addrtype", (_o("--src-type"), _o("--dst-type"), _o("--limit-iface-in", 0, False),
                               _o("--limit-iface-out", 0, False))),
    ExtensionSpec("comment", (_o("--comment", 1, False),)),
    ExtensionSpec("mac", (_o("--mac-source"),)),
    ExtensionSpec("limit", (_o("--limit", 1, False), _o("--limit-burst", 1, False))),
    ExtensionSpec("recent", (_o("--set", 0), _o("--rcheck", 0), _o("--update", 0), _o("--remove", 0),
                             _o("--seconds", 1, False), _o("--reap", 0, False), _o("--hitcount", 1, False),
                             _o("--rttl", 0, False), _o("--name", 1, False), _o("--rsource", 0, False),
                             _o("--rdest", 0, False), _o("--mask", 1, False))),
    ExtensionSpec("mark", (_o("--mark"),)),
)}

TARGETS: Dict[str, ExtensionSpec] = {e.name: e for e in (
    ExtensionSpec("ACCEPT", ()),
    ExtensionSpec("DROP", ()),
    ExtensionSpec("RETURN", ()),
    ExtensionSpec("REJECT", (_o("--reject-with", 1, False),)),
    ExtensionSpec("LOG", (_o("--log-prefix", 1, False), _o("--log-level", 1, False),
                          _o("--log-tcp-sequence", 0, False), _o("--log-tcp-options", 0, False),
                          _o("--log-ip-options", 0, False), _o("--log-uid", 0, False),
                          _o("--log-macdecode", 0, False))),
    ExtensionSpec("NFLOG", (_o("--nflog-prefix", 1, False), _o("--nflog-group", 1, False),
                            _o("--nflog-size", 1, False), _o("--nflog-range", 1, False),
                            _o("--nflog-threshold", 1, False))),
)}

# A protocol option without `-m` loads the match named after the protocol (`-p tcp --dport 22`).
IMPLICIT_PROTOCOL_MATCHES = ("tcp", "udp", "icmp")

# Generic extensions whose arguments iptables-save always prints in double quotes.
ALWAYS_QUOTED = {("string", "--string"), ("string", "--hex-string"), ("u32", "--u32"),
                 ("bpf", "--bytecode")}

# ----------------------------------------------------------------------------- name tables

# xtables_chain_protos: looked up before /etc/protocols, in both directions.
_CHAIN_PROTOS = (("tcp", 6), ("sctp", 132), ("udp", 17), ("udplite", 136), ("icmp", 1),
                 ("ipv6-icmp", 58), ("icmpv6", 58), ("esp", 50), ("ah", 51), ("ipv6-mh", 135),
                 ("mh", 135), ("all", 0))


@lru_cache(maxsize=1)
def _etc_protocols() -> Tuple[Dict[str, int], Dict[int, str]]:
    by_name, by_number = {}, {}
    try:
        with open("/etc/protocols") as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[1].isdigit():
                    number = int(fields[1])
                    by_number.setdefault(number, fields[0])
                    for name in [fields[0]] + fields[2:]:
                        by_name.setdefault(name, number)
    except OSError:
        pass
    return by_name, by_number


@lru_cache(maxsize=4096)
def protocol_number(text: str) -> Optional[int]:
    """`-p` argument to a number (0 = all), as xtables_parse_protocol does; None if unknown."""
    if text.isdigit():
        value = int(text)
        return value if value <= 255 else None
    lowered = text.lower()
    for name, number in _CHAIN_PROTOS:
        if name == lowered:
            return number
    return _etc_protocols()[0].get(text)


@lru_cache(maxsize=None)
def protocol_name(number: int) -> str:
    """The spelling iptables-save prints for a protocol number."""
    for name, value in _CHAIN_PROTOS:
        if value == number:
            return name
    return _etc_protocols()[1].get(number, str(number))


@lru_cache(maxsize=4096)
def service_port(text: str, protocol: Optional[str]) -> Optional[int]:
    """A port number or service name (getservbyname, as iptables does); None if invalid."""
    if text.isdigit():
        value = int(text)
        return value if value <= 65535 else None
    for proto in ((protocol,) if protocol in ("tcp", "udp") else ("tcp", "udp")):
        try:
            return socket.getservbyname(text, proto)
        except (OSError, TypeError):
            continue
    return None


# libxt_icmp's name table: name -> (type, code_min, code_max)
ICMP_TYPES: Dict[str, Tuple[int, int, int]] = {
    "any": (0xFF, 0, 0xFF),
    "echo-reply": (0, 0, 0xFF), "pong": (0, 0, 0xFF),
    "destination-unreachable": (3, 0, 0xFF),
    "network-unreachable": (3, 0, 0), "host-unreachable": (3, 1, 1),
    "protocol-unreachable": (3, 2, 2), "port-unreachable": (3, 3, 3),
    "fragmentation-needed": (3, 4, 4), "source-route-failed": (3, 5, 5),
    "network-unknown": (3, 6, 6), "host-unknown": (3, 7, 7),
    "network-prohibited": (3, 9, 9), "host-prohibited": (3, 10, 10),
    "TOS-network-unreachable": (3, 11, 11), "TOS-host-unreachable": (3, 12, 12),
    "communication-prohibited": (3, 13, 13), "host-precedence-violation": (3, 14, 14),
    "precedence-cutoff": (3, 15, 15),
    "source-quench": (4, 0, 0xFF),
    "redirect": (5, 0, 0xFF), "network-redirect": (5, 0, 0), "host-redirect": (5, 1, 1),
    "TOS-network-redirect": (5, 2, 2), "TOS-host-redirect": (5, 3, 3),
    "echo-request": (8, 0, 0xFF), "ping": (8, 0, 0xFF),
    "router-advertisement": (9, 0, 0xFF), "router-solicitation": (10, 0, 0xFF),
    "time-exceeded": (11, 0, 0xFF), "ttl-exceeded": (11, 0, 0xFF),
    "ttl-zero-during-transit": (11, 0, 0), "ttl-zero-during-reassembly": (11, 1, 1),
    "parameter-problem": (12, 0, 0xFF), "ip-header-bad": (12, 0, 0),
    "required-option-missing": (12, 1, 1),
    "timestamp-request": (13, 0, 0xFF), "timestamp-reply": (14, 0, 0xFF),
    "address-mask-request": (17, 0, 0xFF), "address-mask-reply": (18, 0, 0xFF),
}

REJECT_TYPES: Dict[str, str] = {
    "icmp-net-unreachable": "icmp-net-unreachable", "net-unreach": "icmp-net-unreachable",
    "icmp-host-unreachable": "icmp-host-unreachable", "host-unreach": "icmp-host-unreachable",
    "icmp-proto-unreachable": "icmp-proto-unreachable", "proto-unreach": "icmp-proto-unreachable",
    "icmp-port-unreachable": "icmp-port-unreachable", "port-unreach": "icmp-port-unreachable",
    "icmp-net-prohibited": "icmp-net-prohibited", "net-prohib": "icmp-net-prohibited",
    "icmp-host-prohibited": "icmp-host-prohibited", "host-prohib": "icmp-host-prohibited",
    "icmp-admin-prohibited": "icmp-admin-prohibited", "admin-prohib": "icmp-admin-prohibited",
    "tcp-reset": "tcp-reset", "tcp-rst": "tcp-reset",
}

LOG_LEVELS: Dict[str, int] = {"emerg": 0, "panic": 0, "alert": 1, "crit": 2, "err": 3, "error": 3,
                              "warning": 4, "warn": 4, "notice": 5, "info": 6, "debug": 7}

LIMIT_UNITS = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400))


def all_option_keys():
    """(kind, extension, canonical option) for every known option, for the coverage test."""
    for kind, table in (("match", MATCHES), ("target", TARGETS)):
        for ext in table.values():
            if not ext.options:
                yield kind, ext.name, None
            for opt in ext.options:
                yield kind, ext.name, opt.name
