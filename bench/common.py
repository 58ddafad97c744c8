# SPDX-License-Identifier: GPL-2.0-only
"""Shared pieces of the benchmarks: the stamp (kernel, CPU, commit, date), the bpf_stats sysctl
guard, medians and JSON output under bench/out/."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
PY = sys.executable


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def stamp() -> dict:
    return {"kernel": platform.release(), "cpu": cpu_model(), "ncpus": os.cpu_count(),
            "commit": measured_commit(), "ipt2xdp_tree": tree(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
            "loadavg": os.getloadavg()[0], "loadavg_1_5_15": os.getloadavg()}


SETTLE_IDLE, SETTLE_WINDOW, SETTLE_LIMIT = 0.8, 0.5, 30.0


def _cpu_times() -> tuple:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]  # all, idle + iowait


def settle(log=print) -> dict:
    """Wait until the CPUs are idle for one window (at most SETTLE_LIMIT s) before a section, so that
    CPU work the previous section left behind (a watcher stopping, namespaces torn down) is not
    timed with the next one. It does not cure the slower whole-CLI import right after e2e: there
    the CPUs were idle already (bench/__main__.py runs the control-plane sections first for that).
    Returns what it waited, for the section's stamp."""
    started = time.monotonic()
    share = 0.0
    while True:
        total, idle = _cpu_times()
        time.sleep(SETTLE_WINDOW)
        total2, idle2 = _cpu_times()
        share = (idle2 - idle) / max(1, total2 - total)
        waited = time.monotonic() - started
        if share >= SETTLE_IDLE or waited >= SETTLE_LIMIT:
            log(f"  settled: {share:.0%} idle after {waited:.1f} s")
            return {"settled_s": round(waited, 1), "idle_share": round(share, 2)}


def read_bpf_stats() -> str:
    with open(STATS_SYSCTL) as f:
        return f.read().strip()


@contextlib.contextmanager
def bpf_stats_off():
    """kernel.bpf_stats_enabled=0 while timing (it adds 20-45 ns per program run here), restored after.
    Nested uses (python -m bench around each benchmark's own guard) restore what the outer one set."""
    before = read_bpf_stats()
    with open(STATS_SYSCTL, "w") as f:
        f.write("0")
    try:
        yield before
    finally:
        with open(STATS_SYSCTL, "w") as f:
            f.write(before)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def write_json(name: str, data: dict, out: Path = OUT) -> Path:
    """bench/out/<name>-<time>.json and bench/out/<name>-latest.json (what RESULTS.md is built from)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime(f"{name}-%Y%m%dT%H%M%S.json")
    text = json.dumps(data, indent=2)
    path.write_text(text)
    (out / f"{name}-latest.json").write_text(text)
    return path


def read_latest(name: str, out: Path = OUT):
    path = out / f"{name}-latest.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


# --- which ipt2xdp is measured -------------------------------------------------------------------
# The work tree is shared and often mid-change (its BPF object may not load), so by default the
# benchmarks measure a snapshot of the committed HEAD (`git archive`, BPF object built there) and
# stamp that commit; `python -m bench --src tree` measures the work tree as it is.
TREE_ENV = "IPT2XDP_BENCH_TREE"


def tree() -> str:
    return os.environ.get(TREE_ENV) or str(ROOT)


def use_tree() -> str:
    """Put the measured ipt2xdp first on sys.path (and on PYTHONPATH for child processes)."""
    t = tree()
    for p in (str(ROOT), t):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    parts = [t, str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(":") if p and p not in (t, str(ROOT))]
    os.environ["PYTHONPATH"] = ":".join(parts)
    os.environ["PYTHONSAFEPATH"] = "1"  # `python -m` in a child must not put the cwd (the work tree) first
    return t


def snapshot_head() -> str:
    """Export HEAD's ipt2xdp/, bpf/, grammar/ and launcher/ to /tmp and build the BPF objects and the
    wrapper's native launcher there."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    dest = Path(f"/tmp/ipt2xdp-bench-{commit}")
    if not (dest / "bpf" / "ipt2xdp.bpf.o").exists() or not (dest / "launcher" / "ipt2xdp-launch").exists():
        dest.mkdir(parents=True, exist_ok=True)
        paths = [p for p in ("ipt2xdp", "bpf", "grammar", "launcher")
                 if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"HEAD:{p}"]).returncode == 0]
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", *paths], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        subprocess.run(["make", "-s", "-C", str(dest / "bpf")], check=True)
        if (dest / "launcher").is_dir():
            subprocess.run(["make", "-s", "-C", str(dest / "launcher")], check=True)
        # byte-compiled as an installed package is: with PYTHONDONTWRITEBYTECODE set (it is on this
        # machine) every wrapper process would otherwise compile the modules it imports (~150 ms)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "ipt2xdp")], check=True)
    os.environ[TREE_ENV] = str(dest)
    return str(dest)


def measured_commit() -> str:
    t = tree()
    if t != str(ROOT):
        return Path(t).name.replace("ipt2xdp-bench-", "") + " (HEAD snapshot)"
    return stamp_commit()


def stamp_commit() -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                            "ipt2xdp", "bpf"], capture_output=True, text=True).stdout.strip()
    return commit + ("+uncommitted ipt2xdp/bpf changes" if dirty else "")
