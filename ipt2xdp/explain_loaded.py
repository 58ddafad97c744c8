# SPDX-License-Identifier: GPL-2.0-only
"""`explain --loaded`: the model of what is loaded now, and the loaded program itself, on one packet.

The plan in force is planned again from the ruleset text and host context stored with it
(planstore), and checked against the stored decisions, so the model is the one the maps were
compiled from. The program is run on the same packet with BPF_PROG_TEST_RUN; the per-rule counter
that moves tells which classifier rule the program chose (the test packet is counted like any
other: `iptables -L -v` shows it on that rule), and the statistics say why it passed a packet
before classifying. The program's conntrack lookup sees the kernel's real table, so the model is
compared under what that table holds for the packet's flow (asked through ctnetlink).
"""
from __future__ import annotations

import errno
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

from ipt2xdp import abi
from ipt2xdp.classifier import CtClass
from ipt2xdp.errors import LoadError
from ipt2xdp.packetspec import PORT_PROTOCOLS, PacketSpec, to_frame

XDP_DROP = 1
PACKET_STATS = ("defer_all", "not_ipv4", "malformed", "fragment", "lookup_fail", "budget")
REIMPORT = "run `ipt2xdp import --live` (or import the ruleset again) so that its plan is stored"


@dataclass
class Loaded:
    ruleset: object   # ir.Ruleset
    host: object      # HostContext
    plan: object      # Plan
    deferring_all: bool
    devices: Tuple[str, ...]


def load() -> Loaded:
    """The plan in force in this network namespace, planned again from its stored record."""
    from dataclasses import replace

    from ipt2xdp import ipsets, loader, planstore, report
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan

    info = loader.status(include_counters=False)
    if not info.get("loaded"):
        raise LoadError("ipt2xdp is not loaded in this network namespace", 0,
                        "explain a FILE or --live instead, or import a ruleset first", exit_code=1)
    record = planstore.load_settled(info.get("ruleset", {}).get("source_digest"))
    if not record or "ruleset_text" not in record:
        raise LoadError("the plan of the loaded generation is not stored (imported by an older ipt2xdp?)", 0,
                        REIMPORT, exit_code=1)
    ruleset = parse(record["ruleset_text"], "<loaded plan>")
    host = planstore.host_from_record(record["host"])
    names = ipsets.referenced_sets(ruleset)
    if names and record.get("ipsets") == "defer":
        host = replace(host, ipsets=tuple(ipsets.IpSet(n, unsupported="set-off") for n in names))
    elif names:
        # Members are not stored with the plan (a set may hold 100k); today's members are read, and
        # the program run below shows whether the loaded copy still agrees with them.
        host = replace(host, ipsets=ipsets.read_sets(names, ipsets.changed_by_rules(ruleset)))
    result = plan(ruleset, host)
    if (report.decision_records(result) != record["decisions"]
            or [r.action.verdict.name for r in result.rules] != record["actions"]):
        raise LoadError("planning the stored ruleset again does not give the plan that was loaded "
                        "(ipt2xdp changed since the import?)", 0, REIMPORT, exit_code=1)
    return Loaded(ruleset, host, result, bool(info.get("deferring_all")), tuple(sorted(info.get("devices", {}))))


def kernel_ct_class(spec: PacketSpec) -> Optional[CtClass]:
    """What bpf_xdp_ct_lookup would find for the packet's flow now (None: cannot tell)."""
    if spec.proto not in PORT_PROTOCOLS:
        return CtClass.NOT_LOOKED_UP
    from pyroute2 import Conntrack
    from pyroute2.conntrack import NFCTAttrTuple
    from pyroute2.netlink.exceptions import NetlinkError

    tuple_ = NFCTAttrTuple(saddr=spec.src, daddr=spec.dst, proto=spec.proto, sport=spec.sport, dport=spec.dport)
    try:
        conntrack = Conntrack()
    except (OSError, NetlinkError):
        return None
    try:
        conntrack.entry("get", tuple_orig=tuple_)  # finds the flow in either direction, as the lookup does
        return CtClass.FOUND
    except NetlinkError as error:
        # no entry: the frame explain sends has a valid length and checksum
        return CtClass.NONE_VERIFIED if error.code == errno.ENOENT else None
    finally:
        conntrack.close()


@dataclass
class ProgramRun:
    verdict: str                    # "DROP" | "PASS"
    counter: str                    # "rule N" | "default" | "overflow" | "none" | "unclear"
    rule_id: Optional[int] = None   # the classifier rule whose counter moved
    passed_before_classifying: Optional[str] = None  # a program statistic: fragment, malformed, ...

    def as_dict(self) -> dict:
        return asdict(self)


def _moved(before: Dict, after: Dict) -> List:
    return [k for k, v in after.items() if v[0] != before.get(k, (0, 0))[0]]


def run_program(spec: PacketSpec, ifindex: int) -> ProgramRun:
    """BPF_PROG_TEST_RUN of the pinned program on the packet, arriving on ifindex."""
    from ipt2xdp import pins
    from ipt2xdp.dataplane import Dataplane

    dp = Dataplane.open_pinned(pins.pin_dir())
    if dp is None:
        raise LoadError("the pinned ipt2xdp program is gone", 0, "import again", exit_code=1)
    try:
        counters, stats = dp.read_counters(), dp.read_stats()
        retval, _ = dp.test_run(to_frame(spec), ingress_ifindex=ifindex)
        moved = _moved(counters, dp.read_counters())
        stats_after = dp.read_stats()
    finally:
        dp.close()
    early = [name for name in PACKET_STATS if stats_after[name] != stats[name]]
    run = ProgramRun("DROP" if retval == XDP_DROP else "PASS", "none",
                     passed_before_classifying=early[0] if len(early) == 1 else None)
    moved = [key for key in moved if key != abi.NAT_NEW_COUNTER]  # beside a drop's rule: not its rule
    if len(moved) == 1:
        key = moved[0]
        run.counter = {abi.DEFAULT_COUNTER: "default", abi.OVERFLOW_COUNTER: "overflow"}.get(key, f"rule {key}")
        run.rule_id = key if isinstance(key, int) and key < abi.OVERFLOW_COUNTER else None
    elif moved:
        run.counter = "unclear"  # other traffic was counted at the same time
    return run


def disagreements(model, run: ProgramRun) -> List[str]:
    """How the program's run contradicts the model's explanation (empty: they agree)."""
    out = []
    if run.counter == "overflow" and run.verdict == "PASS":
        return []  # the rule lies beyond the program's capacity: compile made it defer, by design
    if model.verdict != run.verdict:
        out.append(f"verdict: model {model.verdict}, program {run.verdict}")
    if model.code == "packet.fragment" and run.passed_before_classifying not in (None, "fragment"):
        out.append(f"the model passes a fragment, the program counted it as {run.passed_before_classifying}")
    if model.rule_id is not None and run.counter.startswith("rule ") and run.rule_id != model.rule_id:
        out.append(f"deciding classifier rule: model {model.rule_id}, program {run.rule_id}")
    if model.rule_id is not None and run.counter in ("default", "none"):
        out.append(f"deciding classifier rule: model {model.rule_id}, program {run.counter}")
    return out
