# SPDX-License-Identifier: GPL-2.0-only
"""Round trip of every ruleset in /work/shared/rulesets through the real iptables, both backends.

In a fresh namespace: iptables-restore the file, iptables-save it, and `ipt2xdp fmt` of that output
must equal it byte for byte (comment lines aside). Files iptables itself rejects must get a
clear diagnostic from ipt2xdp (a ParseError with positions), never a traceback.
Preparation that the MANIFEST asks for: the Docker files need the ipset docker-ext-bridges-v4,
the ufw templates need the chains ufw-init creates, declared first.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ipt2xdp.errors import ParseError
from ipt2xdp.netns import create_namespace, delete_namespace
from ipt2xdp.parse import parse
from ipt2xdp.render import render

pytestmark = pytest.mark.kernel

RULESETS = Path(os.environ["IPT2XDP_SHARED_RULESETS"])
FILES = sorted(p for p in RULESETS.rglob("*") if p.is_file() and p.name != "MANIFEST.txt")
IPSETS = ("docker-ext-bridges-v4",)
# Files iptables 1.8.9 rejects although ipt2xdp accepts them, with the reason.
IPTABLES_ONLY_REJECTS = {
    # needs the nfacct object ct_state_invalid_dropped_pkts; no nfacct tool on this machine
    "kubernetes__pkg_proxy_iptables_proxier_test.go__TestOverallIPTablesRules.restore": "nfacct",
}
BACKENDS = {
    "legacy": (["iptables-legacy-restore", "-w"], ["iptables-legacy-save"]),
    "nft": (["iptables-nft-restore"], ["iptables-nft-save"]),
}


def declare_missing_chains(text: str) -> str:
    """Declare, right after each *table line, the user chains its rules jump to but never declare."""
    out, blocks = [], re.split(r"(?m)^(?=\*)", text)
    for block in blocks:
        declared = set(re.findall(r"(?m)^:(\S+)", block))
        wanted = set(re.findall(r"-[jg] ([a-z][\w-]*)", block)) - declared
        if block.startswith("*") and wanted:
            first, rest = block.split("\n", 1)
            block = first + "\n" + "".join(f":{c} - [0:0]\n" for c in sorted(wanted)) + rest
        out.append(block)
    return "".join(out)


def strip_comments(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


@pytest.fixture(scope="module")
def namespaces():
    made = {}
    try:
        for backend in BACKENDS:
            ns = made[backend] = create_namespace(f"rt{backend[:3]}")
            for name in IPSETS:
                ns.run(["ipset", "create", name, "hash:net"])
        yield made
    finally:
        for ns in made.values():
            delete_namespace(ns.name)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_roundtrip_every_ruleset(namespaces, backend):
    ns = namespaces[backend]
    restore, save = BACKENDS[backend]
    accepted, rejected, problems = [], [], []
    for path in FILES:
        text = declare_missing_chains(path.read_text(errors="replace"))
        result = ns.run(restore, check=False, input=text)
        if result.returncode != 0:
            rejected.append(path.name)
            try:
                parse(text, path.name)
                if path.name not in IPTABLES_ONLY_REJECTS:
                    problems.append(f"{path.name}: iptables rejects it ({result.stderr.strip()[:80]}), ipt2xdp accepts it")
            except ParseError as error:
                if not error.diagnostics or any(d.span is None or d.span.line < 1 for d in error.diagnostics):
                    problems.append(f"{path.name}: a diagnostic without a position")
            continue
        tables = list(dict.fromkeys(re.findall(r"(?m)^\*(\w+)", text)))
        saved = strip_comments("".join(ns.run(save + ["-t", t]).stdout for t in tables))
        try:
            mine = render(parse(saved, f"{path.name} (saved)"))
        except ParseError as error:
            problems.append(f"{path.name}: ipt2xdp rejects iptables-save output: {error}")
            continue
        if mine != saved:
            first = next(i for i, (a, b) in enumerate(zip(mine.splitlines() + [""], saved.splitlines() + [""])) if a != b)
            problems.append(f"{path.name}: line {first + 1} differs:\n  iptables: {saved.splitlines()[first]}\n  ipt2xdp:  {mine.splitlines()[first] if first < len(mine.splitlines()) else '<none>'}")
        accepted.append(path.name)
    print(f"{backend}: {len(accepted)} round-tripped, {len(rejected)} rejected by iptables")
    assert len(accepted) >= 25, accepted
    assert not problems, "\n".join(problems)
