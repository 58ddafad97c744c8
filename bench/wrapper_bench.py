# SPDX-License-Identifier: GPL-2.0-only
"""One rule change through ipt2xdp-iptables against the real binary, at N rules (default 10k).

Two namespaces hold the same N-rule filter table (restored with the real iptables-restore); in one
ipt2xdp is loaded on a veth. Each round appends and deletes one rule (`-A INPUT -s 192.0.2.1 -j
DROP`, then `-D` of it) with the real binary in the plain namespace and with the wrapper in the XDP
namespace (which defers, runs the real binary, re-plans from the kernel and flips). Also timed:
pass-through `-C` (read-only; exec()s the real binary) and `--version`. Wall time per call,
median of the rounds, process start included, as a caller like fail2ban sees it.

The change is timed through the wrapper, interleaved round by round with the real binary's
(the shared machine's load drifts; one minute's rounds are comparable): re-planning in its own
process, importing the planning stack first (`ipt2xdp watch` stopped and its socket hidden), and
served by the running watcher (the wrapper hands the defer and the re-plan to it over its socket),
twice: the first pair right after the in-process calls' flips (the watcher finds maps it did not
write in both slots: full writes), then a second pair (it rewrites the maps of its own flip before
last in place: the steady state of a watcher serving every call, dataplane.py). The watcher's
served count is checked and its own timing of each sync (read, parse, host facts, plan+flip) is
reported beside, for each of the two. Then the same pair through the native launcher (what
`ipt2xdp alternatives install` registers: launcher/launch.c, a copy beside the Python wrapper),
which hands the whole call to the watcher instead of starting Python; and `-C` and `--version`
through it with the watcher running (it answers "exec the real tool").

    sudo .venv/bin/python bench/wrapper_bench.py [--rules 10000] [--rounds 10] [--backend nft]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import stamp, use_tree  # noqa: E402

use_tree()

from ipt2xdp import netns, resources  # noqa: E402
from ipt2xdp.watch.warm import PREDICTION_IN_KERNEL  # noqa: E402

BIN = Path(sys.executable).parent


def ruleset(n: int) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    for i in range(n):
        lines.append(f"-A INPUT -s 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32 -p tcp -m tcp "
                     f"--dport {1 + i % 60000} -j DROP")
    return "\n".join(lines + ["COMMIT", ""])


def timed(ns, argv, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = subprocess.run(ns.argv(argv), capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode not in (0, 1):
            raise RuntimeError(f"{argv}: {result.stderr}")
    return statistics.median(times) * 1000


def change_pair(ns, argv0, rule):
    return [timed(ns, argv0 + ["-w", "-A", *rule], 1), timed(ns, argv0 + ["-w", "-D", *rule], 1)]


def by_operation(times: list) -> dict:
    """Medians of change_pair()s' times: both together ("change") and each operation alone. The two
    differ for the real iptables-nft at 10k rules (-A about 6 ms: it appends without reading the
    ruleset; -D about 80: it reads the whole ruleset to find the rule), so the pooled median falls
    between them and the added time is shown per operation too."""
    return {"change": statistics.median(times), "append": statistics.median(times[0::2]),
            "delete": statistics.median(times[1::2])}


SERVED = re.compile(r"served sync #\d+(?: in ([\d.]+) s)?: .*\(([\d.]+) s: (.*)\)$")
SOCKET = re.compile(r"serving wrapper calls on (\S+)")
REWRITTEN = re.compile(r"(\d+) of \d+ maps rewritten in place")


class Watch:
    """`ipt2xdp watch` running in ns. paused(): its socket renamed away and the process stopped, so
    wrapper calls re-plan in their own process as without a watcher, with nothing planning beside
    them; on resuming, it is left to settle (it re-reads the ruleset those calls changed)."""

    def __init__(self, ns, env):
        self.out = tempfile.NamedTemporaryFile("w+", prefix="ipt2xdp-bench-watch-")
        self.ns, self.env = ns, env
        self.proc = subprocess.Popen(ns.argv(env + [sys.executable, "-m", "ipt2xdp", "watch"]), stderr=self.out,
                                     stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while "change in start" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ipt2xdp watch did not start: {self.text()}")
            time.sleep(0.2)
        self.socket = SOCKET.search(self.text()).group(1)

    def text(self) -> str:
        return Path(self.out.name).read_text()

    @contextlib.contextmanager
    def paused(self):
        self.proc.send_signal(signal.SIGSTOP)
        os.rename(self.socket, self.socket + ".paused")
        try:
            yield
        finally:
            os.rename(self.socket + ".paused", self.socket)
            self.proc.send_signal(signal.SIGCONT)
        self.settle()

    def settle(self, quiet: float = 1.5, limit: float = 300) -> None:
        deadline, size, since = time.monotonic() + limit, -1, time.monotonic()
        while time.monotonic() < deadline:
            now = len(self.text())
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.1)

    def served(self) -> tuple:
        """(changes served, of them handed over by the native launcher)."""
        st = json.loads(self.ns.run(self.env + [sys.executable, "-m", "ipt2xdp", "status", "--json", "--no-drift"],
                                    check=False).stdout)
        watcher = st.get("watcher") or {}
        return watcher.get("served"), watcher.get("launched")

    def steps(self, keep=lambda index: True) -> dict:
        """The watcher's own timing of the syncs it served, median ms per step; keep(index) picks
        syncs by their order (0: the first served)."""
        steps = {}
        served = [m for m in map(SERVED.search, self.text().splitlines()) if m]
        for index, m in enumerate(served):
            if keep(index):
                if m.group(1):  # from "done" to the answer: the sync plus the triggers drained first
                    steps.setdefault("answered", []).append(float(m.group(1)) * 1000)
                steps.setdefault("total", []).append(float(m.group(2)) * 1000)
                rewritten = REWRITTEN.search(m.group(0))
                if rewritten:
                    steps.setdefault("maps rewritten", []).append(float(rewritten.group(1)))
                for part in m.group(3).split(", "):
                    name, value, _ms = part.rsplit(" ", 2)
                    steps.setdefault(name, []).append(float(value))
        return {k: statistics.median(v) for k, v in steps.items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.out.close()


def check_plain_start() -> None:
    """Refuse to time a venv whose Python start imports an editable install's hook (pip's finder:
    pathlib, re, fnmatch... about 17 ms of every wrapper call that no installed package pays)."""
    started = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True)
    if "__editable___" in started.stderr:
        raise RuntimeError(f"{sys.executable} imports an editable install's finder at start: reinstall with "
                           "`make venv` (editable_mode=compat) before timing the wrapper")


def run(rules: int = 10000, rounds: int = 10, backend: str = "nft", log=print) -> dict:
    check_plain_start()
    env = ["env", f"IPT2XDP_BACKEND={backend}"]
    res = {"meta": {**stamp(), "method": {
        "rules": rules, "rounds": rounds, "backend": backend,
        "change": "median wall ms of `-w -A INPUT -s 192.0.2.1 -j DROP` and the matching `-D`, per process "
                  "(Python start and nsenter included); real binary in a plain namespace, ipt2xdp-iptables "
                  "in a namespace with ipt2xdp imported (--live) on a veth",
        "check_version": "pass-through calls, median of rounds",
        "watch": "each round times the real binary, the wrapper re-planning in its own process (`ipt2xdp watch` "
                 "stopped, its socket hidden) and the wrapper served by the running watcher (served count "
                 "checked), one after the other; served twice: wrapper_watch_first right after the in-process "
                 "calls' flips (full map writes), wrapper_watch the pair after it (maps rewritten in place, "
                 "the steady state); watcher_ms(_first): the watcher's own timing of those syncs, median",
        "predict": "IPT2XDP_WATCH_PREDICT as the watcher had it (auto: it plans the predicted ruleset while the "
                   "real binary runs only while the 1-minute load is below the CPU count plus one); "
                   "predicted_plans_held: how many served syncs flipped to that plan; kernel_held: how many "
                   "of them took it without reading the ruleset back (the nf_tables generation told: "
                   "watch/holding.py); load: 1-minute load average before and after"},
        "predict": os.environ.get("IPT2XDP_WATCH_PREDICT", "auto"), "load": [os.getloadavg()[0]]}}
    with netns.veth_pair() as pair, tempfile.TemporaryDirectory(prefix="ipt2xdp-launcher-") as directory:
        launcher_dir = Path(directory)
        launcher_dir.chmod(0o755)
        shutil.copy(resources.launcher_path(), launcher_dir / "ipt2xdp-launch")
        (launcher_dir / "ipt2xdp-iptables").symlink_to(BIN / "ipt2xdp-iptables")
        (launcher_dir / "iptables").symlink_to(launcher_dir / "ipt2xdp-launch")
        plain, xdp = pair.sender, pair.receiver
        for ns in (plain, xdp):
            ns.run([f"iptables-{backend}-restore"], input=ruleset(rules))
        r = xdp.run(env + [sys.executable, "-m", "ipt2xdp", "import", "--live", "--iface", pair.receiver_if],
                    check=False)
        if r.returncode:
            raise RuntimeError(r.stderr)
        rule = ["INPUT", "-s", "192.0.2.1", "-j", "DROP"]
        real_bin, wrapper = [f"iptables-{backend}"], env + [str(BIN / "ipt2xdp-iptables")]
        launcher = env + [str(launcher_dir / "iptables")]
        times = {"real": [], "wrapper": [], "wrapper_watch_first": [], "wrapper_watch": [], "launched": []}
        watch = None
        try:
            watch = Watch(xdp, env)
            for _ in range(rounds):
                times["real"] += change_pair(plain, real_bin, rule)
                with watch.paused():
                    times["wrapper"] += change_pair(xdp, wrapper, rule)
                times["wrapper_watch_first"] += change_pair(xdp, wrapper, rule)
                times["wrapper_watch"] += change_pair(xdp, wrapper, rule)
                times["launched"] += change_pair(xdp, launcher, rule)
            served, launched = watch.served()
            if (served, launched) != (6 * rounds, 2 * rounds):
                raise RuntimeError(f"the watcher served {served} of {6 * rounds} changes, {launched} of "
                                   f"{2 * rounds} from the launcher: {watch.text()}")
            res["predicted_plans_held"] = watch.text().count("the predicted plan held")
            res["kernel_held"] = watch.text().count(PREDICTION_IN_KERNEL)
            res["meta"]["load"].append(os.getloadavg()[0])
            res["watcher_ms_first"] = watch.steps(lambda index: index % 6 < 2)
            res["watcher_ms"] = watch.steps(lambda index: 2 <= index % 6 < 4)
            res["watcher_ms_launched"] = watch.steps(lambda index: index % 6 >= 4)
            results = {who: by_operation(times[who]) for who in times}
            results["launched"].update(check=timed(xdp, launcher + ["-w", "-C", *rule], rounds),
                                       version=timed(xdp, launcher + ["--version"], rounds))
            with watch.paused():
                for who, ns, argv0 in (("real", plain, real_bin), ("wrapper", xdp, wrapper)):
                    results[who].update(check=timed(ns, argv0 + ["-w", "-C", *rule], rounds),
                                        version=timed(ns, argv0 + ["--version"], rounds))
        finally:
            if watch is not None:
                watch.stop()
            xdp.run(env + [sys.executable, "-m", "ipt2xdp", "detach", "--all"], check=False)
    res["ms"] = results
    log(f"  {rules} rules, backend {backend}, {rounds} rounds, median wall ms per call; load "
        + " -> ".join(f"{x:.1f}" for x in res["meta"]["load"]) + f"; watcher predicting: {res['meta']['predict']}, "
        f"{res['predicted_plans_held']} of {6 * rounds} served syncs flipped to the predicted plan, "
        f"{res['kernel_held']} of them without a read-back")
    log(f"  {'call':<26} {'real':>10} {'wrapper':>10} {'added':>10}")
    for key in ("change", "check", "version"):
        a, b = results["real"][key], results["wrapper"][key]
        log(f"  {key:<26} {a:>10.1f} {b:>10.1f} {b - a:>10.1f}")
    for key, label, steps in (("wrapper_watch_first", "change, served, first", "watcher_ms_first"),
                              ("wrapper_watch", "change, served, steady", "watcher_ms"),
                              ("launched", "change, launcher, served", "watcher_ms_launched")):
        for operation in ("change", "append", "delete"):
            a, b = results["real"][operation], results[key][operation]
            log(f"  {label if operation == 'change' else '  ' + operation:<26} {a:>10.1f} {b:>10.1f} {b - a:>10.1f}")
        log("    watcher's own timing of those syncs (median ms): "
            + ", ".join(f"{k} {v:.0f}" for k, v in res[steps].items()))
    for key in ("check", "version"):
        a, b = results["real"][key], results["launched"][key]
        log(f"  {key + ', launcher':<26} {a:>10.1f} {b:>10.1f} {b - a:>10.1f}")
    return res


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backend", default="nft", choices=("nft", "legacy"))
    parser.add_argument("--json", metavar="FILE", help="also write the result here")
    args = parser.parse_args()
    res = run(args.rules, args.rounds, args.backend)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
