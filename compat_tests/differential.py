# SPDX-License-Identifier: GPL-2.0-only
"""Random-ruleset differential runs: one seed -> ruleset -> corpus -> compare; a failing seed is shrunk.

Knobs (environment), read by the tests and by `python -m compat_tests.differential`:
  IPT2XDP_COMPAT_RULESETS  how many seeded rulesets (default 20 in the test suite)
  IPT2XDP_COMPAT_PROBES    probes per ruleset (default 200)
  IPT2XDP_COMPAT_SEED      first seed (default 0), so a CI failure can be replayed alone
  IPT2XDP_COMPAT_ATTACH    native (default) or generic: ipt2xdp import --live; none: netfilter alone
                           twice (checks the harness)
  IPT2XDP_COMPAT_WORKERS   seeds checked in parallel (default 4), each worker with its own namespaces
  IPT2XDP_COMPAT_FORWARDING  seeds run with forwarding on in the test suite (default 12)
  IPT2XDP_COMPAT_NAT       seeds run with a nat table in the test suite (default 8)
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from compat_tests import harness, packets, rulegen


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def attach_from_env(value: Optional[str] = None) -> Optional[harness.Attach]:
    value = value or os.environ.get("IPT2XDP_COMPAT_ATTACH", "native")
    if value == "none":
        return None
    if value in ("native", "generic", "skb"):
        return harness.ipt2xdp_attach(value)
    raise ValueError(f"IPT2XDP_COMPAT_ATTACH={value}: expected none, native or generic")


@dataclass
class SeedFailure:
    seed: int
    ruleset: str
    comparison: harness.Comparison
    shrunk: Optional[str] = None
    shrunk_comparison: Optional[harness.Comparison] = None

    def report(self) -> str:
        lines = [f"seed {self.seed}: {len(self.comparison.disagreements)} disagreement(s)",
                 f"replay: IPT2XDP_COMPAT_SEED={self.seed} IPT2XDP_COMPAT_RULESETS=1", "",
                 self.comparison.report()]
        if self.shrunk_comparison is not None:
            lines += ["", "shrunk reproducer (same corpus):", self.shrunk_comparison.report()]
        return "\n".join(lines)


def check_seed(seed: int, attach: Optional[harness.Attach] = None, backends: Sequence[str] = ("legacy", "nft"),
               n_probes: int = 200, shrink: bool = True, forwarding: bool = False,
               nat: bool = False) -> Optional[SeedFailure]:
    """Run one seeded ruleset; None when every probe agrees, else the failure (shrunk if asked).

    forwarding: the receiver forwards to a third namespace, and the ruleset has FORWARD rules.
    nat: the ruleset has a nat table too (rulegen.generate_nat): the receiver is a NAT host.
    """
    generated = rulegen.generate(seed, forwarding=forwarding, nat=nat)
    text = rulegen.render(generated)
    corpus = packets.generate(text, n_probes, seed, forwarding=forwarding)
    cmp = harness.compare(text, corpus, backends, attach, forwarding=forwarding)
    if not cmp.disagreements and not any(r.observation.marker_lost for pair in cmp.runs for r in pair):
        return None
    failure = SeedFailure(seed, text, cmp)
    if shrink:
        failing = sorted({d.backend for d in cmp.disagreements}) or list(backends)

        def fails(candidate: str) -> bool:
            try:
                return bool(harness.compare(candidate, corpus, failing[:1], attach, forwarding=forwarding).disagreements)
            except harness.LoadError:
                return False

        small = rulegen.render(rulegen.shrink(generated, fails))
        failure.shrunk = small
        failure.shrunk_comparison = harness.compare(small, corpus, failing[:1], attach, forwarding=forwarding)
    return failure


def _worker(seeds: Sequence[int], attach_name: str, backends: Sequence[str], n_probes: int, out,
            forwarding: bool = False, nat: bool = False) -> None:
    from compat_tests import reuse

    try:
        attach = attach_from_env(attach_name)
        for seed in seeds:
            try:
                failure = check_seed(seed, attach, backends, n_probes, forwarding=forwarding, nat=nat)
                report = failure.report() if failure else None
                if report and forwarding:
                    report = "forwarding run (--forwarding / IPT2XDP_COMPAT_FORWARDING)\n" + report
                if report and nat:
                    report = "nat run (--nat / IPT2XDP_COMPAT_NAT)\n" + report
                out.put((seed, report))
            except Exception as error:  # a harness or import error fails the seed, not the whole run
                out.put((seed, f"seed {seed}: {type(error).__name__}: {error}"))
    finally:
        reuse.close_all()  # forked workers do not run atexit handlers
        out.put(None)


def run_seeds(seeds: Sequence[int], attach_name: str = "none", backends: Sequence[str] = ("legacy", "nft"),
              n_probes: int = 200, workers: Optional[int] = None, progress=None,
              forwarding: bool = False, nat: bool = False) -> List[str]:
    """Check seeds in `workers` processes; returns the failure reports in seed order.

    Why parallel: an import spends most of its time waiting for RCU grace periods (map-in-map
    updates), not on a CPU, so several workers overlap their waits. Runs stay exact: every worker
    has its own namespaces, and the exchange itself never depends on timing.
    """
    from compat_tests import reuse

    workers = max(1, min(workers or env_int("IPT2XDP_COMPAT_WORKERS", 4), len(seeds)))
    # Forked workers would inherit this process's kept receivers and share them (and delete them
    # when they finish): each worker makes its own.
    reuse.close_all()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(list(seeds[i::workers]), attach_name, tuple(backends), n_probes, out,
                                               forwarding, nat))
             for i in range(workers)]
    for proc in procs:
        proc.start()
    reports, seen, running = {}, set(), workers
    while running:
        item = out.get()
        if item is None:
            running -= 1
            continue
        seed, report = item
        seen.add(seed)
        if report:
            reports[seed] = report
        if progress:
            progress(seed, report, len(seen))
    for proc in procs:
        proc.join()
    for seed in set(seeds) - seen:  # a worker killed mid-run must not pass for a clean run
        reports[seed] = f"seed {seed}: never reported (worker died)"
    return [reports[s] for s in sorted(reports)]


def fast_path_seeds(seeds: Sequence[int], forwarding: bool = False, nat: bool = False) -> List[int]:
    """The seeds whose ruleset, planned for a receiver like the harness's, gets a fast path: the
    blocklist's (ipt2xdp/fastpath.py) or the exact-tuple one (ipt2xdp/tuplefast.py). Random
    rulesets rarely have one (about 1 in 7), so a run aimed at them picks them."""
    from ipt2xdp import hostinfo
    from ipt2xdp.compile import compile
    from ipt2xdp.errors import Ipt2xdpError
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan

    host = hostinfo.HostContext(devices=(hostinfo.Device("rcv0", 5, "veth"),), attached=("rcv0",),
                                forwarding=forwarding)
    out = []
    for seed in seeds:
        try:
            result = plan(parse(rulegen.render(rulegen.generate(seed, forwarding=forwarding, nat=nat)), "seed.rules"), host)
            fast = compile(result.rules, result.default, overflow="defer").fast_path
            if fast.plens or fast.shapes:
                out.append(seed)
        except Ipt2xdpError:
            continue
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The long run: `python -m compat_tests.differential --rulesets 2000 --attach native`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rulesets", type=int, default=env_int("IPT2XDP_COMPAT_RULESETS", 2000))
    parser.add_argument("--probes", type=int, default=env_int("IPT2XDP_COMPAT_PROBES", 200))
    parser.add_argument("--seed", type=int, default=env_int("IPT2XDP_COMPAT_SEED", 0))
    parser.add_argument("--attach", default=os.environ.get("IPT2XDP_COMPAT_ATTACH", "native"))
    parser.add_argument("--backends", default="legacy,nft")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--forwarding", action="store_true",
                        help="receiver forwards to a third namespace; rulesets get FORWARD rules")
    parser.add_argument("--nat", action="store_true",
                        help="rulesets get a nat table too (DNAT, REDIRECT, nat user chains, SNAT/MASQUERADE): "
                             "the receiver is a NAT host")
    parser.add_argument("--fast-path-only", action="store_true",
                        help="of the seeds, run only those whose plan has a fast path (blocklist or exact "
                             "tuple; about 1 in 7)")
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    seeds = range(args.seed, args.seed + args.rulesets)
    if args.fast_path_only:
        seeds = fast_path_seeds(seeds, args.forwarding, args.nat)
        print(f"{len(seeds)} of {args.rulesets} seeds have a fast path: {list(seeds)}", flush=True)
    start = time.monotonic()

    def progress(seed, report, done):
        if report:
            print(report, file=sys.stderr, flush=True)
        if done % 100 == 0:
            print(f"  {done}/{len(seeds)} rulesets, {time.monotonic() - start:.0f} s", flush=True)

    failures = len(run_seeds(seeds, args.attach, backends, args.probes, args.workers, progress, args.forwarding,
                             args.nat))
    elapsed = time.monotonic() - start
    print(f"{len(seeds)} rulesets x {args.probes} probes x {len(backends)} backends, attach={args.attach}, "
          f"forwarding={'on' if args.forwarding else 'off'}, nat={'on' if args.nat else 'off'}, "
          f"{args.workers or env_int('IPT2XDP_COMPAT_WORKERS', 4)} workers: {failures} failing seed(s), {elapsed:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    from ipt2xdp.netns import remove_stale_namespaces

    remove_stale_namespaces()
    sys.exit(main())
