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
