# SPDX-License-Identifier: GPL-2.0-only
"""Parse the words of one rule (what follows `-A CHAIN`) into ir.Rule objects, fast for a big
ruleset of few rule shapes.

rulewords.py reads a rule's structure (-p/-i/-o/-f, -m extensions, -j/-g) in full; RuleParser adds
the two caches that make a big ruleset of few rule shapes cheap, and the -s/-d addresses (one rule
per address of `-s a,b`). A problem is a RuleError (rulewords) naming the word it is at; parse.py
turns it into a diagnostic with line and column.
"""
from __future__ import annotations

import ipaddress
import operator
import re
import socket
from typing import Dict, List, Optional

from ipt2xdp import ir, linetext
from ipt2xdp.fastinit import fast_constructor, make_network
from ipt2xdp.optionvalues import Given, OptionError
from ipt2xdp.rulewords import HEADER, RuleError, RuleWordParser, unquote

_ADDRESS_OPTIONS = frozenset(("-s", "--source", "--src", "-d", "--destination", "--dst"))
# Options whose argument decides how the rest of a rule is read (see RuleParser templates).
_STRUCTURAL = frozenset(k for k, v in HEADER.items() if v in ("-p", "-i", "-o", "-m", "-j", "-g"))
_EXACT = object()
_inet_aton, _inet_ntoa = socket.inet_aton, socket.inet_ntoa
_from_bytes = int.from_bytes

_new_rule = fast_constructor(ir.Rule)
_new_address = fast_constructor(ir.Address)

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


class RuleParser(RuleWordParser):
    """Parse the words after `-A CHAIN` into one or more ir.Rule (several for `-s a,b`)."""

    def __init__(self, user_chains):
        super().__init__(user_chains)
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
            cached = self.parse_words(chain, words)
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
        template, source_at, destination_at = self.parse_words(chain, words)
        blanked = {i for i, k in enumerate(key[1:]) if k is None}
        allowed = {where[1] for where in (source_at, destination_at) if where is not None}
        parts = []
        all_positions: List[int] = []
        proto_name, built = self.last_built
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
