# SPDX-License-Identifier: GPL-2.0-only
"""Fixtures shared by the kernel tests (a module may define its own `pair` instead)."""
import pytest

from ipt2xdp import netns
from tests.nsutil import unload_and_close


@pytest.fixture
def pair():
    """A sender/receiver veth pair in fresh namespaces; ipt2xdp unloaded and both deleted after."""
    p = netns.veth_pair()
    try:
        yield p
    finally:
        unload_and_close(p)
