# SPDX-License-Identifier: GPL-2.0-only
"""Packet corpora built from a ruleset's text: boundary values, other protocols, odd packets.

Every probe carries a unique id in the IPv4 identification field (fragments of one probe share it, as
reassembly requires), so the harness can match fates one to one. The generator is deterministic for a
given (ruleset text, seed, size).

TODO(ir): the values come from a small regex scan of the ruleset text; switch to ipt2xdp.ir once the
parser lands, so negation, ranges and user chains give exact boundaries instead of scanned ones.
"""
from __future__ import annotations

import ipaddress
import random
import re
import socket
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

# Addresses the corpus owns: the receiver gets DEFAULT_LOCAL (and every scanned -d value that is not a
# scanned source), the sender spoofs sources freely. NONLOCAL is never installed anywhere.
DEFAULT_LOCAL = "198.51.100.10"
NONLOCAL = "203.0.113.77"
DEFAULT_SOURCES = ("192.0.2.1", "192.0.2.200", "100.64.3.4")
# With forwarding on, the receiver routes this block to a third namespace behind it.
FORWARDED = "203.0.113.0/24"
OTHER_PROTOCOLS = (47, 50, 51, 132, 136)  # GRE, ESP, AH, SCTP, UDPLite: proto-only matches
TCP_FLAG_SETS = ("S", "SA", "A", "PA", "FA", "R", "RA", "F", "", "SF", "SR", "FPU", "FSRPAUEC", "SEC")
ICMP_TYPES = ((0, 0), (3, 0), (3, 1), (3, 3), (3, 4), (3, 13), (4, 0), (5, 1), (8, 0), (8, 1), (11, 0),
              (11, 1), (12, 0), (13, 0), (14, 0), (17, 0), (42, 0), (255, 0))
_ICMP_NAMES = {"echo-request": (8, None), "echo-reply": (0, None), "destination-unreachable": (3, None),
               "port-unreachable": (3, 3), "host-unreachable": (3, 1), "time-exceeded": (11, None),
               "parameter-problem": (12, None), "source-quench": (4, None), "redirect": (5, None),
               "timestamp-request": (13, None), "timestamp-reply": (14, None), "any": (None, None),
               "fragmentation-needed": (3, 4), "network-unreachable": (3, 0), "ping": (8, None),
               "pong": (0, None), "ttl-exceeded": (11, 0), "router-advertisement": (9, None),
               "router-solicitation": (10, None), "address-mask-request": (17, None)}
_PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "gre": 47, "esp": 50, "ah": 51, "sctp": 132,
                "udplite": 136, "all": 0}


@dataclass(frozen=True)
class Probe:
    id: int
    description: str
    frames: Tuple[bytes, ...]  # IPv4 packets (no Ethernet header), sent in this order
    src: str
    dst: str
    proto: int
    # TCP flows the sender opens (TcpFlow): `opens` marks the flow's SYN, sent in a first exchange;
    # `tcp_flow` = (flow index, ack offset) marks a later segment of the flow, whose ack field holds
    # only the offset until the run adds the receiver's initial sequence number + 1 to it.
    opens: Optional[int] = None
    tcp_flow: Optional[Tuple[int, int]] = None

    @property
    def src_bytes(self) -> bytes:
        return socket.inet_aton(self.src)

    @property
    def dst_bytes(self) -> bytes:
        return socket.inet_aton(self.dst)


@dataclass(frozen=True)
class Flow:
    """A flow the receiver opens before the probes (so conntrack knows it): UDP, or ICMP echo (port = id)."""

    proto: int
    local: str
    local_port: int
    remote: str
    remote_port: int


@dataclass(frozen=True)
class TcpFlow:
    """A TCP connection the sender opens with a real handshake to a socket listening in the receiver.

    The client address is spoofed (the sender's kernel ignores the receiver's answers); the client's
    initial sequence number is the SYN probe's (packets.tcp_seq_ack), the server's is learned from
    its SYN-ACK during the run.
    """

    client: str
    client_port: int
    server: str
    server_port: int


@dataclass
class Corpus:
    probes: List[Probe]
    local_addrs: Tuple[str, ...]  # the harness installs these on the receiver
    seed: int = 0
    flows: Tuple[Flow, ...] = ()  # the harness opens these from the receiver before sending
    tcp_flows: Tuple[TcpFlow, ...] = ()  # the harness listens on their server side
    # Receiver sysctls this corpus needs, e.g. net.netfilter.nf_conntrack_tcp_loose (set before
    # ipt2xdp import, which reads them).
    sysctls: Tuple[Tuple[str, str], ...] = ()
    # TCP ports the receiver listens on at every address: where DNAT and REDIRECT send TCP flows.
    listen_any: Tuple[int, ...] = ()

    @property
    def protocols(self) -> Set[int]:
        return {p.proto for p in self.probes if p.proto not in (0, 255)}

    def by_id(self) -> Dict[int, Probe]:
        return {p.id: p for p in self.probes}


@dataclass
class Scan:
    """Values seen in a ruleset's text."""

    sources: Set[str] = field(default_factory=set)  # prefixes "a.b.c.d/len"
    dests: Set[str] = field(default_factory=set)
    ports: Set[int] = field(default_factory=set)
    protocols: Set[int] = field(default_factory=set)
    icmp: Set[Tuple[int, int]] = field(default_factory=set)
    rules: List["RuleHint"] = field(default_factory=list)
    nat_dests: Set[str] = field(default_factory=set)  # --to-destination addresses: the receiver's own
    nat_sources: Set[str] = field(default_factory=set)  # --to-source addresses: replies come back to them
    nat_ports: Set[int] = field(default_factory=set)  # ports DNAT and REDIRECT rewrite to
    nat_matched_ports: Set[int] = field(default_factory=set)  # ports the nat table's rules match


@dataclass(frozen=True)
class RuleHint:
    """The scanned fields of one -A line, so probes can aim at a rule rather than at random fields."""

    source: Optional[str]
    dest: Optional[str]
    proto: Optional[int]
    ports: Tuple[int, ...]
    icmp: Tuple[Tuple[int, int], ...]


_ADDR = r"(\d+\.\d+\.\d+\.\d+(?:/[\d.]+)?)"


def scan(text: str) -> Scan:
    """Regex scan of -s/-d/ports/-p/--icmp-type values (a stand-in until ipt2xdp.ir exists)."""
    out = Scan()
    for flag, values in re.findall(r"(-s|--source|-d|--destination|--src-range|--dst-range)\s+(?:!\s+)?(\S+)", text):
        for value in re.split(r"[,-]", values):
            if re.fullmatch(_ADDR, value):
                (out.sources if flag in ("-s", "--source", "--src-range") else out.dests).add(_prefix(value))
    for values in re.findall(r"--(?:[sd]ports?|source-ports?|destination-ports?)\s+(?:!\s+)?([\d,:]+)", text):
        for part in re.split(r"[,:]", values):
            if part.isdigit() and int(part) < 65536:
                out.ports.add(int(part))
    for proto in re.findall(r"(?:-p|--protocol)\s+(?:!\s+)?(\w+)", text):
        number = int(proto) if proto.isdigit() else _PROTO_NAMES.get(proto.lower())
        if number:
            out.protocols.add(number)
    for value in re.findall(r"--icmp-type\s+(?:!\s+)?(\S+)", text):
        out.icmp.update(_icmp(value))
    for line in text.splitlines():
        if line.startswith(("-A ", "-I ")):
            out.rules.append(_hint(line))
    for flag, address, port in re.findall(r"--to-(destination|source) (\d+\.\d+\.\d+\.\d+)?(?::(\d+))?", text):
        if address:
            (out.nat_dests if flag == "destination" else out.nat_sources).add(address)
        if port:
            out.nat_ports.add(int(port))
    out.nat_ports.update(int(port) for port in re.findall(r"--to-ports (\d+)", text))
    out.ports |= out.nat_ports
    nat_table = re.search(r"^\*nat\s*$(.*?)^COMMIT", text, re.M | re.S)
    for values in re.findall(r"--dports? (?:! )?([\d,:]+)", nat_table.group(1) if nat_table else ""):
        out.nat_matched_ports.update(int(p) for p in re.split(r"[,:]", values) if p.isdigit() and int(p) < 65536)
    return out


def _hint(line: str) -> RuleHint:
    src = re.search(r"(?:-s|--source)\s+(?:!\s+)?" + _ADDR, line)
    dst = re.search(r"(?:-d|--destination)\s+(?:!\s+)?" + _ADDR, line)
    proto = re.search(r"(?:-p|--protocol)\s+(\w+)", line)
    number = None
    if proto:
        number = int(proto.group(1)) if proto.group(1).isdigit() else _PROTO_NAMES.get(proto.group(1).lower())
    ports = [int(p) for v in re.findall(r"--(?:[sd]ports?|source-ports?|destination-ports?)\s+(?:!\s+)?([\d,:]+)", line)
             for p in re.split(r"[,:]", v) if p.isdigit() and int(p) < 65536]
    icmp = [t for v in re.findall(r"--icmp-type\s+(?:!\s+)?(\S+)", line) for t in _icmp(v)]
    return RuleHint(src and _prefix(src.group(1)), dst and _prefix(dst.group(1)), number or None,
                    tuple(ports), tuple(icmp))


def _prefix(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except ValueError:
        return value.split("/")[0] + "/32"


def _icmp(value: str) -> List[Tuple[int, int]]:
    if "/" in value:
        t, c = value.split("/", 1)
        return [(int(t), int(c))] if t.isdigit() and c.isdigit() else []
    if value.isdigit():
        return [(int(value), 0), (int(value), 1)]
    t, c = _ICMP_NAMES.get(value, (None, None))
    if t is None:
        return []
    return [(t, c)] if c is not None else [(t, 0), (t, 1), (t, 3)]


def prefix_edges(prefix: str) -> List[str]:
    """Addresses at and just outside a prefix's edges: network-1, network, last, last+1."""
    net = ipaddress.IPv4Network(prefix, strict=False)
    lo, hi = int(net.network_address), int(net.broadcast_address)
    values = {lo, hi, max(lo - 1, 0), min(hi + 1, 2 ** 32 - 1)}
    if hi - lo > 2:
        values.add((lo + hi) // 2)
    return [str(ipaddress.IPv4Address(v)) for v in sorted(values)]


def port_edges(ports: Sequence[int]) -> List[int]:
    values = {0, 1, 22, 53, 80, 443, 1023, 1024, 65535}
    for p in ports:
        values.update(v for v in (p - 1, p, p + 1) if 0 <= v <= 65535)
    return sorted(values)


def tcp_seq_ack(probe_id: int) -> Tuple[int, int]:
    """TCP seq/ack that let a reset be traced back: RST.seq = ack, or RST.ack = seq + len + SYN + FIN."""
    return probe_id << 8, (probe_id << 8) | 0x5A


def _usable_local(addr: str) -> bool:
    a = ipaddress.IPv4Address(addr)
    return not (a.is_multicast or a.is_loopback or a.is_unspecified or a.is_reserved or addr.endswith(".255")
                or int(a) == 0 or a.is_link_local)


def generate(text: str, n: int = 200, seed: int = 0, forwarding: bool = False) -> Corpus:
    """A corpus of n probes for the ruleset `text`, the same for the same (text, n, seed, forwarding).

    forwarding: the receiver forwards (harness.Testbed(forwarding=True)); a share of the probes then
    goes to FORWARDED, which the receiver routes on to a third namespace.
    """
    from compat_tests import probes  # scapy is imported only when a corpus is built

    rng = random.Random(f"{seed}:{text}")
    found = scan(text)
    src_pool = sorted({a for p in found.sources for a in prefix_edges(p)} | set(DEFAULT_SOURCES))
    dst_scan = sorted({a for p in found.dests for a in prefix_edges(p)})
    block = ipaddress.IPv4Network(FORWARDED)
    local = {a for a in dst_scan if _usable_local(a)} - set(src_pool)
    if forwarding:  # the forwarded block lies behind the receiver, none of it is local
        local = {a for a in local if ipaddress.IPv4Address(a) not in block}
    # NAT addresses are always local: a DNAT or SNAT to them keeps the packet on its way to filter/INPUT.
    kept = {DEFAULT_LOCAL} | found.nat_dests | found.nat_sources
    local = sorted(local | kept)
    if len(local) > 48:  # each one is an address on the receiver's lo: keep setup fast
        local = sorted(kept | set(rng.sample([a for a in local if a not in kept], 48 - len(kept))))
    dst_pool = sorted(set(local) | set(dst_scan) | {NONLOCAL, "255.255.255.255", "224.0.0.1"})
    forwarded: List[str] = []
    if forwarding:
        forwarded = sorted({a for p in found.dests if ipaddress.IPv4Network(p, strict=False).subnet_of(block)
                            for a in prefix_edges(p) if ipaddress.IPv4Address(a) in block} | {NONLOCAL})
        forwarded = [a for a in forwarded if a not in (str(block.network_address), str(block.broadcast_address))]
    ctx = probes.Context(rng, src_pool, dst_pool, local, port_edges(sorted(found.ports)),
                         sorted(found.icmp | set(ICMP_TYPES)), sorted(found.protocols | set(OTHER_PROTOCOLS)),
                         found.rules, forwarded=forwarded, nat_sources=sorted(found.nat_sources))
    ctx.flows = [Flow(rng.choice((17, 17, 1)), rng.choice(local), rng.choice(ctx.ports) or 1,
                      rng.choice(src_pool), rng.choice(ctx.ports) or 1) for _ in range(6)]
    nat = bool(found.nat_dests or found.nat_sources or re.search(r"-j (?:REDIRECT|MASQUERADE)", text))
    # NAT hosts: the flows go to ports the nat table matches, so that DNAT and REDIRECT rewrite them
    # (to a listener on every address, listen_any) and their later segments follow the rewrite.
    server_ports = sorted(found.nat_matched_ports) if nat and found.nat_matched_ports and rng.random() < 0.7 \
        else [p for p in ctx.ports if p] or [80]
    servers = sorted({(rng.choice(local), rng.choice(server_ports)) for _ in range(3)})
    ctx.tcp_flows = [TcpFlow(rng.choice(src_pool), rng.choice((20000, min(rng.choice(ctx.ports) or 1, 60000))) + i,
                             *servers[i % len(servers)]) for i in range(4)]
    loose = rng.choice(("0", "1"))
    built: List[Probe] = []
    for index in range(len(ctx.tcp_flows)):  # the flows' SYNs first: a run sends them in a first exchange
        built.append(probes.tcp_flow_syn(ctx, len(built) + 1, index))
    families = probes.FAMILIES + (probes.NAT_FAMILIES if nat else ())  # other corpora stay as they were
    weights = [w for _, w in families]
    while len(built) < n:
        make = rng.choices([f for f, _ in families], weights)[0]
        pid = len(built) + 1
        made = make(ctx, pid)
        built.append(made if isinstance(made, Probe) else Probe(pid, made[0], tuple(made[1]), *made[2:]))
        if nat:
            ctx.syns += probes.lone_syn(built[-1])
    return Corpus(built, tuple(local), seed, tuple(ctx.flows), tuple(ctx.tcp_flows),
                  (("net.netfilter.nf_conntrack_tcp_loose", loose),), tuple(sorted(found.nat_ports)))
