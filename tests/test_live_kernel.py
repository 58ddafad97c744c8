# SPDX-License-Identifier: GPL-2.0-only
"""The live readers agree: python-iptables (legacy), iptables-legacy-save and iptables-nft-save
give the same IR for the same ruleset (counters and spans aside), in namespaces of our own."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ipt2xdp.netns import create_namespace, delete_namespace

pytestmark = pytest.mark.kernel

RULESETS = Path(os.environ["IPT2XDP_SHARED_RULESETS"])
SAMPLES = ["real/IPPartEval__sargon__iptables-save.txt",
           "netfilter_iptables__ipt-save_dumps_fedora27-iptables",
           "real/IPPartEval__config_home_user__typical_home_user_iptables-save",
           "netfilter_iptables__ipt-save_dumps_wireless.txt"]

READ = """
import sys
from ipt2xdp import live
from ipt2xdp.render import render
which = sys.argv[1]
tables_before = live.legacy_tables()
r = {"iptc": live.read_legacy_iptc, "legacy-save": live.read_legacy_save, "nft": live.read_nft}[which]()
assert live.legacy_tables() == tables_before, "reader created a table"
print(render(r.without_positions()))
"""


def _read(ns, which: str) -> str:
    result = ns.run([sys.executable, "-c", READ, which], check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("sample", SAMPLES)
def test_readers_agree(sample):
    text = (RULESETS / sample).read_text()
    legacy = create_namespace("lvl")
    nft = create_namespace("lvn")
    try:
        legacy.run(["iptables-legacy-restore", "-w"], input=text)
        nft.run(["iptables-nft-restore"], input=text)
        by_iptc = _read(legacy, "iptc")
        by_save = _read(legacy, "legacy-save")
        by_nft = _read(nft, "nft")
        assert by_iptc == by_save
        # nft creates builtin tables lazily; compare the tables the file names
        assert by_nft == by_save
    finally:
        delete_namespace(legacy.name)
        delete_namespace(nft.name)


def test_legacy_reader_creates_no_table():
    ns = create_namespace("lv0")
    try:
        ns.run(["iptables-legacy-restore", "-w"], input="*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n")
        out = _read(ns, "iptc")
        assert "*filter" in out and "*nat" not in out
        assert ns.run(["cat", "/proc/net/ip_tables_names"]).stdout.split() == ["filter"]
    finally:
        delete_namespace(ns.name)
