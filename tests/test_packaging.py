# SPDX-License-Identifier: GPL-2.0-only
"""The wheel carries the grammar and the compiled BPF objects, so an installed ipt2xdp needs no build."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_grammar_and_bpf_object(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("ipt2xdp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "ipt2xdp/_data/ipt2xdp.bpf.o" in names
    assert "ipt2xdp/_data/empty_drop.bpf.o" in names
    for grammar in (ROOT / "grammar").glob("*.lark"):
        assert f"ipt2xdp/_data/{grammar.name}" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    # The native launcher `ipt2xdp alternatives install` puts behind the iptables names: built, executable.
    launcher = zipfile.ZipFile(wheel).getinfo("ipt2xdp/_data/ipt2xdp-launch")
    assert zipfile.ZipFile(wheel).read(launcher).startswith(b"\x7fELF") and (launcher.external_attr >> 16) & 0o111
    # The wrapper's launchers: plain scripts (pip writes the interpreter into "#!python" on install)
    # that import the wrapper alone, not console_scripts launchers (those import re on every call).
    for tool in ("ipt2xdp-iptables", "ipt2xdp-iptables-save", "ipt2xdp-iptables-restore"):
        (script,) = [n for n in names if n.endswith(f".data/scripts/{tool}")]
        text = zipfile.ZipFile(wheel).read(script).decode()
        assert text.startswith("#!python\n") and "from ipt2xdp.wrapper import entry" in text
        assert "import re" not in text
    for unit in ("ipt2xdp-boot.service", "ipt2xdp-watch.service", "ipt2xdp-watch@.service"):
        assert f"ipt2xdp/systemd/{unit}" in names


def test_cli_help_and_unknown_option_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "ipt2xdp", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "import" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "ipt2xdp", "--bogus"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--bogus" in bad.stderr and "Traceback" not in bad.stderr
