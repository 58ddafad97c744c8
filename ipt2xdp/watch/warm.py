# SPDX-License-Identifier: GPL-2.0-only
"""What `ipt2xdp watch` keeps between re-plans, so serving a wrapper's change costs the re-plan
and not the set-up around it.

- The planning stack is imported and the grammar built once, at start (a wrapper process paid
  both on every call: most of a second before it read a single rule).
- The host facts (hostinfo.HostContext: devices, addresses, routes, sysctls, conntrack helpers)
  are read again only when one of their inputs may have changed: an rtnetlink message arrived
  (any: link, address or route), a sysctl the sysctl trigger polls differs, or another trigger
  than the ruleset's own reported something. A netfilter change refreshes only the facts its
  backend can move (hostinfo.read_netfilter_facts): an nf_tables change the native nftables
  chains and `ct helper`s, listed without iptables-nft's own tables (nftlist.py), and the other
  backend's tables when that is iptables-nft; a legacy change the legacy tables when planning
  from iptables-nft, and nothing when planning from legacy (its ruleset is read anyway).
- The live ruleset's text: when it is what the plan in force was made from, and so is the host,
  nothing is planned (the change was undone, or was already planned).
- Each rule's translation into classifier terms (plan.TERM_MEMO), reused for the rules that did
  not change while the host facts stay the same object; dropped when they change.
- The replaced generation's maps, and what this process wrote in them (mapwrite.WRITTEN): the
  next flip rewrites in them only the entries that differ instead of filling new maps.
- Until the caller has its answer: the freeing of what the sync made (release()); until no
  caller comes for a moment: the collector's work (collect()).
- The last ruleset read back (its text and its parse), which a wrapper's command line is applied to
  (predict.py) when its "begin" comes: the plan of that prediction is made in a thread while the
  real binary runs, and flipped to by the sync after "done" if what is read back then holds it.
"""
from __future__ import annotations

import gc
import time
from dataclasses import replace
from typing import Dict, List, Optional, Tuple

# Sources whose changes cannot touch the host facts (the ruleset is read anew on every sync).
RULESET_SOURCES = ("legacy", "wrapper", "start", "retry", "prediction")
# Every this many collections, the frozen warm state is walked again (collect()).
UNFREEZE_EVERY = 64
# How a served sync's log tells whether the plan made while the caller's command ran was flipped to.
PREDICTION_HELD = "the predicted plan held"
PREDICTION_MISSED = "the prediction did not hold: planned again"
PREDICTION_IN_KERNEL = "the kernel holds the prediction (nf_tables generation): not read back"


def warm_up() -> None:
    """Import the planning stack and build the grammar now, not on the first change."""
    from ipt2xdp import backend, drift, loader, planstore, report, setguard  # noqa: F401
    from ipt2xdp.commands import import_  # noqa: F401
    from ipt2xdp.compile import compile as compile_tables  # noqa: F401
    from ipt2xdp.hostinfo import read_host_context  # noqa: F401
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan  # noqa: F401
    from ipt2xdp.wrapper import xdpcounts  # noqa: F401

    parse("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 192.0.2.1 -j DROP\nCOMMIT\n", "<warm-up>")
    gc.collect()
    gc.freeze()  # modules and grammar live as long as the process: no collection walks them again


class Warm:
    def __init__(self, triggers):
        from ipt2xdp.watch.triggers import HostTrigger

        self.host_trigger = next((t for t in triggers if isinstance(t, HostTrigger)), None)
        self._host = None
        self._host_key: Optional[Tuple] = None
        self._stale_backends = set()  # "nft", "legacy": their tables changed (helpers, foreign hooks)
        self._planned_tables: Optional[frozenset] = None  # what the cached foreign facts were read for
        self._parse = None  # parse.ParseMemo of the syncs so far
        self.served = 0
        self.collect_due = False
        self.collections = 0
        self.uncollected = 0  # syncs since the last collect()
        self._collector_off = False  # sync() turned the cycle collector off; collect() turns it on
        # What a sync made and no longer needs (the parsed ruleset, the plan, the compiled maps):
        # freed by collect(), after the answer (freeing them costs 20-25 ms at 10k rules).
        self._leftovers: list = []
        self.last: Dict[str, object] = {}
        # The last ruleset read back (backend, text, parsed, the nf_tables generation it was read
        # in or None): what a wrapper's command is applied to in predict(); and the plan of that
        # prediction, being made (predict.Planning).
        self._base: Optional[tuple] = None
        # A served sync took the prediction as the kernel's ruleset (holding.py): the pid of its
        # caller until a sync reads the ruleset back; trust_generations: False once a read-back
        # did not render as such a prediction (then every sync reads back).
        self.unverified: Optional[int] = None
        self.trust_generations = True
        self._edited = None  # (text, the Layout it was edited from, the command, its edits) of the last prediction
        self._base_layout = None   # predict.Layout of its text, and the -D rule finder of its
        self._base_matcher = None  # ruleset: made once per read-back (prepare_prediction())
        self._planning = None
        self._planning_pid: Optional[int] = None

    def release(self) -> None:
        """Free what the last syncs made and no longer need (their parsed rulesets, plans and
        compiled maps: 20-25 ms of freeing per sync at 10k rules). `ipt2xdp watch` calls it right
        after answering a caller, in the gap while the next one starts (a wrapper process takes
        longer to start than this). It leaves the collector off: a sync's cycles are few (about
        270 objects at 10k rules) and collect() finds them later, while a full collection walks the
        whole warm heap (250-400 ms at 10k rules), which a burst of callers would wait for."""
        self._leftovers.clear()

    def collect(self) -> None:
        """What the last sync left, done once no call has come for a moment (`ipt2xdp watch`:
        service.CLEANUP_IDLE) or after many syncs without a pause (service.COLLECT_EVERY): freed
        (release()) and the cycles collected. (The replaced generation's maps are kept: the next
        flip rewrites in them only what differs, see dataplane.py; they cost about 5 MB at 10k
        rules.) The collector, off since sync(), runs again from here on."""
        self.release()
        if self._planning is not None and self._planning.running():
            return  # a plan is being made in its thread: the collector stays off, collected later
        if self.collect_due:
            self.collect_due = False
            self.collections += 1
            if self.collections % UNFREEZE_EVERY == 0:
                gc.unfreeze()  # a walk of the whole heap (300-400 ms at 10k rules), now and then
            gc.collect()
            # What is left is the warm state: kept out of later collections, which then walk only
            # what the syncs since made (5 ms after an append at 10k rules, 100 after an insert
            # at the top, whose moved rules are new copies) instead of the whole heap (250-500
            # ms, which a caller arriving meanwhile waited for). What it holds is freed by its
            # reference counts when dropped; a cycle in it, only by the next unfreeze (measured:
            # after 24 syncs at 10k rules, appends, deletes and inserts at the top, with a
            # collect and freeze after each, a full collection found nothing unreachable).
            gc.freeze()
        self.uncollected = 0
        if self._collector_off:
            self._collector_off = False
            gc.enable()

    def note(self, changes) -> None:
        """Changes the triggers reported: forget the host facts they may have changed."""
        for change in changes:
            if change.source in ("nftables", "legacy"):
                # hooks outside the planned ruleset (native nft chains, the other backend's
                # tables) and conntrack helpers are host facts too (foreign.py)
                self._stale_backends.add("nft" if change.source == "nftables" else "legacy")
            elif change.source not in RULESET_SOURCES:
                self._host_key = None

    def host(self, devices: List[str], backend: str, planned_tables=()):
        """planned_tables: the names of the tables of the ruleset just read."""
        from ipt2xdp import hostinfo
        from ipt2xdp.watch.triggers import _sysctls

        tables = frozenset(planned_tables)
        if self.host_trigger is None:  # no rtnetlink events: nothing tells when the facts change
            return hostinfo.read_host_context(attached=devices, backend=backend, planned_tables=tables)
        key = (tuple(devices), backend, self.host_trigger.messages, _sysctls())
        if key != self._host_key or self._host is None:
            self._host = hostinfo.read_host_context(attached=devices, backend=backend, planned_tables=tables)
            self._host_key, self._planned_tables = key, tables
        elif self._netfilter_moved(backend, tables):
            foreign = self._host.foreign
            # A legacy-only change cannot move what nf_tables holds; planning from nft, an
            # nf_tables-only change leaves the legacy tables (the other backend's) as they were.
            other = ((foreign.other_text, foreign.other_tables)
                     if backend == "nft" and "legacy" not in self._stale_backends and foreign is not None
                     and not foreign.unreadable else None)
            helpers, foreign = hostinfo.read_netfilter_facts(backend, self._host.devices, devices, tables, other)
            if (helpers, foreign) != (self._host.ct_external_helpers, self._host.foreign):
                # else the same object: the memo stays valid
                self._host = replace(self._host, ct_external_helpers=helpers, foreign=foreign)
            self._planned_tables = tables
        self._stale_backends = set()
        return self._host

    def _netfilter_moved(self, backend: str, tables: frozenset) -> bool:
        """Whether the cached netfilter facts may be out of date. Planning from legacy, every one
        of them comes from nf_tables (native chains, iptables-nft's tables, `ct helper`s)."""
        if backend == "legacy":
            return "nft" in self._stale_backends
        return bool(self._stale_backends) or tables != self._planned_tables

    def _parse_memo(self, text: str):
        """The lines parsed in earlier syncs (a change leaves most of them as they were), dropped
        once it holds far more lines than the ruleset has (it keeps every line it sees)."""
        from ipt2xdp.parse import ParseMemo

        kept = sum(len(lines) for _, lines in self._parse.tables.values()) if self._parse else 0
        if self._parse is None or kept > 2 * text.count("\n") + 1000:
            self._parse = ParseMemo()
        return self._parse

    def _memo(self, host, rules: int) -> None:
        """Keep the rules' translations for the next plan while the host facts stay the same."""
        from ipt2xdp import plan

        memo = plan.TERM_MEMO
        if memo is None or memo["host"] is not host or len(memo["terms"]) > 2 * rules + 1000:
            plan.TERM_MEMO = {"host": host, "terms": {}}

    def _target(self, backend: Optional[str]):
        """(loader status, its plan record, backend, devices) of a sync now, or None if not loaded."""
        from ipt2xdp import loader, planstore
        from ipt2xdp.wrapper import realbin

        info = loader.status(include_counters=False)
        if not info.get("loaded"):
            return None
        record = planstore.load(info.get("ruleset", {}).get("source_digest")) or {}
        backend = backend or record.get("backend") or realbin.backend()
        return info, record, backend, record.get("devices") or sorted(info.get("devices", {}))

    def predict(self, backend: Optional[str], args: Optional[list], pid: int, ran_on: Optional[str] = None) -> None:
        """A wrapper (pid) is about to run the iptables command args: plan the ruleset it should
        leave (the last one read back with the command applied, predict.py) in a thread, for
        the sync that follows its "done" (_sync; flipped to only if what is read back then holds
        it, or if the nf_tables generation says the kernel holds it: holding.py, only for a command
        the wrapper runs on the planned backend, ran_on). args None: nothing to predict (a restore)."""
        from ipt2xdp.parse import parse
        from ipt2xdp.watch import holding, predict

        self._drop_planning()
        command = predict.read_command(args) if args is not None and predict.wanted() else None
        target = self._target(backend) if command is not None and self._base is not None else None
        if target is None:
            return
        _info, record, backend, devices = target
        base_backend, base_text, base_ruleset, base_generation = self._base
        if base_backend != backend or sorted(devices) != devices:  # _sync reads the host anew then
            return
        layout, matcher = self._prepared_base()
        found = predict.predicted_edits(base_text, command, matcher, layout)
        if found is None:
            return
        text = predict.edited_text(*found)
        self._edited = (text, found[0], command, found[1])  # its layout is made from the last (_prepared_base)
        if gc.isenabled():  # as in sync(): off until collect()
            gc.disable()
            self._collector_off = True
        from ipt2xdp.errors import ParseError
        from ipt2xdp.watch import predictrules

        path = f"<iptables-{backend}-save>"
        ruleset = predictrules.edited_ruleset(base_ruleset, found[0], command, found[1], path)
        try:
            if ruleset is None:
                ruleset = parse(text, path, self._parse_memo(text))
        except ParseError:
            return
        host = self.host(devices, backend, [t.name for t in ruleset.tables])
        if self.host_trigger is not None:
            self._memo(host, sum(len(c.rules) for t in ruleset.tables for c in t.chains))
        self._planning = predict.Planning(ruleset, host, record.get("ipsets", "mirror"), backend, devices)
        self._planning_pid = pid
        self._planning.text = text
        # what the sync after its "done" reads again otherwise: nothing flips in between (the caller,
        # or this watcher for a launcher, holds the wrapper's lock)
        self._planning.target = target
        if self.trust_generations and ran_on == backend:
            self._planning.expected_generation = holding.expected_generation(backend, command, base_ruleset,
                                                                             base_generation)

    def _prepared_base(self):
        """(predict.Layout, predict.rule_matcher) of the last ruleset read back, made now if not yet."""
        from ipt2xdp.watch import predict

        if self._base_layout is None or self._base_layout.text is not self._base[1]:
            edited, self._edited = self._edited, None
            if edited is not None and edited[0] is self._base[1]:  # the text of the prediction taken
                from ipt2xdp.watch import predictrules

                self._base_layout = predictrules.edited_layout(edited[1], edited[2], edited[3], edited[0])
            else:
                self._base_layout = predict.Layout(self._base[1])
            self._base_matcher = predict.rule_matcher(self._base[2])
        return self._base_layout, self._base_matcher

    def prepare_prediction(self) -> None:
        """What every next caller's prediction needs from the last read-back (its lines laid out by
        table), made once the caller of that sync has its answer (`ipt2xdp watch` calls this right
        after answering "done"), not on the next caller's critical path: the prediction's plan
        starts only after it. A chain's rule texts (the -D finder's index) are made when a -D asks:
        its real command reads the whole ruleset, which hides them, while an append never needs
        them (and a burst of appends would wait for them after every answer)."""
        if self._base is None:
            return
        layout, _matcher = self._prepared_base()
        for table in self._base[2].tables:
            layout.table(table.name)

    def hurry(self) -> None:
        """The caller the plan being made is for has ended its command (its "done" came)."""
        if self._planning is not None:
            self._planning.hurry()

    def _drop_planning(self) -> None:
        """Wait for a plan still being made (nothing else plans meanwhile) and forget it."""
        planning, self._planning = self._planning, None
        if planning is not None:
            planning.result()

    def _held(self, backend: str, counts_pid: Optional[int]) -> Optional[tuple]:
        """(text, ruleset, generation) of the prediction for the caller counts_pid when the kernel
        holds it (holding.py), else None (then the sync reads back)."""
        from ipt2xdp.watch import holding

        planning = self._planning
        if (planning is None or counts_pid is None or self._planning_pid != counts_pid or planning.backend != backend
                or planning.expected_generation is None):
            return None
        if holding.generation(backend) != planning.expected_generation:
            return None
        return planning.text, planning.ruleset, planning.expected_generation

    def _planned(self, backend: str, counts_pid: Optional[int]):
        """The plan predicted for the caller counts_pid, made for this backend (waited for), or None."""
        planning, pid, self._planning = self._planning, self._planning_pid, None
        if planning is None:
            return None
        prepared = planning.result()
        return prepared if counts_pid is not None and pid == counts_pid and planning.backend == backend else None

    def sync(self, backend: Optional[str], counts_pid: Optional[int] = None, later: Optional[list] = None) -> str:
        """Bring XDP in step with the kernel now; what was done, for the log. Raises on failure
        (XDP keeps deferring if it was).

        Python's cycle collector is off meanwhile: a plan allocates millions of objects, and in a
        process whose heap holds the last plan's rules and the memo, each full collection walks all
        of it (at 10k rules a sync took 6-7.5 s with it, 4-4.6 s without). It stays off until
        collect(), after the caller has its answer: turned on at the end of the sync, the first
        allocations set off the collections the sync's millions of objects had put off (20-30 ms
        at 10k rules, before the answer went out)."""
        if gc.isenabled():
            gc.disable()
            self._collector_off = True
        try:
            return self._sync(backend, counts_pid, later)
        finally:
            self.collect_due = True
            self.uncollected += 1

    def _sync(self, backend: Optional[str], counts_pid: Optional[int] = None, later: Optional[list] = None) -> str:
        """counts_pid: the wrapper process the flip is for (its pending change moves the counts);
        later: what the flip leaves to do after the answer (sync.replan's)."""
        from ipt2xdp import abi, drift, loader, planstore
        from ipt2xdp import backend as backends
        from ipt2xdp.parse import parse
        from ipt2xdp.render import canonical
        from ipt2xdp.watch import holding
        from ipt2xdp.wrapper import sync

        started = time.monotonic()
        if counts_pid is None:
            self._drop_planning()
        planning = self._planning
        held_for = planning is not None and counts_pid is not None and self._planning_pid == counts_pid
        target = planning.target if held_for and planning.target is not None else self._target(backend)
        if target is None:
            self._drop_planning()
            return "ipt2xdp is not loaded in this network namespace; nothing to do"
        info, record, backend, devices = target
        key = info.get("ruleset", {}).get("source_digest")
        times = {}
        with sync.guarded_flip():  # a caller that gave up on us may have changed netfilter since
            taken = self._held(backend, counts_pid)
            if taken is not None:
                text, ruleset, generation = taken
                self._stale_backends.discard("nft")  # the one transaction since the read was the caller's
                times["read"] = time.monotonic() - started
            else:
                text, generation = holding.read_between(backend, lambda: backends.save(backend))
                times["read"] = time.monotonic() - started
                ruleset = parse(text, f"<iptables-{backend}-save>", self._parse_memo(text))
            # The canonical text tells whether anything changed; a wrapper's change flips anyway (below),
            # and the import renders the text from the rule texts its plan makes.
            rendered = canonical(ruleset) if counts_pid is None else None
            times["parse"] = time.monotonic() - started - times["read"]
            mark = time.monotonic()
            host = self.host(devices, backend, [t.name for t in ruleset.tables])
            times["host"] = time.monotonic() - mark
            # A wrapper's change (counts_pid) flips even to the same text: `-R` of a rule by an
            # identical one restarts its counters, and the flip is what carries counts by the command.
            if (rendered is not None and record and planstore.digest(rendered, devices) == key
                    and record.get("host_digest") == drift.host_digest(host)):
                deferring = info.get("deferring_all")
                if deferring:
                    loader.defer_all(False)
                what = (f"in step, the plan in force is that of iptables-{backend}'s ruleset and this host; "
                        + ("enforcing again" if deferring else "nothing to do"))
                if self.unverified is not None and taken is None:
                    what += f"; the ruleset read back is the prediction taken for wrapper pid {self.unverified}"
            else:
                mark = time.monotonic()
                ahead = self._planned(backend, counts_pid)  # waits for the predicted plan, if one is made
                if ahead is not None:
                    times["predicted"] = time.monotonic() - mark  # still being made when the read-back ended
                    mark = time.monotonic()
                if self.host_trigger is not None:  # the host object is reused only with its trigger
                    self._memo(host, sum(len(c.rules) for t in ruleset.tables for c in t.chains))
                applied = sync.replan(backend, ruleset, host if sorted(devices) == devices else None, rendered,
                                      counts_pid=counts_pid, release_later=True, keep=self._leftovers, ahead=ahead,
                                      later=later)  # its own status read: a detach meanwhile is seen
                planned = self._leftovers[-1] if self._leftovers else None
                held = ahead is not None and planned is not None and planned[0] is ahead.result
                times["flip" if held else "plan+flip"] = time.monotonic() - mark
                if applied is None:
                    what = "ipt2xdp is not loaded in this network namespace; nothing to do"
                else:
                    what = (f"re-imported iptables-{backend}'s ruleset, generation {applied.generation}, "
                            f"{len(applied.rewritten)} of {len(abi.GEN_MAPS)} maps rewritten in place")
                    if ahead is not None:
                        what += ", " + (PREDICTION_HELD if held else PREDICTION_MISSED)
                    if taken is not None:
                        what += ", " + PREDICTION_IN_KERNEL
                if self.unverified is not None and taken is None and counts_pid is None:
                    # A mistake of holding.py's condition 4 (or a change the generation did not show)
                    self.trust_generations = False
                    what += (f"; the ruleset read back is not the prediction taken for wrapper pid {self.unverified}: "
                             "planned again, and every later sync reads the ruleset back")
        total = time.monotonic() - started
        self._leftovers.append((ruleset, text))
        self._base = (backend, text, ruleset, generation)
        self.unverified = counts_pid if taken is not None else None
        self.last = {"what": what, "seconds": round(total, 3), **{k: round(v, 3) for k, v in times.items()}}
        return f"{what} ({total:.2f} s: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()) + ")"
