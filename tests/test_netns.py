# SPDX-License-Identifier: GPL-2.0-only
"""The namespace helper every kernel test relies on: traffic flows, and cleanup always happens."""
import os

import pytest

from ipt2xdp import netns

pytestmark = pytest.mark.kernel


def test_veth_pair_carries_traffic_and_is_removed():
    with netns.veth_pair() as pair:
        names = (pair.sender.name, pair.receiver.name)
        assert all(os.path.exists(f"{netns.NETNS_DIR}/{n}") for n in names)
        result = pair.sender.run(["ping", "-c", "1", "-W", "2", pair.receiver_ip], check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    assert not any(os.path.exists(f"{netns.NETNS_DIR}/{n}") for n in names)


def test_namespaces_are_deleted_when_the_body_fails():
    with pytest.raises(ZeroDivisionError):
        with netns.veth_pair() as pair:
            names = (pair.sender.name, pair.receiver.name)
            1 / 0
    assert not any(os.path.exists(f"{netns.NETNS_DIR}/{n}") for n in names)


def test_host_interfaces_are_untouched():
    before = sorted(os.listdir("/sys/class/net"))
    with netns.veth_pair():
        assert sorted(os.listdir("/sys/class/net")) == before
    assert sorted(os.listdir("/sys/class/net")) == before


def test_deleting_a_namespace_removes_its_ipt2xdp_state(tmp_path):
    """Plan records and lock files are keyed by the namespace cookie, never reused: a deleted
    namespace's must not pile up in /run (the test suite left thousands)."""
    import sys

    from ipt2xdp import pins, planstore

    with netns.veth_pair() as pair:
        ns = pair.receiver
        result = ns.run([sys.executable, "-m", "ipt2xdp", "import", "--iface", pair.receiver_if,
                         "--mode", "generic", "--backend", "legacy", "-"],
                        input="*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 192.0.2.1 -j DROP\nCOMMIT\n",
                        check=False)
        assert result.returncode == 0, result.stderr
        cookie = pins.netns_id_of(ns.path)
        state = os.path.join(planstore.STATE_ROOT, str(cookie))
        lock = os.path.join(pins.LOCK_DIR, f"ipt2xdp-{cookie}.lock")
        assert any(n.startswith("plan-") for n in os.listdir(state))
        assert os.path.exists(lock)
    assert not os.path.exists(state)
    assert not os.path.exists(lock)
