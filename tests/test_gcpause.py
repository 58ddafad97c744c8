# SPDX-License-Identifier: GPL-2.0-only
"""gcpause: the collector is back on after a pipeline run, except in a one-shot process, which
leaves through processexit.exit_now() with its output flushed and its exit code."""
import gc
import subprocess
import sys

from ipt2xdp import gcpause


def test_paused_turns_the_collector_back_on_and_nests():
    assert gc.isenabled()
    with gcpause.paused():
        assert not gc.isenabled()
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # only the outermost turns it back on
    assert gc.isenabled()


def test_a_one_shot_process_keeps_it_off_and_exits_with_its_output_and_code():
    script = ("import gc, sys\nfrom ipt2xdp import gcpause, processexit\nprocessexit.one_shot()\n"
              "with gcpause.paused():\n    pass\n"
              "print('collector', gc.isenabled(), end='')\nsys.stderr.write('to stderr')\n"
              "from ipt2xdp.processexit import exit_now\nexit_now(3)\nprint('not reached')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, "collector False", "to stderr")


def test_the_cli_exit_code_and_output_survive_the_fast_exit(tmp_path):
    bad = tmp_path / "bad.rules"
    bad.write_text("*filter\n-A INPUT -p tcp --dport 99999 -j DROP\nCOMMIT\n")
    done = subprocess.run([sys.executable, "-m", "ipt2xdp", "check", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    assert f"{bad}:2:" in done.stderr
    good = tmp_path / "good.rules"
    good.write_text("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j DROP\nCOMMIT\n")
    formatted = subprocess.run([sys.executable, "-m", "ipt2xdp", "fmt", str(good)], capture_output=True, text=True)
    assert formatted.returncode == 0 and "-A INPUT -p tcp -m tcp --dport 22 -j DROP" in formatted.stdout


def test_a_profiled_run_exits_the_usual_way_so_the_profile_is_written(tmp_path):
    out = tmp_path / "run.prof"
    rules = tmp_path / "r.rules"
    rules.write_text("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "ipt2xdp", "check", str(rules)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0
