# SPDX-License-Identifier: GPL-2.0-only
"""The reply to a masqueraded connection, with real traffic over veth.

A "container" namespace behind the receiver talks UDP to the sender through a MASQUERADE (iptables-
legacy, iptables-nft, or a native nftables nat chain). The sender's reply is addressed to the
receiver itself; conntrack rewrites it in PREROUTING and the receiver forwards it to the container,
so filter/INPUT, which drops everything from the sender, never sees it. Netfilter alone delivers the
replies; with XDP attached they must still arrive (XDP must not take INPUT's DROP for them), while
a new flow from the sender to the receiver is still dropped in XDP. Before abi.NAT_FLOWS, XDP
dropped every reply (found by the lead with this topology)."""
import json
import sys
import time

import pytest

from compat_tests import harness
from tests.nsutil import DROP_FROM_SENDER, drain, send_frames, send_udp_frames, udp_receiver, unload

pytestmark = pytest.mark.kernel
REPLIES = 10
SERVER_PORT, CONTAINER_PORT = 5353, 40000

NAT = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s {containers} -o {out} -j MASQUERADE
COMMIT
"""
NATIVE_NAT = """table ip natty {{
    chain post {{ type nat hook postrouting priority srcnat; policy accept; ip saddr {containers} oifname "{out}" masquerade; }}
}}
"""


@pytest.fixture
def masquerading():
    testbed = harness.Testbed(forwarding=True)
    try:
        container = testbed.pair._extra[-1]
        near = testbed.receiver.run(["ip", "-o", "-4", "addr", "show", harness.FORWARD_IF]).stdout.split()[3].split("/")[0]
        container.run(["ip", "route", "add", "default", "via", near])
        yield testbed, container, near.rsplit(".", 1)[0] + ".0/24"
    finally:
        try:
            unload(testbed.pair)
        finally:
            testbed.close()


def replies_reaching_the_container(testbed, container) -> int:
    """One request from the container (masqueraded on its way out), then REPLIES answers."""
    inside = udp_receiver(container, CONTAINER_PORT)
    server = udp_receiver(testbed.sender, SERVER_PORT)
    try:
        inside.sendto(b"q", (testbed.pair.sender_ip, SERVER_PORT))
        _, peer = server.recvfrom(100)
        assert peer[0] == testbed.pair.receiver_ip, "the request was not masqueraded"
        for _ in range(REPLIES):
            server.sendto(b"r", peer)
        time.sleep(0.2)
        return drain(inside)
    finally:
        inside.close()
        server.close()


def input_drop_count(testbed, backend) -> int:
    """Packets netfilter counted on filter/INPUT's one rule (the DROP)."""
    out = testbed.receiver.run([f"iptables-{backend}", "-w", "-L", "INPUT", "-v", "-n", "-x"]).stdout
    return int(out.splitlines()[2].split()[0])


def stats(testbed) -> dict:
    out = testbed.receiver.run([sys.executable, "-m", "ipt2xdp", "status", "--json"]).stdout
    return json.loads(out)["stats"]


@pytest.mark.parametrize("nat", ["legacy", "nft", "native"])
def test_replies_of_a_masqueraded_flow_reach_the_container(masquerading, nat):
    testbed, container, containers = masquerading
    backend = "legacy" if nat == "legacy" else "nft"
    restore = f"iptables-{backend}-restore"
    text = DROP_FROM_SENDER.format(sender=testbed.pair.sender_ip)
    if nat != "native":
        text = NAT.format(containers=containers, out=testbed.receiver_if) + text
    testbed.receiver.run([restore], input=text)
    if nat == "native":
        testbed.receiver.run(["nft", "-f", "-"], input=NATIVE_NAT.format(containers=containers, out=testbed.receiver_if))

    alone = replies_reaching_the_container(testbed, container)
    assert alone == REPLIES  # de-NATed in PREROUTING and forwarded: filter/INPUT never drops them
    testbed.receiver.run(["conntrack", "-F"], check=False)
    testbed.receiver.run([sys.executable, "-m", "ipt2xdp", "import", "--live", "--iface", testbed.receiver_if,
                          "--backend", backend])
    before = stats(testbed)["nat_flow"]
    assert replies_reaching_the_container(testbed, container) == REPLIES
    assert stats(testbed)["nat_flow"] - before == REPLIES  # passed by the NATed-flow check, not by chance

    # a new flow from the sender to the receiver is still XDP's to drop: filter/INPUT's counter stays
    counted = input_drop_count(testbed, backend)
    dropped = stats(testbed)["drop"]
    send_udp_frames(testbed, 7009, 5)
    assert input_drop_count(testbed, backend) == counted
    assert stats(testbed)["drop"] - dropped == 5

    # A ping from it is the original direction of its flow: XDP's too, unless iptables-legacy's nat
    # PREROUTING counts what it sees (then netfilter decides and counts it).
    from scapy.all import ICMP
    send_frames(testbed, ICMP(type=8, id=77) / b"ping", 5)
    in_xdp = 0 if nat == "legacy" else 5
    assert stats(testbed)["drop"] - dropped == 5 + in_xdp
    assert input_drop_count(testbed, backend) == counted + 5 - in_xdp
