# SPDX-License-Identifier: GPL-2.0-only
"""XDP's drops per iptables rule as the wrapper shows them: live map counters plus an adjustment.

The BPF counters start from zero with every generation, while netfilter keeps a rule's counters
until the rule is replaced, flushed or zeroed. So at every flip (after_flip(), called where every
plan is loaded: `import`, the wrapper, the watcher) the replaced generation's final counters, read
by the loader after the flip and a grace period (nothing dropped is lost or counted twice), plus
its adjustment become the new generation's adjustment, moved to the same rules by
countmap.follow() as the command the wrapper ran describes (expect()). `-Z` stores minus the count
shown. Adjustments are keyed by program id and generation: a generation always starts with its
own, never with one left by an earlier program or generation.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, Optional, Tuple

from ipt2xdp.wrapper import countmap

Key = countmap.Key
Counts = countmap.Counts
PENDING_PREFIX = "pending-change-"


def _directory() -> str:
    from ipt2xdp import planstore

    return planstore._directory()


def generation_id(info: dict) -> Optional[str]:
    """The name of the generation loader.status() reports: program id and generation number."""
    if not info.get("loaded"):
        return None
    return f"{info.get('program_id')}-{info.get('generation')}"


def _path(ident: str) -> str:
    return os.path.join(_directory(), f"adjust-{ident}.json")


def load_adjust(ident: Optional[str]) -> Counts:
    if not ident:
        return {}
    try:
        with open(_path(ident)) as f:
            rows = json.load(f)
    except (OSError, ValueError):
        return {}
    return {(t, c, i): (p, b) for t, c, i, p, b in rows}


def _write(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def save_adjust(ident: str, adjust: Counts) -> None:
    path = _path(ident)
    _write(path, [[t, c, i, p, b] for (t, c, i), (p, b) in adjust.items() if p or b])
    for name in os.listdir(os.path.dirname(path)):  # the generations before are gone for good
        if name.startswith("adjust-") and name != os.path.basename(path):
            try:
                os.unlink(os.path.join(os.path.dirname(path), name))
            except OSError:
                pass


def _status_counters(raw: Dict[int, Tuple[int, int]]) -> Dict[str, dict]:
    """loader.read_counters() in the shape counters.per_rule() takes (status()'s)."""
    return {str(k): {"packets": p, "bytes": b} for k, (p, b) in raw.items() if k >= 0}


def effective(raw: Dict[int, Tuple[int, int]], plan: Optional[dict], ident: Optional[str]) -> Counts:
    """{(table, chain, index): (packets, bytes)} XDP dropped, as the wrapper reports them."""
    from ipt2xdp import counters

    total = dict(counters.per_rule(_status_counters(raw), plan))
    for key, (p, b) in load_adjust(ident).items():
        old = total.get(key, (0, 0))
        total[key] = (max(old[0] + p, 0), max(old[1] + b, 0))
    return {k: v for k, v in total.items() if v != (0, 0)}


def _raw(info: dict) -> Dict[int, Tuple[int, int]]:
    from ipt2xdp import abi

    return {abi.NAT_NEW_COUNTER if name == "nat_new" else int(name): (v["packets"], v["bytes"])
            for name, v in info.get("counters", {}).items() if name.isdigit() or name == "nat_new"}


def current() -> Counts:
    """effective() of the generation in force in this namespace ({} if nothing is loaded)."""
    from ipt2xdp import loader, planstore

    info = loader.status()
    if not info.get("loaded"):
        return {}
    return effective(_raw(info), planstore.load(info.get("ruleset", {}).get("source_digest")), generation_id(info))


def _pending_path(pid: int) -> str:
    return os.path.join(_directory(), f"{PENDING_PREFIX}{pid}.json")


def expect(change: Optional[countmap.Change], pid: Optional[int] = None, after: Optional[str] = None) -> None:
    """The wrapper, before it runs a changing command: this process's next flip away from the
    generation in force follows this change (None: forget it). One file per process, as two
    wrapper calls may both be waiting for the lock; a flip in between (another caller's) makes the
    record name a generation no longer in force, and the counts then follow rule text.
    `ipt2xdp watch` records it for the wrapper it serves: pid, that wrapper's; after, the
    generation in force when it began (generation_id())."""
    path = _pending_path(pid or os.getpid())
    if change is None:
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    if after is None:
        from ipt2xdp import loader

        after = loader.generation_ident()
    if after:
        _write(path, {"after": after, "change": change.to_json()})
        _remove_orphans()


def _remove_orphans() -> None:
    """Records of wrapper calls that were killed before they could remove theirs."""
    for name in os.listdir(_directory()):
        pid = name[len(PENDING_PREFIX):-len(".json")]
        if name.startswith(PENDING_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(os.path.join(_directory(), name))
            except OSError:
                pass


def _pending(ident: str, pid: Optional[int] = None) -> countmap.Change:
    path = _pending_path(pid or os.getpid())
    try:
        with open(path) as f:
            record = json.load(f)
        os.unlink(path)
    except (OSError, ValueError):
        return countmap.UNKNOWN
    return countmap.Change.from_json(record["change"]) if record.get("after") == ident else countmap.UNKNOWN


def after_flip(before: dict, previous_counters: Dict[int, Tuple[int, int]],
               change: Optional[countmap.Change] = None, pid: Optional[int] = None) -> None:
    """Carry the replaced generation's counts to the one now in force. before: loader.status()
    from before the flip; previous_counters: ApplyResult.previous_counters (final); change: what
    the flip follows (default: what wrapper process `pid`, by default this one, expect()ed; `ipt2xdp
    watch` flips for the wrapper that asked it)."""
    from ipt2xdp import abi, loader, planstore

    old_ident = generation_id(before)
    if old_ident is None:
        return  # a fresh program: nothing was counted yet
    after = loader.status(include_counters=False)
    new_ident = generation_id(after)
    if new_ident is None or new_ident == old_ident:
        return
    pending = _pending(old_ident, pid)
    named = (abi.DEFAULT_COUNTER, abi.OVERFLOW_COUNTER, abi.NAT_NEW_COUNTER)  # not rules
    if not load_adjust(old_ident) and not any(k not in named and v != (0, 0) for k, v in previous_counters.items()):
        save_adjust(new_ident, {})  # nothing counted yet: spare reading two plan records
        return
    old_plan = planstore.load(before.get("ruleset", {}).get("source_digest"))
    new_plan = planstore.load(after.get("ruleset", {}).get("source_digest"))
    old_total = effective(previous_counters, old_plan, old_ident)
    save_adjust(new_ident, countmap.follow(old_total, old_plan, new_plan, change or pending))


def _zeroed(key: Key, table: str, chain: Optional[str], rulenum: Optional[int], legacy: bool) -> bool:
    t, c, i = key
    if t != table:
        return False
    if legacy and i == 0:  # legacy's commit zeroes every builtin policy counter of the table
        return True
    if chain is None:
        return True
    return c == chain and (rulenum is None or i == rulenum)


def zero(table: str, chain: Optional[str], rulenum: Optional[int], legacy: bool) -> None:
    """After a successful -Z: make the shown counts of what it zeroed 0 (minus the live count)."""
    from ipt2xdp import counters, loader, planstore

    info = loader.status()
    ident = generation_id(info)
    if ident is None:
        return
    live = dict(counters.per_rule(info.get("counters", {}), planstore.load(info.get("ruleset", {}).get("source_digest"))))
    adjust = load_adjust(ident)
    for key in set(live) | set(adjust):
        if _zeroed(key, table, chain, rulenum, legacy):
            p, b = live.get(key, (0, 0))
            adjust[key] = (-p, -b)
    save_adjust(ident, adjust)


def zeroing(run: Callable[[], int], table: str, chain: Optional[str], rulenum: Optional[int], legacy: bool) -> int:
    """Run the real -Z with XDP deferring: no packet can then be dropped by XDP between the kernel's
    zeroing and ours (netfilter counts it itself, before or after, as it would without XDP)."""
    from ipt2xdp.wrapper import sync

    mark = sync.stale_mark()
    try:
        enforcing = sync.begin()
    except Exception:  # noqa: BLE001 - XDP unreachable: zero what we can see, never block -Z
        enforcing = None
    try:
        rc = run()
        if rc == 0:
            zero(table, chain, rulenum, legacy)
        return rc
    finally:
        if enforcing is not None:
            sync.abort(enforcing, mark)  # -Z changed no rule: the plan in force is still exact
