# SPDX-License-Identifier: GPL-2.0-only
"""Print an `ir.Ruleset` exactly as iptables-save 1.8.9 prints it (reference/iptables-cli.md §6).

`render(ruleset, counters=False)` gives the whole file; `render_rule(rule)` the `-A CHAIN ...`
text of one rule, for reports. Rewrites, as iptables-save does them:
    "-p tcp --dport ssh -s 10.0.0.1"  ->  "-s 10.0.0.1/32 -p tcp -m tcp --dport 22"
    "--sport 1024:"                   ->  "--sport 1024:65535"
    "--syn"                           ->  "--tcp-flags FIN,SYN,RST,ACK SYN"
    "-j REJECT"                       ->  "-j REJECT --reject-with icmp-port-unreachable"
"""
from __future__ import annotations

import socket
from typing import Callable, List, Mapping, Optional, Tuple

from ipt2xdp import ir, irmatches, irtargets, options

_PLAIN = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def save_string(value: str) -> str:
    """xtables_save_string: bare if only [A-Za-z0-9_-], else double-quoted with \\ before " \\ '."""
    if value and all(c in _PLAIN for c in value):
        return value
    escaped = "".join("\\" + c if c in "\"\\'" else c for c in value)
    return f'"{escaped}"'


def _generic_arg(value: str, always_quoted: bool) -> str:
    # Extensions ipt2xdp does not model print their own arguments; iptables-save output only
    # needs quotes where a word would otherwise split or where the extension always quotes.
    if always_quoted:
        return '"' + "".join("\\" + c if c in "\"\\" else c for c in value) + '"'
    if not value or any(c in value for c in " \t\"'\\"):
        return save_string(value)
    return value


def _bang(negated: bool) -> str:
    return "! " if negated else ""


def _range(r: irmatches.Range) -> str:
    return str(r[0]) if r[0] == r[1] else f"{r[0]}:{r[1]}"


def _names(selected, order) -> str:
    return ",".join(n for n in order if n in selected)


def _tcp_flags(flags) -> str:
    return _names(flags, irmatches.TCP_FLAGS) or "NONE"


def _options(ext_name: str, opts) -> List[str]:
    out = []
    for o in opts:
        out.append(_bang(o.negated) + o.name)
        quoted = (ext_name, o.name) in options.ALWAYS_QUOTED
        out.extend(_generic_arg(a, quoted) for a in o.args)
    return out


def _ports(m) -> List[str]:
    out = []
    for name, p in (("--sport", m.sport), ("--dport", m.dport)):
        if p is not None:
            lo, hi = p.range
            if lo == 0 and hi == 65535:
                continue  # 1.8.9 prints nothing for (! ) 0:65535
            text = f"{name} {lo}" if lo == hi else f"{name} {lo}:{hi}"  # _range, inline (one per rule)
            out.append("! " + text if p.negated else text)
    return out


def _match(m) -> List[str]:
    kind = type(m)
    if kind is irmatches.TcpMatch:
        out = _ports(m)
        if m.option is not None:
            out.append(f"{_bang(m.option.negated)}--tcp-option {m.option.number}")
        if m.flags is not None:
            f = m.flags
            out.append(f"{_bang(f.negated)}--tcp-flags {_tcp_flags(f.mask)} {_tcp_flags(f.comp)}")
        return out
    if kind is irmatches.UdpMatch:
        return _ports(m)
    if kind is irmatches.MultiportMatch:
        ports = ",".join(f"{lo}:{hi}" if lo != hi else str(lo) for lo, hi in m.ranges)
        return [f"{_bang(m.negated)}--{m.kind} {ports}"]
    if kind is irmatches.IcmpMatch:
        if m.type is None:
            return [f"{_bang(m.negated)}--icmp-type any"]
        code = "" if m.code == (0, 255) else f"/{m.code[0]}"
        return [f"{_bang(m.negated)}--icmp-type {m.type}{code}"]
    if kind is irmatches.ConntrackMatch:
        out = []
        if m.states is not None:
            out.append(f"{_bang(m.states.negated)}--ctstate {_names(m.states.states, irmatches.CT_STATES)}")
        return out + _options("conntrack", m.options)
    if kind is irmatches.StateMatch:
        return [f"{_bang(m.states.negated)}--state {_names(m.states.states, irmatches.CT_STATES)}"]
    if kind is irmatches.SetMatch:
        return [f"{_bang(m.negated)}--match-set {m.set_name} {','.join(m.directions)}"] + _options("set", m.options)
    if kind is irmatches.IprangeMatch:
        return [f"{_bang(r.negated)}--{side}-range {r.lo}-{r.hi}"
                for side, r in (("src", m.src), ("dst", m.dst)) if r is not None]
    if kind is irmatches.LengthMatch:
        return [f"{_bang(m.negated)}--length {_range(m.range)}"]
    if kind is irmatches.TtlMatch:
        return [f"{_bang(m.negated)}--ttl-{m.op} {m.value}"]
    if kind is irmatches.AddrtypeMatch:
        out = [f"{_bang(t.negated)}--{side}-type {_names(t.types, irmatches.ADDR_TYPES)}"
               for side, t in (("src", m.src), ("dst", m.dst)) if t is not None]
        out += ["--limit-iface-in"] * m.limit_iface_in + ["--limit-iface-out"] * m.limit_iface_out
        return out
    if kind is irmatches.CommentMatch:
        return ["--comment " + save_string(m.text)]
    if kind is irmatches.MacMatch:
        return [f"{_bang(m.negated)}--mac-source {m.address}"]
    if kind is irmatches.LimitMatch:
        out = ["--limit " + limit_rate(m.avg)]
        return out + ([f"--limit-burst {m.burst}"] if m.burst != 5 else [])
    if kind is irmatches.RecentMatch:
        return _recent(m)
    if kind is irmatches.MarkMatch:
        mask = "" if m.mask == 0xFFFFFFFF else f"/{m.mask:#x}"
        return [f"{_bang(m.negated)}--mark {m.value:#x}{mask}"]
    return _options(m.name, m.options)


def limit_rate(avg: int) -> str:
    """libxt_limit print_rate: the largest unit that still shows the rate as an integer."""
    units = (("/day", irmatches.LIMIT_SCALE * 86400), ("/hour", irmatches.LIMIT_SCALE * 3600),
             ("/min", irmatches.LIMIT_SCALE * 60), ("/sec", irmatches.LIMIT_SCALE))
    i = 1
    while i < len(units):
        mult = units[i][1]
        if avg > mult or mult // avg < mult % avg:
            break
        i += 1
    return f"{units[i - 1][1] // avg}{units[i - 1][0]}"


def _recent(m: irmatches.RecentMatch) -> List[str]:
    out = [f"{_bang(m.negated)}--{m.mode}"]
    if m.seconds:
        out.append(f"--seconds {m.seconds}")
    if m.reap:
        out.append("--reap")
    if m.hitcount:
        out.append(f"--hitcount {m.hitcount}")
    if m.rttl:
        out.append("--rttl")
    out.append(f"--name {m.set_name}")
    out.append(f"--mask {m.mask}")
    out.append(f"--{m.side}")
    return out


def _target(t) -> List[str]:
    kind = type(t)
    if kind is irtargets.Goto:
        return ["-g", t.chain]
    head = ["-j", t.name]
    if kind is irtargets.Reject:
        return head + ["--reject-with", t.reject_with]
    if kind is irtargets.Log:
        out = head + (["--log-prefix", save_string(t.prefix)] if t.prefix else [])
        if t.level != 4:
            out += ["--log-level", str(t.level)]
        return out + [f"--log-{f}" for f in irtargets.LOG_FLAGS if f in t.flags]
    if kind is irtargets.Nflog:
        out = head + (["--nflog-prefix", save_string(t.prefix)] if t.prefix else [])
        if t.group:
            out += ["--nflog-group", str(t.group)]
        if t.size is not None:
            out += ["--nflog-size", str(t.size)]
        elif t.range:
            out += ["--nflog-range", str(t.range)]
        if t.threshold != 1:
            out += ["--nflog-threshold", str(t.threshold)]
        return out
    if kind is irtargets.GenericTarget:
        return head + _options(t.name, t.options)
    return head


def _match_name(m) -> str:
    return m.name


def _network_text(network) -> str:
    """str(network) of an IPv4Network (the same digits, without ipaddress's layers of __str__)."""
    # (int(network.network_address) and network.prefixlen, without their Python-level calls)
    return f"{socket.inet_ntoa(network.network_address._ip.to_bytes(4, 'big'))}/{network._prefixlen}"


def render_rule(rule: ir.Rule, counters: bool = False) -> str:
    """The rule as iptables-save prints it: `-A CHAIN -s .. -d .. -i .. -o .. -p .. -f -m .. -j ..`."""
    if counters:
        return f"[{rule.counters.packets}:{rule.counters.bytes}] " + _rule_text(rule)
    memo = rule.__dict__.get(ir.DERIVED)
    if memo is None:
        return _rule_text(rule)
    text = memo.get("text")
    if text is None:
        text = memo["text"] = _rule_text(rule)
    return text


_PROTOCOL_TEXT = {}  # number -> "-p name" (options.protocol_name reads its table once too)
_PLAIN_TARGETS = {irtargets.Accept: "-j ACCEPT", irtargets.Drop: "-j DROP", irtargets.Return: "-j RETURN"}


def _rule_text(rule: ir.Rule) -> str:
    parts = ["-A", rule.chain]
    source, destination = rule.source, rule.destination
    if source is not None:
        parts.append(("! -s " if source.negated else "-s ") + _network_text(source.network))
    if destination is not None:
        parts.append(("! -d " if destination.negated else "-d ") + _network_text(destination.network))
    if rule.in_interface is not None or rule.out_interface is not None:
        for flag, iface in (("-i", rule.in_interface), ("-o", rule.out_interface)):
            if iface is not None:
                parts.append(f"{_bang(iface.negated)}{flag} {iface.name}")
    protocol = rule.protocol
    if protocol is not None:
        text = _PROTOCOL_TEXT.get(protocol.number)
        if text is None:
            text = _PROTOCOL_TEXT[protocol.number] = "-p " + options.protocol_name(protocol.number)
        parts.append("! " + text if protocol.negated else text)
    if rule.fragment is not None:
        parts.append("-f" if rule.fragment else "! -f")
    for m in rule.matches:
        parts.append("-m " + m.name)
        parts.extend(_match(m))
    target = rule.target
    if target is not None:
        plain = _PLAIN_TARGETS.get(type(target))
        if plain is not None:
            parts.append(plain)
        else:
            parts.extend(_target(target))
    return " ".join(parts)


def render(ruleset: ir.Ruleset, counters: bool = False) -> str:
    """The whole ruleset in iptables-save layout (without its date comments)."""
    return _layout(ruleset, True, lambda table, chain, rules: [render_rule(rule, counters) for rule in rules])


def canonical(ruleset: ir.Ruleset, chain_texts: Optional[Mapping[Tuple[str, str], List[str]]] = None) -> str:
    """render(ruleset.without_positions()) (what the plan store and drift digest) without copying
    the ruleset. chain_texts: render_rule() texts already made, by (table, chain), one per rule in
    order; the plan's decisions carry one per rule, so an import renders each rule once."""
    texts = chain_texts or {}

    def rule_texts(table: str, chain: str, rules: List[ir.Rule]) -> List[str]:
        found = texts.get((table, chain))
        return found if found is not None and len(found) == len(rules) else [render_rule(rule) for rule in rules]

    return _layout(ruleset, False, rule_texts)


def same_canonical(a: ir.Ruleset, b: ir.Ruleset) -> bool:
    """canonical(a) == canonical(b), line by line, without rendering a rule both hold as the same
    object (a ruleset read back with parse.ParseMemo shares most of its rules with the last one)."""
    if [t.name for t in a.tables] != [t.name for t in b.tables]:
        return False
    for table_a, table_b in zip(a.tables, b.tables):
        chains_a, chains_b = _chain_order(table_a), _chain_order(table_b)
        if [(c.name, c.policy or "-", len(c.rules)) for c in chains_a] != \
                [(c.name, c.policy or "-", len(c.rules)) for c in chains_b]:
            return False
        for chain_a, chain_b in zip(chains_a, chains_b):
            for x, y in zip(chain_a.rules, chain_b.rules):
                if x is not y and render_rule(x) != render_rule(y):
                    return False
    return True


def _chain_order(table: ir.Table) -> List[ir.Chain]:
    """The order iptables-save lays a table's chains out in: built-in ones as read, then the others by name."""
    return [c for c in table.chains if c.builtin] + sorted((c for c in table.chains if not c.builtin),
                                                          key=lambda c: c.name)


def _layout(ruleset: ir.Ruleset, chain_counters: bool, texts: Callable[[str, str, List[ir.Rule]], List[str]]) -> str:
    """texts(table, chain, its rules): the rules' lines."""
    out: List[str] = []
    for table in ruleset.tables:
        out.append(f"*{table.name}")
        ordered = _chain_order(table)
        for c in ordered:
            count = c.counters if c.builtin and chain_counters else ir.ZERO
            out.append(f":{c.name} {c.policy or '-'} [{count.packets}:{count.bytes}]")
        for c in ordered:
            out.extend(texts(table.name, c.name, c.rules))
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""
