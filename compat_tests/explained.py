# SPDX-License-Identifier: GPL-2.0-only
"""For a disagreement report: what `ipt2xdp explain` says of a probe's packets (deciding rule, reason).

The testbed is gone when the report is written, so the model is given the receiver as the harness
builds it: the attached veth, the corpus's local addresses and the veth's own address (10.77.N.2,
recognised in the probe's destination), forwarding as the run had it, and no conntrack entry for
the probe (flows the corpus opened are not known here; the explanation says `ct none`).
"""
from __future__ import annotations

import re
from ipaddress import IPv4Network
from typing import List, Sequence

MAX_FRAMES = 4
RECEIVER_ADDRESS = re.compile(r"10\.77\.\d+\.(2|255)")  # ipt2xdp.netns.veth_pair's receiver end


def _host(receiver_if: str, local_addrs: Sequence[str], dst: str, forwarding: bool):
    from ipt2xdp.hostinfo import ALWAYS_LOCAL, Device, HostContext

    local = set(ALWAYS_LOCAL) | {IPv4Network("127.0.0.0/8")} | {IPv4Network(f"{a}/32") for a in local_addrs}
    if RECEIVER_ADDRESS.fullmatch(dst):
        local.add(IPv4Network(f"{dst}/32"))
    return HostContext((Device("lo", 1), Device(receiver_if, 2, "veth")),
                       tuple(sorted(local, key=lambda n: (int(n.network_address), n.prefixlen))),
                       forwarding, (receiver_if,), ct_external_helpers=True)


def explain_probe(ruleset_text: str, probe, receiver_if: str, local_addrs: Sequence[str] = (),
                  forwarding: bool = False) -> List[str]:
    """Lines naming, for each frame of the probe, XDP's verdict, the deciding rule and the reason."""
    from compat_tests.harness import prepare
    from ipt2xdp.errors import Ipt2xdpError
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan

    try:
        ruleset = parse(prepare(ruleset_text).text, "<ruleset>")
    except Ipt2xdpError as error:
        return [f"    explain: the ruleset does not parse: {error}"]
    host = _host(receiver_if, local_addrs, probe.dst, forwarding)
    try:
        return _explain_frames(plan(ruleset, host), ruleset, host, probe, receiver_if)
    except Exception as error:  # noqa: BLE001 - the report of a disagreement must survive a bug here
        return [f"    explain failed: {type(error).__name__}: {error}"]


def _explain_frames(planned, ruleset, host, probe, receiver_if: str) -> List[str]:
    from ipt2xdp.explain import explain
    from ipt2xdp.packetspec import from_ipv4

    lines = []
    for number, frame in enumerate(probe.frames[:MAX_FRAMES], start=1):
        spec = from_ipv4(frame, receiver_if)
        prefix = f"    explain frame {number}:" if len(probe.frames) > 1 else "    explain:"
        if spec is None:
            lines.append(f"{prefix} XDP passes it before classifying (IP options, truncated or inconsistent headers)")
            continue
        e = explain(planned, spec, host, ruleset)
        rule = f"{e.rule.label()}: {e.rule.text}" if e.rule else "no rule"
        via = "".join(f" <- {step.label()}" for step in reversed(e.path))
        lines.append(f"{prefix} {e.verdict} by {rule}{via} [{e.code}: {e.why}]")
    if len(probe.frames) > MAX_FRAMES:
        lines.append(f"    explain: ... {len(probe.frames) - MAX_FRAMES} more frames")
    return lines
