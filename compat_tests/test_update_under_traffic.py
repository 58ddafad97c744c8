# SPDX-License-Identifier: GPL-2.0-only
"""Updates under traffic: while the sender streams probes that every version of the ruleset accepts,
`ipt2xdp import FILE` applies one version after another (restore into netfilter, fail-open, re-plan,
flip the generation). Not one probe may be lost.

Every version has DROP rules XDP decides (other sources, other ports, other protocols) and the rule
that accepts the probes at a random place, under a DROP or an ACCEPT policy, so each import really
changes what XDP drops. IPT2XDP_COMPAT_UPDATES sets how many imports (default 60 for CI: an import
takes about 1.5 s here, most of it waiting for RCU grace periods; the long figure is in README.md).
"""
import random
import socket
import struct
import sys
import threading
import time

import pytest

from compat_tests.differential import env_int
from compat_tests.observe import inside
from ipt2xdp import netns

pytestmark = pytest.mark.kernel

UPDATES = env_int("IPT2XDP_COMPAT_UPDATES", 60)
PORT = 5555


def version(rng: random.Random, iface: str, sender_ip: str) -> str:
    """One ruleset version; whatever the draw, UDP from sender_ip to PORT is accepted."""
    drops = []
    for _ in range(rng.randint(1, 40)):
        kind = rng.randrange(4)
        if kind == 0:
            drops.append(f"-A INPUT -s 10.{rng.randrange(78, 250)}.{rng.randrange(256)}.0/24 -j DROP")
        elif kind == 1:
            port = rng.choice([p for p in range(1, 65536, 97) if p != PORT])
            drops.append(f"-A INPUT -p udp -m udp --dport {port} -j DROP")
        elif kind == 2:
            drops.append(f"-A INPUT -i {iface} -p tcp -m tcp --dport {rng.randrange(1, 1024)} -j DROP")
        else:
            drops.append(f"-A INPUT ! -s {sender_ip} -p udp -m udp --dport {PORT} -j DROP")
    accept = f"-A INPUT -s {sender_ip} -p udp -m udp --dport {PORT} -j ACCEPT"
    drops.insert(rng.randint(0, len(drops)), accept)
    policy = rng.choice(["DROP", "ACCEPT"])
    return "\n".join(["*filter", f":INPUT {policy} [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
                      *drops, "COMMIT", ""])


def test_no_probe_is_lost_while_the_ruleset_changes(tmp_path):
    rng = random.Random(6)
    with netns.veth_pair() as pair:
        with inside(pair.receiver.path):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with inside(pair.sender.path):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        rx.bind((pair.receiver_ip, PORT))
        rx.settimeout(0.2)
        got, sent, stop = set(), [0], threading.Event()

        def receive():
            while not stop.is_set() or len(got) < sent[0]:
                try:
                    got.add(struct.unpack("!I", rx.recv(64)[:4])[0])
                except socket.timeout:
                    if stop.is_set():
                        return

        def send():
            while not stop.is_set():
                tx.sendto(struct.pack("!I", sent[0]), (pair.receiver_ip, PORT))
                sent[0] += 1
                time.sleep(0.0005)

        path = tmp_path / "rules"
        path.write_text(version(rng, pair.receiver_if, pair.sender_ip))
        argv = [sys.executable, "-m", "ipt2xdp", "import", str(path), "--iface", pair.receiver_if,
                "--mode", "native", "--backend", "legacy"]
        pair.receiver.run(argv)
        threads = [threading.Thread(target=receive), threading.Thread(target=send)]
        for t in threads:
            t.start()
        try:
            for _ in range(UPDATES):
                path.write_text(version(rng, pair.receiver_if, pair.sender_ip))
                pair.receiver.run(argv)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
            rx.close()
            tx.close()
        lost = sorted(set(range(sent[0])) - got)
        assert sent[0] > UPDATES, "the sender did not stream"
        assert not lost, f"{len(lost)} of {sent[0]} probes lost across {UPDATES} imports: first {lost[:10]}"

