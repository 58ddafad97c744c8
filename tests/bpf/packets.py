# SPDX-License-Identifier: GPL-2.0-only
"""Packet builders shared by the BPF_PROG_TEST_RUN tables and bench/prog_run.py."""
import struct

from scapy.all import ARP, GRE, ICMP, IP, TCP, UDP, Dot1Q, Ether, IPv6, raw  # noqa: F401

DST = "192.0.2.1"


def tcp(src, dport, sport=40000, flags="A", dst=DST, **ip):
    return raw(Ether() / IP(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport, flags=flags))


def udp(src, dport, sport=40000, dst=DST):
    return raw(Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport))


def icmp(src, type_, code=0, dst=DST):
    return raw(Ether() / IP(src=src, dst=dst) / ICMP(type=type_, code=code))


def proto(src, number, dst=DST):
    return raw(Ether() / IP(src=src, dst=dst, proto=number) / (b"\0" * 20))


def patch_ip(packet: bytes, offset: int, fmt: str, value) -> bytes:
    """Overwrite a field at offset from the IP header start (after the 14-byte Ethernet header)."""
    buf = bytearray(packet)
    struct.pack_into(fmt, buf, 14 + offset, value)
    return bytes(buf)
