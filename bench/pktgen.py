# SPDX-License-Identifier: GPL-2.0-only
"""The project's fallback traffic generator: 64-byte UDP frames through AF_PACKET with sendmmsg (ctypes).

bench/e2e.py uses bench/livegen.py (BPF_PROG_RUN live frames, about ten times cheaper per frame)
and falls back to this, in the generator namespace, where live frames do not work (Linux < 5.18):

    nsenter --net=/var/run/netns/SND -- taskset -c CPU python -m bench.pktgen \
        --iface IF --dst-mac MAC --src 10.77.1.1 --dst 10.77.1.2 --dport 9 --seconds 2

One frame (60 bytes + 4 FCS = 64 on the wire) is built once and sent BATCH times per sendmmsg call
(every iovec points at the same buffer) until --seconds have passed. Prints one JSON line:
{"sent": N, "seconds": S, "calls": C}. Sending runs the receiver's softirq on the same CPU (veth
hands the frame over in the sender's context), so with taskset both sides share one CPU.
"""
from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import socket
import struct
import sys
import time

from ipt2xdp.packetspec import internet_checksum

BATCH = 256
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


def udp_frame(src_mac: bytes, dst_mac: bytes, src: str, dst: str, sport: int, dport: int) -> bytes:
    """A 60-byte Ethernet frame (64 with FCS): IPv4/UDP with an 18-byte payload."""
    payload = b"ipt2xdp-bench-0000"[:18]
    udp_len = 8 + len(payload)
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    pseudo = s + d + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", internet_checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    frame = dst_mac + src_mac + b"\x08\x00" + ip + udp
    assert len(frame) == 60, len(frame)
    return frame


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def send(iface: str, frame: bytes, seconds: float, batch: int = BATCH) -> dict:
    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((iface, 0))
    try:
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    except OSError:
        pass
    buf = ctypes.create_string_buffer(frame, len(frame))
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), len(frame))
    msgs = (Mmsghdr * batch)()
    for m in msgs:
        m.msg_hdr.msg_iov = ctypes.pointer(iov)
        m.msg_hdr.msg_iovlen = 1
    fd = sock.fileno()
    sendmmsg = libc.sendmmsg
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sent = calls = errors = 0
    start = time.perf_counter()
    deadline = start + seconds
    ptr = ctypes.addressof(msgs)
    while True:
        n = sendmmsg(fd, ptr, batch, 0)
        calls += 1
        if n > 0:
            sent += n
        else:
            errors += 1
        if calls % 16 == 0 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    sock.close()
    return {"sent": sent, "seconds": elapsed, "calls": calls, "errors": errors}


def add_frame_arguments(p: argparse.ArgumentParser) -> None:
    """The options that say which frame to send and where (shared with bench/livegen.py)."""
    p.add_argument("--iface", required=True)
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--sport", type=int, default=4000)
    p.add_argument("--dport", type=int, default=9)


def frame_from_arguments(a: argparse.Namespace) -> bytes:
    probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    probe.bind((a.iface, 0))
    src_mac = probe.getsockname()[4]  # /sys/class/net would show the host's namespace under nsenter
    probe.close()
    return udp_frame(src_mac, _mac(a.dst_mac), a.src, a.dst, a.sport, a.dport)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_frame_arguments(p)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=BATCH)
    a = p.parse_args()
    print(json.dumps(send(a.iface, frame_from_arguments(a), a.seconds, a.batch)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
