# SPDX-License-Identifier: GPL-2.0-only
"""Smoke test of `python -m bench`: its smallest slice (--smoke) runs every benchmark and writes JSON
with every section and positive numbers. Not a timed assertion: the figures are not checked."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.kernel


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
    configs = data["e2e"]["configs"]
    for name in ("none", "empty_drop", "ipt2xdp-10", "legacy-10", "nft-10", "ipset-100", "nftset-100",
                 "ipt2xdp-bl-100", "xdpfilter-bl-100"):
        assert configs[name]["rx_pps"] > 0, name
    for x in data["control"]["sizes"].values():
        assert x["cli_s"] > 0 and x["api_s"]["total"] > 0 and x["map_bytes_memlock"] > 0
    assert all(v > 0 for side in data["wrapper"]["ms"].values() for v in side.values())
    assert all(r["parse_s"] > 0 for r in data["parse"]["rulesets"].values())
    # and the report renders from it
    sys.path.insert(0, str(ROOT))
    from bench import report
    text = report.render(tmp_path)
    assert "## Targets" in text and "## End to end" in text
