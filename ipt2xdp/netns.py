# SPDX-License-Identifier: GPL-2.0-only
"""Throwaway network namespaces joined by veth, for the demo, the tests, compat_tests and bench.

Nothing here touches the host's own interfaces or firewall: every device is created inside a
namespace this module made, and every namespace is deleted on exit, also when the caller fails.
Commands run through `nsenter --net=` rather than `ip netns exec`, so /sys/fs/bpf stays visible.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
PREFIX = "ipt2xdp"
_counter = itertools.count()


def _run(argv: Sequence[str], check: bool = True, input: Optional[str] = None) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), input=input, text=True, capture_output=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with exit {result.returncode}: {result.stderr.strip()}")
    return result


@dataclass
class Namespace:
    name: str

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    def argv(self, argv: Sequence[str]) -> List[str]:
        return ["nsenter", f"--net={self.path}", "--"] + list(argv)

    def run(self, argv: Sequence[str], check: bool = True, input: Optional[str] = None) -> subprocess.CompletedProcess:
        return _run(self.argv(argv), check=check, input=input)

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["sh", "-c", script], check=check)

    @contextlib.contextmanager
    def entered(self):
        """Run the body with this thread in the namespace (sockets and ioctls made there stay in it)."""
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.path}")
            yield
        finally:
            back = libc.setns(home, CLONE_NEWNET)
            os.close(home)
            os.close(target)
            if back != 0:
                raise OSError(ctypes.get_errno(), "setns back into the caller's namespace")


@dataclass
class VethPair:
    """A sender and a receiver namespace joined by one veth link, addresses on 10.77.<n>.0/24."""

    sender: Namespace
    receiver: Namespace
    sender_if: str
    receiver_if: str
    sender_ip: str
    receiver_ip: str
    _extra: List[Namespace] = field(default_factory=list)

    def close(self) -> None:
        for ns in (self.sender, self.receiver, *self._extra):
            delete_namespace(ns.name)

    def __enter__(self) -> "VethPair":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def create_namespace(role: str) -> Namespace:
    name = f"{PREFIX}-{os.getpid()}-{next(_counter)}-{role}"
    _run(["ip", "netns", "add", name])
    ns = Namespace(name)
    try:
        ns.run(["ip", "link", "set", "lo", "up"])
    except Exception:
        delete_namespace(name)
        raise
    return ns


def delete_namespace(name: str) -> None:
    # Deleting the namespace destroys the veth ends inside it and any XDP attachment, but pinned
    # ipt2xdp state would outlive it in bpffs: unpin that first.
    from ipt2xdp.pins import forget_netns

    path = f"{NETNS_DIR}/{name}"
    if os.path.exists(path):
        forget_netns(path)
    _run(["ip", "netns", "delete", name], check=False)


def veth_pair(subnet_index: Optional[int] = None) -> VethPair:
    """Create sender and receiver namespaces joined by veth; the caller must close() it (or use `with`)."""
    index = next(_counter) if subnet_index is None else subnet_index
    octet = index % 250 + 1
    tag = f"{os.getpid() % 10000}x{index % 1000}"
    sender_if, receiver_if = f"i2xs{tag}"[:15], f"i2xr{tag}"[:15]
    sender = create_namespace("snd")
    receiver = None
    try:
        receiver = create_namespace("rcv")
        _run(["ip", "link", "add", sender_if, "netns", sender.name, "type", "veth",
              "peer", "name", receiver_if, "netns", receiver.name])
        pair = VethPair(sender, receiver, sender_if, receiver_if, f"10.77.{octet}.1", f"10.77.{octet}.2")
        for ns, dev, ip in ((sender, sender_if, pair.sender_ip), (receiver, receiver_if, pair.receiver_ip)):
            ns.run(["ip", "addr", "add", f"{ip}/24", "dev", dev])
            ns.run(["ip", "link", "set", dev, "up"])
        return pair
    except Exception:
        delete_namespace(sender.name)
        if receiver is not None:
            delete_namespace(receiver.name)
        raise


def remove_stale_namespaces() -> List[str]:
    """Delete namespaces left by ipt2xdp runs whose process has died (a killed test run)."""
    removed = []
    if not os.path.isdir(NETNS_DIR):
        return removed
    pattern = re.compile(rf"^{PREFIX}-(\d+)-\d+-\w+$")
    for name in os.listdir(NETNS_DIR):
        match = pattern.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            delete_namespace(name)
            removed.append(name)
    return removed
