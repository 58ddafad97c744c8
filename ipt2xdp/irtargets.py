# SPDX-License-Identifier: GPL-2.0-only
"""The targets of an ir.Rule (-j/-g, ir.Rule.target): frozen dataclasses, no behaviour.

Separate from ir.py (the containers) and irmatches.py (the matches) as the third part of the IR.

Targets (each has `name`, the `-j` word):
    Accept(), Drop(), Return()        name "ACCEPT" / "DROP" / "RETURN"
    Jump(chain)                       -j USERCHAIN          (name == chain)
    Goto(chain)                       -g USERCHAIN          (name == chain, printed with -g)
    Reject(reject_with: str)          always the full name, default "icmp-port-unreachable"
    Log(prefix: str, level: int, flags: frozenset[str])  level 0..7 (default 4); flags from
        LOG_FLAGS (tcp-sequence tcp-options ip-options uid macdecode)
    Nflog(group: int, prefix: str, size: int|None, range: int|None, threshold: int)
    GenericTarget(name, options: tuple[Option, ...])  any other target (DNAT, MARK, CT, ...);
        Option is irmatches.Option, the generic option of a match or target.

Every target class is frozen, hashable and compared by value. Names listed here are stable; new
optional fields may be added with defaults at the end of a class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

from ipt2xdp.irmatches import Option

# Canonical order, used by the printer.
LOG_FLAGS = ("tcp-sequence", "tcp-options", "ip-options", "uid", "macdecode")


@dataclass(frozen=True)
class Accept:
    name = "ACCEPT"


@dataclass(frozen=True)
class Drop:
    name = "DROP"


@dataclass(frozen=True)
class Return:
    name = "RETURN"


@dataclass(frozen=True)
class Jump:
    chain: str

    @property
    def name(self) -> str:
        return self.chain


@dataclass(frozen=True)
class Goto:
    chain: str

    @property
    def name(self) -> str:
        return self.chain


@dataclass(frozen=True)
class Reject:
    reject_with: str = "icmp-port-unreachable"
    name = "REJECT"


@dataclass(frozen=True)
class Log:
    prefix: str = ""
    level: int = 4
    flags: frozenset = frozenset()
    name = "LOG"


@dataclass(frozen=True)
class Nflog:
    group: int = 0
    prefix: str = ""
    size: Optional[int] = None
    range: Optional[int] = None
    threshold: int = 1
    name = "NFLOG"


@dataclass(frozen=True)
class GenericTarget:
    name: str
    options: Tuple[Option, ...] = ()


Target = Union[Accept, Drop, Return, Jump, Goto, Reject, Log, Nflog, GenericTarget]
