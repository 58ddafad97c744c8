# SPDX-License-Identifier: GPL-2.0-only
"""The rendered text of a rule read from a line, without rendering it (ruleparse's templates).

A plan renders every rule (render.render_rule: the decisions' text, the canonical ruleset the plan
store digests), and iptables-save prints most lines exactly as render_rule() would. Lines of one
template key (ruleparse.RuleParser) differ only in their blanked words; where each of those is an
address or a single port of -m tcp/udp, spelled as render_rule() spells its value, render_rule()
of the line's rule is `-A CHAIN` and the line's words joined by single spaces, provided that holds
for one such line of the key: the rendered text is the key's fixed words with each blanked word's
value at the same place (an address right after its -s/-d, a port right after its --sport/--dport,
both kept words), and every value renders back to its word. That one line is rendered and
compared (TextPlan.state); a key whose render differs (another order, `-p 6`, an implicit -m) gets
no text from here, nor does a line with a word in another spelling (`10.0.0.1` without /32,
`0022`, a service name, host bits set): render_rule() renders those as before.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from ipt2xdp import ir

PORT_OPTIONS = ("--sport", "--dport")


class TextPlan:
    """Which blanked words of a template key are addresses (their spelling is checked where they
    are parsed, ruleparse.RuleParser._addresses) and which are ports, and whether the key's render
    was found to be its words (None: not compared yet)."""

    __slots__ = ("state", "addresses", "ports")

    def __init__(self, addresses: Sequence[int], ports: Sequence[int]):
        self.state: Optional[bool] = None
        self.addresses, self.ports = tuple(addresses), tuple(ports)

    def text(self, chain: str, words: List[str], rule: ir.Rule) -> Optional[str]:
        """render_rule(rule) for the rule parsed from `-A chain words`, or None (render it). The
        caller has checked the address words (ruleparse: each is "a.b.c.d/n" as its network
        prints, which its parse tells at no cost)."""
        if self.state is False:
            return None
        for i in self.ports:  # a port number as it prints: ASCII digits, no leading zero (its parse
            word = words[i]   # checked that it is at most 65535)
            if not (word.isascii() and word.isdigit()) or (word[0] == "0" and word != "0"):
                return None
        joined = f"-A {chain} " + " ".join(words)
        if self.state is None:
            from ipt2xdp.render import render_rule

            self.state = render_rule(rule) == joined
        return joined if self.state else None


def plan_for(blanked: Sequence[int], addresses: Sequence[int], parts) -> Optional[TextPlan]:
    """The TextPlan of a template key (blanked: its blanked word positions; addresses: those of
    -s/-d; parts: (builder, layout) of each match or target rebuilt from blanked words), or None
    when a blanked word is of another kind."""
    from ipt2xdp import matchbuilders

    ports = []
    for builder, layout in parts:
        if builder not in (matchbuilders.tcp, matchbuilders.udp) or len(layout) != 1:
            return None
        name, _negated, at, nargs = layout[0]
        if name not in PORT_OPTIONS or nargs != 1:
            return None
        ports.append(at + 1)
    if set(blanked) != set(addresses) | set(ports) or len(ports) + len(addresses) != len(blanked):
        return None
    return TextPlan(addresses, ports)
