# SPDX-License-Identifier: GPL-2.0-only
"""Parse iptables-save / iptables-restore text into an `ir.Ruleset`.

`parse(text, path)` returns the Ruleset or raises one `ParseError` holding every diagnostic of the
file, each with a position. The lark grammar (grammar/iptables_save.lark) gives the structure of
the file and the shape of a word; options.py gives the meaning of each option.

Two paths: a whole-file LALR parse (fast: a run of rule lines is one token), and, only when that
fails, a line-by-line re-parse that reports every broken line while still checking the others.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import itertools
import operator
import re
import socket
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ipt2xdp import gcpause, ir, options
from ipt2xdp.errors import Diagnostic, ParseError, SourceSpan
from ipt2xdp.options import Given, OptionError

_LARK = None
_WORD_RE = None

HEADER = {
    "-s": "-s", "--source": "-s", "--src": "-s", "-d": "-d", "--destination": "-d", "--dst": "-d",
    "-p": "-p", "--protocol": "-p", "-i": "-i", "--in-interface": "-i", "-o": "-o",
    "--out-interface": "-o", "-f": "-f", "--fragment": "-f", "-m": "-m", "--match": "-m",
    "-j": "-j", "--jump": "-j", "-g": "-g", "--goto": "-g",
}
_ADDRESS_OPTIONS = frozenset(("-s", "--source", "--src", "-d", "--destination", "--dst"))
# Options whose argument decides how the rest of a rule is read (see RuleParser templates).
_STRUCTURAL = frozenset(k for k, v in HEADER.items() if v in ("-p", "-i", "-o", "-m", "-j", "-g"))
_EXACT = object()
_inet_aton = socket.inet_aton
_from_bytes = int.from_bytes
_NO_INPUT_IFACE = ("OUTPUT", "POSTROUTING")
_NO_OUTPUT_IFACE = ("INPUT", "PREROUTING")

# Targets that are extensions, not chains; a -j to any other unknown name must be a declared chain.
KNOWN_TARGET_EXTENSIONS = frozenset((
    "AUDIT", "CHECKSUM", "CLASSIFY", "CLUSTERIP", "CONNMARK", "CONNSECMARK", "CT", "DNAT", "DNPT",
    "DSCP", "ECN", "HL", "HMARK", "IDLETIMER", "LED", "MARK", "MASQUERADE", "MIRROR", "NETMAP",
    "NFQUEUE", "NOTRACK", "QUEUE", "RATEEST", "REDIRECT", "SAME", "SECMARK", "SET", "SNAT", "SNPT",
    "SYNPROXY", "TCPMSS", "TCPOPTSTRIP", "TEE", "TOS", "TPROXY", "TRACE", "TTL", "ULOG")) | set(options.TARGETS)


def lark_parser():
    """The grammar, compiled once per process (the iptables wrapper needs a fast start)."""
    global _LARK, _WORD_RE
    if _LARK is None:
        from lark import Lark

        from ipt2xdp import grammarcache
        from ipt2xdp.resources import grammar_path
        grammar = grammar_path().read_text()
        _LARK = grammarcache.build(
            lambda cache: Lark(grammar, parser="lalr", lexer="contextual", start=["start", "line", "words"],
                               maybe_placeholders=False, edit_terminals=_possessive_rule_block,
                               cache=cache or False),
            grammarcache.cache_file(grammar, _possessive_rule_block))
        bang = _LARK.get_terminal("BANG").pattern.to_regexp()
        word = _LARK.get_terminal("WORD").pattern.to_regexp()
        _WORD_RE = re.compile(f"{bang}|{word}")
    return _LARK


def _possessive_rule_block(terminal) -> None:
    """Make the outer repeat of RULE_BLOCK possessive (`)*` -> `)*+`, Python 3.11+).

    Nothing follows the repeat inside the token, so the match is the same; but a greedy repeat
    keeps backtracking state for each of its ~100,000 iterations (one per rule line), which made
    the lexer 3x slower on a big file. The pattern itself is still the grammar's.
    """
    if terminal.name != "RULE_BLOCK" or sys.version_info < (3, 11):
        return
    value = terminal.pattern.value
    if value.endswith(")*"):
        terminal.pattern = type(terminal.pattern)(value + "+", terminal.pattern.flags, terminal.pattern.raw)


def split_words(text: str) -> List[Tuple[str, int]]:
    """Words of a rule line (quotes still in place) with their 0-based column."""
    lark_parser()
    return [(m.group(), m.start()) for m in _WORD_RE.finditer(text)]


def _words(text: str) -> List[str]:
    # A line the grammar accepted as RULE_LINE is words separated by SPACE; without a double
    # quote a WORD is a maximal run of non-space characters and "!" alone is BANG, so str.split
    # (same whitespace as the regex's \s) gives the same words as the WORD/BANG regex, 5x faster.
    if '"' in text:
        return _WORD_RE.findall(text)
    return text.split()


def unquote(word: str) -> str:
    """`"a \\"b\\""` -> `a "b"`: drop the quotes, resolve backslash escapes inside them."""
    if '"' not in word:
        return word
    if word[0] == '"' and word[-1] == '"' and "\\" not in word and word.count('"') == 2:
        return word[1:-1]  # one plain quoted part, the usual case
    out, i, quoted = [], 0, False
    while i < len(word):
        c = word[i]
        if c == '"':
            quoted = not quoted
        elif c == "\\" and quoted and i + 1 < len(word):
            i += 1
            out.append(word[i])
        else:
            out.append(c)
        i += 1
    return "".join(out)


# ----------------------------------------------------------------------------- rules

class RuleError(Exception):
    def __init__(self, word_index: int, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.word_index, self.message, self.hint = word_index, message, hint


@dataclass
class _Ext:
    name: str
    spec: Optional[options.ExtensionSpec]
    index: int
    given: List[Given] = field(default_factory=list)


def _fast_constructor(cls):
    """A constructor for a frozen dataclass that fills the instance dict in one step.

    The dataclass __init__ sets each field through object.__setattr__ (frozen), which is most of
    the cost of building 100,000 rules. Same fields, same defaults, same resulting object; classes
    with slots, default factories or __post_init__ keep their own constructor.
    """
    fs = dataclasses.fields(cls)
    if (hasattr(cls, "__slots__") or hasattr(cls, "__post_init__")
            or any(f.default_factory is not dataclasses.MISSING or not f.init for f in fs)):
        return cls
    names = [f.name for f in fs]
    defaults = {f"_d_{f.name}": f.default for f in fs if f.default is not dataclasses.MISSING}
    params = ", ".join(f"{n}=_d_{n}" if f"_d_{n}" in defaults else n for n in names)
    body = ", ".join(f"{n!r}: {n}" for n in names)
    namespace = {"_cls": cls, "_new": object.__new__, "_set": object.__setattr__, **defaults}
    exec(f"def make({params}):\n    o = _new(_cls)\n    _set(o, '__dict__', {{{body}}})\n    return o\n", namespace)
    return namespace["make"]


_new_rule = _fast_constructor(ir.Rule)
_new_address = _fast_constructor(ir.Address)
_new_span = _fast_constructor(SourceSpan)


def _slow_network(value: int, bits: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((value, bits))


_NETMASKS = {bits: ipaddress.IPv4Network._make_netmask(bits) for bits in range(33)}


def _quick_network(value: int, bits: int) -> ipaddress.IPv4Network:
    """IPv4Network((value, bits)) for a value with no host bits, without re-validating it."""
    address = object.__new__(ipaddress.IPv4Address)
    address._ip = value
    net = object.__new__(ipaddress.IPv4Network)
    d = net.__dict__
    d["network_address"] = address
    d["netmask"], d["_prefixlen"] = _NETMASKS[bits]
    if bits == 31:
        d["hosts"] = net.__iter__
    elif bits == 32:
        d["hosts"] = lambda: [ipaddress.IPv4Address(value)]
    return net


def _check_quick_network() -> bool:
    """_quick_network builds what this Python's ipaddress builds (else the slow one is used)."""
    try:
        for value, bits in ((0x0A000001, 32), (0x0A000000, 31), (0x0A000000, 24), (0, 0)):
            fast, real = _quick_network(value, bits), _slow_network(value, bits)
            if (sorted(vars(fast)) != sorted(vars(real)) or fast != real or hash(fast) != hash(real)
                    or str(fast) != str(real) or fast.netmask != real.netmask
                    or fast.prefixlen != real.prefixlen
                    or list(itertools.islice(fast.hosts(), 3)) != list(itertools.islice(real.hosts(), 3))):
                return False
        return True
    except Exception:  # noqa: BLE001 - any surprise means: use the real constructor
        return False


_make_network = _quick_network if _check_quick_network() else _slow_network


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# a.b.c.d[/n] in canonical decimal (no leading zeros, each octet 0..255), ASCII digits only
_DOTTED_CIDR = re.compile(rf"({_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET})(?:/([0-9]{{1,2}}))?")
_dotted_fullmatch = _DOTTED_CIDR.fullmatch
_MASKS = [(0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF for bits in range(33)]


def _network(text: str, index: int) -> ipaddress.IPv4Network:
    # The common spelling "a.b.c.d[/n]" is decoded by hand (the regex checks it, inet_aton
    # converts it): ipaddress's own parser is the main cost of a 100k-rule blocklist. Anything
    # else goes through ipaddress.
    m = _DOTTED_CIDR.fullmatch(text)
    if m:
        addr, plen = m.groups()
        bits = 32 if plen is None else int(plen)
        if bits <= 32:
            return _make_network(_from_bytes(_inet_aton(addr), "big") & _MASKS[bits], bits)
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        pass
    if "/" in text:
        addr, mask = text.split("/", 1)
        try:
            ipaddress.IPv4Address(addr)
            ipaddress.IPv4Address(mask)
        except ValueError:
            raise RuleError(index, f"host/network '{text}' not found") from None
        raise RuleError(index, f"non-contiguous mask in '{text}' is not supported")
    hint = "ipt2xdp does not resolve host names; write the address" if text[:1].isalpha() else None
    if ":" in text:
        hint = "an IPv6 address: this looks like an ip6tables ruleset; ipt2xdp reads IPv4 (iptables-save) only"
    raise RuleError(index, f"host/network '{text}' not found", hint)


def _generic_args(words: List[str], i: int) -> int:
    """Index after the arguments of an option we know nothing about: up to the next option."""
    n = len(words)
    while i < n:
        w = words[i]
        if w == "!" or (w.startswith("-") and len(w) > 1 and not w[1].isdigit()):
            break
        i += 1
    return i


class RuleParser:
    """Parse the words after `-A CHAIN` into one or more ir.Rule (several for `-s a,b`)."""

    def __init__(self, user_chains):
        self.user_chains = user_chains
        # Two caches, valid for one table only: its set of user chains only grows, so a cached
        # success stays a success.
        # 1. Templates: big rulesets repeat a few rule shapes whose values differ (addresses,
        #    ports, comments). The key blanks every word that is neither an option ("-..."), nor
        #    "!", nor the argument of -p/-i/-o/-m/-j/-g. The first rule of a key is parsed in full;
        #    if each blanked word turned out to be an address or the argument of an option of a
        #    known match or target, the parse of any rule with that key takes the same path, so
        #    the key maps to the parsed rule plus the list of matches/targets to rebuild from the
        #    blanked words (their builders check the values; one memo per match instance).
        #    Otherwise the key maps to _EXACT and the rule takes cache 2.
        # 2. The parsed rest of a rule keyed by its words with only the addresses blanked out.
        self._templates: Dict[tuple, object] = {}
        self._cache: Dict[tuple, tuple] = {}
        self._built: list = []

    def parse(self, chain: str, words: List[str], counters: ir.Counters, span) -> List[ir.Rule]:
        structural = _STRUCTURAL
        # kept: options and "!" (also any "!word": keeping a word only makes the key stricter)
        key = (chain, *[w if w[0] in "-!" or p in structural else None for p, w in zip([""] + words, words)])
        entry = self._templates.get(key)
        if entry is None:
            entry = self._learn(chain, words, key)
        if entry is _EXACT:
            t, source_at, destination_at = self._exact(chain, words)
        else:
            t, source_at, destination_at, dynamic = entry
            if dynamic is not None:
                values, memo = dynamic[0], dynamic[1]
                value_key = values(words)
                rebuilt = memo.get(value_key)
                if rebuilt is None:
                    rebuilt = memo[value_key] = self._rebuild(t, dynamic[2], words)
                t = rebuilt
        if source_at is None and destination_at is None:
            return [_new_rule(chain, None, None, t.protocol, t.in_interface, t.out_interface, t.fragment,
                              t.matches, t.target, counters, span)]
        sources = self._addresses(source_at, words)
        destinations = self._addresses(destination_at, words)
        return [_new_rule(chain, s, d, t.protocol, t.in_interface, t.out_interface, t.fragment, t.matches,
                          t.target, counters, span)
                for s in sources for d in destinations]

    def _exact(self, chain: str, words: List[str]) -> tuple:
        key_words = list(words)
        for index, word in enumerate(words):
            if word in _ADDRESS_OPTIONS and index + 1 < len(words):
                key_words[index + 1] = None
        key = (chain, tuple(key_words))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._parse(chain, words)
            self._cache[key] = cached
        return cached

    def _learn(self, chain: str, words: List[str], key: tuple):
        """Parse the first rule of a template key; return (and remember) its template or _EXACT.

        A template is (rule without addresses, -s where, -d where, dynamic), dynamic None when no
        match or target depends on a blanked word, else (getter of those words, memo of the
        rebuilt rule by those words, per match/target: (slot, builder, protocol name, -m index,
        layout of its options, getter of its blanked words, memo of the built value)).
        """
        template, source_at, destination_at = self._parse(chain, words)
        blanked = {i for i, k in enumerate(key[1:]) if k is None}
        allowed = {where[1] for where in (source_at, destination_at) if where is not None}
        parts = []
        all_positions: List[int] = []
        proto_name, built = self._built
        for slot, ext, builder in built:
            if builder is None:
                continue
            positions = [k for g in ext.given for k in range(g.index + 1, g.index + 1 + len(g.args))]
            allowed.update(positions)
            if blanked.intersection(positions):
                layout = tuple((g.name, g.negated, g.index, len(g.args)) for g in ext.given)
                parts.append((slot, builder, proto_name, ext.index, layout, operator.itemgetter(*positions), {}))
                all_positions += positions
        if not blanked <= allowed:
            self._templates[key] = _EXACT
            return _EXACT
        dynamic = (operator.itemgetter(*all_positions), {}, tuple(parts)) if parts else None
        entry = (template, source_at, destination_at, dynamic)
        self._templates[key] = entry
        return entry

    @staticmethod
    def _rebuild(t: ir.Rule, parts: tuple, words: List[str]) -> ir.Rule:
        """The template rule with its matches/target rebuilt from this rule's words."""
        matches, target = list(t.matches), t.target
        for slot, builder, proto_name, ext_index, layout, values, memo in parts:
            memo_key = values(words)
            value = memo.get(memo_key)
            if value is None:
                given = [Given(name, negated, tuple([unquote(a) for a in words[at + 1:at + 1 + nargs]]), at)
                         for name, negated, at, nargs in layout]
                try:
                    value = builder(given, proto_name, ext_index)
                except OptionError as e:
                    raise RuleError(e.word_index, e.message, e.hint) from None
                memo[memo_key] = value
            if slot < 0:
                target = value
            else:
                matches[slot] = value
        return _new_rule(t.chain, None, None, t.protocol, t.in_interface, t.out_interface, t.fragment,
                         tuple(matches), target)

    def _parse(self, chain: str, words: List[str]) -> tuple:
        head: Dict[str, tuple] = {}
        exts: List[_Ext] = []
        target: Optional[_Ext] = None
        target_kind = None
        generic: Optional[_Ext] = None       # the last extension with unknown options
        negate, negate_at = False, -1
        i, n = 0, len(words)
        while i < n:
            w = words[i]
            if w == "!":
                if negate:
                    raise RuleError(i, "multiple '!' flags not allowed")
                negate, negate_at = True, i
                i += 1
                continue
            key = HEADER.get(w)
            if key is not None:
                if key in head:
                    raise RuleError(i, f"multiple {key} flags not allowed")
                if key == "-f":
                    head[key] = (not negate, i)
                    negate = False
                    i += 1
                    continue
                if i + 1 >= n:
                    raise RuleError(i, f"option '{w}' requires an argument")
                arg = words[i + 1]
                if arg == "!":
                    raise RuleError(i + 1, f"'{w} ! ...' is the old negation syntax, rejected since iptables 1.6",
                                    hint=f"write '! {w} ...'")
                arg = unquote(arg)
                if key in ("-m", "-j", "-g"):
                    if negate:
                        raise RuleError(negate_at, f"'!' cannot be used with {key}")
                    if key == "-m":
                        spec = options.MATCHES.get(arg)
                        ext = _Ext(arg, spec, i)
                        exts.append(ext)
                        if spec is None:
                            generic = ext
                    else:
                        if "-j" in head or "-g" in head:
                            raise RuleError(i, "multiple -j/-g flags not allowed")
                        target, target_kind = self._target(key, arg, i), key
                        if target.spec is None and target_kind == "-j" and arg not in self.user_chains:
                            generic = target
                        head[key] = (arg, i)
                    i += 2
                    continue
                head[key] = (arg, negate, i)
                negate = False
                i += 2
                continue
            if not w.startswith("--"):
                raise RuleError(i, f"unexpected argument '{w}'")
            i = self._option(w, words, i, negate, exts, target, generic, head)
            negate = False
        if negate:
            raise RuleError(negate_at, "'!' at the end of the rule negates nothing")
        return self._build(chain, head, exts, target, target_kind)

    def _target(self, kind: str, name: str, index: int) -> _Ext:
        if kind == "-g":
            if name not in self.user_chains:
                raise RuleError(index + 1, f"goto to undefined chain '{name}'",
                                hint=f"declare it with ':{name} - [0:0]'")
            return _Ext(name, options.ExtensionSpec(name, ()), index)
        spec = options.TARGETS.get(name)
        if spec is None and name not in self.user_chains and name not in KNOWN_TARGET_EXTENSIONS:
            raise RuleError(index + 1, f"jump to undefined chain or unknown target '{name}'",
                            hint=f"declare the chain with ':{name} - [0:0]'")
        if spec is None and name in self.user_chains:
            spec = options.ExtensionSpec(name, ())
        return _Ext(name, spec, index)

    def _option(self, w, words, i, negate, exts, target, generic, head) -> int:
        owner, spec = None, None
        if target is not None and target.spec is not None:
            spec = target.spec.lookup(w)
            owner = target if spec else None
        if owner is None:
            for ext in reversed(exts):
                if ext.spec is not None:
                    spec = ext.spec.lookup(w)
                    if spec:
                        owner = ext
                        break
        if owner is None and "-p" in head:
            proto, proto_neg, _ = head["-p"]
            name = options.protocol_name(options.protocol_number(proto) or 0)
            implicit = options.MATCHES.get(name) if name in options.IMPLICIT_PROTOCOL_MATCHES else None
            if implicit is not None and not proto_neg and implicit.lookup(w):
                owner, spec = _Ext(name, implicit, i), implicit.lookup(w)
                exts.append(owner)
        if owner is None and generic is not None:
            end = _generic_args(words, i + 1)
            generic.given.append(Given(w, negate, tuple(unquote(a) for a in words[i + 1:end]), i))
            return end
        if owner is None:
            known = [s for e in exts if e.spec for o in e.spec.options for s in (o.name,) + o.aliases]
            if target is not None and target.spec is not None:
                known += [o.name for o in target.spec.options]
            if "-p" in head:
                implicit = options.MATCHES.get(head["-p"][0].lower())
                known += [o.name for o in implicit.options] if implicit else []
            close = difflib.get_close_matches(w, known, n=1)
            where = " for " + ", ".join(f"-m {e.name}" for e in exts) if exts else ""
            raise RuleError(i, f"unknown option '{w}'{where}",
                            hint=f"did you mean '{close[0]}'?" if close else None)
        if negate and not spec.negatable:
            raise RuleError(i, f"option '{w}' cannot be inverted")
        end = i + 1 + spec.nargs
        if end > len(words):
            raise RuleError(i, f"option '{w}' requires {spec.nargs} argument{'s' * (spec.nargs > 1)}")
        args = words[i + 1:end]
        if "!" in args:
            raise RuleError(i + 1 + args.index("!"), f"'{w} ! ...' is the old negation syntax",
                            hint=f"write '! {w} ...'")
        owner.given.append(Given(spec.name, negate, tuple(unquote(a) for a in args), i))
        return end

    def _build(self, chain, head, exts, target, target_kind) -> tuple:
        """(rule without addresses, where -s is (negated, word index) or None, same for -d)."""
        protocol = None
        proto_name = None
        if "-p" in head:
            text, neg, at = head["-p"]
            number = options.protocol_number(text)
            if number is None:
                raise RuleError(at + 1, f"unknown protocol '{text}' specified")
            if number:
                protocol = ir.Protocol(number, neg)
                proto_name = None if neg else options.protocol_name(number)
            elif neg:
                protocol = ir.Protocol(0, True)
        ifaces = {}
        for key in ("-i", "-o"):
            if key in head:
                text, neg, at = head[key]
                if len(text) > 15 or not text:
                    raise RuleError(at + 1, f"interface name '{text}' must be 1 to 15 characters")
                forbidden = _NO_INPUT_IFACE if key == "-i" else _NO_OUTPUT_IFACE
                if chain in forbidden:
                    raise RuleError(at, f"can't use {key} with {chain}")
                ifaces[key] = None if text == "+" and not neg else ir.Interface(text, neg)
        fragment = head["-f"][0] if "-f" in head else None
        matches = []
        built = []  # (slot, ext, the builder used or None): what a template may rebuild
        for slot, ext in enumerate(exts):
            matches.append(self._extension(ext, options.MATCH_BUILDERS, proto_name, "match"))
            built.append((slot, ext, options.MATCH_BUILDERS.get(ext.name)))
        tgt = None
        if target is not None:
            if target_kind == "-g":
                tgt = ir.Goto(target.name)
            elif target.name in self.user_chains and target.name not in options.TARGETS:
                tgt = ir.Jump(target.name)
            else:
                tgt = self._extension(target, options.TARGET_BUILDERS, proto_name, "target")
                built.append((-1, target, options.TARGET_BUILDERS.get(target.name)))
        self._built = (proto_name, built)
        template = ir.Rule(chain, None, None, protocol, ifaces.get("-i"), ifaces.get("-o"), fragment,
                           tuple(matches), tgt)
        where = [(head[k][1], head[k][2] + 1) if k in head else None for k in ("-s", "-d")]
        return template, where[0], where[1]

    def _extension(self, ext: _Ext, builders, proto_name, kind):
        builder = builders.get(ext.name)
        try:
            if builder is not None:
                return builder(ext.given, proto_name, ext.index)
        except OptionError as e:
            raise RuleError(e.word_index, e.message, e.hint) from None
        opts = tuple(ir.Option(g.name, g.negated, g.args) for g in ext.given)
        return ir.GenericMatch(ext.name, opts) if kind == "match" else ir.GenericTarget(ext.name, opts)

    @staticmethod
    def _addresses(where, words) -> List[Optional[ir.Address]]:
        if where is None:
            return [None]
        neg, at = where
        text = words[at]
        m = _dotted_fullmatch(text)
        if m is not None:  # the common case of _network, inline
            addr, plen = m.groups()
            bits = 32 if plen is None else int(plen)
            if bits <= 32:
                if bits == 0 and not neg:
                    return [None]
                return [_new_address(_make_network(_from_bytes(_inet_aton(addr), "big") & _MASKS[bits], bits), neg)]
        if "," not in text and '"' not in text:
            net = _network(text, at)
            return [None if net._prefixlen == 0 and not neg else _new_address(net, neg)]
        out = []
        for item in unquote(text).split(","):
            net = _network(item, at)
            out.append(None if net.prefixlen == 0 and not neg else _new_address(net, neg))
        return out


# ----------------------------------------------------------------------------- file structure

_COUNTERS_RE = re.compile(r"\[(\d+):(\d+)\]")
_BUILTIN_POLICIES = ("ACCEPT", "DROP")


@dataclass
class _Chain:
    name: str
    policy: Optional[str]
    counters: ir.Counters
    rules: List[ir.Rule] = field(default_factory=list)


@dataclass
class _Table:
    name: str
    line: int
    chains: Dict[str, _Chain] = field(default_factory=dict)


class ParseMemo:
    """Rule lines parsed before in this process, to parse them again fast: `ipt2xdp import` parses
    the file, restores it, then parses what iptables-save prints back, mostly the same lines.

    Pass one to parse() calls that may see the same lines. A line's rules depend on its text and
    on the user chains its table has declared so far (`-j NAME` is a jump only to a declared
    chain; an undeclared NAME is an error), so a table's recorded lines are reused only while it
    has declared every user chain that was declared when any of them was recorded. It keeps every
    line it sees: a long-lived user should drop it now and then.
    """

    def __init__(self) -> None:
        # table name -> (user chains some recording was made under, line text -> its rules)
        self.tables: Dict[str, Tuple[set, Dict[str, List[ir.Rule]]]] = {}


def _with_span(rule: ir.Rule, span) -> ir.Rule:
    """The same rule read at another place (every other field shared)."""
    fields = rule.__dict__.copy()
    fields["span"] = span
    copy = object.__new__(ir.Rule)
    object.__setattr__(copy, "__dict__", fields)
    return copy


class _Builder:
    """Consume the items of a file in order (table, chain, rules, commit) and build the Ruleset."""

    def __init__(self, path: str, memo: Optional[ParseMemo] = None):
        self.path = path
        self.memo = memo
        self.diagnostics: List[Diagnostic] = []
        self.tables: Dict[str, ir.Table] = {}
        self.current: Optional[_Table] = None
        self.rule_parser = RuleParser(())

    def error(self, line, col, end_col, message, hint=None, code="parse"):
        self.diagnostics.append(Diagnostic("error", code, message, SourceSpan(self.path, line, col, end_col), hint))

    def table(self, text: str, line: int, col: int) -> None:
        name = text[1:]
        if self.current is not None:
            self.error(line, col, col + len(text), f"COMMIT expected before the next table (table '{self.current.name}' "
                       f"opened at line {self.current.line})", code="commit")
        if name not in ir.BUILTIN_CHAINS:
            self.error(line, col + 1, col + len(text), f"unknown table '{name}'",
                       hint="tables: " + ", ".join(ir.BUILTIN_CHAINS), code="table")
            self.current = _Table(name, line)  # still read its lines, to report their errors
        else:
            self.current = _Table(name, line)
        self.rule_parser = RuleParser(set())

    def chain(self, decl: str, policy: str, counters: Optional[str], line: int, col: int) -> None:
        name = decl[1:]
        end = col + len(decl)
        if self.current is None:
            self.error(line, col, end, "chain declared outside a table", hint="start the table with '*filter'")
            return
        builtins = ir.BUILTIN_CHAINS.get(self.current.name, ())
        if name in self.current.chains:
            self.error(line, col + 1, end, f"chain '{name}' declared twice", code="chain")
            return
        if name in builtins:
            if policy not in _BUILTIN_POLICIES and policy != "-":
                self.error(line, end + 1, end + 1 + len(policy), f"bad policy '{policy}' for built-in chain {name}",
                           hint="ACCEPT or DROP")
                return
            policy = "ACCEPT" if policy == "-" else policy
        else:
            if policy != "-":
                self.error(line, end + 1, end + 1 + len(policy),
                           f"can't set policy '{policy}' on user chain '{name}'", hint="write '-'")
                return
            if len(name) > 28 or name.startswith("-") or name == "!" or name in KNOWN_TARGET_EXTENSIONS:
                self.error(line, col + 1, end, f"invalid chain name '{name}'", code="chain")
                return
            policy = None
        self.current.chains[name] = _Chain(name, policy, _counters(counters))
        if policy is None:
            self.rule_parser.user_chains.add(name)

    def rules(self, block: str, line: int, col: int) -> None:
        """A run of rule lines (one RULE_BLOCK token starting at line:col).

        The common line (`-A CHAIN ...` of a known chain, no counters) is handled
        inline; any other line, and any line whose rule is in error, goes through rule().
        """
        rule = self.rule
        table = self.current
        if table is None:
            chains, parse = {}, None
        else:
            chains, parse = table.chains, self.rule_parser.parse
        path, zero, new_span, findall, derived = self.path, ir.ZERO, _new_span, _WORD_RE.findall, ir.DERIVED
        known, record = self._memo_lines()
        for offset, text in enumerate(block.split("\n")):
            c = col if offset == 0 else 1
            if text[0] in " \t\f\r":
                stripped = text.lstrip(" \t\f\r")
                c += len(text) - len(stripped)
                text = stripped
            if text[-1] in " \t\f\r":
                text = text.rstrip(" \t\f\r")
            if not text.startswith("-A "):
                rule(text, line + offset, c)
                continue
            again = known.get(text) if known is not None else None
            if again is not None and '"' not in text:
                # a line read before: only its chain's word is needed (what text.split()[1] is)
                target_chain = chains.get(text.split(None, 2)[1])
                if target_chain is not None:
                    span = new_span(path, line + offset, c, c + len(text))
                    target_chain.rules.extend([_with_span(r, span) for r in again])
                    continue
            words = findall(text) if '"' in text else text.split()  # see _words
            target_chain = chains.get(words[1])
            if target_chain is None:
                rule(text, line + offset, c)
                continue
            span = new_span(path, line + offset, c, c + len(text))
            if again is not None:
                target_chain.rules.extend([_with_span(r, span) for r in again])
                continue
            try:
                rules = parse(words[1], words[2:], zero, span)
            except RuleError:
                rule(text, line + offset, c)  # parses it again, the same way, and reports the error
                continue
            target_chain.rules.extend(rules)
            if record is not None:
                for r in rules:  # shared with the copies read again at other lines (ir.DERIVED)
                    r.__dict__[derived] = {}
                record[text] = rules

    def _memo_lines(self):
        """(recorded lines this block may reuse or None, where to record its lines or None)."""
        if self.memo is None or self.current is None:
            return None, None
        chains, lines = self.memo.tables.setdefault(self.current.name, (set(), {}))
        user_chains = self.rule_parser.user_chains
        reusable = lines if chains <= user_chains else None
        chains |= user_chains  # what this block's lines are parsed under
        return reusable, lines

    def rule(self, text: str, line: int, col: int) -> None:
        words = _words(text)
        i = 0
        counters = ir.ZERO
        if words and words[0].startswith("["):
            counters = _counters(words[0])
            i = 1
        action = words[i]
        if len(words) <= i + 1:
            self.error(line, col, None, f"{action} needs a chain name")
            return
        chain_name = words[i + 1]
        span = _new_span(self.path, line, col, col + len(text))
        if self.current is None:
            self.error(line, col, col + len(text), "rule outside a table", hint="start the table with '*filter'")
            return
        start = i + 2
        position = None
        if action in ("-I", "--insert") and start < len(words) and words[start].isdigit():
            position = int(words[start])
            start += 1
        table = self.current
        target_chain = table.chains.get(chain_name)
        if target_chain is None and chain_name in ir.BUILTIN_CHAINS.get(table.name, ()):
            # iptables-restore lets a table use its built-in chains without declaring them
            target_chain = table.chains[chain_name] = _Chain(chain_name, "ACCEPT", ir.ZERO)
        if target_chain is None:
            chain_col = split_words(text)[i + 1][1]
            self.error(line, col + chain_col, col + chain_col + len(chain_name),
                       f"rule for undefined chain '{chain_name}' in table '{table.name}'",
                       hint=f"declare it with ':{chain_name} - [0:0]' before its rules", code="chain")
            return
        try:
            rules = self.rule_parser.parse(chain_name, words[start:], counters, span)
        except RuleError as e:
            located = split_words(text)
            word, wcol = located[start + e.word_index] if start + e.word_index < len(located) else located[-1]
            self.error(line, col + wcol, col + wcol + len(word), e.message, e.hint, code="rule")
            return
        if position is None and action in ("-I", "--insert"):
            position = 1
        if position is None:
            target_chain.rules.extend(rules)
        elif position - 1 > len(target_chain.rules) or position < 1:
            self.error(line, col, None, f"index of insertion too big ({position})")
        else:
            target_chain.rules[position - 1:position - 1] = rules

    def commit(self, line: int, col: int) -> None:
        if self.current is None:
            self.error(line, col, col + 6, "COMMIT without a table", code="commit")
            return
        table = self.current
        self.current = None
        if table.name not in ir.BUILTIN_CHAINS:
            return
        builtins = ir.BUILTIN_CHAINS[table.name]
        chains = [table.chains.get(n) or _Chain(n, "ACCEPT", ir.ZERO) for n in builtins]
        # user chains by name, as the kernel keeps them and iptables-save lists them
        chains += sorted((c for n, c in table.chains.items() if n not in builtins), key=lambda c: c.name)
        self.tables[table.name] = ir.Table(table.name, tuple(
            ir.Chain(c.name, c.policy, c.counters, tuple(c.rules)) for c in chains))

    def finish(self, last_line: int) -> ir.Ruleset:
        if self.current is not None:
            self.error(last_line, 1, None, f"COMMIT expected at the end of table '{self.current.name}' "
                       f"(opened at line {self.current.line})", code="commit")
        if self.diagnostics:
            raise ParseError(self.diagnostics)
        return ir.Ruleset(tuple(self.tables.values()))


def _counters(text: Optional[str]) -> ir.Counters:
    if not text:
        return ir.ZERO
    m = _COUNTERS_RE.fullmatch(text)
    return ir.Counters(int(m.group(1)), int(m.group(2))) if m else ir.ZERO


def _feed(builder: _Builder, item, line_no: Optional[int] = None) -> None:
    """Hand one parsed item (a lark Tree or a COMMENT token) to the builder."""
    from lark import Token
    if isinstance(item, Token):
        return  # COMMENT
    kind = item.data
    toks = item.children
    first = toks[0]
    line = line_no or first.line
    if kind == "table_header":
        builder.table(str(first), line, first.column)
    elif kind == "chain_header":
        builder.chain(str(first), str(toks[1]), str(toks[2]) if len(toks) > 2 else None, line, first.column)
    elif kind == "commit":
        builder.commit(line, first.column)
    elif kind == "rules":
        builder.rules(str(first), line, first.column)


def parse(text: str, path: str = "<stdin>", memo: Optional[ParseMemo] = None) -> ir.Ruleset:
    """Parse a whole iptables-save file; raise ParseError with every problem found.

    Args:
        text: the file's contents.
        path: the name used in diagnostics.
        memo: lines parsed by earlier calls with the same memo are not parsed again (ParseMemo).
    Returns:
        The Ruleset, tables in file order.
    """
    # The parse allocates millions of small objects and no cycles; the cyclic collector, left on,
    # rescans the growing heap over and over (it was more than half the time of a 100k-rule parse).
    with gcpause.paused():
        return _parse(text, path, memo)


def _parse(text: str, path: str, memo: Optional[ParseMemo] = None) -> ir.Ruleset:
    from lark.exceptions import UnexpectedInput
    parser = lark_parser()
    builder = _Builder(path, memo)
    source = text if text.endswith("\n") or not text else text + "\n"
    try:
        tree = parser.parse(source, start="start")
    except UnexpectedInput:
        tree = None
    if tree is not None:
        for item in tree.children:
            _feed(builder, item)
    else:
        _parse_lines(parser, builder, text)
    last_line = text.count("\n") + (0 if text.endswith("\n") else 1)
    try:
        return builder.finish(max(last_line, 1))
    except ParseError as e:
        e.source_lines = {path: text.splitlines()}
        raise


def _parse_lines(parser, builder: _Builder, text: str) -> None:
    """The slow path: parse each line on its own so that every broken line is reported."""
    from lark.exceptions import UnexpectedInput
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            tree = parser.parse(line + "\n", start="line")
        except UnexpectedInput as e:
            col = getattr(e, "column", 1)
            col = col if isinstance(col, int) and col > 0 else 1
            builder.error(number, col, None, _syntax_message(line, e, col), code="syntax")
            continue
        for item in tree.children:
            _feed(builder, item, number)


def _syntax_message(line: str, e, col: int) -> str:
    stripped = line.lstrip()
    if stripped.startswith(("-A", "-I", "[")) and stripped.count('"') % 2:
        return "unterminated quoted string"
    if stripped.startswith(("-A", "-I", "--append", "--insert", "[")):
        return "malformed rule line (expected: [packets:bytes] -A CHAIN options...)"
    if stripped.startswith(":"):
        return "malformed chain line (expected: :CHAIN POLICY [packets:bytes])"
    snippet = line[col - 1:col + 19] if col - 1 < len(line) else line
    return f"unexpected text '{snippet.strip()}' (not part of an iptables-save file)"
