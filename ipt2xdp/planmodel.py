# SPDX-License-Identifier: GPL-2.0-only
"""What a plan is made of: RuleRef (an iptables rule by position), Decision (what XDP does with
one rule, and why), Plan (the classifier, the decisions, the counter paths); and the chains that
stand between the wire and filter/INPUT."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ipt2xdp import ir, irtargets
from ipt2xdp.classifier import Action, ClassifierRule

EARLIER_CHAINS = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING"), ("mangle", "INPUT"))
# The other iptables backend's chains a packet may pass before the planned filter/INPUT drops it:
# its filter/INPUT shares priority 0 (order unknown). Its policy there is harmless: a packet XDP
# drops is dropped by the planned filter/INPUT either way.
FOREIGN_CHAINS = EARLIER_CHAINS + (("filter", "INPUT"),)
NO_OP_TARGETS = (irtargets.Accept, irtargets.Return)  # in an earlier chain these let the packet go on unchanged


@dataclass(frozen=True)
class RuleRef:
    """An iptables rule by position (1-based, as `iptables -L --line-numbers`); index 0 = the policy."""

    table: str
    chain: str
    index: int


@dataclass(frozen=True)
class Decision:
    ref: RuleRef
    kind: str   # "xdp" | "partial" | "netfilter"
    code: str
    why: str
    text: str = ""


@dataclass(frozen=True)
class Plan:
    rules: Tuple[ClassifierRule, ...]
    default: Action
    decisions: Tuple[Decision, ...]
    # rule_id -> the iptables rules a packet decided by that classifier rule traversed (jumps, then
    # the deciding rule); the wrapper adds XDP's counters to each of them.
    counter_paths: Tuple[Tuple[RuleRef, ...], ...]
    notes: Tuple[str, ...] = ()
    codes: Tuple[str, ...] = ()  # rule_id -> the reason code of that classifier rule (for explain)
    # Guarded DROPs (ipset copies) hold until this CLOCK_MONOTONIC ns, when a member may time out.
    set_deadline_ns: Optional[int] = None
    # abi.NAT_NEW_* bits for compile(): XDP counts its drops that nat PREROUTING would have seen
    # (0: not exactly countable, or no nat table). See nat_new().
    nat_new: int = 0
    # conntrack may hold NATed flows: XDP passes a drop whose packet may belong to one (abi.NAT_FLOWS;
    # guards.nat_flows())
    nat_flows: bool = False
    # ... and helpers may be assigned: an expected connection's first packet (no entry yet) is NATed
    # like its master, so XDP takes no TCP/UDP drop (abi.NAT_EXPECT)
    nat_expectations: bool = False

    def summary(self) -> Dict[str, int]:
        kinds = [d.kind for d in self.decisions]
        return {k: kinds.count(k) for k in ("xdp", "partial", "netfilter")}


def chain_of(ruleset: ir.Ruleset, table: str, chain: str) -> Optional[ir.Chain]:
    t = ruleset.table(table)
    return t.chain(chain) if t is not None else None
