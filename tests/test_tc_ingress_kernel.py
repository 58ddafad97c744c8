# SPDX-License-Identifier: GPL-2.0-only
"""tc's ingress hook, between XDP and netfilter (ipt2xdp.tcingress), with real traffic over veth.

A u32 filter on the receiver's tc ingress hook redirects UDP to port 9999 out a second device, to a
third namespace, before netfilter sees it: filter/INPUT, which drops everything from the sender,
never does, and netfilter alone lets the frames through. With XDP attached they must still go
through (before foreign.tc, XDP took INPUT's DROP for them and dropped every one); once the filter
is gone, XDP drops them again. A tcx program (Cilium's way on current kernels) is found too."""
import json
import sys

import pytest

from compat_tests import harness
from tests.nsutil import DROP_FROM_SENDER, inside, send_udp_frames, unload

pytestmark = pytest.mark.kernel
PORT, FRAMES = 9999, 10



@pytest.fixture
def testbed():
    bed = harness.Testbed(forwarding=True)  # forwarding: a second device to a third namespace
    try:
        yield bed
    finally:
        try:
            unload(bed.pair)
        finally:
            bed.close()


def redirect_port(bed, port: int) -> None:
    bed.receiver.sh(f"set -e\ntc qdisc add dev {bed.receiver_if} clsact\n"
                    f"tc filter add dev {bed.receiver_if} ingress protocol ip u32 match ip dport {port} 0xffff "
                    f"action mirred egress redirect dev {harness.FORWARD_IF}")


def arrived_beyond(bed) -> int:
    """Frames the third namespace's device has received."""
    _, peer, _ = bed.beyond
    beyond = bed.pair._extra[-1]
    return json.loads(beyond.run(["ip", "-j", "-s", "link", "show", peer]).stdout)[0]["stats64"]["rx"]["packets"]


def redirected(bed) -> int:
    before = arrived_beyond(bed)
    send_udp_frames(bed, PORT, FRAMES)
    return arrived_beyond(bed) - before


def status(bed) -> dict:
    return json.loads(bed.receiver.run([sys.executable, "-m", "ipt2xdp", "status", "--json", "--no-drift"]).stdout)


def xdp_drops(bed) -> int:
    return status(bed)["stats"]["drop"]


def import_live(bed, backend: str) -> str:
    return bed.receiver.run([sys.executable, "-m", "ipt2xdp", "import", "--live", "--iface", bed.receiver_if,
                             "--backend", backend]).stdout


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_packets_a_tc_filter_redirects_are_not_dropped_by_xdp(testbed, backend):
    testbed.receiver.run([f"iptables-{backend}-restore"], input=DROP_FROM_SENDER.format(sender=testbed.pair.sender_ip))
    redirect_port(testbed, PORT)
    assert redirected(testbed) == FRAMES  # netfilter alone: tc sends them on before filter/INPUT

    summary = import_live(testbed, backend)
    assert f"ipt2xdp: but foreign.tc: tc filters u32 on {testbed.receiver_if}'s tc ingress hook" in summary, summary
    dropped = xdp_drops(testbed)
    assert redirected(testbed) == FRAMES
    assert xdp_drops(testbed) == dropped
    report = json.loads(testbed.receiver.run([sys.executable, "-m", "ipt2xdp", "import", "--live", "--dry-run",
                                              "--json", "--iface", testbed.receiver_if, "--backend", backend]).stdout)
    assert any(note.startswith("foreign.tc: tc filters u32 on ") for note in report["notes"]), report["notes"]

    # Without the filter the frames are INPUT's to drop, and XDP's once re-planned.
    testbed.receiver.run(["tc", "qdisc", "del", "dev", testbed.receiver_if, "clsact"])
    import_live(testbed, backend)
    assert redirected(testbed) == 0
    assert xdp_drops(testbed) - dropped == FRAMES


BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK = 3, 0


def test_a_tcx_program_is_found_and_defers_the_device(testbed):
    import os

    from ipt2xdp import hostinfo, libbpf, tcingress

    with inside(testbed.receiver):
        devices = hostinfo.read_host_context(attached=[testbed.receiver_if], backend="legacy").devices
        ifindex = next(d.ifindex for d in devices if d.name == testbed.receiver_if)
        assert tcingress.hook_contents(ifindex) == ""
        prog = libbpf.load_constant_program(BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK, "tc_ok")
        link = libbpf.lib().bpf_link_create(prog, ifindex, libbpf.BPF_TCX_INGRESS, None)
        assert link >= 0, f"bpf_link_create: {link}"
        try:
            assert tcingress.hook_contents(ifindex) == "1 tcx program"
            host = hostinfo.read_host_context(attached=[testbed.receiver_if], backend="legacy")
            assert [(h.attached, h.device) for h in host.foreign.tc_ingress] == [(testbed.receiver_if,) * 2]
        finally:
            os.close(link)
            os.close(prog)
        assert tcingress.hook_contents(ifindex) == ""


def test_watch_follows_the_tc_hook(testbed):
    import time

    from tests.nsutil import read_log, start_watch, stop_watch

    testbed.receiver.run(["iptables-legacy-restore"], input=DROP_FROM_SENDER.format(sender=testbed.pair.sender_ip))
    import_live(testbed, "legacy")
    proc, log = start_watch(testbed.receiver, ready=(": in step", "re-imported"))
    try:
        def after_change(count: int) -> None:
            """Once the watcher has seen the count-th change of the hook and re-imported after it."""
            deadline = time.monotonic() + 30
            while read_log(log).count("tc ingress filters or programs changed") < count or status(testbed)["deferring_all"]:
                assert time.monotonic() < deadline, read_log(log)
                time.sleep(0.1)

        assert redirected(testbed) == 0  # XDP drops them
        redirect_port(testbed, PORT)
        after_change(1)
        assert redirected(testbed) == FRAMES
        testbed.receiver.run(["tc", "qdisc", "del", "dev", testbed.receiver_if, "clsact"])
        after_change(2)
        dropped = xdp_drops(testbed)
        assert redirected(testbed) == 0
        assert xdp_drops(testbed) - dropped == FRAMES
    finally:
        stop_watch(proc, log)
