# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp alternatives` against a private update-alternatives database: --altdir, --admindir and
--log in a temporary directory, links under a temporary sbin. The host's alternatives are never read
or written."""
import json
import os
import shutil
import subprocess
import sys

import pytest

UA = shutil.which("update-alternatives")
pytestmark = pytest.mark.skipif(UA is None or os.geteuid() != 0, reason="needs Debian's update-alternatives")


@pytest.fixture
def world(tmp_path):
    alt, admin, sbin, bin_ = (tmp_path / d for d in ("alt", "admin", "sbin", "bin"))
    for d in (alt, admin, sbin, bin_):
        d.mkdir()
    for name in ("iptables", "iptables-save", "iptables-restore"):
        (bin_ / f"ipt2xdp-{name}").write_text("#!/bin/sh\n")
    base = [UA, "--altdir", str(alt), "--admindir", str(admin), "--log", str(tmp_path / "log")]
    for backend, prio in (("legacy", 10), ("nft", 20)):  # Debian's postinst, with private link paths
        subprocess.run(base + ["--install", str(sbin / "iptables"), "iptables", f"/usr/sbin/iptables-{backend}",
                               str(prio), "--slave", str(sbin / "iptables-restore"), "iptables-restore",
                               f"/usr/sbin/iptables-{backend}-restore", "--slave", str(sbin / "iptables-save"),
                               "iptables-save", f"/usr/sbin/iptables-{backend}-save"], check=True,
                       capture_output=True)
    opts = ["--altdir", str(alt), "--admindir", str(admin), "--log", str(tmp_path / "log"),
            "--wrapper-dir", str(bin_), "--state", str(tmp_path / "state.json")]

    def run(action, *extra):
        return subprocess.run([sys.executable, "-m", "ipt2xdp", "alternatives", action, *opts, *extra],
                              capture_output=True, text=True)

    def ua(*args):
        return subprocess.run(base + list(args), capture_output=True, text=True, check=True).stdout

    return run, ua, sbin, bin_, tmp_path


def test_install_points_all_names_at_the_wrapper_and_remove_restores(world):
    run, ua, sbin, bin_, tmp = world
    r = run("install")
    assert r.returncode == 0, r.stderr
    for name in ("iptables", "iptables-save", "iptables-restore"):
        assert os.path.realpath(sbin / name) == str(bin_ / f"ipt2xdp-{name}")
    state = json.loads((tmp / "state.json").read_text())
    assert state["backend"] == "nft" and state["previous_value"] == "/usr/sbin/iptables-nft"
    status = json.loads(run("status", "--json").stdout)
    assert status["installed"] and status["selected"] and status["recorded"]["backend"] == "nft"
    assert run("install").returncode == 0  # idempotent
    r = run("remove")
    assert r.returncode == 0, r.stderr
    assert os.path.realpath(sbin / "iptables") == os.path.realpath("/usr/sbin/iptables-nft")
    assert os.readlink(os.readlink(sbin / "iptables-save")) == "/usr/sbin/iptables-nft-save"
    assert "ipt2xdp" not in ua("--query", "iptables")
    assert not (tmp / "state.json").exists()


def test_a_manual_legacy_selection_is_recorded_and_restored(world):
    run, ua, sbin, bin_, tmp = world
    ua("--set", "iptables", "/usr/sbin/iptables-legacy")
    assert run("install").returncode == 0
    assert os.path.realpath(sbin / "iptables") == str(bin_ / "ipt2xdp-iptables")
    assert json.loads((tmp / "state.json").read_text())["backend"] == "legacy"
    assert run("remove").returncode == 0
    assert os.readlink(os.readlink(sbin / "iptables")) == "/usr/sbin/iptables-legacy"
    assert "Status: manual" in ua("--query", "iptables")


def test_wrapper_runs_the_recorded_backend(tmp_path, monkeypatch):
    from ipt2xdp.wrapper import realbin

    state = tmp_path / "state.json"
    state.write_text(json.dumps({"backend": "legacy"}))
    monkeypatch.setattr(realbin, "STATE_FILE", str(state))
    monkeypatch.delenv("IPT2XDP_BACKEND", raising=False)
    assert realbin.backend() == "legacy"
    out = subprocess.run([sys.executable, "-c", "from ipt2xdp.wrapper import main; main(['ipt2xdp-iptables', '--version'])"],
                         env=dict(os.environ, IPT2XDP_ALT_STATE=str(state)), capture_output=True, text=True)
    assert out.stdout == "iptables v1.8.9 (legacy)\n"
