# SPDX-License-Identifier: GPL-2.0-only
"""A comment may hold any byte (-m comment stores what it was given, and iptables-save prints it
back): the CLI reads such a ruleset from a file or stdin, prints it back byte for byte, and plans
it; a file that is not a ruleset at all is a parse error with file, line and column, exit 2."""
import os
import subprocess
import sys

import pytest

RULES = (b"*filter\n:INPUT ACCEPT [0:0]\n"
         b"-A INPUT -s 192.0.2.1/32 -m comment --comment \"ban \xff\xfe\" -j DROP\nCOMMIT\n")


def ipt2xdp(*args, input=None):
    # As on a host whose locale makes Python's standard streams strict (en_US.UTF-8; C and
    # C.UTF-8 make them lenient already): the CLI must not depend on it.
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    return subprocess.run([sys.executable, "-m", "ipt2xdp", *args], input=input, capture_output=True, env=env)


def test_a_comment_of_any_bytes_is_read_printed_and_planned(tmp_path):
    path = tmp_path / "odd.rules"
    path.write_bytes(RULES)
    from_file, from_stdin = ipt2xdp("fmt", str(path)), ipt2xdp("fmt", "-", input=RULES)
    assert from_file.returncode == 0, from_file.stderr
    assert b'--comment "ban \xff\xfe"' in from_file.stdout and from_file.stdout == from_stdin.stdout
    report = ipt2xdp("import", "--dry-run", str(path))
    assert report.returncode == 0, report.stderr
    assert b"XDP decides 2" in report.stdout
    assert ipt2xdp("check", str(path)).returncode == 0


def test_a_binary_file_is_a_parse_error_with_its_position(tmp_path):
    path = tmp_path / "binary.rules"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xd0\n")
    result = ipt2xdp("check", str(path))
    assert result.returncode == 2
    assert f"{path}:1:1: error:".encode() in result.stderr and b"Traceback" not in result.stderr


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_a_live_ruleset_with_such_a_comment(backend):
    """Read from the kernel (python-iptables for legacy, iptables-nft-save for nf_tables): `fmt
    --live` prints what iptables-save prints, byte for byte, and `import --live --dry-run` plans it."""
    from ipt2xdp import netns

    with netns.veth_pair() as pair:
        ns = pair.receiver
        subprocess.run(ns.argv([f"iptables-{backend}", "-A", "INPUT", "-s", "192.0.2.1", "-m", "comment",
                                "--comment", b"ban \xff\xfe", "-j", "DROP"]), check=True)
        env = dict(os.environ, PYTHONIOENCODING="utf-8:strict", IPT2XDP_BACKEND=backend)
        printed = subprocess.run(ns.argv([sys.executable, "-m", "ipt2xdp", "fmt", "--live"]), capture_output=True,
                                 env=env)
        saved = subprocess.run(ns.argv([f"iptables-{backend}-save", "-t", "filter"]), capture_output=True, check=True)
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout == b"".join(line for line in saved.stdout.splitlines(keepends=True)
                                          if not line.startswith(b"#"))
        planned = subprocess.run(ns.argv([sys.executable, "-m", "ipt2xdp", "import", "--live", "--dry-run"]),
                                 capture_output=True, env=env)
        assert planned.returncode == 0 and b"XDP decides" in planned.stdout, planned.stderr
