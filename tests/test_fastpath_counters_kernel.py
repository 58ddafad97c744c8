# SPDX-License-Identifier: GPL-2.0-only
"""The blocklist fast path's counts, against netfilter counting the same packets itself.

compat_tests compare packet fates only; the fast path (fastpath.py) also takes listed sources out
of the classifier, so a wrong rule id there would show only in the counters. The same steps run
twice in fresh namespaces: the real binaries without XDP, then the wrapper with XDP loaded (the
listed source's packets taken by the fast path, checked in the loaded maps). After every step
`iptables -L -v -x` and `iptables-save -c` must be byte-identical.

The listed packets come from a second address on the sender; the marker that ends every train
comes from its first address (not listed), so the step knows all earlier packets were counted.
"""
import os
import re
import socket
import struct

import pytest

from ipt2xdp import netns
from tests import nsutil
from tests.test_counters_kernel import MARKER, ipt2xdp, real, wrapped

pytestmark = pytest.mark.kernel

LISTED_HOST = 50  # the sender's second address: 10.77.<n>.50
SUBNET = 219      # the pair's 10.77.<n>.0/24 (addresses live in the pair's own namespaces)


def ruleset(listed: str) -> str:
    others = "".join(f"-A INPUT -s 192.0.2.{i}/32 -j DROP\n" for i in range(1, 40))
    return ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + others
            + f"-A INPUT -s {listed}/32 -j DROP\n-A INPUT -s 198.18.0.0/15 -j DROP\n"
            + "-A INPUT -p udp -m udp --dport 1009 -j DROP\nCOMMIT\n")


def send(pair, sink, listed: str, trains):
    """trains: [(from the listed address?, port, count)], then the marker from the first address."""
    with nsutil.inside(pair.sender):
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        from_listed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        from_listed.bind((listed, 0))
    try:
        for is_listed, port, count in trains:
            for _ in range(count):
                (from_listed if is_listed else plain).sendto(b"x" * 8, (pair.receiver_ip, port))
        plain.sendto(b"marker", (pair.receiver_ip, MARKER))
    finally:
        plain.close()
        from_listed.close()
    while sink.recv(64) != b"marker":
        pass


def fast_path_sources(ns):
    """The source prefixes in the loaded generation's src_fast map."""
    from ipt2xdp import mapread

    with ns.entered():
        loaded = mapread.read_loaded()
    contents = loaded.maps["src_fast"]
    return {(socket.inet_ntoa(key[:4]), struct.unpack("=I", key[4:])[0]) for key, _ in contents.entries()}


def counter_layout(ns):
    """(rule ids with a counters-array counter, rule ids the fast path holds, the loaded counters
    map's max_entries, counter_stride, possible CPUs) of the generation in force."""
    from ipt2xdp import abi, libbpf, mapread, pins
    from ipt2xdp.dataplane import Dataplane

    with ns.entered():
        loaded = mapread.read_loaded()
        dp = Dataplane.open_pinned(pins.pin_dir())
        try:
            state = dp.read_state()
            fd = dp._inner_fd(abi.GEN_MAPS["counters"].name, state.active)
            try:
                entries = libbpf.map_info(fd).max_entries
            finally:
                os.close(fd)
        finally:
            dp.close()
        ncpus = libbpf.num_possible_cpus()
    cfg = abi.GenConfig.from_buffer_copy(loaded.maps["cfg"].values)
    counted = struct.unpack(f"={cfg.default_counter}I", loaded.maps["counter_rules"].values[:4 * cfg.default_counter])
    fast = {struct.unpack_from("=I", value)[0] for _, value in loaded.maps["src_fast"].entries()}
    return set(counted), fast, entries, cfg.counter_stride, ncpus


STEPS = [
    ("send", [(True, 1001, 4), (False, 1009, 2), (False, 1002, 1)]),
    ("iptables", ["-I", "INPUT", "1", "-s", "192.0.2.200/32", "-j", "DROP"]),  # every rule id moves
    ("send", [(True, 1001, 3), (True, 1009, 2)]),
    ("iptables", ["-Z", "INPUT", "41"]),                                         # the listed source's rule
    ("send", [(True, 1003, 5)]),
    ("delete-listed", None),                                                     # its packets reach -p udp
    ("send", [(True, 1009, 2), (True, 1001, 1)]),
]


def play(backend: str, through_wrapper: bool):
    pair = netns.veth_pair(subnet_index=SUBNET)  # the same addresses in both runs: -L's columns
    loaded = False
    try:
        listed = pair.sender_ip.rsplit(".", 1)[0] + f".{LISTED_HOST}"
        pair.sender.run(["ip", "addr", "add", f"{listed}/24", "dev", pair.sender_if])
        ns = pair.receiver
        real(ns, backend, ["iptables-restore"], input=ruleset(listed))
        fast = layout = None
        if through_wrapper:
            loaded = True
            ipt2xdp(ns, backend, ["import", "--live", "--iface", pair.receiver_if])
            fast = fast_path_sources(ns)
            layout = counter_layout(ns)
        tool = (lambda args: wrapped(ns, backend, args)) if through_wrapper else \
            (lambda args: real(ns, backend, args))
        sink = nsutil.udp_receiver(ns, MARKER)
        sink.settimeout(10)
        seen = []
        try:
            for step, argument in STEPS:
                if step == "send":
                    send(pair, sink, listed, argument)
                elif step == "iptables":
                    tool(["iptables", *argument])
                else:
                    tool(["iptables", "-D", "INPUT", "-s", f"{listed}/32", "-j", "DROP"])
                seen.append((step, {args[0]: re.sub(r"(?m)^#.*\n", "", tool(args).stdout)
                                    for args in (["iptables", "-L", "-v", "-x", "-n", "--line-numbers"],
                                                 ["iptables-save", "-c"])}))
        finally:
            sink.close()
        return seen, listed, fast, layout
    finally:
        try:
            if loaded:
                nsutil.unload(pair)
        finally:
            pair.close()


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_fast_path_drops_count_on_the_listed_rule_as_netfilter_counts_them(backend):
    want, listed, _, _ = play(backend, through_wrapper=False)
    got, listed_xdp, fast, (counted, fast_rules, entries, stride, ncpus) = play(backend, through_wrapper=True)
    assert listed_xdp == listed
    assert (listed, 32) in fast, f"the listed source must be on the fast path: {sorted(fast)[:5]}"
    # the 41 source DROPs count in their fast entries: no counters-array slot for them; the
    # array holds the rules the classifier decides (--dport 1009), the default and the catch-all
    assert len(fast_rules) == 41 and not counted & fast_rules and counted
    assert stride == len(counted) + 2 and entries == stride * ncpus, (counted, stride, entries)
    # netfilter alone counted the listed source's four first packets on its rule
    first = want[0][1]["iptables"]
    assert re.search(rf"(?m)^40\s+4\s+\d+ DROP .*{re.escape(listed)}", first), first
    assert len(got) == len(want) == len(STEPS)
    for (step, expected), (_, shown) in zip(want, got):
        for command, text in expected.items():
            assert shown[command] == text, f"after {step}: `{command}`"
