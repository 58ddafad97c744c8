# SPDX-License-Identifier: GPL-2.0-only
"""Probe families for packets.generate(): each returns (description, frames, src, dst, protocol).

Kept apart from packets.py because only this module imports scapy (about a second to load).
Every probe's IP id is its probe id; TCP seq/ack encode it too (packets.tcp_seq_ack), and ICMP
queries use it as identifier, so replies can be traced back.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from random import Random
from typing import List, Tuple

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from compat_tests.packets import Probe, prefix_edges, tcp_seq_ack  # noqa: E402


@dataclass
class Context:
    rng: Random
    src_pool: List[str]
    dst_pool: List[str]
    local: List[str]
    ports: List[int]
    icmp: List[Tuple[int, int]]
    protocols: List[int]
    rules: list = ()  # packets.RuleHint per -A line
    flows: list = ()  # packets.Flow the receiver opens before the probes
    forwarded: list = ()  # destinations the receiver forwards to the third namespace (forwarding runs)
    tcp_flows: list = ()  # packets.TcpFlow the sender opens
    nat_sources: list = ()  # SNAT addresses (--to-source): the receiver's flows may leave with them
    syns: list = field(default_factory=list)  # (src, dst, sport, dport, seq) of earlier single SYN probes
    # Per TCP flow: (probes sent after the SYN, client sequence offset), as a real client advances.
    cursors: dict = field(default_factory=dict)
    syn_seq: dict = field(default_factory=dict)  # per TCP flow: the client's ISN (its SYN's seq)

    def src(self) -> str:
        return self.rng.choice(self.src_pool)

    def dst(self) -> str:
        # Mostly local destinations: only those reach filter/INPUT. Forwarding runs send a quarter
        # to the forwarded block (filter/FORWARD).
        roll = self.rng.random()
        if self.forwarded and roll < 0.25:
            return self.rng.choice(self.forwarded)
        return self.rng.choice(self.local if roll < 0.85 else self.dst_pool)

    def port(self) -> int:
        return self.rng.choice(self.ports) if self.rng.random() < 0.8 else self.rng.randrange(65536)


def _payload(pid: int) -> bytes:
    return b"i2x" + pid.to_bytes(2, "big")


def _tcp(ctx: Context, pid: int, flags: str = None):
    flags = ctx.rng.choice(("S", "S", "A", "PA", "SA", "R", "FA", "", "FPU", "SF", "SR", "FSRPAUEC", "SEC"))\
        if flags is None else flags
    seq, ack = tcp_seq_ack(pid)
    sport, dport = ctx.port(), ctx.port()
    src, dst = ctx.src(), ctx.dst()
    pkt = IP(id=pid, src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack) / Raw(_payload(pid))
    return pkt, f"tcp {src}:{sport} > {dst}:{dport} [{flags or 'none'}]"


def _udp(ctx: Context, pid: int):
    sport, dport = ctx.port(), ctx.port()
    src, dst = ctx.src(), ctx.dst()
    pkt = IP(id=pid, src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(_payload(pid))
    return pkt, f"udp {src}:{sport} > {dst}:{dport}"


def _done(pkt, desc: str):
    return desc, [bytes(pkt)], pkt[IP].src, pkt[IP].dst, pkt[IP].proto


def tcp(ctx: Context, pid: int):
    return _done(*_tcp(ctx, pid))


def udp(ctx: Context, pid: int):
    return _done(*_udp(ctx, pid))


def icmp(ctx: Context, pid: int):
    t, c = ctx.rng.choice(ctx.icmp)
    src, dst = ctx.src(), ctx.dst()
    layer = ICMP(type=t, code=c, id=pid, seq=1)
    if t in (3, 4, 5, 11, 12):  # errors quote an (unrelated, untracked) packet
        layer = ICMP(type=t, code=c) / IP(id=(pid + 7) & 0xFFFF, src=dst, dst=src) / UDP(sport=53, dport=ctx.port())
    pkt = IP(id=pid, src=src, dst=dst) / layer / Raw(_payload(pid))
    return _done(pkt, f"icmp {src} > {dst} type {t}/{c}")


def other_protocol(ctx: Context, pid: int):
    proto = ctx.rng.choice(ctx.protocols)
    if proto in (1, 6, 17):
        return {1: icmp, 6: tcp, 17: udp}[proto](ctx, pid)
    src, dst = ctx.src(), ctx.dst()
    pkt = IP(id=pid, src=src, dst=dst, proto=proto) / Raw(bytes(16) + _payload(pid))
    return _done(pkt, f"proto {proto} {src} > {dst}")


def fragments(ctx: Context, pid: int):
    pkt, desc = (_tcp if ctx.rng.random() < 0.5 else _udp)(ctx, pid)
    pkt = pkt / Raw(bytes(48))
    pieces = [bytes(f) for f in fragment(pkt, fragsize=16)]
    kind = ctx.rng.choice(("in order", "reversed", "first only", "tail only", "tiny first"))
    if kind == "reversed":
        pieces.reverse()
    elif kind == "first only":
        pieces = pieces[:1]
    elif kind == "tail only":
        pieces = pieces[1:]
    elif kind == "tiny first":  # the L4 header split over two fragments
        pieces = [bytes(f) for f in fragment(pkt, fragsize=8)]
    return f"{desc} as {len(pieces)} fragments, {kind}", pieces, pkt[IP].src, pkt[IP].dst, pkt[IP].proto


_OPTIONS = {
    "nop+eol": b"\x01\x01\x01\x00",
    "record-route": b"\x07\x07\x04" + bytes(4) + b"\x00",
    "router-alert": b"\x94\x04\x00\x00",
    "timestamp": b"\x44\x08\x05\x00" + bytes(4),
    "lsrr": b"\x83\x07\x04" + bytes([10, 0, 0, 1]) + b"\x00",
    "bad-length": b"\x07\x28\x04\x00",
}


def ip_options(ctx: Context, pid: int):
    name = ctx.rng.choice(sorted(_OPTIONS))
    pkt, desc = (_tcp if ctx.rng.random() < 0.5 else _udp)(ctx, pid)
    raw = bytes(pkt)
    options = _OPTIONS[name]  # raw bytes, multiple of 4: scapy's option parser rejects the odd ones
    header = bytearray(raw[:20] + options)
    header[0] = 0x40 | (len(header) // 4)
    header[2:4] = (len(raw) + len(options)).to_bytes(2, "big")
    header[10:12] = b"\0\0"
    header[10:12] = _csum(bytes(header)).to_bytes(2, "big")
    return f"{desc} with IP option {name}", [bytes(header) + raw[20:]], pkt[IP].src, pkt[IP].dst, pkt[IP].proto


def malformed(ctx: Context, pid: int):
    pkt, desc = (_tcp if ctx.rng.random() < 0.6 else _udp)(ctx, pid)
    kind = ctx.rng.choice(("truncated l4", "bad ip checksum", "total length too big", "bad l4 checksum",
                           "ihl 4", "tcp doff 4", "udp length too big", "total length short"))
    raw = bytearray(bytes(pkt))
    ihl = (raw[0] & 0x0F) * 4
    if kind == "truncated l4":
        raw = raw[:ihl + 6]
        raw[2:4] = len(raw).to_bytes(2, "big")
        raw[10:12] = b"\0\0"
        raw[10:12] = _csum(bytes(raw[:ihl])).to_bytes(2, "big")
    elif kind == "bad ip checksum":
        raw[10] ^= 0x5A
    elif kind == "total length too big":
        raw[2:4] = (len(raw) + 40).to_bytes(2, "big")
        raw[10:12] = b"\0\0"
        raw[10:12] = _csum(bytes(raw[:ihl])).to_bytes(2, "big")
    elif kind == "bad l4 checksum":
        off = ihl + (16 if raw[9] == 6 else 6)
        raw[off] ^= 0xA5
    elif kind == "ihl 4":
        raw[0] = 0x44
    elif kind == "tcp doff 4" and raw[9] == 6:
        raw[ihl + 12] = 0x40
    elif kind == "udp length too big" and raw[9] == 17:
        raw[ihl + 4:ihl + 6] = (len(raw) - ihl + 20).to_bytes(2, "big")
    elif kind == "total length short":
        raw[2:4] = (ihl + 4).to_bytes(2, "big")
        raw[10:12] = b"\0\0"
        raw[10:12] = _csum(bytes(raw[:ihl])).to_bytes(2, "big")
    return f"{desc}, malformed: {kind}", [bytes(raw)], pkt[IP].src, pkt[IP].dst, pkt[IP].proto


def odd_addresses(ctx: Context, pid: int):
    pkt, desc = (_tcp if ctx.rng.random() < 0.5 else _udp)(ctx, pid)
    which = ctx.rng.choice(("src 127.0.0.1", "src 0.0.0.0", "src 224.0.0.5", "src local", "src 255.255.255.255",
                            "dst 255.255.255.255", "dst 224.0.0.1", "dst non-local", "dst 127.0.0.1", "ttl 1"))
    name, value = which.split(" ", 1)
    if name == "ttl":  # to a forwarded destination: time exceeded, whatever filter/FORWARD says
        pkt[IP].ttl, pkt[IP].dst = 1, ctx.rng.choice(list(ctx.forwarded) or [pkt[IP].dst])
        return _done(IP(bytes(pkt)), f"{desc}, ttl 1 to {pkt[IP].dst}")
    value = {"local": ctx.local[0], "non-local": "203.0.113.77"}.get(value, value)
    setattr(pkt[IP], name, value)
    pkt = IP(bytes(pkt))
    return _done(pkt, f"{desc}, odd address: {name} {value}")


def aimed(ctx: Context, pid: int):
    """A packet built to match one scanned rule's fields (an address at an edge of its prefixes)."""
    if not ctx.rules:
        return tcp(ctx, pid)
    hint = ctx.rng.choice(ctx.rules)
    rng = ctx.rng
    src = rng.choice(prefix_edges(hint.source)[1:-1] or [hint.source.split("/")[0]]) if hint.source else ctx.src()
    dst = ctx.dst()
    if hint.dest:
        inside = [a for a in prefix_edges(hint.dest) if a in ctx.local]
        dst = rng.choice(inside) if inside else dst
    proto = hint.proto or rng.choice((6, 17, 1))
    port = lambda: rng.choice(hint.ports) + rng.choice((0, 0, 0, -1, 1)) if hint.ports else ctx.port()  # noqa: E731
    if proto in (6, 17):
        sport, dport = min(max(port(), 0), 65535), min(max(port(), 0), 65535)
        seq, ack = tcp_seq_ack(pid)
        l4 = TCP(sport=sport, dport=dport, flags=rng.choice(("S", "S", "A", "PA", "SA", "FA")), seq=seq, ack=ack) \
            if proto == 6 else UDP(sport=sport, dport=dport)
        desc = f"{'tcp' if proto == 6 else 'udp'} {src}:{sport} > {dst}:{dport}"
    elif proto == 1:
        t, c = rng.choice(hint.icmp or ctx.icmp)
        l4, desc = ICMP(type=t, code=c, id=pid), f"icmp {src} > {dst} type {t}/{c}"
    else:
        l4, desc = Raw(bytes(16)), f"proto {proto} {src} > {dst}"
    pkt = IP(id=pid, src=src, dst=dst, proto=proto) / l4 / Raw(_payload(pid))
    return _done(IP(bytes(pkt)), desc + " (aimed at a rule)")


def tcp_again(ctx: Context, pid: int):
    """A reset from the tuple of an earlier SYN probe (NAT hosts): if the SYN made an entry, conntrack
    rewrites the reset as it rewrote the SYN (DNAT, REDIRECT), whether or not a nat rule matches it
    (a `--syn` rule does not): only the conntrack lookup tells XDP (abi.NAT_FLOWS). A reset, because
    its sequence number (the SYN's + 1) is all conntrack checks: an ACK's acknowledgement would be
    judged against the receiver's random initial sequence number, a different fate in every run
    (the TCP flows learn it first and carry the right one)."""
    if not ctx.syns:
        return tcp(ctx, pid)
    src, dst, sport, dport, syn_seq = ctx.rng.choice(ctx.syns)
    pkt = IP(id=pid, src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="R", seq=(syn_seq + 1) & 0xFFFFFFFF)
    return _done(pkt, f"tcp {src}:{sport} > {dst}:{dport} [R] after an earlier SYN")


def flow(ctx: Context, pid: int):
    """A packet of a flow the receiver opened: its reply (ESTABLISHED), an ICMP error about it (RELATED),
    or the reverse of it (NEW)."""
    if not ctx.flows:
        return udp(ctx, pid)
    f = ctx.rng.choice(ctx.flows)
    kind = ctx.rng.choice(("reply", "reply", "icmp error", "reversed"))
    # A flow SNATed on its way out (nat POSTROUTING) is answered at its new source, which conntrack
    # rewrites back in PREROUTING (a NATed flow, abi.NAT_FLOWS): half the replies go there.
    to = ctx.rng.choice(ctx.nat_sources) if ctx.nat_sources and ctx.rng.random() < 0.5 else f.local
    if f.proto == 17:
        outbound = IP(src=to, dst=f.remote) / UDP(sport=f.local_port, dport=f.remote_port)
        reply = UDP(sport=f.remote_port, dport=f.local_port)
        reverse = UDP(sport=f.local_port, dport=f.remote_port)
    else:
        outbound = IP(src=to, dst=f.remote) / ICMP(type=8, id=f.local_port, seq=1)
        reply, reverse = ICMP(type=0, id=f.local_port, seq=1), ICMP(type=8, id=pid, seq=1)
    if kind == "icmp error":
        layer = ICMP(type=3, code=3) / IP(bytes(outbound))
    else:
        layer = reply if kind == "reply" else reverse
    pkt = IP(id=pid, src=f.remote, dst=to) / layer / Raw(_payload(pid))
    name = "udp" if f.proto == 17 else "echo"
    via = f" via {to}" if to != f.local else ""
    return _done(IP(bytes(pkt)), f"{kind}{via} for the receiver's {name} flow {f.local}:{f.local_port} > "
                                 f"{f.remote}:{f.remote_port}")


def tcp_flow_syn(ctx: Context, pid: int, index: int) -> Probe:
    """The SYN that opens ctx.tcp_flows[index]; its seq (tcp_seq_ack) is the client's ISN."""
    f = ctx.tcp_flows[index]
    ctx.cursors[index] = (0, 1)
    seq, _ = tcp_seq_ack(pid)
    ctx.syn_seq[index] = seq
    pkt = IP(id=pid, src=f.client, dst=f.server) / TCP(sport=f.client_port, dport=f.server_port, flags="S", seq=seq,
                                                       window=65535)
    return Probe(pid, f"tcp flow {index} {f.client}:{f.client_port} > {f.server}:{f.server_port}: SYN", (bytes(pkt),),
                 f.client, f.server, 6, opens=index)


# Segments of an open TCP flow: (kind, flags, payload length, sequence jump, ack jump). Jumps put the
# segment outside the receiver's window (conntrack: INVALID unless be_liberal; TCP: a duplicate ACK).
_SEGMENTS = (("data", "PA", 8, 0, 0), ("pure ack", "A", 0, 0, 0), ("fin", "FA", 0, 0, 0), ("rst", "R", 0, 0, None),
             ("rst+ack", "RA", 0, 0, 0), ("data out of window", "PA", 8, 1 << 30, 0),
             ("ack of unsent data", "A", 0, 0, 1 << 30), ("rst out of window", "R", 0, 1 << 30, None),
             ("syn in the open flow", "S", 0, 7777, None), ("ack without syn (no entry)", "A", 0, 0, 0),
             ("data without syn (no entry)", "PA", 8, 0, 0))


def tcp_flow(ctx: Context, pid: int):
    """A later segment of a flow the sender opened (SYN in the first exchange, this in the second).

    The first segment of every flow completes the handshake. The ack field is an offset from the
    receiver's ISN + 1 (a small negative one per segment, so a reset can be traced back by its seq;
    TCP takes such an old ack as a duplicate); the harness adds the ISN the run learned.
    """
    if not ctx.tcp_flows:
        return tcp(ctx, pid)
    index = ctx.rng.randrange(len(ctx.tcp_flows))
    count = ctx.cursors.get(index, (0, 1))[0]
    return tcp_flow_segment(ctx, pid, index, "handshake ack" if count == 0 else ctx.rng.choice(_SEGMENTS)[0])


def tcp_flow_segment(ctx: Context, pid: int, index: int, kind: str) -> Probe:
    """The segment `kind` (handshake ack, or one of _SEGMENTS) of flow `index`, after those before it."""
    f = ctx.tcp_flows[index]
    count, offset = ctx.cursors.get(index, (0, 1))
    kind, flags, size, seq_jump, ack_jump = next(s for s in (("handshake ack", "A", 0, 0, 0),) + _SEGMENTS
                                                 if s[0] == kind)
    sport = f.client_port + 1000 if "no entry" in kind else f.client_port
    if "no entry" not in kind:  # those go out from another port: the flow itself does not advance
        ctx.cursors[index] = (count + 1, offset + size + (kind == "fin"))
    isn = ctx.syn_seq[index]
    seq = (isn + offset + seq_jump) & 0xFFFFFFFF
    ack = (0 if ack_jump is None else ack_jump - count) & 0xFFFFFFFF
    tcp_layer = TCP(sport=sport, dport=f.server_port, flags=flags, seq=seq, ack=ack, window=65535)
    pkt = IP(id=pid, src=f.client, dst=f.server) / tcp_layer / Raw(_payload(pid).ljust(size, b".")[:size] if size else b"")
    description = f"tcp flow {index} {f.client}:{sport} > {f.server}:{f.server_port}: {kind} [{flags}]"
    return Probe(pid, description, (bytes(pkt),), f.client, f.server, 6,
                 tcp_flow=None if ack_jump is None else (index, ack))


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def handmade(specs, local_addrs=None, flows=()):
    """A corpus from hand-written scapy packets: [(description, packet[, fragsize])], ids assigned here.

    Fills in what tracing needs: IP id, TCP seq/ack, ICMP query id. With fragsize, the packet is sent
    as fragments of that size.
    """
    from compat_tests.packets import DEFAULT_LOCAL, Corpus, Probe

    built = []
    for pid, spec in enumerate(specs, 1):
        description, pkt = spec[0], spec[1].copy()
        pkt[IP].id = pid
        if TCP in pkt:
            pkt[TCP].seq, pkt[TCP].ack = tcp_seq_ack(pid)
        if ICMP in pkt and pkt[ICMP].type in (8, 13, 15, 17):
            pkt[ICMP].id = pid
        frames = [bytes(f) for f in fragment(pkt, fragsize=spec[2])] if len(spec) > 2 else [bytes(pkt)]
        built.append(Probe(pid, description, tuple(frames), pkt[IP].src, pkt[IP].dst, pkt[IP].proto))
    return Corpus(built, tuple(local_addrs or (DEFAULT_LOCAL,)), flows=tuple(flows))


# (family, weight): common shapes dominate, odd ones are always present in a 200-probe corpus.
FAMILIES = ((aimed, 30), (tcp, 20), (udp, 12), (icmp, 10), (other_protocol, 5), (fragments, 7),
            (ip_options, 5), (malformed, 7), (odd_addresses, 6), (flow, 8), (tcp_flow, 10))
NAT_FAMILIES = ((tcp_again, 10),)  # rulesets with a nat table


def lone_syn(probe) -> list:
    """[(src, dst, sport, dport, seq)] of a one-frame TCP probe with only SYN set, else []."""
    if len(probe.frames) != 1 or probe.proto != 6 or probe.tcp_flow is not None:
        return []
    pkt = IP(probe.frames[0])
    if TCP not in pkt or pkt[TCP].flags != "S" or pkt[IP].flags.MF or pkt[IP].frag:
        return []
    return [(pkt[IP].src, pkt[IP].dst, pkt[TCP].sport, pkt[TCP].dport, pkt[TCP].seq)]
