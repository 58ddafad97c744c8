# SPDX-License-Identifier: GPL-2.0-only
"""Send a probe corpus from the sender namespace and observe each probe's fate in the receiver.

Why sockets are opened with setns() in this process instead of in helper processes: a socket keeps
the network namespace it was created in, so the test process can own a raw socket in the receiver and
an AF_PACKET socket in the sender, with no process start-up (scapy alone takes a second to import).
Only socket creation happens inside a namespace, the thread's namespace is restored in `finally`, and
`inside()` checks the switch really happened before anything else runs.

What is observed, per probe id (the IPv4 identification field, unique in a corpus):
- delivered: an AF_INET SOCK_RAW socket bound to the receiver's veth got it. Raw sockets are fed in
  ip_local_deliver_finish(), after the NF_INET_LOCAL_IN hook, so they see exactly the packets that
  filter/INPUT (and every earlier hook) let through to local delivery.
- ingress: an AF_PACKET tap on the receiver's veth saw a frame of it. Taps run after XDP (native and
  generic) and before netfilter, so "not delivered, not at ingress" means XDP dropped it.
- replies: what came back to the sender: ICMP errors (matched by the quoted IP id), echo replies
  (echo id = probe id), TCP resets (seq/ack encode the probe id, see packets.tcp_seq_ack) and
  forwarded copies. REJECT versus DROP is visible only here.

End of a run: the sender transmits an end-marker frame (ethertype 0x88B5, never IPv4, so an XDP program
must pass it). Frames on one veth queue are handled in order, and the whole exchange runs pinned to one
CPU, so once the receiver's tap has the marker every probe before it has been fully processed. The
receiver then sends a return marker, which reaches the sender after every reply the probes caused.
"""
from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_MARKER = 0x88B5  # IEEE local experimental ethertype
SO_RCVBUFFORCE = 33
PACKET_IGNORE_OUTGOING = 23
SOL_PACKET = 263
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(ns_path: str):
    """Run the body with this thread in the network namespace at ns_path (for socket creation only)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(ns_path, os.O_RDONLY)
    try:
        _setns(target)
        # Refuse to continue unless we are really inside: a silent failure would open host sockets.
        if os.stat("/proc/thread-self/ns/net").st_ino != os.fstat(target).st_ino:
            raise RuntimeError(f"setns into {ns_path} did not take effect")
        yield
    finally:
        _setns(own)
        os.close(own)
        os.close(target)


@dataclass(frozen=True)
class Fate:
    """What happened to one probe. Two runs agree on a probe when their `key`s are equal."""

    delivered: bool
    replies: Tuple[str, ...] = ()
    ingress: bool = True  # informational: False means it died before the stack (XDP)

    @property
    def key(self) -> Tuple[bool, Tuple[str, ...]]:
        return (self.delivered, self.replies)

    def __str__(self) -> str:
        where = "delivered" if self.delivered else ("dropped" if self.ingress else "dropped before the stack")
        return where + (f", replies: {', '.join(self.replies)}" if self.replies else "")


@dataclass
class Observation:
    fates: Dict[int, Fate]
    marker_lost: bool = False  # the end marker never reached the receiver's tap
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0
    server_isn: Dict[int, int] = field(default_factory=dict)  # SYN probe id -> seq of the SYN-ACK it got

    def merge(self, later: "Observation") -> "Observation":
        return Observation({**self.fates, **later.fates}, self.marker_lost or later.marker_lost,
                           self.notes + later.notes, self.seconds + later.seconds,
                           {**self.server_isn, **later.server_isn})


def _eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def _ip_fields(pkt: bytes) -> Optional[Tuple[int, int, bytes, bytes, int]]:
    """(ip id, protocol, src, dst, header length) of an IPv4 packet, or None if it is not one."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    return struct.unpack("!H", pkt[4:6])[0], pkt[9], pkt[12:16], pkt[16:20], ihl


TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


def tcp_reply_index(probes) -> Dict[tuple, int]:
    """Keys a TCP answer (reset, SYN-ACK) to a single-frame TCP probe would carry -> probe id.

    An answer to a segment with ACK set has seq = the segment's ack; to one without, ack = seq +
    payload + SYN + FIN. Keyed with the answer's addresses and ports, this traces answers to
    segments whose numbers are not chosen from the probe id (TCP flows, whose receiver side
    numbers are the kernel's). The first probe wins a shared key, the same in every run.
    """
    index: Dict[tuple, int] = {}
    for probe in probes:
        f = _ip_fields(probe.frames[0]) if len(probe.frames) == 1 else None
        if f is None or f[1] != socket.IPPROTO_TCP or len(probe.frames[0]) < f[4] + 20:
            continue
        body = probe.frames[0][f[4]:]
        sport, dport, seq, ack = struct.unpack("!HHII", body[:12])
        flags, payload = body[13], len(body) - (body[12] >> 4) * 4
        ends = (f[3], f[2], dport, sport)
        if flags & TCP_ACK:
            index.setdefault(ends + ("seq", ack), probe.id)
        else:
            end = (seq + payload + bool(flags & TCP_SYN) + bool(flags & TCP_FIN)) & 0xFFFFFFFF
            index.setdefault(ends + ("ack", end), probe.id)
    return index


def _classify_tcp_answer(pkt: bytes, ihl: int, index: Dict[tuple, int]) -> Optional[Tuple[int, str, int]]:
    """(probe id, "tcp-rst" or "tcp-synack", the answer's seq) for an answer found in `index`."""
    body = pkt[ihl:]
    if len(body) < 20 or not body[13] & TCP_RST and body[13] & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK:
        return None
    sport, dport, seq, ack = struct.unpack("!HHII", body[:12])
    ends = (pkt[12:16], pkt[16:20], sport, dport)
    pid = index.get(ends + ("ack", ack)) if body[13] & TCP_ACK else None
    if pid is None and body[13] & TCP_RST:
        pid = index.get(ends + ("seq", seq))
    if pid is None:
        return None
    return pid, "tcp-rst" if body[13] & TCP_RST else "tcp-synack", seq


def _classify_reply(pkt: bytes, probes: Dict[int, "object"], id_offset: int = 0) -> Optional[Tuple[int, str]]:
    """Map a packet that came back to the sender to (probe id, reply kind), or None.

    id_offset: what the sender added to every probe's IP id (Endpoints); echo identifiers and TCP
    sequence numbers carry the bare probe id."""
    f = _ip_fields(pkt)
    if f is None:
        return None
    ip_id, proto, src, dst, ihl = f
    ip_id = (ip_id - id_offset) & 0xFFFF
    body = pkt[ihl:]
    if proto == socket.IPPROTO_ICMP and len(body) >= 8:
        icmp_type, code = body[0], body[1]
        if icmp_type in (3, 4, 5, 11, 12):  # errors quote the offending IP header
            inner = _ip_fields(body[8:])
            quoted = (inner[0] - id_offset) & 0xFFFF if inner else None
            # The quoted addresses must be the probe's too: a reused receiver can still answer
            # a packet of an earlier run that had the same IP id (a fragment reassembly timeout).
            probe = probes.get(quoted) if inner else None
            if probe is not None and (inner[2], inner[3]) == (probe.src_bytes, probe.dst_bytes):
                return quoted, f"icmp-{icmp_type}/{code}"
        elif icmp_type in (0, 14, 16, 18):  # query replies keep the request's identifier
            ident = struct.unpack("!H", body[4:6])[0]
            if ident in probes:
                return ident, f"icmp-{icmp_type}/{code}"
    if proto == socket.IPPROTO_TCP and len(body) >= 20 and body[13] & 0x04:  # RST
        seq, ack = struct.unpack("!II", body[4:12])
        for candidate in (seq >> 8, ack >> 8):
            if candidate in probes:
                return candidate, "tcp-rst"
    probe = probes.get(ip_id)
    if probe is not None and (src, dst) == (probe.src_bytes, probe.dst_bytes):
        return ip_id, "forwarded"
    return None


def open_flows(receiver_ns: str, flows) -> List[socket.socket]:
    """Send the first packet of each flow from the receiver, so conntrack has an entry for it.

    The send goes through OUTPUT and conntrack confirmation inside sendto(), so the entry exists when it
    returns. The sockets stay open (the caller closes them) so replies find a socket, as in real life.
    """
    socks = []
    with inside(receiver_ns):
        for f in flows:
            if f.proto == socket.IPPROTO_UDP:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((f.local, f.local_port))
                payload, dest = b"i2x flow", (f.remote, f.remote_port)
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                s.bind((f.local, 0))
                header = struct.pack("!BBHHH", 8, 0, 0, f.local_port, 1) + b"i2x flow"
                payload = header[:2] + struct.pack("!H", _checksum(header)) + header[4:]
                dest = (f.remote, 0)
            socks.append(s)
            try:
                s.sendto(payload, dest)
            except OSError:
                pass  # OUTPUT may drop it (EPERM): then the flow is simply not tracked, in every run
    return socks


def listen(receiver_ns: str, tcp_flows, any_ports: Iterable[int] = ()) -> List[socket.socket]:
    """A listening socket in the receiver per TCP flow server (address, port), and one on every
    address per port of any_ports that no flow server uses; the caller closes them."""
    socks = []
    servers = {(f.server, f.server_port) for f in tcp_flows}
    taken = {port for _, port in servers}
    with inside(receiver_ns):
        for address, port in sorted(servers | {("0.0.0.0", p) for p in any_ports if p not in taken}):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            socks.append(s)
            s.bind((address, port))
            s.listen(64)
    return socks


def bind_tcp_flows(probes, server_isn: Dict[int, int]) -> list:
    """Probes with their flow's ack made absolute: ack offset + the receiver's ISN + 1.

    server_isn: flow index -> the receiver's ISN from the SYN-ACK (a flow whose SYN got none keeps
    the bare offsets: its segments then meet no connection, the same way in every run that agrees).
    """
    from dataclasses import replace

    out = []
    for probe in probes:
        if probe.tcp_flow is None or probe.tcp_flow[0] not in server_isn:
            out.append(probe)
            continue
        frame = bytearray(probe.frames[0])
        ihl = (frame[0] & 0x0F) * 4
        ack = (server_isn[probe.tcp_flow[0]] + 1 + probe.tcp_flow[1]) & 0xFFFFFFFF
        frame[ihl + 8:ihl + 12] = struct.pack("!I", ack)
        frame[ihl + 16:ihl + 18] = b"\0\0"
        pseudo = bytes(frame[12:20]) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(frame) - ihl)
        frame[ihl + 16:ihl + 18] = struct.pack("!H", _checksum(pseudo + bytes(frame[ihl:])))
        out.append(replace(probe, frames=(bytes(frame),)))
    return out


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data[:len(data) // 2 * 2])) + (data[-1] << 8 if len(data) % 2 else 0)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def with_ip_id(frame: bytes, ip_id: int) -> bytes:
    """An IPv4 frame with another identification field, its header checksum updated incrementally
    (RFC 1624): a probe sent with a wrong checksum on purpose stays wrong by the same amount."""
    out = bytearray(frame)
    old_id, old_sum = struct.unpack("!H", out[4:6])[0], struct.unpack("!H", out[10:12])[0]
    new_id = ip_id & 0xFFFF
    total = (~old_sum & 0xFFFF) + (~old_id & 0xFFFF) + new_id
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    out[4:6] = struct.pack("!H", new_id)
    out[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(out)


class Endpoints:
    """The sockets of one testbed: a sender AF_PACKET socket and the receiver's tap and raw sockets."""

    def __init__(self, sender_ns: str, sender_if: str, receiver_ns: str, receiver_if: str,
                 protocols: Iterable[int], beyond: Optional[Tuple[str, str, str]] = None,
                 ip_id_offset: int = 0, nat_dsts: Iterable[str] = ()):
        """beyond: (namespace, its device, the receiver's device towards it) of a third namespace the
        receiver forwards to; forwarded copies seen there are the reply "seen beyond".

        ip_id_offset: added to every probe's IP id on the wire (and taken off what comes back). A
        receiver kept across rulesets holds IP fragment queues for 30 s, keyed by addresses and IP
        id; without the offset a later run's tail fragment could complete an earlier run's head.

        nat_dsts: the receiver's addresses a nat table may rewrite a probe's destination to (DNAT,
        REDIRECT): a probe delivered at one of them was accepted by filter/INPUT all the same."""
        self.ip_id_offset = ip_id_offset
        self.nat_dsts = frozenset(socket.inet_aton(a) for a in nat_dsts)
        self._socks: List[socket.socket] = []
        self.beyond_tap = self.towards_beyond = None
        try:
            with inside(sender_ns):
                self.tx = self._packet_socket(sender_if)
            if beyond is not None:
                with inside(beyond[0]):
                    self.beyond_tap = self._packet_socket(beyond[1])
            with inside(receiver_ns):
                if beyond is not None:
                    self.towards_beyond = self._packet_socket(beyond[2])
                self.tap = self._packet_socket(receiver_if)
                self.raw = {}
                for proto in sorted(set(protocols)):
                    s = self._keep(socket.socket(socket.AF_INET, socket.SOCK_RAW, proto))
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, receiver_if.encode())
                    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
                    s.setblocking(False)
                    self.raw[proto] = s
        except Exception:
            self.close()
            raise
        self.sender_mac = self.tx.getsockname()[4]
        self.receiver_mac = self.tap.getsockname()[4]
        if beyond is not None:
            self.beyond_macs = (self.beyond_tap.getsockname()[4], self.towards_beyond.getsockname()[4])

    def _keep(self, s: socket.socket) -> socket.socket:
        self._socks.append(s)
        return s

    def _packet_socket(self, ifname: str) -> socket.socket:
        s = self._keep(socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)))
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # see only frames arriving on ifname
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        s.bind((ifname, ETH_P_ALL))
        return s

    def close(self) -> None:
        for s in self._socks:
            s.close()
        self._socks.clear()

    def drain(self) -> None:
        """Throw away anything queued before a run (IPv6 noise, earlier runs)."""
        for s in self._socks:
            s.setblocking(False)
            try:
                while True:
                    s.recv(65535)
            except BlockingIOError:
                pass

    def exchange(self, probes: list, marker_timeout: float = 1.0) -> Observation:
        """Send every probe's frames in order, then the markers, and collect fates."""
        start = time.monotonic()
        by_id = {p.id: p for p in probes}
        nonce = os.urandom(8)
        cpu = min(os.sched_getaffinity(0))
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})  # one CPU: veth backlog processing stays in send order
        try:
            self.drain()
            for probe in probes:
                for frame in probe.frames:
                    if self.ip_id_offset and _ip_fields(frame):
                        frame = with_ip_id(frame, probe.id + self.ip_id_offset)
                    self.tx.send(_eth(self.receiver_mac, self.sender_mac, ETH_P_IP, frame))
            self.tx.send(_eth(self.receiver_mac, self.sender_mac, ETH_P_MARKER, b"I2XEND" + nonce))
            ingress, marker_seen = self._read_tap(nonce, by_id, marker_timeout)
            beyond_seen = True
            if self.beyond_tap is not None:
                # Forwarded copies left the receiver before its tap saw the marker; a marker sent the
                # same way now arrives behind all of them.
                self.towards_beyond.send(_eth(*self.beyond_macs, ETH_P_MARKER, b"I2XFWD" + nonce))
                beyond, beyond_seen = self._read_beyond(nonce, by_id, marker_timeout)
            self.tap.send(_eth(self.sender_mac, self.receiver_mac, ETH_P_MARKER, b"I2XBCK" + nonce))
            replies, isn, back_seen = self._read_replies(nonce, by_id, tcp_reply_index(probes), marker_timeout)
        finally:
            os.sched_setaffinity(0, saved)
        delivered, notes = self._read_raw(by_id)
        if not back_seen:
            notes.append("return marker lost: replies may be incomplete")
        if self.beyond_tap is not None:
            for pid in beyond:
                replies.setdefault(pid, set()).add("seen beyond")
            if not beyond_seen:
                notes.append("marker to the forwarding destination lost: forwarded copies may be incomplete")
        fates = {pid: Fate(pid in delivered, tuple(sorted(replies.get(pid, ()))), pid in ingress)
                 for pid in by_id}
        return Observation(fates, not marker_seen, notes, time.monotonic() - start, isn)

    def _read_beyond(self, nonce: bytes, by_id: dict, timeout: float):
        seen = set()
        for frame in self._frames(self.beyond_tap, b"I2XFWD" + nonce, timeout):
            if frame is None:
                return seen, True
            f = _ip_fields(frame[14:]) if frame[12:14] == b"\x08\x00" else None
            pid = self._probe_id(f[0]) if f else None
            probe = by_id.get(pid)
            if probe is not None and (f[2], f[3]) == (probe.src_bytes, probe.dst_bytes):
                seen.add(pid)
        return seen, False

    def _probe_id(self, wire_ip_id: int) -> int:
        return (wire_ip_id - self.ip_id_offset) & 0xFFFF

    def _frames(self, sock: socket.socket, nonce_tag: bytes, timeout: float):
        """Yield received frames until one is the marker nonce_tag (then stop) or the timeout."""
        deadline = time.monotonic() + timeout
        sock.setblocking(False)
        while True:
            try:
                frame = sock.recv(65535)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    return
                continue
            if frame[12:14] == struct.pack("!H", ETH_P_MARKER) and frame[14:28] == nonce_tag:
                yield None
                return
            yield frame

    def _read_tap(self, nonce: bytes, by_id: dict, timeout: float):
        seen, marker = set(), False
        for frame in self._frames(self.tap, b"I2XEND" + nonce, timeout):
            if frame is None:
                marker = True
            elif frame[12:14] == b"\x08\x00":
                f = _ip_fields(frame[14:])
                if f and self._probe_id(f[0]) in by_id:
                    seen.add(self._probe_id(f[0]))
        return seen, marker

    def _read_replies(self, nonce: bytes, by_id: dict, tcp_index: Dict[tuple, int], timeout: float):
        replies: Dict[int, set] = {}
        isn: Dict[int, int] = {}
        for frame in self._frames(self.tx, b"I2XBCK" + nonce, timeout):
            if frame is None:
                return replies, isn, True
            if frame[12:14] == b"\x08\x00":
                f = _ip_fields(frame[14:])
                answer = _classify_tcp_answer(frame[14:], f[4], tcp_index) \
                    if f and f[1] == socket.IPPROTO_TCP else None
                if answer is not None:
                    hit = answer[:2]
                    if answer[1] == "tcp-synack":
                        isn.setdefault(answer[0], answer[2])
                else:
                    hit = _classify_reply(frame[14:], by_id, self.ip_id_offset)
                if hit:
                    replies.setdefault(hit[0], set()).add(hit[1])
        return replies, isn, False

    def _read_raw(self, by_id: dict):
        """Probe ids that raw sockets received, checked against the probe's addresses and protocol."""
        delivered, notes = set(), []
        for proto, s in self.raw.items():
            try:
                while True:
                    f = _ip_fields(s.recv(65535))
                    pid = self._probe_id(f[0]) if f else None
                    probe = by_id.get(pid)
                    if probe is None or (f[1], f[2]) != (probe.proto, probe.src_bytes) or \
                            f[3] != probe.dst_bytes and f[3] not in self.nat_dsts:
                        continue  # not a probe (e.g. a kernel reply looped back): ignore
                    if pid in delivered:
                        notes.append(f"probe {pid} delivered twice")
                    delivered.add(pid)
            except BlockingIOError:
                pass
        return delivered, notes
