# SPDX-License-Identifier: GPL-2.0-only
"""Parse the words of one rule (what follows `-A CHAIN`) into ir.Rule objects.

options.py gives each option's meaning; this module knows the rule's structure (-s/-d/-p/-i/-o/-f,
-m extensions, -j/-g) and keeps two caches that make a big ruleset of few rule shapes cheap
(RuleParser). A problem is a RuleError naming the word it is at; parse.py turns it into a
diagnostic with line and column.
"""
from __future__ import annotations

import difflib
import ipaddress
import operator
import re
import socket
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ipt2xdp import ir, irmatches, irtargets, linetext, options
from ipt2xdp.errors import SourceSpan
from ipt2xdp.fastinit import fast_constructor, make_network
from ipt2xdp.matchbuilders import MATCH_BUILDERS
from ipt2xdp.optionvalues import Given, OptionError
from ipt2xdp.targetbuilders import TARGET_BUILDERS

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
_inet_aton, _inet_ntoa = socket.inet_aton, socket.inet_ntoa
_from_bytes = int.from_bytes
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


_new_rule = fast_constructor(ir.Rule)
_new_address = fast_constructor(ir.Address)
_new_span = fast_constructor(SourceSpan)

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# a.b.c.d[/n] in canonical decimal (no leading zeros, each octet 0..255), ASCII digits only
_DOTTED_CIDR = re.compile(rf"({_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET})(?:/([0-9]{{1,2}}))?")
_dotted_fullmatch = _DOTTED_CIDR.fullmatch
_MASKS = [(0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF for bits in range(33)]
# "/n" as iptables-save prints it (no leading zero); other spellings take the regex
_PREFIX_LENGTHS = {str(bits): bits for bits in range(33)}


def _network(text: str, index: int) -> ipaddress.IPv4Network:
    # The common spelling "a.b.c.d[/n]" is decoded by hand (the regex checks it, inet_aton
    # converts it): ipaddress's own parser is the main cost of a 100k-rule blocklist. Anything
    # else goes through ipaddress.
    m = _DOTTED_CIDR.fullmatch(text)
    if m:
        addr, plen = m.groups()
        bits = 32 if plen is None else int(plen)
        if bits <= 32:
            return make_network(_from_bytes(_inet_aton(addr), "big") & _MASKS[bits], bits)
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
        # The last key's (chain, word count, getter and values of its kept words, blanked
        # positions, entry): a run of rules of one shape is checked against it (_same_key)
        # instead of building and hashing its key for each rule.
        self._last: Optional[tuple] = None
        self._address_as_printed = False  # see _addresses

    def parse(self, chain: str, words: List[str], counters: ir.Counters, span) -> List[ir.Rule]:
        entry = self._same_key(chain, words)
        if entry is None:
            structural = _STRUCTURAL
            # kept: options and "!" (also any "!word": keeping a word only makes the key stricter)
            key = (chain, *[w if w[0] in "-!" or p in structural else None for p, w in zip([""] + words, words)])
            entry = self._templates.get(key)
            if entry is None:
                entry = self._learn(chain, words, key)
            self._remember_key(key, entry)
        text_plan = None
        if entry is _EXACT:
            t, source_at, destination_at = self._exact(chain, words)
        else:
            t, source_at, destination_at, dynamic, text_plan = entry
            if dynamic is not None:
                values, memo = dynamic[0], dynamic[1]
                value_key = values(words)
                rebuilt = memo.get(value_key)
                if rebuilt is None:
                    rebuilt = memo[value_key] = self._rebuild(t, dynamic[2], words)
                t = rebuilt
        if source_at is None and destination_at is None:
            rule = _new_rule(chain, None, None, t.protocol, t.in_interface, t.out_interface, t.fragment,
                             t.matches, t.target, counters, span)
            return [self._with_text(rule, text_plan, chain, words, True)]
        sources = self._addresses(source_at, words)
        if destination_at is None and len(sources) == 1:  # one rule: the product below, written out
            rule = _new_rule(chain, sources[0], None, t.protocol, t.in_interface, t.out_interface, t.fragment,
                             t.matches, t.target, counters, span)
            return [self._with_text(rule, text_plan, chain, words, self._address_as_printed)]
        source_as_printed = self._address_as_printed
        destinations = self._addresses(destination_at, words)
        if len(sources) == 1 and len(destinations) == 1:
            rule = _new_rule(chain, sources[0], destinations[0], t.protocol, t.in_interface, t.out_interface,
                             t.fragment, t.matches, t.target, counters, span)
            return [self._with_text(rule, text_plan, chain, words, source_as_printed and self._address_as_printed)]
        return [_new_rule(chain, s, d, t.protocol, t.in_interface, t.out_interface, t.fragment, t.matches,
                          t.target, counters, span)
                for s in sources for d in destinations]

    @staticmethod
    def _with_text(rule: ir.Rule, text_plan, chain: str, words: List[str], addresses_as_printed) -> ir.Rule:
        """The rule, given its rendered text (ir.DERIVED) where linetext knows it from the words."""
        if text_plan is not None and addresses_as_printed:
            text = text_plan.text(chain, words, rule)
            if text is not None:
                rule.__dict__[ir.DERIVED] = {"text": text}
        return rule

    def _same_key(self, chain: str, words: List[str]):
        """The entry of words' key if it is the last key, else None. The same key: the same chain
        and length, the same kept words, and no blanked word that parse() would keep (an option or
        "!"; the word before a blanked one is kept, so it is the last key's, not structural)."""
        last = self._last
        if last is None or last[0] != chain or last[1] != len(words) or last[2](words) != last[3]:
            return None
        for i in last[4]:
            if words[i][0] in "-!":
                return None
        return last[5]

    def _remember_key(self, key: tuple, entry) -> None:
        kept = [i for i, k in enumerate(key[1:]) if k is not None]
        if len(kept) < 2:  # itemgetter of one position gives a word, not a tuple: not worth it
            self._last = None
            return
        blanked = tuple(i for i, k in enumerate(key[1:]) if k is None)
        self._last = (key[0], len(key) - 1, operator.itemgetter(*kept), tuple(key[i + 1] for i in kept), blanked,
                      entry)

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

        A template is (rule without addresses, -s where, -d where, dynamic, text plan), dynamic None
        when no match or target depends on a blanked word, else (getter of those words, memo of the
        rebuilt rule by those words, per match/target: (slot, builder, protocol name, -m index,
        layout of its options, getter of its blanked words, memo of the built value)); text plan:
        linetext.TextPlan, or None.
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
        addresses = [where[1] for where in (source_at, destination_at) if where is not None]
        text_plan = linetext.plan_for(sorted(blanked), addresses, [(p[1], p[4]) for p in parts])
        entry = (template, source_at, destination_at, dynamic, text_plan)
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
        opts = tuple(irmatches.Option(g.name, g.negated, g.args) for g in ext.given)
        if kind == "match":
            return irmatches.GenericMatch(ext.name, opts)
        return irtargets.GenericTarget(ext.name, opts)

    def _addresses(self, where, words) -> List[Optional[ir.Address]]:
        """The addresses of the word at where (None: no -s/-d). Sets _address_as_printed: whether
        the word is the one address render_rule() prints for it (linetext)."""
        self._address_as_printed = where is None  # no word to differ from the print
        if where is None:
            return [None]
        neg, at = where
        text = words[at]
        address, slash, plen = text.partition("/")
        bits = _PREFIX_LENGTHS.get(plen) if slash else 32
        if bits is not None:  # the commonest spelling, checked by formatting it back (cheaper than the regex)
            try:
                packed = _inet_aton(address)
            except (OSError, ValueError, UnicodeError):
                packed = None
            if packed is not None and _inet_ntoa(packed) == address:
                if bits == 0 and not neg:
                    return [None]
                value = _from_bytes(packed, "big")
                network = value & _MASKS[bits]
                # printed as "a.b.c.d/n" of the network: the word with its /n and no host bits
                self._address_as_printed = bool(slash) and value == network
                return [_new_address(make_network(network, bits), neg)]
        m = _dotted_fullmatch(text)
        if m is not None:  # the common case of _network, inline
            addr, plen = m.groups()
            bits = 32 if plen is None else int(plen)
            if bits <= 32:
                if bits == 0 and not neg:
                    return [None]
                return [_new_address(make_network(_from_bytes(_inet_aton(addr), "big") & _MASKS[bits], bits), neg)]
        if "," not in text and '"' not in text:
            net = _network(text, at)
            return [None if net._prefixlen == 0 and not neg else _new_address(net, neg)]
        out = []
        for item in unquote(text).split(","):
            net = _network(item, at)
            out.append(None if net.prefixlen == 0 and not neg else _new_address(net, neg))
        return out
