# SPDX-License-Identifier: GPL-2.0-only
"""Read the words of one rule (what follows `-A CHAIN`) in full: the header options
(-p/-i/-o/-f; -s/-d are only located, RuleParser reads the addresses), the -m extensions with their
options, and the -j/-g target.

options.py gives each option's meaning, matchbuilders.py and targetbuilders.py build the typed
values; a problem is a RuleError naming the word it is at, which parse.py turns into a diagnostic
with line and column. This is the slow path ruleparse.RuleParser takes for the first rule of each
shape (and for rules it cannot template), kept apart from its caches.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ipt2xdp import ir, irmatches, irtargets, options
from ipt2xdp.matchbuilders import MATCH_BUILDERS
from ipt2xdp.optionvalues import Given, OptionError
from ipt2xdp.targetbuilders import TARGET_BUILDERS

HEADER = {
    "-s": "-s", "--source": "-s", "--src": "-s", "-d": "-d", "--destination": "-d", "--dst": "-d",
    "-p": "-p", "--protocol": "-p", "-i": "-i", "--in-interface": "-i", "-o": "-o",
    "--out-interface": "-o", "-f": "-f", "--fragment": "-f", "-m": "-m", "--match": "-m",
    "-j": "-j", "--jump": "-j", "-g": "-g", "--goto": "-g",
}
_NO_INPUT_IFACE = ("OUTPUT", "POSTROUTING")
_NO_OUTPUT_IFACE = ("INPUT", "PREROUTING")

# Targets that are extensions, not chains; a -j to any other unknown name must be a declared chain.
KNOWN_TARGET_EXTENSIONS = frozenset((
    "AUDIT", "CHECKSUM", "CLASSIFY", "CLUSTERIP", "CONNMARK", "CONNSECMARK", "CT", "DNAT", "DNPT",
    "DSCP", "ECN", "HL", "HMARK", "IDLETIMER", "LED", "MARK", "MASQUERADE", "MIRROR", "NETMAP",
    "NFQUEUE", "NOTRACK", "QUEUE", "RATEEST", "REDIRECT", "SAME", "SECMARK", "SET", "SNAT", "SNPT",
    "SYNPROXY", "TCPMSS", "TCPOPTSTRIP", "TEE", "TOS", "TPROXY", "TRACE", "TTL", "ULOG")) | set(options.TARGETS)


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


def _generic_args(words: List[str], i: int) -> int:
    """Index after the arguments of an option we know nothing about: up to the next option."""
    n = len(words)
    while i < n:
        w = words[i]
        if w == "!" or (w.startswith("-") and len(w) > 1 and not w[1].isdigit()):
            break
        i += 1
    return i


class RuleWordParser:
    """Parse the words after `-A CHAIN` into a rule without its addresses (parse_words), with no
    cache; ruleparse.RuleParser adds the caches and the addresses."""

    def __init__(self, user_chains):
        self.user_chains = user_chains
        # (protocol name, [(slot, extension, the builder used or None)]) of the last parse_words():
        # what a template may rebuild (RuleParser._learn)
        self.last_built: tuple = ()

    def parse_words(self, chain: str, words: List[str]) -> tuple:
        """(rule without addresses, where -s is as (negated, word index) or None, the same for -d);
        sets last_built."""
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
            matches.append(self._extension(ext, MATCH_BUILDERS, proto_name, "match"))
            built.append((slot, ext, MATCH_BUILDERS.get(ext.name)))
        tgt = None
        if target is not None:
            if target_kind == "-g":
                tgt = irtargets.Goto(target.name)
            elif target.name in self.user_chains and target.name not in options.TARGETS:
                tgt = irtargets.Jump(target.name)
            else:
                tgt = self._extension(target, TARGET_BUILDERS, proto_name, "target")
                built.append((-1, target, TARGET_BUILDERS.get(target.name)))
        self.last_built = (proto_name, built)
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
        opts = tuple(irmatches.Option(g.name, g.negated, g.args) for g in ext.given)
        if kind == "match":
            return irmatches.GenericMatch(ext.name, opts)
        return irtargets.GenericTarget(ext.name, opts)
