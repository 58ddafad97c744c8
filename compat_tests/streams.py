# SPDX-License-Identifier: GPL-2.0-only
"""The update test's probe streams (see updates.py): sockets in a sender/receiver pair, counted exactly.

Every probe carries its sequence number (4 bytes, big endian; for echo requests in the payload), so
the receiving side counts each one: a probe lost shows as a count of 0, a duplicate as 2. Counts live
in bytearrays, not sets: 1,000 imports stream millions of probes.

The receiver opens the udp_est flow (its first datagram makes conntrack's entry, so the sender's
datagrams are replies: ESTABLISHED) and the echo flow is primed with one request and its reply, so
later requests are ESTABLISHED too.
"""
from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import Dict, List

from compat_tests import updates
from compat_tests.observe import SO_RCVBUFFORCE, _checksum, inside

STREAMS = updates.PROBES + (updates.CANARY,)


class Counts:
    def __init__(self) -> None:
        self.data = bytearray(1 << 16)

    def add(self, seq: int) -> None:
        while seq >= len(self.data):
            self.data.extend(bytes(len(self.data)))
        if self.data[seq] < 255:
            self.data[seq] += 1

    def lost(self, sent: int) -> List[int]:
        view = self.data[:sent].ljust(sent, b"\0")
        return [i for i in range(sent) if view[i] == 0] if view.count(0) else []

    def duplicated(self, sent: int) -> int:
        view = self.data[:sent]
        return len(view) - view.count(0) - view.count(1)

    def received(self, sent: int) -> int:
        view = self.data[:sent]
        return len(view) - view.count(0)


def _echo(seq: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, updates.ECHO_ID, seq & 0xFFFF) + struct.pack("!I", seq)
    return header[:2] + struct.pack("!H", _checksum(header)) + header[4:]


class ProbeStreams:
    """Sockets for udp_new, udp_est, echo and the canary; `send_round` sends one probe of each."""

    def __init__(self, sender_ns: str, receiver_ns: str, sender_ip: str, receiver_ip: str):
        self.sender_ip, self.receiver_ip = sender_ip, receiver_ip
        self.sent: Dict[str, int] = {s: 0 for s in STREAMS}
        self.counts: Dict[str, Counts] = {s: Counts() for s in STREAMS}
        self._socks: List[socket.socket] = []
        with inside(receiver_ns):
            self.rx = {updates.PROBES[0]: self._udp(receiver_ip, updates.PORT_NEW),
                       updates.PROBES[1]: self._udp(receiver_ip, updates.PORT_EST),
                       updates.CANARY: self._udp(receiver_ip, updates.PORT_CANARY)}
        with inside(sender_ns):
            self.tx = {updates.PROBES[0]: self._udp(sender_ip, updates.SPORT_NEW),
                       updates.PROBES[1]: self._udp(sender_ip, updates.SPORT_EST),
                       updates.CANARY: self._udp(sender_ip, updates.SPORT_CANARY)}
            self.icmp = self._keep(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
            self.icmp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []

    def _keep(self, s: socket.socket) -> socket.socket:
        self._socks.append(s)
        return s

    def _udp(self, ip: str, port: int) -> socket.socket:
        s = self._keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        s.bind((ip, port))
        return s

    def prime(self, timeout: float = 2.0) -> None:
        """Open the receiver's udp_est flow and the echo flow (one request, one reply)."""
        self.rx["udp_est"].sendto(b"open", (self.sender_ip, updates.SPORT_EST))
        self.tx["udp_est"].settimeout(timeout)
        self.tx["udp_est"].recv(64)  # the flow's first datagram arrived: conntrack has the entry
        self.icmp.sendto(_echo(0xFFFFFFFF), (self.receiver_ip, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.icmp], [], [], deadline - time.monotonic())[0]:
                packet = self.icmp.recv(2048)
                body = packet[(packet[0] & 0x0F) * 4:]
                if body[0] == 0 and struct.unpack("!H", body[4:6])[0] == updates.ECHO_ID:
                    return
        raise RuntimeError("the echo flow was not answered while priming")

    def send_round(self) -> None:
        for name in ("udp_new", "udp_est", "canary"):
            self.tx[name].sendto(struct.pack("!I", self.sent[name]), (self.receiver_ip,
                                 {"udp_new": updates.PORT_NEW, "udp_est": updates.PORT_EST,
                                  "canary": updates.PORT_CANARY}[name]))
            self.sent[name] += 1
        self.icmp.sendto(_echo(self.sent["echo"]), (self.receiver_ip, 0))
        self.sent["echo"] += 1

    def _receive_udp(self, name: str) -> None:
        sock, counts = self.rx[name], self.counts[name]
        sock.settimeout(0.2)
        while True:
            try:
                data = sock.recv(64)
            except socket.timeout:
                if self._stop.is_set():
                    return
                continue
            if len(data) == 4:
                counts.add(struct.unpack("!I", data)[0])

    def _receive_echo(self) -> None:
        counts = self.counts["echo"]
        self.icmp.settimeout(0.2)
        while True:
            try:
                packet = self.icmp.recv(2048)
            except socket.timeout:
                if self._stop.is_set():
                    return
                continue
            body = packet[(packet[0] & 0x0F) * 4:]
            if len(body) >= 12 and body[0] == 0 and struct.unpack("!H", body[4:6])[0] == updates.ECHO_ID:
                seq = struct.unpack("!I", body[8:12])[0]
                if seq != 0xFFFFFFFF:
                    counts.add(seq)

    def start_receiving(self) -> None:
        self._threads = [threading.Thread(target=self._receive_udp, args=(n,), daemon=True) for n in self.rx]
        self._threads.append(threading.Thread(target=self._receive_echo, daemon=True))
        for t in self._threads:
            t.start()

    def stop_receiving(self) -> None:
        """Wait for the stream to drain (receivers stop after 0.2 s without a packet), then join."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def close(self) -> None:
        for s in self._socks:
            s.close()
        self._socks.clear()
