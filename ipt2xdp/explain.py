# SPDX-License-Identifier: GPL-2.0-only
"""Why XDP gives one packet the verdict it gives: the deciding iptables rule and the reason.

Evaluates a packet (packetspec.PacketSpec) against a Plan with the classifier's reference
semantics (classifier.evaluate, which the BPF program must agree with), then maps the deciding
classifier rule back to iptables terms: the rule (table/chain, number as `iptables -L
--line-numbers` counts, iptables-save text), the user-chain jumps that led to it, and the reason
code of the planner (decisions.py vocabulary). What the program checks before classifying
(fragments, devices XDP is not attached to) is explained here too, with codes of its own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from ipt2xdp import ir
from ipt2xdp.classifier import CtClass, PacketKey, Verdict, evaluate, matches
from ipt2xdp.decisions import why as decision_why
from ipt2xdp.hostinfo import HostContext
from ipt2xdp.packetspec import PORT_PROTOCOLS, PacketSpec
from ipt2xdp.plan import Plan, RuleRef

# Reasons that belong to a packet rather than to a rule.
PACKET_WHY = {
    "packet.fragment": "XDP passes every fragment to netfilter, which judges the reassembled packet",
    "packet.not-attached": "XDP is not attached to this packet's input device; netfilter alone sees it",
    "packet.defer-all": "the loaded program is deferring everything to netfilter while a change is applied",
    "guard.not-local": "the destination is not an address of this host: the packet is forwarded or dropped "
                       "by the stack and never reaches filter/INPUT, so XDP leaves it to netfilter",
    "default": "no classifier rule matched; the program's default is to defer",
    "nat.flow": "filter/INPUT would drop it, but conntrack may hold NATed flows here and this packet may "
                "belong to one (an entry exists, or XDP cannot look its protocol up): PREROUTING may "
                "rewrite it (a masqueraded connection's reply goes to the container), so XDP leaves it "
                "to netfilter",
}
OUTCOME_TEXT = {"drop": "DROP in XDP", "accept": "PASS (netfilter accepts it)", "defer": "PASS to netfilter"}


def why(code: str) -> str:
    """The sentence for a reason code; a comma list (several unknown matches) gives each."""
    if code in PACKET_WHY:
        return PACKET_WHY[code]
    return "; ".join(dict.fromkeys(decision_why(part) for part in code.split(",")))


@dataclass(frozen=True)
class Step:
    """One iptables rule on the packet's way: index 0 is the chain policy."""

    table: str
    chain: str
    index: int
    text: str

    def label(self) -> str:
        where = "policy" if self.index == 0 else f"#{self.index}"
        return f"{self.table}/{self.chain} {where}"


@dataclass
class Explanation:
    packet: str                     # the spec in canonical form
    verdict: str                    # "DROP" | "PASS" (what XDP returns)
    outcome: str                    # "drop" | "accept" | "defer" (PASS split by why)
    code: str
    why: str
    rule: Optional[Step] = None     # the deciding iptables rule (None: a packet-level reason)
    path: Tuple[Step, ...] = ()     # the jumps into user chains that led to it, outermost first
    rule_id: Optional[int] = None   # classifier rule (the program's counter index); None: not classified
    ct_class: str = ""              # what XDP's conntrack lookup reports (classifier.CtClass name)
    notes: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def ct_class(spec: PacketSpec) -> CtClass:
    """What bpf_xdp_ct_lookup reports for the packet: only TCP and UDP are looked up; a flow in
    state `established` has an entry, every other state is taken as the flow's first packet, with
    the valid length and checksum the spec's frame has (NONE_VERIFIED), except `invalid`: one XDP
    cannot verify (NONE)."""
    if spec.proto not in PORT_PROTOCOLS:
        return CtClass.NOT_LOOKED_UP
    if spec.ct == "established":
        return CtClass.FOUND
    return CtClass.NONE if spec.ct == "invalid" else CtClass.NONE_VERIFIED


def packet_key(spec: PacketSpec, host: HostContext, ct: Optional[CtClass] = None) -> PacketKey:
    device = host.device(spec.iface) if spec.iface else None
    icmp = spec.icmp_type * 256 + spec.icmp_code if spec.proto == 1 else None
    return PacketKey(spec.src_int, spec.dst_int, spec.proto, spec.sport, spec.dport,
                     device.ifindex if device else 0, icmp, spec.tcp_flags, ct_class(spec) if ct is None else ct)


def _steps(plan: Plan) -> Dict[RuleRef, str]:
    return {d.ref: d.text for d in plan.decisions}


def _step(ref: RuleRef, texts: Dict[RuleRef, str]) -> Step:
    return Step(ref.table, ref.chain, ref.index, texts.get(ref, ""))


def _maybe_droppers(plan: Plan, ruleset: Optional[ir.Ruleset], host: HostContext, key: PacketKey) -> List[Step]:
    """The DROP rules XDP stepped past (skip.maybe-drop) whose modelled part matches this packet."""
    from ipt2xdp.translate import translate

    if ruleset is None:
        return []
    found = []
    for d in plan.decisions:
        if d.code != "skip.maybe-drop":
            continue
        chain = ruleset.table(d.ref.table).chain(d.ref.chain)
        term = translate(chain.rules[d.ref.index - 1], host)
        if any(matches(disjunct.match, key) for disjunct in term.disjuncts):
            found.append(Step(d.ref.table, d.ref.chain, d.ref.index, d.text))
    return found


def explain(plan: Plan, spec: PacketSpec, host: HostContext, ruleset: Optional[ir.Ruleset] = None,
            ct: Optional[CtClass] = None) -> Explanation:
    """The XDP verdict for `spec` under `plan` (planned for `host`), with rule and reason.

    `ct` overrides the conntrack class derived from the spec (explain --loaded passes what the
    kernel's conntrack table holds).
    """
    notes = []
    if not spec.iface and host.attached:
        spec = replace(spec, iface=host.attached[0])
        notes.append(f"no iface given: the packet is taken to arrive on {spec.iface}")
    key = packet_key(spec, host, ct)
    base = dict(packet=str(spec), ct_class=CtClass(key.ct).name)
    if spec.frag:
        return Explanation(verdict="PASS", outcome="defer", code="packet.fragment", why=why("packet.fragment"),
                           notes=notes, **base)
    if spec.iface and host.attached and spec.iface not in host.attached:
        return Explanation(verdict="PASS", outcome="defer", code="packet.not-attached",
                           why=why("packet.not-attached"), **base,
                           notes=notes + [f"XDP is attached to {', '.join(host.attached)}"])
    if not host.attached:
        notes.append("XDP is attached to no device here: rules with -i never match")
    verdict, rule_id = evaluate(plan.rules, plan.default, key)
    if rule_id is None:
        return Explanation(verdict="PASS", outcome="defer", code="default", why=why("default"), notes=notes, **base)
    texts = _steps(plan)
    path = plan.counter_paths[rule_id]
    code = plan.codes[rule_id] if plan.codes else ""
    if verdict == Verdict.DROP and plan.nat_flows and (key.ct in (CtClass.FOUND, CtClass.NOT_LOOKED_UP)
                                                       or plan.nat_expectations and key.proto in (6, 17)):
        verdict, code = Verdict.DEFER, "nat.flow"  # the program's may_be_natted
    outcome = {Verdict.DROP: "drop", Verdict.ACCEPT: "accept"}.get(verdict, "defer")
    if code == "after.maybe-drop":
        for step in _maybe_droppers(plan, ruleset, host, key):
            notes.append(f"{step.label()} may drop it: {step.text}")
    if code.startswith("foreign."):  # the hook outside the planned ruleset that makes XDP defer (plan notes)
        notes += [n.split(": ", 1)[1] for n in plan.notes if n.startswith(code + ":")][:5]
    return Explanation(verdict="DROP" if verdict == Verdict.DROP else "PASS", outcome=outcome, code=code,
                       why=why(code), rule=_step(path[-1], texts) if path else None,
                       path=tuple(_step(ref, texts) for ref in path[:-1]), rule_id=rule_id, notes=notes, **base)


def render_text(e: Explanation) -> List[str]:
    lines = [f"packet:   {e.packet}", f"verdict:  {OUTCOME_TEXT[e.outcome]}"]
    if e.rule is not None:
        lines.append(f"rule:     {e.rule.label()}: {e.rule.text}")
        for step in e.path:
            lines.append(f"  via     {step.label()}: {step.text}")
    lines.append(f"reason:   {e.code}: {e.why}")
    if e.rule_id is not None:
        lines.append(f"xdp:      classifier rule {e.rule_id}, conntrack lookup {e.ct_class}")
    lines += [f"note:     {n}" for n in e.notes]
    return lines
