# SPDX-License-Identifier: GPL-2.0-only
"""The tests/parse/*.t tables against the real iptables 1.8.9 binaries, legacy and nft.

In a namespace of our own: every OK line must be accepted by iptables-restore and printed by
iptables-save exactly as the table's canonical column says (which test_parse_tables.py checks our
printer against); every FAIL line must be rejected by iptables-restore --test.
"""
from __future__ import annotations

import pytest

from ipt2xdp.netns import create_namespace, delete_namespace
from test_parse_tables import CASES

pytestmark = pytest.mark.kernel

BACKENDS = {
    "legacy": (["iptables-legacy-restore", "-w"], ["iptables-legacy-save", "-t", "filter"]),
    "nft": (["iptables-nft-restore"], ["iptables-nft-save", "-t", "filter"]),
}


@pytest.fixture(scope="module")
def namespace():
    ns = create_namespace("ptab")
    try:
        ns.run(["ipset", "create", "test4", "hash:ip"])
        yield ns
    finally:
        delete_namespace(ns.name)


def _saved_rules(ns, save_argv):
    out = ns.run(save_argv).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_tables_against_iptables(namespace, backend):
    restore, save = BACKENDS[backend]
    problems = []
    for case in CASES:
        if case.ok:
            result = namespace.run(restore, check=False, input=case.restore_text())
            if result.returncode != 0:
                problems.append(f"{case.description}: rejected by iptables: {result.stderr.strip()[:120]}")
                continue
            got = _saved_rules(namespace, save)
            if got != [case.expected]:
                problems.append(f"{case.description}: iptables-save printed {got}, table says {case.expected!r}")
        else:
            # not --test: some checks (protocol of a match, limit overflow) are made by the kernel
            result = namespace.run(restore, check=False, input=case.restore_text())
            if result.returncode == 0:
                problems.append(f"{case.description}: FAIL line accepted by iptables")
    assert not problems, "\n".join(problems)
