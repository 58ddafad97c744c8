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
        # Debian's separate ip6tables group, as its postinst makes it
        subprocess.run(base + ["--install", str(sbin / "ip6tables"), "ip6tables", f"/usr/sbin/ip6tables-{backend}",
                               str(prio), "--slave", str(sbin / "ip6tables-restore"), "ip6tables-restore",
                               f"/usr/sbin/ip6tables-{backend}-restore", "--slave", str(sbin / "ip6tables-save"),
                               "ip6tables-save", f"/usr/sbin/ip6tables-{backend}-save"], check=True,
                       capture_output=True)
    opts = ["--altdir", str(alt), "--admindir", str(admin), "--log", str(tmp_path / "log"),
            "--wrapper-dir", str(bin_), "--state", str(tmp_path / "state.json")]

    def run(action, *extra):
        return subprocess.run([sys.executable, "-m", "ipt2xdp", "alternatives", action, *opts, *extra],
                              capture_output=True, text=True)

    def ua(*args):
        return subprocess.run(base + list(args), capture_output=True, text=True, check=True).stdout

    return run, ua, sbin, bin_, tmp_path


def test_install_points_all_names_at_the_launcher_and_remove_restores(world):
    from ipt2xdp import resources

    run, ua, sbin, bin_, tmp = world
    r = run("install")
    assert r.returncode == 0, r.stderr
    launcher = bin_ / "ipt2xdp-launch"
    assert launcher.read_bytes() == resources.launcher_path().read_bytes() and os.access(launcher, os.X_OK)
    for name in ("iptables", "iptables-save", "iptables-restore"):
        assert os.path.realpath(sbin / name) == str(launcher)
    state = json.loads((tmp / "state.json").read_text())
    assert state["backend"] == "nft" and state["previous_value"] == "/usr/sbin/iptables-nft"
    status = json.loads(run("status", "--json").stdout)
    assert status["installed"] and status["selected"] and status["launcher"]
    assert status["recorded"]["backend"] == "nft"
    assert run("install").returncode == 0  # idempotent
    r = run("remove")
    assert r.returncode == 0, r.stderr
    assert os.path.realpath(sbin / "iptables") == os.path.realpath("/usr/sbin/iptables-nft")
    assert os.readlink(os.readlink(sbin / "iptables-save")) == "/usr/sbin/iptables-nft-save"
    assert "ipt2xdp" not in ua("--query", "iptables")
    assert not (tmp / "state.json").exists() and not launcher.exists()


def test_no_launcher_registers_the_python_wrapper_and_install_swaps_it(world):
    run, ua, sbin, bin_, tmp = world
    ua("--set", "iptables", "/usr/sbin/iptables-legacy")
    assert run("install", "--no-launcher").returncode == 0
    for name in ("iptables", "iptables-save", "iptables-restore"):
        assert os.path.realpath(sbin / name) == str(bin_ / f"ipt2xdp-{name}")
    assert not json.loads(run("status", "--json").stdout)["launcher"]
    # Installed again without the option: the launcher replaces it, and what came before us stays recorded.
    r = run("install")
    assert r.returncode == 0, r.stderr
    assert os.path.realpath(sbin / "iptables-save") == str(bin_ / "ipt2xdp-launch")
    state = json.loads((tmp / "state.json").read_text())
    assert (state["backend"], state["previous_value"], state["previous_status"]) == \
        ("legacy", "/usr/sbin/iptables-legacy", "manual")
    assert ua("--query", "iptables").count("Alternative: ") == 3  # legacy, nft, ours: the Python one removed
    assert run("remove").returncode == 0
    assert os.readlink(os.readlink(sbin / "iptables")) == "/usr/sbin/iptables-legacy"
    assert "ipt2xdp" not in ua("--query", "iptables")


def test_a_manual_legacy_selection_is_recorded_and_restored(world):
    run, ua, sbin, bin_, tmp = world
    ua("--set", "iptables", "/usr/sbin/iptables-legacy")
    assert run("install").returncode == 0
    assert os.path.realpath(sbin / "iptables") == str(bin_ / "ipt2xdp-launch")
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


def ip6_links(sbin):
    return {name: os.readlink(os.readlink(sbin / name)) for name in ("ip6tables", "ip6tables-save", "ip6tables-restore")}


def test_debian_ip6tables_group_is_left_to_the_real_binaries(world):
    """Switching iptables to the wrapper leaves ip6tables (and its -save/-restore) on the real
    binaries, before, during and after; status shows where it points."""
    run, ua, sbin, bin_, tmp = world
    before, query_before = ip6_links(sbin), ua("--query", "ip6tables")
    assert before["ip6tables"] == "/usr/sbin/ip6tables-nft"
    r = run("install")
    assert r.returncode == 0, r.stderr
    assert "different backends" not in r.stdout  # same backend on both: nothing to note
    assert ip6_links(sbin) == before and ua("--query", "ip6tables") == query_before
    status = json.loads(run("status", "--json").stdout)
    assert status["ip6tables"] == {"value": "/usr/sbin/ip6tables-nft", "status": "auto", "backend": "nft",
                                   "wrapped": False}
    assert "ip6tables -> /usr/sbin/ip6tables-nft (auto); not wrapped" in run("status").stdout
    assert run("remove").returncode == 0
    assert ip6_links(sbin) == before and ua("--query", "ip6tables") == query_before


def test_ip6tables_on_another_backend_is_noted(world):
    run, ua, sbin, bin_, tmp = world
    ua("--set", "ip6tables", "/usr/sbin/ip6tables-legacy")
    r = run("install")
    assert r.returncode == 0, r.stderr
    assert "ip6tables runs ip6tables-legacy while iptables runs iptables-nft" in r.stdout
    assert "note: ip6tables runs ip6tables-legacy" in run("status").stdout
    assert os.readlink(os.readlink(sbin / "ip6tables")) == "/usr/sbin/ip6tables-legacy"
    assert run("remove").returncode == 0
    assert "Status: manual" in ua("--query", "ip6tables")
