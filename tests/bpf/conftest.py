# SPDX-License-Identifier: GPL-2.0-only
"""A loaded, unpinned ipt2xdp program for BPF_PROG_TEST_RUN tables (no device, no traffic)."""
import pytest

from ipt2xdp import netns
from tests.nsutil import inside


@pytest.fixture(scope="module", autouse=True)
def routing_namespace():
    """A fresh namespace the module's tests run in, forwarding off.

    BPF_PROG_TEST_RUN runs in the caller's network namespace, and before a DROP the program asks
    that namespace's routing (bpf_fib_lookup). With forwarding off every destination counts as
    delivered locally, so the tables do not depend on the host's routes and sysctls.
    """
    ns = netns.create_namespace("bpf")
    try:
        ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        with inside(ns):
            yield ns
    finally:
        netns.delete_namespace(ns.name)


@pytest.fixture(scope="module")
def dataplane():
    from ipt2xdp.dataplane import Dataplane

    dp = Dataplane.load()
    yield dp
    dp.close()
