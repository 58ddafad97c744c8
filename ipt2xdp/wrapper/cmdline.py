# SPDX-License-Identifier: GPL-2.0-only
"""What an iptables / iptables-save / iptables-restore command line asks for, without validating it.

The real binary validates and reports errors; this only decides what the wrapper has to do around
it. Every doubt resolves towards "it may change the ruleset" (a needless re-plan costs time; a
missed one would leave XDP out of step), never towards "read-only".
"""
from __future__ import annotations


# iptables' getopt string: letters that take an argument (required or optional) and so end a cluster.
_REQUIRED_ARG = set("ACDRIMNEPopsdjitmcg")
_OPTIONAL_ARG = set("LSFZXhwW")
_COMMAND_LONG = {
    "--append": "A", "--check": "C", "--delete": "D", "--replace": "R", "--insert": "I", "--list": "L",
    "--list-rules": "S", "--flush": "F", "--zero": "Z", "--new-chain": "N", "--new": "N",
    "--delete-chain": "X", "--rename-chain": "E", "--policy": "P", "--version": "V", "--help": "h",
}
READ_ONLY = set("LSCVh")
# Commands that change rules, chains or policies (-Z changes counters only).
CHANGING = set("ADRINEPFX")
# Tables whose contents the planner reads: a change there can change what XDP may decide.
PLANNED_TABLES = ("filter", "raw", "mangle", "nat")


class _Fields:
    """Named fields with defaults, compared and shown by value: what @dataclass gave, without
    importing dataclasses (and inspect, ast, dis...), which every wrapper call paid at start-up."""

    __slots__ = ()
    _defaults: dict = {}

    def __init__(self, **values):
        for name, default in self._defaults.items():
            setattr(self, name, values.pop(name, default() if callable(default) else default))
        if values:
            raise TypeError(f"{type(self).__name__}: no field {', '.join(values)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self._defaults) + ")"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self._defaults)

    __hash__ = None  # mutable, as a dataclass with eq


class Command(_Fields):
    _defaults = {
        "commands": set,         # command letters (a factory: each Command its own set)
        "table": "filter",
        "verbose": False,
        "exact": False,
        "numeric": False,
        "line_numbers": False,
        "wait": None,            # None: no -w; 0.0: -w without seconds (wait forever)
        "chain": None,           # the chain named (first positional argument after -L/-S/-Z/-F/-X)
        "rulenum": None,         # second positional argument after -L/-S/-Z
        "position": None,        # rule number after -I/-D/-R CHAIN
        "new_chain": None,       # -E OLD NEW
    }
    __slots__ = tuple(_defaults)

    @property
    def read_only(self) -> bool:
        return bool(self.commands) and self.commands <= READ_ONLY

    @property
    def changes_planned_tables(self) -> bool:
        return bool(self.commands & CHANGING) and self.table in PLANNED_TABLES

    @property
    def wants_counters(self) -> bool:
        """Whether the output carries counters XDP's drops must be added to."""
        return self.verbose and bool(self.commands & {"L", "S"})


_OCTAL, _DECIMAL, _HEX = frozenset("01234567"), frozenset("0123456789"), frozenset("0123456789abcdefABCDEF")


def _leading(text: str, start: int, digits: frozenset) -> int:
    """The end of the run of digits from start."""
    end = start
    while end < len(text) and text[end] in digits:
        end += 1
    return end


def _wait_value(text: str) -> float:
    """Seconds as iptables 1.8.9 reads them: sscanf("%i"), so "1.5" is 1, "0.5" is 0 (wait
    forever), "0x10" is 16 and "010" is 8; what it cannot read the real binary rejects itself.
    Read by hand, not with `re`: the module and its enum cost every wrapper call about 5 ms of
    imports (tests/test_wrapper_unit.py holds this equal to the regular expression
    \\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*) on many inputs)."""
    rest = text.lstrip()  # str.isspace(), as the pattern's \\s
    sign = -1 if rest[:1] == "-" else 1
    if rest[:1] in ("+", "-"):
        rest = rest[1:]
    if rest[:2] in ("0x", "0X") and _leading(rest, 2, _HEX) > 2:
        return float(sign * int(rest[2:_leading(rest, 2, _HEX)], 16))
    if rest[:1] == "0":
        return float(sign * int(rest[:_leading(rest, 1, _OCTAL)], 8))
    if rest[:1] in _DECIMAL:
        return float(sign * int(rest[:_leading(rest, 0, _DECIMAL)]))
    return 0.0


def parse_iptables(args: list) -> Command:
    cmd = Command()
    positional: list = []
    after_listing = False
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            if name in _COMMAND_LONG:
                cmd.commands.add(_COMMAND_LONG[name])
                after_listing = _COMMAND_LONG[name] in "LSZFX"
            elif name == "--table" and i < len(args):
                cmd.table = value or args[i]
                i += 0 if value else 1
            elif name == "--verbose":
                cmd.verbose = True
            elif name == "--exact":
                cmd.exact = True
            elif name == "--numeric":
                cmd.numeric = True
            elif name == "--line-numbers":
                cmd.line_numbers = True
            elif name == "--wait":
                cmd.wait = _wait_value(value) if value else 0.0
                if not value and i < len(args) and args[i][:1].isdigit():
                    cmd.wait = _wait_value(args[i])
                    i += 1
            continue
        if arg.startswith("-") and len(arg) > 1 and not arg.startswith("!"):
            letters = arg[1:]
            for j, letter in enumerate(letters):
                rest = letters[j + 1:]
                if letter in "ADRINEPZLSCFXVh":
                    cmd.commands.add(letter)
                    after_listing = letter in "LSZFX"
                if letter == "v":
                    cmd.verbose = True
                elif letter == "x":
                    cmd.exact = True
                elif letter == "n":
                    cmd.numeric = True
                if letter in _REQUIRED_ARG:
                    value = rest
                    if not value and i < len(args):
                        value = args[i]
                        i += 1
                    if letter == "t":
                        cmd.table = value
                    elif letter in "ACDRINEP" and not positional:
                        cmd.chain = value
                        following = args[i] if i < len(args) else ""
                        if letter in "IDR" and following.isdigit():
                            cmd.position = int(following)
                            i += 1
                        elif letter == "E" and following:
                            cmd.new_chain = following
                            i += 1
                    break
                if letter in _OPTIONAL_ARG:
                    if letter == "w":
                        if rest:
                            cmd.wait = _wait_value(rest)
                        elif i < len(args) and args[i][:1].isdigit():
                            cmd.wait = _wait_value(args[i])
                            i += 1
                        else:
                            cmd.wait = 0.0
                    elif rest and letter in "LSZFX":
                        positional.append(rest)
                    break
            continue
        if after_listing:
            positional.append(arg)
    if positional and cmd.commands & set("LSZFX"):
        cmd.chain = positional[0]
        if len(positional) > 1 and positional[1].isdigit():
            cmd.rulenum = int(positional[1])
    return cmd


class SaveCommand(_Fields):
    _defaults = {"counters": False, "table": None}
    __slots__ = tuple(_defaults)


def parse_save(args: list) -> SaveCommand:
    cmd = SaveCommand()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-c", "--counters"):
            cmd.counters = True
        elif arg in ("-t", "--table") and i < len(args):
            cmd.table = args[i]
            i += 1
        elif arg.startswith("--table="):
            cmd.table = arg.split("=", 1)[1]
        elif arg.startswith("-t") and len(arg) > 2:
            cmd.table = arg[2:]
        elif arg.startswith("-") and not arg.startswith("--") and "c" in arg[1:]:
            cmd.counters = True
    return cmd


class RestoreCommand(_Fields):
    _defaults = {
        "test": False,
        "wait": None,
        "counters": False,
        "noflush": False,
        "table": None,           # -T: only this table of the input
        "file": None,            # input file instead of stdin
    }
    __slots__ = tuple(_defaults)


def parse_restore(args: list) -> RestoreCommand:
    cmd = RestoreCommand()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--test":
            cmd.test = True
        elif arg in ("--modprobe", "--wait-interval"):
            i += 1  # their argument is not the input file
        elif arg.startswith(("--modprobe=", "--wait-interval=")):
            pass
        elif arg == "--counters":
            cmd.counters = True
        elif arg == "--noflush":
            cmd.noflush = True
        elif arg.startswith("--table"):
            _, _, value = arg.partition("=")
            if not value and i < len(args):
                value = args[i]
                i += 1
            cmd.table = value
        elif not arg.startswith("-"):
            cmd.file = arg
        elif arg.startswith("--wait"):
            _, _, value = arg.partition("=")
            cmd.wait = _wait_value(value) if value else 0.0
            if not value and i < len(args) and args[i][:1].isdigit():
                cmd.wait = _wait_value(args[i])
                i += 1
        elif arg.startswith("-") and not arg.startswith("--"):
            letters = arg[1:]
            for j, letter in enumerate(letters):
                if letter == "t":
                    cmd.test = True
                elif letter == "c":
                    cmd.counters = True
                elif letter == "n":
                    cmd.noflush = True
                elif letter in "TMW":  # take an argument: the rest of the cluster or the next word
                    value = letters[j + 1:]
                    if not value:
                        value = args[i] if i < len(args) else ""
                        i += 1
                    if letter == "T":
                        cmd.table = value
                    break
                elif letter == "w":
                    rest = letters[j + 1:]
                    if rest:
                        cmd.wait = _wait_value(rest)
                    elif i < len(args) and args[i][:1].isdigit():
                        cmd.wait = _wait_value(args[i])
                        i += 1
                    else:
                        cmd.wait = 0.0
                    break
    return cmd
