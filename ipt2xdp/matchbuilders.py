# SPDX-License-Identifier: GPL-2.0-only
"""The match builders: the options collected for one `-m` extension (or an implicit protocol match)
turned into its irmatches value, with the checks iptables 1.8.9 makes (see optionvalues.py for the
builder contract and the value parsers they share). MATCH_BUILDERS maps a match name to its builder;
a match without one is kept generically (ruleparse).

Separate from targetbuilders.py and optionvalues.py: the matches are most of the builders.
"""
from __future__ import annotations

from ipaddress import IPv4Address
from typing import Callable, Dict, List, Optional

from ipt2xdp import irmatches
from ipt2xdp.fastinit import fast_constructor
from ipt2xdp.options import ICMP_TYPES, LIMIT_UNITS, MATCHES
from ipt2xdp.optionvalues import (Given, OptionError, ipv4, name_set, options_by_name, port, port_range,
                                  require_protocol, uint, uint_range)

# Built once per distinct port value of a big ruleset (ruleparse's templates): without the frozen
# __init__'s setattrs.
_new_port_match, _new_tcp, _new_udp = (fast_constructor(irmatches.PortMatch), fast_constructor(irmatches.TcpMatch),
                                       fast_constructor(irmatches.UdpMatch))

def _port_match(g: Optional[Given], proto) -> Optional[irmatches.PortMatch]:
    if g is None:
        return None
    rng = port_range(g.args[0], proto, g.index + 1)
    if rng == (0, 65535) and not g.negated:
        return None  # "--sport :" means any port; iptables-save omits it
    return _new_port_match(rng, g.negated)


def _ports(seen: Dict[str, Given], proto):
    return _port_match(seen.get("--sport"), proto), _port_match(seen.get("--dport"), proto)


def _one_port(given: List[Given], proto):
    """_ports(options_by_name(given), proto) for one --sport or --dport (a template rebuilds it for
    each distinct port of a big ruleset), else None."""
    if len(given) != 1:
        return None
    g = given[0]
    if g.name == "--dport":
        return None, _port_match(g, proto)
    if g.name == "--sport":
        return _port_match(g, proto), None
    return None


def tcp(given, proto, index):
    require_protocol(proto, ("tcp",), "tcp", index)
    ports = _one_port(given, proto)
    if ports is not None:
        return _new_tcp(ports[0], ports[1], None, None)
    seen = options_by_name(given)
    if "--syn" in seen and "--tcp-flags" in seen:
        raise OptionError(seen["--syn"].index, "--syn and --tcp-flags cannot be used together")
    sport, dport = _ports(seen, proto)
    flags = None
    if "--syn" in seen:
        flags = irmatches.TcpFlags(frozenset(("FIN", "SYN", "RST", "ACK")), frozenset(("SYN",)), seen["--syn"].negated)
    elif "--tcp-flags" in seen:
        g = seen["--tcp-flags"]
        flags = irmatches.TcpFlags(_tcp_flag_set(g.args[0], g.index + 1), _tcp_flag_set(g.args[1], g.index + 2),
                            g.negated)
    option = None
    if "--tcp-option" in seen:
        g = seen["--tcp-option"]
        option = irmatches.TcpOption(uint(g.args[0], g.index + 1, "TCP option", 255), g.negated)
    return _new_tcp(sport, dport, flags, option)


def _tcp_flag_set(text: str, index: int) -> frozenset:
    flags = set()
    for item in text.split(","):
        upper = item.upper()
        if upper == "ALL":
            flags.update(irmatches.TCP_FLAGS)
        elif upper == "NONE":
            continue
        elif upper in irmatches.TCP_FLAG_BITS:
            flags.add(upper)
        else:
            raise OptionError(index, f"unknown TCP flag '{item}'")
    return frozenset(flags)


def udp(given, proto, index):
    require_protocol(proto, ("udp",), "udp", index)
    sport, dport = _one_port(given, proto) or _ports(options_by_name(given), proto)
    return _new_udp(sport, dport)


def multiport(given, proto, index):
    require_protocol(proto, ("tcp", "udp", "udplite", "sctp", "dccp"), "multiport", index)
    if not given:
        raise OptionError(index, "multiport expects an option")
    if len(given) > 1:
        raise OptionError(given[1].index, "multiport can only have one option")
    g = given[0]
    ranges: List[irmatches.Range] = []
    slots = 0
    for item in g.args[0].split(","):
        if not item:
            raise OptionError(g.index + 1, f"invalid port list '{g.args[0]}'")
        if ":" in item:
            lo_text, hi_text = item.split(":", 1)
            lo, hi = port(lo_text, proto, g.index + 1), port(hi_text, proto, g.index + 1)
            if lo > hi:
                raise OptionError(g.index + 1, f"invalid portrange '{item}' (min > max)")
            slots += 2
        else:
            lo = hi = port(item, proto, g.index + 1)
            slots += 1
        ranges.append((lo, hi))
    if slots > 15:
        raise OptionError(g.index + 1, "too many ports specified (at most 15, a range counts twice)")
    return irmatches.MultiportMatch(g.name[2:], tuple(ranges), g.negated)


def icmp(given, proto, index):
    require_protocol(proto, ("icmp",), "icmp", index)
    seen = options_by_name(given)
    g = seen.get("--icmp-type")
    if g is None:
        raise OptionError(index, "-m icmp needs --icmp-type")
    text = g.args[0]
    entry = ICMP_TYPES.get(text) or _icmp_by_prefix(text)
    if entry is None:
        if "/" in text:
            type_text, code_text = text.split("/", 1)
            icmp_type = uint(type_text, g.index + 1, "ICMP type", 255)
            code = uint(code_text, g.index + 1, "ICMP code", 255)
            entry = (icmp_type, code, code)
        else:
            entry = (uint(text, g.index + 1, "ICMP type", 255), 0, 255)
    icmp_type, lo, hi = entry
    if icmp_type == 0xFF:
        return irmatches.IcmpMatch(None, (0, 255), g.negated)
    return irmatches.IcmpMatch(icmp_type, (lo, hi), g.negated)


def _icmp_by_prefix(text: str):
    if not text or text[0].isdigit():
        return None
    hits = [v for k, v in ICMP_TYPES.items() if k.lower().startswith(text.lower())]
    return hits[0] if len(set(hits)) == 1 else None


def conntrack(given, proto, index):
    seen = options_by_name(given)
    states = None
    if "--ctstate" in seen:
        g = seen["--ctstate"]
        states = irmatches.StateSet(name_set(g.args[0], irmatches.CT_STATES, g.index + 1, "ctstate"), g.negated)
    order = [o.name for o in MATCHES["conntrack"].options]
    rest = sorted((g for g in given if g.name != "--ctstate"), key=lambda g: order.index(g.name))
    if states is None and not rest:
        raise OptionError(index, "-m conntrack expects an option")
    return irmatches.ConntrackMatch(states, tuple(irmatches.Option(g.name, g.negated, g.args) for g in rest))


def state(given, proto, index):
    seen = options_by_name(given)
    g = seen.get("--state")
    if g is None:
        raise OptionError(index, "-m state needs --state")
    states = name_set(g.args[0], irmatches.CT_STATES[:5], g.index + 1, "state")
    return irmatches.StateMatch(irmatches.StateSet(states, g.negated))


def set_(given, proto, index):
    seen = options_by_name(given)
    g = seen.get("--match-set")
    if g is None:
        raise OptionError(index, "-m set needs --match-set")
    directions = tuple(g.args[1].split(","))
    if not 1 <= len(directions) <= 6 or any(d not in ("src", "dst") for d in directions):
        raise OptionError(g.index + 2, f"invalid set direction '{g.args[1]}' (src and dst, comma separated)")
    rest = tuple(irmatches.Option(o.name, o.negated, o.args) for o in given if o.name != "--match-set")
    return irmatches.SetMatch(g.args[0], directions, g.negated, rest)


def iprange(given, proto, index):
    seen = options_by_name(given)

    def one(name):
        g = seen.get(name)
        if g is None:
            return None
        lo_text, sep, hi_text = g.args[0].partition("-")
        lo = ipv4(lo_text, g.index + 1)
        hi = ipv4(hi_text, g.index + 1) if sep else lo
        return irmatches.AddressRange(lo, hi, g.negated)
    if not seen:
        raise OptionError(index, "-m iprange expects --src-range or --dst-range")
    return irmatches.IprangeMatch(one("--src-range"), one("--dst-range"))


def length(given, proto, index):
    g = options_by_name(given).get("--length")
    if g is None:
        raise OptionError(index, "-m length needs --length")
    return irmatches.LengthMatch(uint_range(g.args[0], g.index + 1, "length", 65535), g.negated)


def ttl(given, proto, index):
    if len(given) != 1:
        raise OptionError(given[1].index if given else index, "-m ttl takes exactly one of --ttl-eq, --ttl-lt, --ttl-gt")
    g = given[0]
    return irmatches.TtlMatch(g.name[-2:], uint(g.args[0], g.index + 1, "TTL", 255), g.negated)


def addrtype(given, proto, index):
    seen = options_by_name(given)

    def one(name):
        g = seen.get(name)
        return None if g is None else irmatches.AddrTypes(
            name_set(g.args[0], irmatches.ADDR_TYPES, g.index + 1, "address type"), g.negated)
    if "--limit-iface-in" in seen and "--limit-iface-out" in seen:
        raise OptionError(seen["--limit-iface-out"].index, "--limit-iface-in and --limit-iface-out are exclusive")
    return irmatches.AddrtypeMatch(one("--src-type"), one("--dst-type"), "--limit-iface-in" in seen,
                            "--limit-iface-out" in seen)


def comment(given, proto, index):
    g = options_by_name(given).get("--comment")
    if g is None:
        raise OptionError(index, "-m comment needs --comment")
    if len(g.args[0]) > 255:
        raise OptionError(g.index + 1, "comment too long (at most 255 characters)")
    return irmatches.CommentMatch(g.args[0])


def mac(given, proto, index):
    g = options_by_name(given).get("--mac-source")
    if g is None:
        raise OptionError(index, "-m mac needs --mac-source")
    parts = g.args[0].split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise OptionError(g.index + 1, f"bad mac address '{g.args[0]}'")
    return irmatches.MacMatch(":".join(f"{int(p, 16):02x}" for p in parts), g.negated)


def limit(given, proto, index):
    seen = options_by_name(given)
    avg = irmatches.LimitMatch.avg
    if "--limit" in seen:
        g = seen["--limit"]
        avg = _limit_avg(g.args[0], g.index + 1)
    burst = 5
    if "--limit-burst" in seen:
        g = seen["--limit-burst"]
        burst = uint(g.args[0], g.index + 1, "burst", 10000)
    return irmatches.LimitMatch(avg, burst)


def _limit_avg(text: str, index: int) -> int:
    number, _, unit = text.partition("/")
    mult = 1
    if unit:
        for name, seconds in LIMIT_UNITS:
            if name.startswith(unit.lower()):
                mult = seconds
                break
        else:
            raise OptionError(index, f"bad rate '{text}'")
    rate = uint(number, index, "rate", 0xFFFFFFFF) if number.isdigit() else 0
    if rate == 0:
        raise OptionError(index, f"bad rate '{text}'")
    if rate > irmatches.LIMIT_SCALE * mult:
        raise OptionError(index, f"rate too fast '{text}'")
    return irmatches.LIMIT_SCALE * mult // rate


def recent(given, proto, index):
    seen = options_by_name(given)
    modes = [g for g in given if g.name in ("--set", "--rcheck", "--update", "--remove")]
    if len(modes) != 1:
        at = modes[1].index if len(modes) > 1 else index
        raise OptionError(at, "-m recent needs exactly one of --set, --rcheck, --update or --remove")
    if "--rsource" in seen and "--rdest" in seen:
        raise OptionError(seen["--rdest"].index, "--rsource and --rdest are exclusive")
    mode = modes[0]
    seconds = seen.get("--seconds")
    hitcount = seen.get("--hitcount")
    if "--reap" in seen and seconds is None:
        raise OptionError(seen["--reap"].index, "--reap needs --seconds")
    mask = seen.get("--mask")
    name = seen.get("--name")
    if name is not None and not name.args[0]:
        raise OptionError(name.index + 1, "--name needs a name")
    return irmatches.RecentMatch(
        mode=mode.name[2:], negated=mode.negated,
        seconds=uint(seconds.args[0], seconds.index + 1, "seconds", 0xFFFFFFFF) if seconds else None,
        reap="--reap" in seen,
        hitcount=uint(hitcount.args[0], hitcount.index + 1, "hitcount", 0xFFFFFFFF) if hitcount else None,
        rttl="--rttl" in seen,
        set_name=name.args[0] if name else "DEFAULT",
        mask=ipv4(mask.args[0], mask.index + 1) if mask else IPv4Address("255.255.255.255"),
        side="rdest" if "--rdest" in seen else "rsource")


def mark(given, proto, index):
    g = options_by_name(given).get("--mark")
    if g is None:
        raise OptionError(index, "-m mark needs --mark")
    value_text, sep, mask_text = g.args[0].partition("/")
    value = uint(value_text, g.index + 1, "mark", 0xFFFFFFFF)
    mask = uint(mask_text, g.index + 1, "mask", 0xFFFFFFFF) if sep else 0xFFFFFFFF
    return irmatches.MarkMatch(value, mask, g.negated)


MATCH_BUILDERS: Dict[str, Callable] = {
    "tcp": tcp, "udp": udp, "multiport": multiport, "icmp": icmp, "conntrack": conntrack,
    "state": state, "set": set_, "iprange": iprange, "length": length, "ttl": ttl,
    "addrtype": addrtype, "comment": comment, "mac": mac, "limit": limit, "recent": recent,
    "mark": mark,
}
