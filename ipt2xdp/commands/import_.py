# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp import`: make a ruleset the one in force and offload to XDP what XDP can decide exactly.

Order of a real import, chosen so that XDP and netfilter never disagree:
  1. parse the input completely (bad input: diagnostics, exit 2, nothing in the kernel changes);
  2. if XDP is loaded, make it defer everything (fail-open) while netfilter changes;
  3. restore the ruleset into netfilter with the active backend's real iptables-restore;
  4. read back what the kernel now holds and plan, compile and load *that*, flipping atomically
     to the new generation; on any failure the deferring state stays and the error says so.
     The input is planned and compiled while the restore runs; that plan is loaded when what is
     read back renders to the same canonical text for the same host facts (the usual case), as
     the plan is a function of those two.
`--live` skips 2 and 3: it takes what netfilter holds now and changes nothing there.
"""
from __future__ import annotations

import sys
from dataclasses import replace

HELP = "restore a ruleset into netfilter and offload what XDP can decide (or --dry-run to report)"


def add_arguments(parser):
    parser.add_argument("file", nargs="?", metavar="FILE|-", help="iptables-save file, or - for stdin")
    parser.add_argument("--live", action="store_true", help="take the ruleset netfilter holds now")
    parser.add_argument("--iface", action="append", default=[], metavar="IF",
                        help="device to attach XDP to (repeatable); default: the devices already attached")
    parser.add_argument("--mode", choices=("native", "generic", "auto"), default="auto",
                        help="XDP attach mode: native (driver), generic (skb) or auto (native, else generic)")
    parser.add_argument("--backend", choices=("auto", "legacy", "nft"), default="auto",
                        help="netfilter backend to restore into and read from (default: the active one)")
    parser.add_argument("--dry-run", action="store_true", help="report what XDP would decide; change nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: the report as JSON")
    parser.add_argument("--ipsets", choices=("mirror", "defer"), default=None,
                        help="mirror -m set members into XDP (default), or leave set matches to netfilter; "
                             "kept for later imports and wrapper calls")
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 if any rule is left to netfilter alone")


def _read_input(args):
    from ipt2xdp import backend as backends
    from ipt2xdp.errors import UsageError

    if args.live and args.file:
        raise UsageError("give either FILE or --live, not both")
    if args.live:
        name = backends.resolve(args.backend)
        return backends.save(name), f"<iptables-{name}-save>"
    if args.file is None:
        raise UsageError("nothing to import: give a FILE, - for stdin, or --live")
    if args.file == "-":
        return sys.stdin.read(), "<stdin>"
    from ipt2xdp.commands import read_ruleset_file

    return read_ruleset_file(args.file), args.file


def _devices(args, loaded):
    from ipt2xdp.errors import UsageError

    if args.iface:
        return list(dict.fromkeys(args.iface))
    if loaded and loaded.get("devices"):
        return sorted(loaded["devices"])
    if args.dry_run:
        return []
    raise UsageError("no device given: use --iface IF (XDP is not attached anywhere yet)")


def run(args) -> int:
    from ipt2xdp import gcpause

    if args.dry_run:
        with gcpause.paused():
            return _run(args, 0)
    from ipt2xdp.wrapper import sync

    # The wrapper's lock: an import, a wrapper call and `ipt2xdp watch` never interleave their
    # "read, change, read back, flip", so none of them flips to a plan older than another's change.
    with sync.wrapper_lock(None), sync.guarded_flip(say=True), gcpause.paused():
        preload = _preload()
        try:
            return _run(args, sync.stale_mark(), preload)
        finally:
            if preload is not None:
                preload.discard()


def _preload():
    """On a first import (nothing pinned here), the BPF object loading beside parse and plan."""
    from ipt2xdp import loader

    return None if loader.pinned() else loader.Preload()


def _run(args, mark: int, preload=None) -> int:
    from ipt2xdp import backend as backends
    from ipt2xdp import loader, processexit, report, savesplice
    from ipt2xdp.errors import EXIT_PARAMETER
    from ipt2xdp.hostinfo import read_host_context
    from ipt2xdp.parse import ParseMemo, parse
    from ipt2xdp.plan import plan
    from ipt2xdp.wrapper import sync

    text, path = _read_input(args)
    memo = ParseMemo()  # what iptables-save prints back below is mostly the same lines
    ruleset = parse(text, path, memo)
    processexit.keep(memo, ruleset)  # a one-shot process never frees them (see keep())
    loaded = _loaded(settled=args.dry_run)  # an import holds the wrapper's lock already
    if args.ipsets is None:
        args.ipsets = ((loaded or {}).get("plan") or {}).get("ipsets", "mirror")
    devices = _devices(args, loaded)
    host = read_host_context(attached=devices, backend=backends.resolve(args.backend),
                             planned_tables=[t.name for t in ruleset.tables])
    missing = [name for name in devices if host.device(name) is None]
    if missing:
        from ipt2xdp.errors import UsageError

        raise UsageError(f"no such device: {', '.join(missing)} (see `ip link`)")

    if args.dry_run:
        from ipt2xdp import ipsets

        names = ipsets.referenced_sets(ruleset)
        if names and args.ipsets == "defer":
            host = replace(host, ipsets=tuple(ipsets.IpSet(n, unsupported="set-off") for n in names))
        elif names:
            host = replace(host, ipsets=ipsets.read_sets(names, ipsets.changed_by_rules(ruleset)))
        result = plan(ruleset, host)
        processexit.keep(result)
        old = loaded.get("plan", {}).get("decisions") if loaded and loaded.get("plan") else None
        maps = _map_diff(result, loaded, host, backends.resolve(args.backend))
        if args.json:
            from ipt2xdp import drift, planrecord, planstore

            # The digests an import of this ruleset would record: equal to `status --json`'s when in step.
            print(report.as_json(result, old, {"devices": devices, "source": path,
                                               "source_digest": planstore.digest(
                                                   planrecord.canonical_text(ruleset, result), devices),
                                               "host_digest": drift.host_digest(host)}, map_diff=maps))
        else:
            print(report.as_table(result, old, colour=report.use_colour(sys.stdout), map_diff=maps))
        return EXIT_PARAMETER if args.strict and result.summary()["netfilter"] else 0

    name = backends.resolve(args.backend)
    ahead = recording = None
    if not args.live:
        was_loaded = bool(loaded and not loaded.get("deferring_all"))
        loader.defer_all(True)  # a no-op when nothing is loaded yet
        restoring = None
        try:
            restoring = backends.start_restore(text, name)
            try:
                # Plan the input while the kernel takes it; used below only if what the kernel then
                # holds renders to the same canonical text, for the same host facts.
                ahead = _plan_ahead(ruleset, host, args, name)
                processexit.keep(ahead)
                recording = _record_ahead(ahead, name, devices)
            finally:
                restoring.wait()  # also when planning was interrupted: until it ends, netfilter may change
        except BaseException as error:
            # Only a restore that never started, or that failed, left netfilter as it was; after an
            # interruption it may have committed: XDP keeps deferring everything.
            unchanged = restoring is None or isinstance(error, backends.BackendError)
            if unchanged and was_loaded and sync.stale_mark() == mark:
                loader.defer_all(False)  # netfilter is unchanged, so the old plan is still exact
            raise
        # From here netfilter holds the new rules: only a successful apply() ends deferring.
        # The restore started every counter of the tables it replaced again; so does XDP's share.
        from ipt2xdp.wrapper import countmap

        tables = frozenset(table.name for table in ruleset.tables)
        args.count_change = countmap.Change(command="restore", legacy=name == "legacy", replaced_tables=tables,
                                            touched_tables=tables)
        # (output through a file: the record's thread holds the GIL, which reading a pipe would need often)
        saved, path = backends.start_save(name).text(), f"<iptables-{name}-save>"
        if recording is not None:
            recording.join()
        # What the kernel prints back is usually the file with other comments: then it is not parsed
        # again, unless the plan made ahead does not hold for the host facts read below (then the
        # plan is made again from the ruleset read back, with its positions, as in any other case).
        same = ahead is not None and savesplice.same_content(text, saved)
        if not same:
            ruleset = parse(saved, path, memo)
            processexit.keep(ruleset)
        if host.foreign is not None:  # the restore may have made (or replaced) nf_tables tables
            from ipt2xdp.foreign import read_foreign

            host = replace(host, foreign=read_foreign(name, host.devices, devices,
                                                      planned_tables=[t.name for t in ruleset.tables]))
        if same and host != ahead.given_host:
            ruleset = parse(saved, path, memo)
            processexit.keep(ruleset)
    print(_offload(ruleset, host, devices, args, name, report, ahead=ahead, preload=preload))
    return 0


def _nat_new(result, backend_name) -> int:
    """compile()'s nat_new for this plan: abi.NAT_FLOWS where NATed flows may exist; the counting
    bits with iptables-legacy only. iptables-nft's nat policy counter was seen in namespaces to stay
    at zero after the table was made by an -A, and to count after a later commit: not modelled, so
    there XDP adds nothing to it."""
    from ipt2xdp import abi

    return ((result.nat_new if backend_name == "legacy" else 0) | (abi.NAT_FLOWS if result.nat_flows else 0)
            | (abi.NAT_EXPECT if result.nat_expectations else 0))


def _map_diff(result, loaded, host, backend_name):
    """The map entries importing this plan would change, against the maps in the kernel now."""
    from ipt2xdp import mapdiff, mapread, planstore
    from ipt2xdp.compile import compile as compile_tables
    from ipt2xdp.errors import CapacityError

    try:
        tables = compile_tables(result.rules, result.default, overflow="defer",
                                nat_new=_nat_new(result, backend_name))  # as _offload does
    except CapacityError as error:
        return {"error": f"the plan does not compile, so it could not be loaded: {error}"}
    generation = mapread.read_loaded() if loaded else None
    record = planstore.load_settled(generation.source_digest) if generation else None  # a dry run's: no lock
    return mapdiff.map_diff(result, tables, generation, record, {d.ifindex: d.name for d in host.devices})


def _loaded(settled: bool = False):
    """loader.status() plus the plan record of the generation in force (None if not loaded).
    settled: the caller holds no wrapper lock (planstore.load_settled)."""
    from ipt2xdp import loader, planstore

    info = loader.status(include_counters=False)
    if not info.get("loaded"):
        return None
    key = info.get("ruleset", {}).get("source_digest")
    info["plan"] = planstore.load_settled(key) if settled else planstore.load(key)
    return info


class _Prepared:
    """A ruleset planned and compiled for a host, not yet loaded. hold_notices: what planning has
    to say waits in .notices until the plan is used (a plan made ahead may be made again)."""

    def __init__(self, ruleset, host, args, backend_name, text=None, hold_notices=False):
        from ipt2xdp import loader, planrecord, setguard
        from ipt2xdp.compile import compile as compile_tables
        from ipt2xdp.plan import plan

        self.notices: list = []
        self.ruleset = ruleset
        self.given_host = host
        self.ipset_mode = getattr(args, "ipsets", None) or "mirror"
        say = self.notices.append if hold_notices else loader._stderr_notice
        self.host, expectation = setguard.mirror_for_import(host, ruleset, say, mirror=self.ipset_mode == "mirror")
        self.result = plan(ruleset, self.host)
        self.tables = compile_tables(self.result.rules, self.result.default, overflow="defer",
                                     nat_new=_nat_new(self.result, backend_name))
        self.tables.set_guard = setguard.with_deadline(expectation, self.result.set_deadline_ns)
        self.text = text if text is not None else planrecord.canonical_text(ruleset, self.result)
        self._record = None

    def plan_record(self, backend_name: str, devices, ruleset) -> tuple:
        """(the plan store's record of this plan, its JSON) for planstore.save(). Kept: a plan made
        ahead (`ipt2xdp watch`'s prediction) has it made ahead too, from the ruleset it was planned
        from, which renders as the one it is used for (holds()), policies included."""
        from ipt2xdp import planrecord

        if self._record is not None and self._record[0] == (backend_name, list(devices)):
            return self._record[1]
        made = planrecord.made(self, backend_name, devices, ruleset)
        self._record = ((backend_name, list(devices)), made)
        return made

    def holds(self, ruleset, host) -> bool:
        """Whether this is the plan of `ruleset` on `host`: the plan is a function of the canonical
        text (what the plan store and drift digest) and the host facts. Rules read back from lines
        the input had are the parse memo's copies: the same objects, or sharing their rendered text;
        the ruleset it was made from (_run's when the kernel printed the file back) is not compared."""
        from ipt2xdp.render import same_canonical

        return host == self.given_host and (ruleset is self.ruleset or same_canonical(ruleset, self.ruleset))


def _record_ahead(ahead, backend_name, devices):
    """A thread making ahead.plan_record() for _offload while this one waits for the restore and
    the read-back (0.5 s at 100k rules, when the restore takes longer than planning; join() it
    first), or None without a plan. _offload takes the record when ahead holds for the ruleset
    read back (then that ruleset renders as ahead's, policies included); an error there is left
    to _offload to meet again, if it uses this plan at all."""
    import threading

    if ahead is None:
        return None

    def make() -> None:
        try:
            ahead.plan_record(backend_name, devices, ahead.ruleset)
        except Exception:  # noqa: BLE001 - only a head start
            pass

    thread = threading.Thread(target=make, name="plan-record", daemon=True)
    thread.start()
    return thread


def _plan_ahead(ruleset, host, args, backend_name):
    """_Prepared for the input ruleset, its notices held, or None if planning it failed: the plan
    of what the kernel holds after the restore is made again then, and reports any error itself."""
    try:
        return _Prepared(ruleset, host, args, backend_name, hold_notices=True)
    except Exception:  # noqa: BLE001 - only a head start; the authoritative plan comes after
        return None


def _offload(ruleset, host, devices, args, backend_name, report, text=None, ahead=None, preload=None, before=None):
    """text: render(ruleset.without_positions()) if the caller has it already (`ipt2xdp watch`
    renders it to tell whether anything changed). ahead: a _Prepared made before the ruleset was
    read back, used when it holds for this ruleset and host. preload: loader.Preload. before:
    loader.status(include_counters=False) as the caller read it just before (sync.replan), used
    when ahead holds: then only the plan record's save comes between it and the flip, as between
    a read here and the flip (otherwise a whole plan would, and it is read again)."""
    from ipt2xdp import loader, planstore, processexit

    if ahead is not None and ahead.holds(ruleset, host):  # made in _run for the same backend
        prepared = ahead
        for message in ahead.notices:
            loader._stderr_notice(message)
    else:
        prepared = _Prepared(ruleset, host, args, backend_name, text)
    processexit.keep(prepared)  # its plan record too
    result, tables = prepared.result, prepared.tables
    key = planstore.digest(prepared.text, devices)

    def save_record() -> dict:
        record, record_text = prepared.plan_record(backend_name, devices, ruleset)
        planstore.save(key, record, record_text)
        return record
    # `ipt2xdp watch` serving a native launcher, whose lock it holds until these are done, saves the
    # record and carries the counts after its answer: every reader of either (the counted listings,
    # the next flip, an import) takes that lock first.
    later = getattr(args, "finish_later", None)
    record = save_record() if later is None else None
    from ipt2xdp.wrapper import xdpcounts

    if before is None or prepared is not ahead:
        before = loader.status(include_counters=False)
    applied = loader.apply(tables, devices, mode=args.mode, source_digest=key,
                           release_old=not getattr(args, "release_later", False), preload=preload,
                           counts_later=later is not None)
    args.applied = applied  # for `ipt2xdp watch`'s log: which maps the flip rewrote in place
    # `ipt2xdp watch` frees them after its answer (10-15 ms at 10k rules), and the plans' prefixes
    # they replaced (planprefix.DROPPED)
    from ipt2xdp import planprefix

    args.planned = (result, tables, planprefix.take_dropped())

    def carry_counts() -> None:  # the counts XDP kept for each rule stay with it, as netfilter's own do
        xdpcounts.after_flip(before, applied.final_counts(), getattr(args, "count_change", None),
                             getattr(args, "count_pid", None))
    if later is not None:
        later += [save_record, carry_counts]
        return f"ipt2xdp: generation {applied.generation}"
    carry_counts()
    s = record["summary"]  # report.summary(result), made with the record
    attached = ", ".join(f"{name} ({mode})" for name, mode in sorted(applied.attached.items()))
    return "\n".join([f"ipt2xdp: generation {applied.generation} on {attached}: {s['rules']} rules, XDP decides "
                      f"{s['xdp']}, some packets of {s['partial']}, netfilter alone {s['netfilter']}",
                      *(f"ipt2xdp: but {note}" for note in report.whole_device_notes(result))])
