# SPDX-License-Identifier: GPL-2.0-only
"""A loaded, unpinned ipt2xdp program for BPF_PROG_TEST_RUN tables (no device, no traffic)."""
import pytest


@pytest.fixture(scope="module")
def dataplane():
    from ipt2xdp.dataplane import Dataplane

    dp = Dataplane.load()
    yield dp
    dp.close()
