# SPDX-License-Identifier: GPL-2.0-only
"""The packet language of `ipt2xdp explain --packet`: one IPv4 packet as a line of words.

    PROTO SRC[:PORT] > DST[:PORT] [flags F] [type T [code C]] [iface NAME] [ct STATE] [frag KIND]

    tcp 198.51.100.7:4242 > 10.0.0.1:22 flags S iface eth0
    udp 192.0.2.9 > 10.0.0.1:53 ct established
    icmp 192.0.2.9 > 10.0.0.1 type echo-request
    gre 192.0.2.9 > 10.0.0.1

PROTO is tcp, udp, icmp, any name of /etc/protocols, or a number. TCP and UDP need a destination
port; the source port defaults to 40000. TCP flags are letters (F S R P A U, `tcpdump` style) or
iptables names (SYN,ACK), default S; ICMP type and code are numbers or iptables names, default
echo-request. `ct` is the state conntrack would report for the packet; the default, `none`, is a
packet of a flow conntrack has never seen, with a valid checksum (XDP's class NONE_VERIFIED);
`invalid` is one whose checksum XDP cannot verify (class NONE). `frag` makes it a fragment: first (MF set, offset 0),
more (MF set, offset > 0) or last (offset > 0, MF clear).

A bad spec raises ParseError with the column of the offending word, rendered with a caret like
every other input error of the CLI.
"""
from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ipt2xdp import options
from ipt2xdp.errors import Diagnostic, ParseError, SourceSpan

SOURCE = "<packet>"
DEFAULT_SPORT = 40000
TCP_FLAG_LETTERS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}
TCP_FLAG_NAMES = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20}
CT_STATES = ("none", "new", "established", "related", "invalid", "untracked")
FRAG_KINDS = ("first", "more", "last")
KEYWORDS = ("flags", "type", "code", "iface", "ct", "frag")
PORT_PROTOCOLS = (6, 17)


@dataclass(frozen=True)
class PacketSpec:
    proto: int
    src: str
    dst: str
    sport: Optional[int] = None
    dport: Optional[int] = None
    tcp_flags: Optional[int] = None    # low six bits, TCP only
    icmp_type: Optional[int] = None    # ICMP only
    icmp_code: Optional[int] = None
    iface: Optional[str] = None
    ct: str = "none"
    frag: Optional[str] = None

    @property
    def src_int(self) -> int:
        return int(ipaddress.IPv4Address(self.src))

    @property
    def dst_int(self) -> int:
        return int(ipaddress.IPv4Address(self.dst))

    def __str__(self) -> str:
        """The spec in canonical form (every default spelled out), parseable again."""
        name = options.protocol_name(self.proto)
        src = f"{self.src}:{self.sport}" if self.sport is not None else self.src
        dst = f"{self.dst}:{self.dport}" if self.dport is not None else self.dst
        words = [name, src, ">", dst]
        if self.tcp_flags is not None:
            words += ["flags", flag_letters(self.tcp_flags)]
        if self.icmp_type is not None:
            words += ["type", str(self.icmp_type), "code", str(self.icmp_code or 0)]
        if self.iface:
            words += ["iface", self.iface]
        words += ["ct", self.ct]
        if self.frag:
            words += ["frag", self.frag]
        return " ".join(words)


def flag_letters(bits: int) -> str:
    return "".join(letter for letter, bit in TCP_FLAG_LETTERS.items() if bits & bit) or "none"


class _SpecError(Exception):
    def __init__(self, col: int, end_col: int, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.col, self.end_col, self.message, self.hint = col, end_col, message, hint


Word = Tuple[str, int]  # text, 1-based column


def _words(text: str) -> List[Word]:
    return [(m.group(), m.start() + 1) for m in re.finditer(r">|[^\s>]+", text)]


def _fail(word: Word, message: str, hint: Optional[str] = None):
    raise _SpecError(word[1], word[1] + max(1, len(word[0])), message, hint)


def _address(word: Word, proto: int, role: str) -> Tuple[str, Optional[int]]:
    text, col = word
    host, sep, port_text = text.partition(":")
    try:
        address = str(ipaddress.IPv4Address(host))
    except ValueError:
        _fail((host, col), f"invalid {role} address '{host}'", "an IPv4 address such as 192.0.2.1")
    if not sep:
        return address, None
    port_word = (port_text, col + len(host) + 1)
    if proto not in PORT_PROTOCOLS:
        _fail(port_word, f"{options.protocol_name(proto)} has no ports", "ports are for tcp and udp")
    port = options.service_port(port_text, options.protocol_name(proto)) if port_text else None
    if port is None:
        _fail(port_word, f"invalid {role} port '{port_text}'", "a number 0-65535 or a service name")
    return address, port


def _tcp_flags(word: Word) -> int:
    text, col = word
    if text.lower() == "none":
        return 0
    bits = 0
    if "," in text or text.upper() in TCP_FLAG_NAMES:
        offset = 0
        for name in text.split(","):
            if name.upper() not in TCP_FLAG_NAMES:
                _fail((name, col + offset), f"unknown TCP flag '{name}'", "FIN SYN RST PSH ACK URG, or letters FSRPAU")
            bits |= TCP_FLAG_NAMES[name.upper()]
            offset += len(name) + 1
        return bits
    for offset, letter in enumerate(text):
        if letter.upper() not in TCP_FLAG_LETTERS:
            _fail((letter, col + offset), f"unknown TCP flag '{letter}'", "letters F S R P A U, or names SYN,ACK")
        bits |= TCP_FLAG_LETTERS[letter.upper()]
    return bits


def _number(word: Word, what: str, maximum: int) -> int:
    if not word[0].isdigit() or int(word[0]) > maximum:
        _fail(word, f"invalid {what} '{word[0]}'", f"a number 0-{maximum}")
    return int(word[0])


def _icmp_type(word: Word) -> Tuple[int, Optional[int]]:
    """(type, code if the name fixes it)."""
    if word[0].isdigit():
        return _number(word, "ICMP type", 255), None
    entry = options.ICMP_TYPES.get(word[0])
    if entry is None or word[0] == "any":
        _fail(word, f"unknown ICMP type '{word[0]}'", "a number 0-255 or a name as in iptables -p icmp -h")
    icmp_type, low, high = entry
    return icmp_type, (low if low == high else None)


def _value(words: List[Word], index: int, keyword: Word) -> Word:
    if index >= len(words) or words[index][0] in KEYWORDS:
        end = keyword[1] + len(keyword[0])
        raise _SpecError(end, end + 1, f"'{keyword[0]}' needs a value")
    return words[index]


def _header(words: List[Word]) -> Tuple[int, str, Optional[int], str, Optional[int]]:
    if not words:
        raise _SpecError(1, 2, "empty packet", "e.g. tcp 198.51.100.7:4242 > 10.0.0.1:22")
    proto = options.protocol_number(words[0][0])
    if proto is None or (proto == 0 and words[0][0] != "0"):
        _fail(words[0], f"unknown protocol '{words[0][0]}'", "tcp, udp, icmp, a name of /etc/protocols or 0-255")
    if len(words) < 2:
        raise _SpecError(words[0][1] + len(words[0][0]) + 1, 0, "source address expected")
    src, sport = _address(words[1], proto, "source")
    if len(words) < 3 or words[2][0] != ">":
        at = words[2] if len(words) > 2 else (" ", words[1][1] + len(words[1][0]) + 1)
        _fail(at, "'>' expected between source and destination")
    if len(words) < 4:
        raise _SpecError(words[2][1] + 2, 0, "destination address expected")
    dst, dport = _address(words[3], proto, "destination")
    if proto in PORT_PROTOCOLS and dport is None:
        _fail(words[3], f"{options.protocol_name(proto)} needs a destination port", "e.g. 10.0.0.1:22")
    return proto, src, sport, dst, dport


def _parse(text: str) -> PacketSpec:
    words = _words(text)
    proto, src, sport, dst, dport = _header(words)
    if proto in PORT_PROTOCOLS and sport is None:
        sport = DEFAULT_SPORT
    fields = {"tcp_flags": 0x02 if proto == 6 else None, "icmp_type": 8 if proto == 1 else None,
              "icmp_code": 0 if proto == 1 else None, "iface": None, "ct": "none", "frag": None}
    seen = set()
    index = 4
    while index < len(words):
        keyword = words[index]
        name = keyword[0]
        if name not in KEYWORDS:
            _fail(keyword, f"unexpected '{name}'", "after the addresses: " + ", ".join(KEYWORDS))
        if name in seen:
            _fail(keyword, f"'{name}' given twice")
        seen.add(name)
        value = _value(words, index + 1, keyword)
        index += 2
        if name == "flags":
            if proto != 6:
                _fail(keyword, "flags are for tcp only")
            fields["tcp_flags"] = _tcp_flags(value)
        elif name == "type":
            if proto != 1:
                _fail(keyword, "type is for icmp only")
            fields["icmp_type"], code = _icmp_type(value)
            if code is not None and "code" not in seen:
                fields["icmp_code"] = code
        elif name == "code":
            if proto != 1:
                _fail(keyword, "code is for icmp only")
            fields["icmp_code"] = _number(value, "ICMP code", 255)
        elif name == "iface":
            if not re.fullmatch(r"[^\s/:]{1,15}", value[0]):
                _fail(value, f"invalid device name '{value[0]}'")
            fields["iface"] = value[0]
        elif name == "ct":
            if value[0].lower() not in CT_STATES:
                _fail(value, f"unknown conntrack state '{value[0]}'", " | ".join(CT_STATES))
            fields["ct"] = value[0].lower()
        elif name == "frag":
            if value[0].lower() not in FRAG_KINDS:
                _fail(value, f"unknown fragment kind '{value[0]}'", " | ".join(FRAG_KINDS))
            fields["frag"] = value[0].lower()
    return PacketSpec(proto, src, dst, sport, dport, **fields)


def parse_packet(text: str, source: str = SOURCE) -> PacketSpec:
    """Parse a packet spec; ParseError (exit 2) with the column of the bad word otherwise."""
    try:
        return _parse(text)
    except _SpecError as error:
        end = error.end_col if error.end_col > error.col else None
        span = SourceSpan(source, 1, error.col, end)
        raise ParseError([Diagnostic("error", "packet", error.message, span, error.hint)], {source: [text]}) from None


# --- to and from bytes (BPF_PROG_TEST_RUN of the loaded program; compat_tests' probes) -------------

def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum (also bench/pktgen.py's frames)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


FRAG_FIELD = {None: 0, "first": 0x2000, "more": 0x2000 | 16, "last": 16}  # MF | offset in 8-byte units


def to_frame(spec: PacketSpec, ip_id: int = 0x1234) -> bytes:
    """An Ethernet frame carrying the packet, with valid IP and L4 checksums."""
    src, dst = ipaddress.IPv4Address(spec.src).packed, ipaddress.IPv4Address(spec.dst).packed
    if spec.proto == 6:
        l4 = struct.pack("!HHIIBBHHH", spec.sport, spec.dport, 1, 0 if not spec.tcp_flags & 0x10 else 1,
                         5 << 4, spec.tcp_flags, 64240, 0, 0)
    elif spec.proto == 17:
        l4 = struct.pack("!HHHH", spec.sport, spec.dport, 8 + 8, 0) + b"explain!"
    elif spec.proto == 1:
        l4 = struct.pack("!BBHHH", spec.icmp_type, spec.icmp_code, 0, 0x4242, 1) + b"explain!"
    else:
        l4 = b"\0" * 20
    if spec.proto in PORT_PROTOCOLS:
        pseudo = src + dst + struct.pack("!BBH", 0, spec.proto, len(l4))
        at = 16 if spec.proto == 6 else 6
        l4 = l4[:at] + struct.pack("!H", internet_checksum(pseudo + l4)) + l4[at + 2:]
    elif spec.proto == 1:
        l4 = l4[:2] + struct.pack("!H", internet_checksum(l4)) + l4[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ip_id, FRAG_FIELD[spec.frag], 64, spec.proto, 0,
                         src, dst)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    ethernet = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return ethernet + header + l4


def from_ipv4(packet: bytes, iface: Optional[str] = None) -> Optional[PacketSpec]:
    """The spec of an IPv4 packet (no Ethernet header); None for what the language cannot say
    (IP options, truncated or inconsistent headers: XDP passes those before classifying)."""
    if len(packet) < 20 or packet[0] != 0x45:
        return None
    total, frag, proto = struct.unpack_from("!H", packet, 2)[0], struct.unpack_from("!H", packet, 6)[0], packet[9]
    if total < 20 or total > len(packet):
        return None
    src, dst = str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20]))
    kind = None
    if frag & 0x3FFF:
        kind = "first" if not frag & 0x1FFF else ("more" if frag & 0x2000 else "last")
        return PacketSpec(proto, src, dst, iface=iface, frag=kind)
    l4 = packet[20:total]
    if proto == 6 and len(l4) >= 20 and l4[12] >> 4 >= 5:
        sport, dport = struct.unpack_from("!HH", l4)
        return PacketSpec(6, src, dst, sport, dport, tcp_flags=l4[13] & 0x3F, iface=iface)
    if proto == 17 and len(l4) >= 8:
        sport, dport = struct.unpack_from("!HH", l4)
        return PacketSpec(17, src, dst, sport, dport, iface=iface)
    if proto == 1 and len(l4) >= 4:
        return PacketSpec(1, src, dst, icmp_type=l4[0], icmp_code=l4[1], iface=iface)
    if proto in (1, 6, 17):
        return None
    return PacketSpec(proto, src, dst, iface=iface)
