# SPDX-License-Identifier: GPL-2.0-only
"""Smoke tests of bench/: the live-frames generator delivers what it sends (the receiver's own
counters see every frame, and the filter under test drops them), and `python -m bench --smoke` runs
every benchmark and writes JSON with every section and positive numbers. Not timed assertions: the
figures are not checked."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.kernel


PROBE_FRAMES = 4096


@pytest.fixture(scope="module")
def e2e():
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONSAFEPATH")}
    sys.path.insert(0, str(ROOT))
    from bench import e2e as module  # its import points PYTHONPATH at the measured tree
    yield module
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.parametrize("kind,size,counted_at", [("none", 0, "stack"), ("empty_drop", 0, "xdp"),
                                                  ("legacy", 10, "iptables-legacy"), ("nftset", 100, "nft")])
def test_live_generator_frames_reach_the_receiver(e2e, kind, size, counted_at):
    from bench import receiver
    from ipt2xdp import netns
    cpu = max(os.sched_getaffinity(0))
    with netns.veth_pair() as pair:
        receiver.prepare_receiver(pair, e2e.SRC)
        counter = e2e.setup(kind, size, pair)
        assert counter == counted_at
        before = receiver.read_counters(pair, counter)
        gen = e2e.generate(pair, receiver.link_mac(pair.receiver, pair.receiver_if), cpu, "live", frames=PROBE_FRAMES)
        after = receiver.read_counters(pair, counter)
    assert gen["sent"] == PROBE_FRAMES and gen["busy_seconds"] > 0
    # the generator's veth adds the odd IPv6 router solicitation, which XDP_DROP counts as well
    arrived, dropped = after["rx"] - before["rx"], receiver.dropped(counter, before, after)
    assert PROBE_FRAMES <= arrived <= PROBE_FRAMES + 10, arrived
    assert PROBE_FRAMES <= dropped <= arrived, (dropped, arrived)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_bench_smoke(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--no-results", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = {name: json.loads((tmp_path / f"{name}-latest.json").read_text())
            for name in ("prog_run", "e2e", "control", "wrapper", "parse")}
    for d in data.values():
        assert {"kernel", "cpu", "commit", "date"} <= set(d["meta"])
    runs = data["prog_run"]["runs"]
    assert runs and all(v > 0 for r in runs for v in r["ns"].values())
    for d in data.values():
        assert d["meta"]["bpf_stats_enabled"]["during"] == "0"
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        assert f.read().strip() == data["e2e"]["meta"]["bpf_stats_enabled"]["before_run"]
    e2e = data["e2e"]
    assert e2e["meta"]["method"]["generator_kind"] == "live", e2e["meta"]["method"]["fallback_reason"]
    configs = e2e["configs"]
    for name in ("none", "empty_drop", "ipt2xdp-10", "legacy-10", "nft-10", "ipset-100", "nftset-100",
                 "ipt2xdp-bl-100", "xdpfilter-bl-100"):
        assert configs[name]["rx_pps"] > 0, name
        assert configs[name]["arrived_fraction"] >= 0.99 and configs[name]["dropped_fraction"] >= 0.99, name
    for x in data["control"]["sizes"].values():
        assert x["cli_s"] > 0 and x["api_s"]["total"] > 0 and x["map_bytes_memlock"] > 0
    assert all(v > 0 for side in data["wrapper"]["ms"].values() for v in side.values())
    assert all(r["parse_s"] > 0 for r in data["parse"]["rulesets"].values())
    # and the report renders from it
    sys.path.insert(0, str(ROOT))
    from bench import report
    text = report.render(tmp_path, plot_dir=tmp_path)  # not over the committed bench/*.png
    assert "## Targets" in text and "## End to end" in text
    for png in ("prog_run.png", "e2e.png", "control.png"):
        assert (tmp_path / png).stat().st_size > 0 and f"]({png})" in text
