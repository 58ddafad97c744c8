# SPDX-License-Identifier: GPL-2.0-only
"""`-m set` blocklists decided in XDP, with real ipsets in namespaces, and the guard that hands
their packets back to netfilter the moment a set may have changed (ipset del, flush, swap,
destroy, a timeout), before any re-import.

The sender owns extra addresses on its veth so that packets come from listed and unlisted
sources: .11 is in the hash:ip set, .12 and .13 in a /31 of the hash:net set, .1 in none.
"""
import json
import socket
import sys
import time

import pytest

from ipt2xdp import netns
from tests.nsutil import inside

pytestmark = pytest.mark.kernel

PORT = 5000


def rules(prefix: str) -> str:
    return f"""*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m set --match-set bl_ip src -j DROP
-A INPUT -m set --match-set bl_net src -j DROP
-A INPUT -m set --match-set bl_tmo src -j DROP
-A INPUT -s {prefix}.0/24 -p udp -m udp --dport {PORT} -j ACCEPT
COMMIT
"""


def ipt2xdp(ns, *args):
    result = ns.run(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-m", "ipt2xdp", *args], check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def status(ns) -> dict:
    return json.loads(ipt2xdp(ns, "status", "--json"))


def rule_packets(ns, number: int) -> int:
    """Packets netfilter counted on INPUT rule `number`."""
    lines = ns.run(["iptables-nft", "-L", "INPUT", "-v", "-n", "-x", "--line-numbers"]).stdout.splitlines()[2:]
    return int(next(line.split()[1] for line in lines if line.split()[0] == str(number)))


class Lab:
    def __init__(self, pair, tmp_path):
        self.pair, self.rx, self.tx = pair, pair.receiver, pair.sender
        self.prefix = pair.receiver_ip.rsplit(".", 1)[0]
        for host in (11, 12, 13, 14):
            self.tx.run(["ip", "addr", "add", f"{self.prefix}.{host}/24", "dev", pair.sender_if])
        self.rx.sh(f"ipset create bl_ip hash:ip && ipset add bl_ip {self.prefix}.11 && "
                   f"ipset create bl_net hash:net && ipset add bl_net {self.prefix}.12/31 && "
                   "ipset create bl_tmo hash:ip timeout 600 && ipset create spare hash:ip")
        self.rules = tmp_path / "rules.v4"
        self.rules.write_text(rules(self.prefix))
        with inside(self.rx):
            self.server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.server.bind(("0.0.0.0", PORT))
        self.server.settimeout(0.3)

    def send(self, host: int, count: int = 5) -> int:
        """Send count datagrams from sender address .host; returns how many the receiver got."""
        with inside(self.tx):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"{self.prefix}.{host}", 0))
        try:
            for _ in range(count):
                s.sendto(b"x" * 20, (self.pair.receiver_ip, PORT))
        finally:
            s.close()
        got = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                self.server.recv(100)
                got += 1
            except socket.timeout:
                break
        return got

    def dropped(self) -> int:
        return status(self.rx)["xdp_dropped_packets"]

    def import_(self, *args) -> None:
        ipt2xdp(self.rx, "import", *args, "--iface", self.pair.receiver_if, "--mode", "native")

    def close(self):
        self.server.close()


@pytest.fixture
def lab(tmp_path):
    with netns.veth_pair() as pair:
        lab = Lab(pair, tmp_path)
        try:
            yield lab
        finally:
            lab.close()


def assert_dropped_in_xdp(lab, host, rule):
    dropped, seen = lab.dropped(), rule_packets(lab.rx, rule)
    assert lab.send(host) == 0
    assert lab.dropped() == dropped + 5, "XDP drops the set's members"
    assert rule_packets(lab.rx, rule) == seen, "netfilter never sees them"


def assert_reaches_netfilter(lab, host, accepted):
    dropped, accepts = lab.dropped(), rule_packets(lab.rx, 4)
    assert lab.send(host) == (5 if accepted else 0)
    assert lab.dropped() == dropped, "XDP no longer drops them"
    assert rule_packets(lab.rx, 4) == accepts + (5 if accepted else 0)


def test_blocklists_dropped_in_xdp_and_handed_back_on_removal(lab):
    lab.import_(str(lab.rules))
    mirror = status(lab.rx)["ipset_mirror"]
    assert mirror["mirrored"] and mirror["current"], mirror
    assert_dropped_in_xdp(lab, 11, 1)
    assert_dropped_in_xdp(lab, 12, 2)
    assert_dropped_in_xdp(lab, 13, 2)
    assert lab.send(1) == 5  # unlisted: accepted by netfilter

    # ipset del: the member's packets reach netfilter at once, and are accepted
    lab.rx.run(["ipset", "del", "bl_ip", f"{lab.prefix}.11"])
    assert_reaches_netfilter(lab, 11, accepted=True)
    # every guarded DROP passes now, also for members still listed: netfilter drops those itself
    seen = rule_packets(lab.rx, 2)
    assert_reaches_netfilter(lab, 12, accepted=False)
    assert rule_packets(lab.rx, 2) == seen + 5
    mirror = status(lab.rx)["ipset_mirror"]
    assert not mirror["current"] and "members removed" in mirror["changed"]

    # a re-import mirrors the sets again: XDP drops what is listed, and .11 no more
    lab.import_("--live")
    assert status(lab.rx)["ipset_mirror"]["current"]
    assert_dropped_in_xdp(lab, 12, 2)
    assert lab.send(11) == 5


def test_flush_swap_destroy_hand_back(lab):
    def fresh_import(host, rule):
        lab.import_(str(lab.rules))
        assert status(lab.rx)["ipset_mirror"]["current"]
        assert_dropped_in_xdp(lab, host, rule)

    fresh_import(12, 2)
    lab.rx.run(["ipset", "flush", "bl_net"])
    assert_reaches_netfilter(lab, 12, accepted=True)

    fresh_import(11, 1)
    lab.rx.run(["ipset", "swap", "bl_ip", "spare"])  # bl_ip now holds spare's (no) members
    assert_reaches_netfilter(lab, 11, accepted=True)

    lab.rx.run(["ipset", "swap", "bl_ip", "spare"])
    fresh_import(11, 1)
    lab.rx.sh("ipset create unused hash:ip && ipset destroy unused")  # any destroy counts
    assert not status(lab.rx)["ipset_mirror"]["current"]
    seen = rule_packets(lab.rx, 1)
    assert_reaches_netfilter(lab, 11, accepted=False)  # still listed: netfilter drops it
    assert rule_packets(lab.rx, 1) == seen + 5


def test_timeout_set_defers_before_members_expire(lab):
    lab.rx.run(["ipset", "add", "bl_tmo", f"{lab.prefix}.14", "timeout", "15"])
    lab.import_(str(lab.rules))
    mirror = status(lab.rx)["ipset_mirror"]
    # listed with 15 s left: trusted for 13 s from the listing (ipsets.TIMEOUT_MARGIN_S)
    assert mirror["current"] and 0 < mirror["deadline_in_s"] <= 13, mirror
    assert_dropped_in_xdp(lab, 14, 3)
    time.sleep(status(lab.rx)["ipset_mirror"]["deadline_in_s"] + 0.2)
    # past the deadline XDP passes them: netfilter decides (it drops them until the member expires)
    dropped, seen = lab.dropped(), rule_packets(lab.rx, 3) + rule_packets(lab.rx, 4)
    lab.send(14)
    assert lab.dropped() == dropped
    assert rule_packets(lab.rx, 3) + rule_packets(lab.rx, 4) == seen + 5
    assert "a member may have timed out" in status(lab.rx)["ipset_mirror"]["changed"]
    deadline = time.monotonic() + 5
    while lab.rx.run(["ipset", "test", "bl_tmo", f"{lab.prefix}.14"], check=False).returncode == 0:
        assert time.monotonic() < deadline, "the member should have expired"
        time.sleep(0.2)
    assert_reaches_netfilter(lab, 14, accepted=True)


def test_ipsets_defer_leaves_sets_to_netfilter_and_is_kept(lab):
    """--ipsets defer: no guard (its tracepoints cost every syscall of the host), set rules are
    netfilter's, and later imports and wrapper syncs keep that choice."""
    report = json.loads(ipt2xdp(lab.rx, "import", "--dry-run", "--json", "--ipsets", "defer", str(lab.rules)))
    set_rules = [d for d in report["decisions"] if "--match-set" in d["text"]]
    assert "match.set-off" in {d["code"] for d in set_rules}, set_rules
    assert {d["kind"] for d in set_rules} == {"netfilter"}, set_rules
    lab.import_("--ipsets", "defer", str(lab.rules))
    mirror = status(lab.rx)["ipset_mirror"]
    assert not mirror.get("guard") and not mirror.get("mirrored"), mirror
    seen = rule_packets(lab.rx, 1)
    assert lab.send(11) == 0
    assert rule_packets(lab.rx, 1) == seen + 5, "netfilter, not XDP, drops the set's member"
    lab.import_("--live")  # no --ipsets: the loaded plan's choice holds
    assert not status(lab.rx)["ipset_mirror"].get("mirrored")
    lab.import_("--ipsets", "mirror", "--live")
    assert status(lab.rx)["ipset_mirror"]["current"]
    assert_dropped_in_xdp(lab, 11, 1)
