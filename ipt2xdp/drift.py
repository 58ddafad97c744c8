# SPDX-License-Identifier: GPL-2.0-only
"""Whether the plan XDP enforces is still the plan of what the kernel holds now, and if not, where not.

A plan is a pure function of two inputs: the ruleset text (planstore.digest) and the host facts the
planner reads (hostinfo.HostContext: devices, local addresses, sysctls). Both are recorded with
the plan; drift is either of them differing from the live value. Changes made behind the
wrapper's back (`nft`, a direct iptables-legacy or iptables-nft call, iptables-restore from a boot
script) show up here, named by backend, table and chain.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Dict, List, Optional, Tuple


def host_digest(host) -> str:
    """Digest of a HostContext (a frozen dataclass of tuples, so its repr is canonical)."""
    return hashlib.sha256(repr(host).encode()).hexdigest()[:16]


def policies(ruleset) -> Dict[str, str]:
    return {f"{t.name}/{c.name}": c.policy for t in ruleset.tables for c in t.chains if c.builtin}


def live(backend: str, devices) -> Tuple[object, str, object]:
    """(ruleset, ruleset digest, HostContext) of the kernel now, read the way the wrapper re-plans."""
    from ipt2xdp import backend as backends
    from ipt2xdp import planstore
    from ipt2xdp.hostinfo import read_host_context
    from ipt2xdp.parse import parse
    from ipt2xdp.render import render

    ruleset = parse(backends.save(backend), f"<iptables-{backend}-save>")
    key = planstore.digest(render(ruleset.without_positions()), devices)
    return ruleset, key, read_host_context(attached=devices, backend=backend,
                                           planned_tables=[t.name for t in ruleset.tables])


def rule_differences(record: dict, ruleset) -> List[dict]:
    """Per table/chain: rules only in the loaded plan ("removed") and only in the kernel ("added")."""
    from ipt2xdp.render import render_rule

    before: Dict[Tuple[str, str], Counter] = {}
    for d in record.get("decisions", []):
        if d["index"]:
            before.setdefault((d["table"], d["chain"]), Counter())[d["text"]] += 1
    after: Dict[Tuple[str, str], Counter] = {}
    for table in ruleset.tables:
        for chain in table.chains:
            after.setdefault((table.name, chain.name), Counter()).update(render_rule(r) for r in chain.rules)
    out = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, Counter()), after.get(key, Counter())
        added, removed = sorted((new - old).elements()), sorted((old - new).elements())
        if added or removed:
            out.append({"table": key[0], "chain": key[1], "added": added, "removed": removed})
    return out


# Tables whose rules can change a packet or its conntrack state before filter/INPUT judges it.
REWRITING_TABLES = ("raw", "mangle", "nat")


def other_backend(backend: str) -> dict:
    """Rules in the backend the plan does not read. Both backends' hooks see every packet: a DROP
    there only drops more, but its nat/mangle/raw rules can rewrite or untrack packets before the
    planned filter/INPUT sees them, so the plan cannot vouch for them."""
    from ipt2xdp import live as reader

    other = "legacy" if backend == "nft" else "nft"
    try:
        ruleset = reader.read_legacy_save(counters=False) if other == "legacy" else reader.read_nft(counters=False)
    except Exception as error:  # noqa: BLE001 - a report, not a decision
        return {"backend": other, "error": str(error)}
    tables = {}
    for table in ruleset.tables:
        rules = sum(len(c.rules) for c in table.chains)
        strict = {c.name: c.policy for c in table.chains if c.builtin and c.policy != "ACCEPT"}
        if rules or strict:
            tables[table.name] = {"rules": rules, "policies": strict}
    risky = sorted(name for name in tables if name in REWRITING_TABLES)
    return {"backend": other, "tables": tables, "unseen_rewrites": risky}


def check(info: Optional[dict] = None, backend: Optional[str] = None) -> dict:
    """Compare the plan in force with the kernel now. info: loader.status() if already read."""
    from ipt2xdp import loader, planstore

    info = info if info is not None else loader.status(include_counters=False)
    if not info.get("loaded"):
        return {"loaded": False}
    key = info.get("ruleset", {}).get("source_digest")
    record = planstore.load_settled(key) or {}
    if backend is None:
        from ipt2xdp.wrapper import realbin

        backend = record.get("backend") or realbin.backend()
    devices = record.get("devices") or sorted(info.get("devices", {}))
    ruleset, live_key, host = live(backend, devices)
    out = {"loaded": True, "backend": backend, "loaded_digest": key, "live_digest": live_key,
           "ruleset_changed": live_key != key, "deferring_all": bool(info.get("deferring_all"))}
    recorded_host = record.get("host_digest")
    out["host_changed"] = recorded_host is None or recorded_host != host_digest(host)
    if not record:
        out["note"] = "the plan record of the loaded generation is missing; cannot say what differs"
    if out["ruleset_changed"] and record:
        out["chains"] = rule_differences(record, ruleset)
        old_policies, new_policies = record.get("policies"), policies(ruleset)
        if old_policies is not None:
            out["policies"] = {k: [old_policies.get(k), new_policies.get(k)]
                               for k in sorted(set(old_policies) | set(new_policies))
                               if old_policies.get(k) != new_policies.get(k)}
    # Without the plan record (a generation loaded by other means) nothing can be said: None.
    out["in_step"] = (not out["ruleset_changed"] and not out["host_changed"]) if record else None
    out["other_backend"] = other_backend(backend)
    return out


def describe(result: dict) -> List[str]:
    """Human lines for `ipt2xdp status`."""
    if not result.get("loaded"):
        return []
    lines = []
    backend = result["backend"]
    if result["in_step"] is None:
        lines.append(f"drift: unknown ({result.get('note')})")
    elif result["in_step"]:
        lines.append(f"in step: XDP's plan was made from the iptables-{backend} ruleset in force and this host's "
                     "devices and addresses")
    else:
        lines.append(f"DRIFT: XDP's plan is not the plan of what the kernel holds now (iptables-{backend}"
                     + (", XDP is deferring everything to netfilter" if result["deferring_all"] else "") + ")")
        if result["ruleset_changed"]:
            lines.append(f"  ruleset: loaded {result['loaded_digest']}, live {result['live_digest']}")
        for chain in result.get("chains", []):
            lines.append(f"  {chain['table']}/{chain['chain']}: {len(chain['added'])} rule(s) added, "
                         f"{len(chain['removed'])} removed behind the wrapper's back")
            lines += [f"    + {text}" for text in chain["added"][:10]]
            lines += [f"    - {text}" for text in chain["removed"][:10]]
        for name, (old, new) in result.get("policies", {}).items():
            lines.append(f"  {name}: policy {old or '(none)'} -> {new or '(none)'}")
        if result["ruleset_changed"] and not result.get("chains") and not result.get("policies"):
            lines.append("  the difference is outside rule texts (policies, empty chains or tables)")
        if result["host_changed"]:
            lines.append("  host: devices, local addresses, sysctls or netfilter hooks outside the ruleset (native "
                         "nftables tables, the other iptables backend) changed since the plan was made")
        lines.append("  bring it in step: `ipt2xdp import --live` (or run `ipt2xdp watch`)")
    other = result.get("other_backend", {})
    if other.get("tables"):
        desc = ", ".join(f"{name} ({t['rules']} rules" + (f", policies {t['policies']}" if t["policies"] else "")
                         + ")" for name, t in sorted(other["tables"].items()))
        if other.get("unseen_rewrites"):
            lines.append(f"note: iptables-{other['backend']} also holds rules in tables that may rewrite or untrack "
                         f"packets before filter/INPUT: {desc}; the plan defers the packets they may touch "
                         "(docs/foreign.md)")
        else:
            lines.append(f"note: iptables-{other['backend']} also holds filter rules ({desc}); they can only drop "
                         "more than the plan's ruleset, never accept what it drops")
    return lines
