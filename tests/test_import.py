# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp import` end to end in namespaces: the file becomes the ruleset in force, XDP drops what
it proves netfilter drops, accepted traffic reaches a socket, bad input changes nothing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ipt2xdp import netns

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "ipt2xdp" / "examples" / "server.rules"

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:BL - [0:0]
-A INPUT -j BL
-A INPUT -p udp -m udp --dport 9999 -j DROP
-A BL -s 203.0.113.0/24 -j DROP
COMMIT
"""


def ipt2xdp(ns, *args, input=None, backend="nft"):
    return ns.run(["env", f"IPT2XDP_BACKEND={backend}", sys.executable, "-m", "ipt2xdp", *args],
                  check=False, input=input)


def send_udp(pair, dport, count, src=None):
    script = ("from scapy.all import Ether, IP, UDP, Raw, sendp, conf\nimport sys\nconf.verb = 0\n"
              "f = Ether(dst=sys.argv[1]) / IP(src=sys.argv[2], dst=sys.argv[3]) / UDP(sport=4000, dport=int(sys.argv[4])) / Raw(b'x' * 8)\n"
              "sendp([f] * int(sys.argv[5]), iface=sys.argv[6])\n")
    mac = json.loads(pair.receiver.run(["ip", "-j", "link", "show", "dev", pair.receiver_if]).stdout)[0]["address"]
    pair.sender.run([sys.executable, "-c", script, mac, src or pair.sender_ip, pair.receiver_ip, str(dport),
                     str(count), pair.sender_if])


def saved(ns, tool="iptables-nft-save"):
    """The ruleset without the comment lines that carry a timestamp."""
    return "\n".join(l for l in ns.run([tool]).stdout.splitlines() if not l.startswith("#"))


def nft_counter(ns, chain, position):
    out = ns.run(["iptables-nft", "-L", chain, "-v", "-n", "-x"]).stdout.splitlines()
    return int(out[1 + position].split()[0])


@pytest.fixture
def pair():
    with netns.veth_pair() as p:
        yield p


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_import_makes_the_file_the_ruleset_in_force_and_drops_in_xdp(pair, tmp_path, mode):
    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    result = ipt2xdp(pair.receiver, "import", str(rules), "--iface", pair.receiver_if, "--mode", mode)
    assert result.returncode == 0, result.stderr
    assert f"{pair.receiver_if} ({mode})" in result.stdout
    saved = pair.receiver.run(["iptables-nft-save"]).stdout
    assert "-A BL -s 203.0.113.0/24 -j DROP" in saved and "--dport 9999 -j DROP" in saved

    send_udp(pair, 9999, 7)
    send_udp(pair, 7777, 3, src="203.0.113.5")
    status = json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)
    assert status["xdp_dropped_packets"] == 10
    rows = {(r["chain"], r["index"]): r["packets"] for r in status["rules"]}
    # -j BL counts all ten, as netfilter would: the 7 came back out of BL before INPUT #2 dropped them
    assert rows[("INPUT", 2)] == 7 and rows[("BL", 1)] == 3 and rows[("INPUT", 1)] == 10
    # netfilter never saw the dropped packets
    assert nft_counter(pair.receiver, "INPUT", 2) == 0
    assert nft_counter(pair.receiver, "BL", 1) == 0


_CHANGED_DURING_RESTORE = """
import subprocess, sys
from ipt2xdp import backend
from ipt2xdp.commands import import_
made = []
wait, prepared = backend.Restoring.wait, import_._Prepared.__init__
def wait_then_change(self):
    wait(self)  # another writer (Docker, fail2ban) adds a rule before the import reads back
    subprocess.run(["iptables-nft", "-w", "-A", "INPUT", "-s", "198.51.100.7", "-j", "DROP"], check=True)
def counted(self, *args, **kwargs):
    made.append(1)
    prepared(self, *args, **kwargs)
backend.Restoring.wait, import_._Prepared.__init__ = wait_then_change, counted
from ipt2xdp.cli import main
code = main(["import", sys.argv[1], "--iface", sys.argv[2]])
print("plans", len(made))
sys.exit(code)
"""


def test_the_plan_made_during_the_restore_is_loaded_only_for_the_ruleset_read_back(pair, tmp_path):
    """The import plans the file while iptables-restore runs; it must load that plan only if the
    kernel then holds the same ruleset. A rule another writer adds in between is in the plan."""
    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    plain = pair.receiver.run(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-c", _CHANGED_DURING_RESTORE.replace(
        "backend.Restoring.wait, import_._Prepared.__init__ = wait_then_change, counted",
        "import_._Prepared.__init__ = counted"), str(rules), pair.receiver_if], check=False)
    assert plain.returncode == 0, plain.stderr
    assert "plans 1" in plain.stdout  # the plan made ahead held: not planned twice
    changed = pair.receiver.run(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-c", _CHANGED_DURING_RESTORE,
                                 str(rules), pair.receiver_if], check=False)
    assert changed.returncode == 0, changed.stderr
    assert "plans 2" in changed.stdout  # planned again, from what the kernel held
    status = json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)
    assert status["drift"]["in_step"] is True, status["drift"]
    send_udp(pair, 7777, 4, src="198.51.100.7")
    status = json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)
    rows = {(r["chain"], r["index"]): r["packets"] for r in status["rules"]}
    assert rows[("INPUT", 3)] == 4, rows  # the added rule, decided in XDP
    assert nft_counter(pair.receiver, "INPUT", 3) == 0


_INTERRUPTED_WHILE_PLANNING = """
import sys
from ipt2xdp.commands import import_
def interrupted(*args, **kwargs):
    raise KeyboardInterrupt  # Ctrl-C while the file is planned and iptables-restore runs
import_._plan_ahead = interrupted
from ipt2xdp.cli import main
sys.exit(main(["import", sys.argv[1], "--iface", sys.argv[2]]))
"""


def test_an_import_interrupted_while_the_restore_runs_leaves_xdp_deferring(pair, tmp_path):
    """The restore goes on and commits; the plan in force before must not come back, as it drops
    what the new ruleset accepts (port 9999 here)."""
    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    assert ipt2xdp(pair.receiver, "import", str(rules), "--iface", pair.receiver_if).returncode == 0
    accepting = tmp_path / "accepting.v4"
    accepting.write_text(RULES.replace("-A INPUT -p udp -m udp --dport 9999 -j DROP\n", ""))
    done = pair.receiver.run(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-c", _INTERRUPTED_WHILE_PLANNING,
                              str(accepting), pair.receiver_if], check=False)
    assert done.returncode == 130, done.stderr
    assert "--dport 9999" not in saved(pair.receiver)  # the restore committed
    before = json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)
    assert before["deferring_all"], "the old plan (dropping port 9999) must not be back in force"
    send_udp(pair, 9999, 4)
    after = json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)
    assert after["xdp_dropped_packets"] == before["xdp_dropped_packets"]


def test_accepted_traffic_reaches_a_socket_and_detach_restores_netfilter_alone(pair, tmp_path):
    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    assert ipt2xdp(pair.receiver, "import", str(rules), "--iface", pair.receiver_if).returncode == 0
    listener = subprocess.Popen(pair.receiver.argv([sys.executable, "-c", (
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7777))\n"
        "s.settimeout(60)\nprint('bound', flush=True)\nprint(s.recvfrom(100)[0].decode(), flush=True)")]),
        stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline().strip() == "bound"  # a loaded machine can take seconds to start it
    send_udp(pair, 7777, 1)
    assert listener.communicate(timeout=70)[0].strip() == "x" * 8  # scapy alone can take 10 s to start when loaded

    assert ipt2xdp(pair.receiver, "detach", "--all").returncode == 0
    assert not json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)["loaded"]
    send_udp(pair, 9999, 4)
    assert nft_counter(pair.receiver, "INPUT", 2) == 4  # netfilter alone drops them now


def test_malformed_file_changes_nothing(pair, tmp_path):
    good = tmp_path / "good.v4"
    good.write_text(RULES)
    assert ipt2xdp(pair.receiver, "import", str(good), "--iface", pair.receiver_if).returncode == 0
    before_rules = saved(pair.receiver)
    before_gen = json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)["generation"]

    bad = tmp_path / "bad.v4"
    bad.write_text(RULES.replace("--dport 9999", "--dport 99999"))
    result = ipt2xdp(pair.receiver, "import", str(bad), "--iface", pair.receiver_if)
    assert result.returncode == 2
    assert f"{bad}:7:" in result.stderr and "Traceback" not in result.stderr
    assert saved(pair.receiver) == before_rules
    after = json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)
    assert after["generation"] == before_gen and not after["deferring_all"]


def test_restore_rejected_by_iptables_keeps_the_old_plan_in_force(pair, tmp_path):
    good = tmp_path / "good.v4"
    good.write_text(RULES)
    assert ipt2xdp(pair.receiver, "import", str(good), "--iface", pair.receiver_if).returncode == 0
    # Parses, but the kernel has no such match: only the real iptables-restore can tell.
    rejected = tmp_path / "rejected.v4"
    rejected.write_text(RULES.replace("-A INPUT -j BL", "-A INPUT -m nosuchmatch --foo 1 -j BL"))
    result = ipt2xdp(pair.receiver, "import", str(rejected), "--iface", pair.receiver_if)
    assert result.returncode == 2, result.stderr
    assert "iptables-nft-restore" in result.stderr
    status = json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)
    assert not status["deferring_all"] and status["generation"] == 1


def test_live_import_reads_netfilter_and_changes_nothing_there(pair):
    pair.receiver.run(["iptables-legacy-restore", "-w", "5"], input=RULES)
    before = saved(pair.receiver, "iptables-legacy-save")
    result = ipt2xdp(pair.receiver, "import", "--live", "--iface", pair.receiver_if, backend="legacy")
    assert result.returncode == 0, result.stderr
    assert saved(pair.receiver, "iptables-legacy-save") == before
    send_udp(pair, 9999, 5)
    assert json.loads(ipt2xdp(pair.receiver, "status", "--json", backend="legacy").stdout)["xdp_dropped_packets"] == 5


def test_dry_run_json_reports_every_rule_and_changes_nothing(pair):
    result = ipt2xdp(pair.receiver, "import", "--dry-run", "--json", str(EXAMPLE), "--iface", pair.receiver_if)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["decisions"]) == 17  # 16 rules and the INPUT policy
    assert {d["kind"] for d in report["decisions"]} <= {"xdp", "partial", "netfilter"}
    kinds = {(d["chain"], d["index"]): (d["kind"], d["code"]) for d in report["decisions"]}
    assert kinds[("BLOCKLIST", 1)] == ("xdp", "ok.drop")       # -s 203.0.113.0/24 -j DROP
    assert kinds[("INPUT", 1)] == ("netfilter", "iface.not-attached")  # -i lo
    assert kinds[("INPUT", 5)][0] == "netfilter"                # -m limit: netfilter decides
    assert all(d["why"] and d["code"] for d in report["decisions"])
    assert saved(pair.receiver).strip() == ""
    assert not json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)["loaded"]


def test_works_under_ip_netns_exec(pair, tmp_path):
    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    base = ["ip", "netns", "exec", pair.receiver.name, "env", "IPT2XDP_BACKEND=nft", sys.executable, "-m", "ipt2xdp"]
    first = subprocess.run(base + ["import", str(rules), "--iface", pair.receiver_if], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    status = subprocess.run(base + ["status", "--json"], capture_output=True, text=True)
    assert json.loads(status.stdout)["loaded"]
    # the plain nsenter view finds the same state
    assert json.loads(ipt2xdp(pair.receiver, "status", "--json").stdout)["generation"] == 1


def test_missing_device_is_a_clear_error(pair, tmp_path):
    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    result = ipt2xdp(pair.receiver, "import", str(rules), "--iface", "nosuchdev0")
    assert result.returncode == 2 and "no such device: nosuchdev0" in result.stderr
    assert saved(pair.receiver).strip() == ""
