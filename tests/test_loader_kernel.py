# SPDX-License-Identifier: GPL-2.0-only
"""Real traffic over veth between two throwaway namespaces: XDP drops what the rules drop (its
counter rises, netfilter's stays still), accepted packets reach a socket, detach restores
netfilter alone. Native and generic mode; failures leave nothing attached or pinned."""
import errno
import os
import subprocess
import sys
import time

import pytest

from ipt2xdp import abi, devices, loader, pins
from ipt2xdp.classifier import ACCEPT, DROP, ClassifierRule, IntervalSet, Match
from ipt2xdp.compile import compile
from ipt2xdp.errors import LoadError
from ipt2xdp.netns import veth_pair
from tests.nsutil import drain, inside, iptables_count, python_in, send_udp, udp_receiver, unload_and_close

pytestmark = pytest.mark.kernel

DROPPED_PORT, OPEN_PORT = 9999, 7777
RULES = [ClassifierRule(Match(proto=frozenset({17}), dport=IntervalSet.single(DROPPED_PORT)), DROP, 0)]


@pytest.fixture
def pair():
    p = veth_pair()
    try:
        for port in (DROPPED_PORT, OPEN_PORT):  # counting rules: they see what reaches filter/INPUT
            p.receiver.run(["iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(port)])
        yield p
    finally:
        unload_and_close(p)


def _settle(p):
    # resolve ARP both ways before counting, so no first packet waits on a neighbour entry
    p.sender.run(["ping", "-c", "1", "-W", "1", p.receiver_ip], check=False)


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_xdp_drops_before_netfilter_and_detach_restores(pair, mode):
    p = pair
    _settle(p)
    sock = udp_receiver(p.receiver, OPEN_PORT)
    # netfilter alone
    send_udp(p.sender, p.receiver_ip, DROPPED_PORT)
    send_udp(p.sender, p.receiver_ip, OPEN_PORT)
    time.sleep(0.2)
    assert iptables_count(p.receiver, f"dpt:{DROPPED_PORT}") == 5
    assert drain(sock) == 5

    with inside(p.receiver):
        result = loader.apply(compile(RULES, ACCEPT), [p.receiver_if], mode, source_digest="test")
        assert result.attached == {p.receiver_if: mode}
    send_udp(p.sender, p.receiver_ip, DROPPED_PORT)
    send_udp(p.sender, p.receiver_ip, OPEN_PORT)
    time.sleep(0.2)
    assert iptables_count(p.receiver, f"dpt:{DROPPED_PORT}") == 5, "netfilter must never see XDP's drops"
    assert drain(sock) == 5, "accepted packets reach the socket"
    with inside(p.receiver):
        counters = loader.read_counters()
        info = loader.status()
    assert counters[0] == (5, 5 * (20 + 8 + 32))
    assert counters[abi.DEFAULT_COUNTER][0] >= 5
    assert info["devices"][p.receiver_if]["live_mode"] == mode and info["ruleset"]["source_digest"] == "test"

    with inside(p.receiver):
        assert loader.detach(all_devices=True) == [p.receiver_if]
        assert not os.path.exists(pins.pin_dir())
    send_udp(p.sender, p.receiver_ip, DROPPED_PORT)
    send_udp(p.sender, p.receiver_ip, OPEN_PORT)
    time.sleep(0.2)
    assert iptables_count(p.receiver, f"dpt:{DROPPED_PORT}") == 10, "after detach netfilter sees them again"
    assert drain(sock) == 5
    sock.close()


def test_separate_invocations_find_the_pins_also_under_ip_netns_exec(pair):
    p = pair
    with inside(p.receiver):
        loader.apply(compile(RULES, ACCEPT), [p.receiver_if], "native")
    code = "import json; from ipt2xdp import loader; s = loader.status(); print(s['loaded'], s['generation'])"
    direct = python_in(p.receiver, code)
    assert direct.stdout.split() == ["True", "1"]
    via_ip = subprocess.run(["ip", "netns", "exec", p.receiver.name, sys.executable, "-c", code],
                            capture_output=True, text=True, cwd=os.getcwd())
    assert via_ip.returncode == 0, via_ip.stderr
    assert via_ip.stdout.split() == ["True", "1"], "ip netns exec hides /sys/fs/bpf; pins must still be found"
    # a second apply from a separate process bumps the generation of the same pinned program
    python_in(p.receiver, "from ipt2xdp import loader, compile as c, classifier as k; "
              "loader.apply(c.compile([], k.ACCEPT), [])")
    assert python_in(p.receiver, code).stdout.split() == ["True", "2"]
    cli = subprocess.run(["ip", "netns", "exec", p.receiver.name, sys.executable, "-m", "ipt2xdp", "status"],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and "generation 2" in cli.stdout and p.receiver_if in cli.stdout


def test_missing_device_fails_cleanly(pair):
    with inside(pair.receiver):
        with pytest.raises(LoadError) as info:
            loader.apply(compile(RULES, ACCEPT), ["nosuchdev0"], "native")
        assert info.value.errno_value == errno.ENODEV and "ip link" in str(info.value)
        assert not os.path.exists(pins.pin_dir()), "nothing pinned after a failed first apply"


def test_native_unsupported_falls_back_in_auto_and_fails_cleanly_in_native(pair):
    p = pair
    notices = []  # the namespace's loopback has no native XDP (no ndo_bpf), like many drivers
    with inside(p.receiver):
        with pytest.raises(LoadError) as info:
            loader.apply(compile(RULES, ACCEPT), [p.receiver_if, "lo"], "native")
        assert "--mode generic" in str(info.value)
        # nothing half attached: the veth that succeeded first was detached again
        assert devices.attached(devices.ifindex(p.receiver_if)) == (0, 0)
        assert not os.path.exists(pins.pin_dir())
        result = loader.apply(compile(RULES, ACCEPT), [p.receiver_if, "lo"], "auto", notice=notices.append)
    assert result.attached == {p.receiver_if: "native", "lo": "generic"}
    assert any("falling back to generic" in n for n in notices)


def test_not_root_gets_a_one_line_message(pair):
    code = ("from ipt2xdp.cli import main; import sys; sys.exit(main(['detach', '--all']))")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 4, r.stderr
    assert r.stderr.count("\n") == 1 and "EPERM" in r.stderr and "root" in r.stderr


def test_status_and_detach_commands(pair):
    import json
    p = pair
    with inside(p.receiver):
        loader.apply(compile(RULES, ACCEPT), [p.receiver_if], "generic", source_digest="abc")
        assert loader.status(live_source_digest="abc")["in_sync"] is True
        assert loader.status(live_source_digest="other")["in_sync"] is False
    send_udp(p.sender, p.receiver_ip, DROPPED_PORT, count=3)
    time.sleep(0.1)
    cli = [sys.executable, "-m", "ipt2xdp"]
    out = json.loads(p.receiver.run(cli + ["status", "--json"]).stdout)
    assert out["loaded"] and out["generation"] == 1 and out["counters"]["0"]["packets"] == 3
    assert out["devices"][p.receiver_if]["live_mode"] == "generic" and out["stats"]["drop"] == 3
    text = p.receiver.run(cli + ["status"]).stdout
    assert "generation 1" in text and f"device {p.receiver_if}" in text
    bad = p.receiver.run(cli + ["detach", "--iface", "nosuch0"], check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "ENODEV" in bad.stderr
    done = p.receiver.run(cli + ["detach", "--iface", p.receiver_if])
    assert f"detached from {p.receiver_if}" in done.stdout
    with inside(p.receiver):
        assert devices.attached(devices.ifindex(p.receiver_if)) == (0, 0)
        assert loader.status()["loaded"], "--iface keeps the pins; --all removes them"
    p.receiver.run(cli + ["detach", "--all"])
    with inside(p.receiver):
        assert not loader.status()["loaded"]


def test_state_pinned_by_another_version_is_named_and_detach_all_clears_it(pair):
    """A program pinned by an older ipt2xdp lacks maps this version has (e.g. the blocklist fast
    path's src_fast): import and status say so and point at `detach --all`, which must then work
    (it takes the pinned program off the devices without opening the maps as this version's)."""
    p = pair
    with inside(p.receiver):
        loader.apply(compile(RULES, ACCEPT), [p.receiver_if], "generic")
        os.unlink(os.path.join(pins.pin_dir(), abi.GEN_MAPS["src_fast"].name))  # as an older layout
    cli = [sys.executable, "-m", "ipt2xdp"]
    status = p.receiver.run(cli + ["status"], check=False)
    assert status.returncode == 4, status.stderr
    assert abi.GEN_MAPS["src_fast"].name in status.stderr and "detach --all" in status.stderr
    done = p.receiver.run(cli + ["detach", "--all"], check=False)
    assert done.returncode == 0, done.stderr
    assert f"detached from {p.receiver_if}" in done.stdout
    with inside(p.receiver):
        assert devices.attached(devices.ifindex(p.receiver_if)) == (0, 0)
        assert not os.path.exists(pins.pin_dir())
        loader.apply(compile(RULES, ACCEPT), [p.receiver_if], "generic")  # a fresh load works again
        assert loader.status()["generation"] == 1


def _program_exists(prog_id: int) -> bool:
    return subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True).returncode == 0


def test_an_object_loaded_ahead_serves_a_first_apply_and_is_freed_over_a_pinned_one(pair):
    p = pair
    with inside(p.receiver):
        assert not loader.pinned()
        ahead = loader.Preload()
        loader.apply(compile(RULES, ACCEPT), [p.receiver_if], "native", preload=ahead)
        assert loader.pinned()
        assert ahead._loaded is None  # apply took it
        pinned_id = loader.status()["program_id"]
        second = loader.Preload()
        second._job.join()
        unused_id = second._loaded.prog_id
        assert unused_id != pinned_id and _program_exists(unused_id)
        result = loader.apply(compile(RULES, DROP), [p.receiver_if], "native", preload=second)
        assert result.generation == 2
        assert loader.status()["program_id"] == pinned_id  # the pinned one stays
    deadline = time.monotonic() + 5
    while _program_exists(unused_id) and time.monotonic() < deadline:  # the kernel frees it after RCU
        time.sleep(0.05)
    assert not _program_exists(unused_id), "the object loaded ahead must be closed when not used"
