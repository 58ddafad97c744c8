# SPDX-License-Identifier: GPL-2.0-only
"""Each test module starts with fresh receivers: the reused beds (reuse.py) keep sysctls such as
nf_conntrack_tcp_loose, addresses and namespaces that one module's tests may change or delete, and
the next module's expectations must not depend on the order the modules run in."""
import pytest

from compat_tests import reuse


@pytest.fixture(autouse=True, scope="module")
def fresh_reused_receivers():
    reuse.close_all()
    yield
    reuse.close_all()
