# SPDX-License-Identifier: GPL-2.0-only
"""A loaded, unpinned ipt2xdp program for BPF_PROG_TEST_RUN tables (no device, no traffic)."""
import pytest

from tests.nsutil import entered_namespace


@pytest.fixture(scope="module", autouse=True)
def routing_namespace():
    """A fresh namespace the module's tests run in, forwarding off (nsutil.entered_namespace)."""
    with entered_namespace("bpf") as ns:
        yield ns


@pytest.fixture(scope="module")
def dataplane():
    from ipt2xdp.dataplane import Dataplane

    dp = Dataplane.load()
    yield dp
    dp.close()
