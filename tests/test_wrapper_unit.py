# SPDX-License-Identifier: GPL-2.0-only
"""The wrapper's pure parts: what a command line asks for, and counter rewriting in iptables' format."""
import pytest

from ipt2xdp.wrapper import cmdline, realbin, rewrite, route


@pytest.mark.parametrize("args, changing, read_only", [
    (["-w", "-C", "f2b-sshd", "-j", "RETURN"], False, True),
    (["-w", "-N", "f2b-sshd"], True, False),
    (["-w", "-I", "f2b-sshd", "1", "-s", "192.0.2.7", "-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
     True, False),
    (["-nvL"], False, True),
    (["-L", "INPUT", "-v", "-x", "--line-numbers"], False, True),
    (["-S", "-v"], False, True),
    (["--version"], False, True),
    (["-t", "nat", "-A", "PREROUTING", "-j", "DOCKER"], True, False),
    (["-t", "security", "-A", "INPUT", "-j", "ACCEPT"], False, False),
    (["--append", "INPUT", "-j", "ACCEPT"], True, False),
    (["-Z"], False, False),
    (["--bogus"], False, False),
    (["-A", "INPUT", "-m", "comment", "--comment", "-L", "-j", "ACCEPT"], True, False),
])
def test_classifies_commands(args, changing, read_only):
    cmd = cmdline.parse_iptables(args)
    assert cmd.changes_planned_tables is changing
    assert cmd.read_only is read_only


def test_listing_options_and_positionals():
    cmd = cmdline.parse_iptables(["-L", "INPUT", "3", "-v", "-n", "-x", "--line-numbers", "-w", "5"])
    assert (cmd.chain, cmd.rulenum, cmd.verbose, cmd.exact, cmd.line_numbers, cmd.wait) == ("INPUT", 3, True, True, True, 5.0)
    assert cmdline.parse_iptables(["-t", "raw", "-Z", "PREROUTING"]).table == "raw"
    assert cmdline.parse_iptables(["-Z", "INPUT", "2"]).rulenum == 2
    assert cmdline.parse_iptables(["-w"]).wait == 0.0


def test_save_and_restore_options():
    assert cmdline.parse_save(["-c"]).counters and cmdline.parse_save(["-t", "nat"]).table == "nat"
    assert cmdline.parse_restore(["-t"]).test and cmdline.parse_restore(["--test"]).test
    assert not cmdline.parse_restore(["-n", "-T", "filter"]).test
    assert cmdline.parse_restore(["-w", "3", "-n"]).wait == 3.0


def test_applet_name_drops_our_prefix():
    assert realbin.applet("/usr/sbin/ipt2xdp-iptables-save") == "iptables-save"
    assert realbin.applet("/usr/sbin/iptables") == "iptables"


@pytest.mark.parametrize("value, text", [
    (0, "    0 "), (99999, "99999 "), (100000, " 100K "), (1234567, "1235K "), (987654321, " 988M "),
    (123456789012, " 123G "), (9999499, "9999K "), (9999500, "  10M "),
])
def test_abbreviation_matches_xtables_print_num(value, text):
    assert rewrite.abbreviate(value) == text


EXACT = ("Chain INPUT (policy ACCEPT 5 packets, 100 bytes)\n"
         "num      pkts      bytes target     prot opt in     out     source               destination         \n"
         "1           0        0 DROP       17   --  *      *       0.0.0.0/0            0.0.0.0/0            udp dpt:99\n"
         "2           3      120 ACCEPT     0    --  *      *       0.0.0.0/0            0.0.0.0/0           \n")


def test_listing_adds_counts_exact_and_abbreviated():
    counts = {("filter", "INPUT", 1): (7, 294), ("filter", "INPUT", 0): (1, 1)}
    out = rewrite.listing(EXACT, counts, "filter", exact=True, line_numbers=True)
    assert out.splitlines()[0] == "Chain INPUT (policy ACCEPT 6 packets, 101 bytes)"
    assert out.splitlines()[2].startswith("1           7      294 DROP       17   --")
    assert out.splitlines()[3] == EXACT.splitlines()[3]
    short = rewrite.listing(EXACT, {("filter", "INPUT", 1): (200000, 0)}, "filter", exact=False, line_numbers=True)
    lines = short.splitlines()
    assert lines[1].startswith("num   pkts bytes target     prot")
    assert lines[2].startswith("1     200K     0 DROP       17")
    assert lines[3].startswith("2        3   120 ACCEPT")


def test_listing_of_one_rule():
    line = "       0        0 DROP       17   --  *      *       0.0.0.0/0            0.0.0.0/0            udp dpt:99\n"
    out = rewrite.listing(line, {("filter", "INPUT", 2): (4, 40)}, "filter", True, False, single=("INPUT", 2))
    assert out.startswith("       4       40 DROP")


def test_rules_and_save_add_counts():
    s = ('-P INPUT ACCEPT -c 1 2\n-A INPUT -p udp -m udp --dport 99 -c 0 0 -j DROP\n'
         '-A INPUT -m comment --comment "x -c 5 5" -c 3 4 -j LOG --log-prefix "a"\n')
    out = rewrite.rules(s, {("filter", "INPUT", 0): (1, 1), ("filter", "INPUT", 2): (1, 1)}, "filter", None, None)
    assert out.splitlines() == ["-P INPUT ACCEPT -c 2 3", s.splitlines()[1],
                                '-A INPUT -m comment --comment "x -c 5 5" -c 4 5 -j LOG --log-prefix "a"']
    saved = ("*filter\n:INPUT ACCEPT [1:2]\n:X - [0:0]\n[0:0] -A INPUT -j X\n[0:0] -A X -s 1.2.3.4/32 -j DROP\nCOMMIT\n")
    counts = {("filter", "INPUT", 1): (3, 30), ("filter", "X", 1): (3, 30), ("filter", "INPUT", 0): (2, 2)}
    assert rewrite.save(saved, counts) == ("*filter\n:INPUT ACCEPT [3:4]\n:X - [0:0]\n[3:30] -A INPUT -j X\n"
                                           "[3:30] -A X -s 1.2.3.4/32 -j DROP\nCOMMIT\n")
    plain = "*filter\n:INPUT ACCEPT [1:2]\n-A INPUT -j X\nCOMMIT\n"
    assert rewrite.save(plain, counts) == "*filter\n:INPUT ACCEPT [3:4]\n-A INPUT -j X\nCOMMIT\n"


@pytest.mark.parametrize("args", [
    ["-w", "-A", "INPUT", "-s", "192.0.2.1", "-j", "DROP"], ["-I", "INPUT", "3", "-j", "ACCEPT"],
    ["-t", "nat", "-D", "PREROUTING", "2"], ["-E", "OLD", "NEW"], ["-F"], ["-P", "FORWARD", "DROP"],
    ["-R", "INPUT", "1", "-j", "DROP"], ["-A", "INPUT", "-j", "DROP", "-D", "INPUT", "1"],
])
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_the_change_record_is_countmaps(args, backend):
    """The wrapper builds countmap.Change's JSON without importing countmap: it must be exactly
    what Change.to_json() gives for the same command (the watcher and the counts read it back)."""
    import json

    from ipt2xdp.wrapper.countmap import Change

    cmd = cmdline.parse_iptables(args)
    record = route.rule_change(cmd, backend)
    letters = sorted(cmd.commands & set("ADRINEPFX"))
    expected = Change(table=cmd.table, command=letters[0] if len(letters) == 1 else "", chain=cmd.chain,
                      rulenum=cmd.position, new_chain=cmd.new_chain, legacy=backend == "legacy")
    assert json.dumps(record) == json.dumps(expected.to_json())
    assert Change.from_json(json.loads(json.dumps(record))) == expected


@pytest.mark.parametrize("noflush", [False, True])
def test_the_restore_change_record_is_countmaps(noflush):
    import json

    from ipt2xdp import wrapper
    from ipt2xdp.wrapper.countmap import Change

    text = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT DROP [0:0]\n:BL - [0:0]\n-A BL -j DROP\nCOMMIT\n"
    cmd = cmdline.parse_restore(["--noflush"] if noflush else [])
    record = wrapper._restore_change(cmd, text, "nft")
    tables = frozenset({"nat", "filter"})
    chains = frozenset({("nat", "PREROUTING"), ("filter", "INPUT"), ("filter", "BL")})
    expected = Change(command="restore", touched_tables=tables, replaced_tables=frozenset() if noflush else tables,
                      set_chains=chains if noflush else frozenset())
    assert json.dumps(record) == json.dumps(expected.to_json())
    assert Change.from_json(json.loads(json.dumps(record))) == expected


# --- the lean start: what the wrapper reads without re, json or enum -----------------------------

def _wait_by_pattern(text: str) -> float:
    """_wait_value's definition, as it read before it was written out by hand."""
    import re

    match = re.match(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if not match:
        return 0.0
    digits = match.group(2)
    value = int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits, 8) if digits.startswith("0") else int(digits)
    return float(-value if match.group(1) == "-" else value)


def test_wait_values_are_read_as_the_pattern_reads_them():
    import random

    fixed = ["", "5", "1.5", "0.5", "0x10", "0X1f", "0x", "0xg", "010", "09", "08.5", " \t7", "\u20037", "-3", "+4",
             "- 5", "+-1", "--1", "0", "-0", "00", "٣", "12abc", "0x1G", "  0x", "\x1c9", "007", "9" * 30]
    rng = random.Random(7)
    alphabet = "0123456789xX+-. \tabfgAFG٣\u2003"
    texts = fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7))) for _ in range(5000)]
    for text in texts:
        assert cmdline._wait_value(text) == _wait_by_pattern(text), repr(text)


def test_change_records_encode_as_json_dumps_would():
    import json

    from ipt2xdp.wrapper import client

    records = [
        {"table": "filter", "command": "A", "chain": "INPUT", "rulenum": None, "new_chain": None, "legacy": False,
         "replaced_tables": [], "touched_tables": ["filter"], "set_chains": [["filter", "f2b-sshd"]],
         "args": ["-w", "-A", "INPUT", "-m", "comment", "--comment", 'a "quoted"\\ \n\ttab é ☃ \U0001f600',
                  "undecodable \udcff\udc80", "\x00\x1f\x7f"]},
        {"rulenum": -3, "big": 2 ** 70, "yes": True, "no": False, "nested": [[1, [2, []]], {}], "tuple": ("a", 1)},
        {}, [], "", 0,
    ]
    for record in records:
        assert client.compact_json(record) == json.dumps(record, separators=(",", ":"))
    with pytest.raises(TypeError):
        client.compact_json({"x": 1.5})


def test_the_recorded_backend_reads_as_json_loads_reads_it():
    import json

    texts = ['{"backend": "nft", "wrapper": "/usr/local/bin/ipt2xdp-iptables", "groups": {"iptables": [1, 2.5, null,'
             ' true, false, "\\u00e9\\ud83d\\ude00"]}}', ' {}\n', '[1, -2e3]', '"x"', '{"a": 1} x', '', 'junk', '{"a":}',
             '{"a": 1,}', '\t{"nested": {"deeper": [[], {}]}}\r\n', '{"a": "\\x"}', '1 2']
    for text in texts:
        try:
            expected = json.loads(text)
        except ValueError:
            with pytest.raises(ValueError):
                realbin.json_value(text)
        else:
            assert realbin.json_value(text) == expected, text


def test_the_wrapper_path_imports_no_re_json_or_enum():
    """What a wrapper call imports before it runs the real binary (pass-through and change alike):
    each of these costs every call a few ms, and fail2ban calls iptables hundreds of times."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from ipt2xdp.wrapper import cmdline, client, locate, realbin, sync\n"
            "from ipt2xdp import processexit\n"
            "cmdline.parse_iptables(['-w', '5', '-A', 'INPUT', '-s', '192.0.2.1', '-j', 'DROP'])\n"
            "client.compact_json({'args': ['-A', 'INPUT']}); realbin.json_value('{\"backend\": \"nft\"}')\n"
            "print(' '.join(sorted(m for m in ('re', 'json', 'enum', 'contextlib', 'signal', 'typing', 'subprocess',"
            " 'dataclasses', 'ctypes') if m in sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("name, args, loaded, kind", [
    ("iptables", ["-w", "-A", "INPUT", "-s", "192.0.2.1", "-j", "DROP"], True, route.CHANGE),
    ("iptables", ["-t", "nat", "-I", "PREROUTING", "-j", "ACCEPT"], True, route.CHANGE),
    ("iptables", ["-t", "security", "-A", "INPUT", "-j", "ACCEPT"], True, route.REAL),  # not planned
    ("iptables", ["-A", "INPUT", "-j", "DROP"], False, route.REAL),  # nothing loaded here
    ("iptables", ["-C", "INPUT", "-j", "DROP"], True, route.REAL),
    ("iptables", ["-L", "-n"], True, route.REAL),
    ("iptables", ["-L", "-v", "-n"], True, route.WRAPPER),  # XDP's counts to add: the Python wrapper
    ("iptables", ["-Z"], True, route.WRAPPER),
    ("iptables", ["--version"], True, route.REAL),
    ("iptables", ["--bogus"], True, route.REAL),
    ("ip6tables", ["-A", "INPUT", "-j", "DROP"], True, route.REAL),  # XDP passes IPv6
    ("iptables-save", ["-c"], True, route.WRAPPER),
    ("iptables-restore", ["--noflush"], True, route.WRAPPER),
    ("iptables-legacy-save", [], True, route.WRAPPER),
])
def test_what_the_watcher_tells_the_launcher(name, args, loaded, kind):
    """route.launched_call: the launcher execs the real tool, hands a change over, or runs the
    Python wrapper; asked whether anything is loaded only when it matters."""
    asked = []
    call = route.launched_call(name, list(args), "nft", lambda: asked.append(1) or loaded)
    assert call.kind == kind
    if kind == route.CHANGE:
        assert call.change["args"] == list(args) and call.change["legacy"] is False
    if args[:1] in (["-C"], ["--version"], ["--bogus"], ["-L"]) and "-v" not in args:
        assert not asked  # read-only: no need to look at the pins
