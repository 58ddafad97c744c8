# SPDX-License-Identifier: GPL-2.0-only
"""The iptables drop-in in namespaces: fail2ban, Docker-like and ufw-like command sequences through
the wrapper (receiver namespace, XDP loaded) and through the real binary (sender namespace) give
the same stdout, stderr and exit code; after every command the XDP plan in force is the plan a
fresh `import --live` makes of the resulting ruleset; XDP's drops show in -L -v / -S -v / save -c."""
import json
import re
import sys
from pathlib import Path

import pytest

from ipt2xdp import netns

pytestmark = pytest.mark.kernel
BIN = Path(sys.executable).parent

F2B = "f2b-sshd"
REJECT = ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"]
MULTIPORT = ["-p", "tcp", "-m", "multiport", "--dports", "ssh", "-j", F2B]
FAIL2BAN = [
    # actionstart (iptables-multiport, iptables = "iptables -w")
    ["-w", "-C", F2B, "-j", "RETURN"], ["-w", "-N", F2B], ["-w", "-A", F2B, "-j", "RETURN"],
    ["-w", "-C", "INPUT"] + MULTIPORT, ["-w", "-I", "INPUT"] + MULTIPORT,
    ["-w", "-C", "INPUT"] + MULTIPORT,                                       # actioncheck
    ["-w", "-I", F2B, "1", "-s", "192.0.2.7"] + REJECT,                      # actionban
    ["-w", "-I", F2B, "1", "-s", "192.0.2.8", "-j", "DROP"],                 # ban, blocktype DROP
    ["-w", "-I", "INPUT", "-p", "tcp", "-j", F2B],                            # iptables-allports
    ["-w", "-I", "INPUT", "-p", "tcp", "--dport", "ssh", "-j", F2B],          # iptables (oneport)
    ["-w", "-I", "INPUT", "-p", "tcp", "-m", "set", "--match-set", "f2b-ips", "src"] + REJECT,  # ipset
    ["-w", "-D", F2B, "-s", "192.0.2.7"] + REJECT,                           # actionunban
    ["-w", "-D", F2B, "-s", "192.0.2.7"] + REJECT,                           # unban twice: rc 1
    ["-w", "-X", F2B],                                                       # still referenced
    ["-w", "-D", "INPUT"] + MULTIPORT, ["-w", "-D", "INPUT", "-p", "tcp", "-j", F2B],
    ["-w", "-D", "INPUT", "-p", "tcp", "--dport", "ssh", "-j", F2B],          # actionstop
    ["-w", "-D", "INPUT", "-p", "tcp", "-m", "set", "--match-set", "f2b-ips", "src"] + REJECT,
    ["-w", "-F", F2B], ["-w", "-X", F2B],
    ["-w", "-L", "-n"], ["-w", "-S"],
]
DOCKER = [
    ["-t", "nat", "-N", "DOCKER"], ["-t", "filter", "-N", "DOCKER"], ["-N", "DOCKER-USER"],
    ["-N", "DOCKER-ISOLATION-STAGE-1"], ["-A", "DOCKER-USER", "-j", "RETURN"],
    ["-t", "nat", "-C", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
    ["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
    ["-t", "nat", "-I", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"],
    ["-I", "FORWARD", "-j", "DOCKER-USER"],
    ["-A", "DOCKER", "-d", "172.17.0.2/32", "!", "-i", "docker0", "-o", "docker0", "-p", "tcp", "-m", "tcp",
     "--dport", "80", "-j", "ACCEPT"],
    ["-t", "nat", "-A", "DOCKER", "!", "-i", "docker0", "-p", "tcp", "-m", "tcp", "--dport", "8080",
     "-j", "DNAT", "--to-destination", "172.17.0.2:80"],
    ["-t", "nat", "-S"], ["-t", "nat", "-D", "DOCKER", "!", "-i", "docker0", "-p", "tcp", "-m", "tcp",
                          "--dport", "8080", "-j", "DNAT", "--to-destination", "172.17.0.2:80"],
]
UFW = [
    ["-N", "ufw-before-input"], ["-N", "ufw-user-input"], ["-A", "INPUT", "-j", "ufw-before-input"],
    ["-A", "ufw-before-input", "-i", "lo", "-j", "ACCEPT"],
    ["-A", "ufw-before-input", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
    ["-A", "ufw-before-input", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"],
    ["-A", "ufw-before-input", "-j", "ufw-user-input"],
    ["-A", "ufw-user-input", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
    ["-A", "ufw-user-input", "-p", "udp", "--dport", "9999", "-j", "DROP"],
    ["-P", "INPUT", "DROP"], ["-L", "ufw-user-input", "-n", "--line-numbers"], ["-P", "INPUT", "ACCEPT"],
]
BAD = [
    ["--bogus"], ["-A", "INPUT", "-p", "tcp", "--dport", "99999", "-j", "DROP"], ["-t", "foobar", "-L"],
    ["-A", "INPUT", "--dport", "22", "-j", "ACCEPT"], ["-N", "INPUT"], ["-D", "INPUT", "99"],
    ["-A", "INPUT", "-s", "1.2.3.4", "-s", "5.6.7.8"], ["-P", "NOPE", "DROP"], ["-A", "INPUT", "-m", "foobar"],
]
FRESH = """
import json, sys
from dataclasses import replace
from ipt2xdp import backend, ipsets, loader, planstore, report
from ipt2xdp.hostinfo import read_host_context
from ipt2xdp.parse import parse
from ipt2xdp.plan import plan
from ipt2xdp.render import render
st = loader.status()
devices = sorted(st["devices"])
rs = parse(backend.save(sys.argv[1]), "<live>")
host = read_host_context(attached=devices, backend=sys.argv[1])
if ipsets.referenced_sets(rs):  # as a fresh import reads them
    host = replace(host, ipsets=ipsets.read_sets(ipsets.referenced_sets(rs), ipsets.changed_by_rules(rs)))
fresh = report.decision_records(plan(rs, host))
key = st["ruleset"]["source_digest"]
print(json.dumps({"deferring": st["deferring_all"], "generation": st["generation"],
                  "key_matches": key == planstore.digest(render(rs.without_positions()), devices),
                  "same": (planstore.load_settled(key) or {}).get("decisions") == fresh}))
"""


def real(ns, backend, args, input=None):
    return ns.run(["bash", "-c", f'exec -a "$0" /usr/sbin/xtables-{backend}-multi "$@"', *args], check=False,
                  input=input)


def wrapped(ns, backend, tool, args, input=None):
    return ns.run(["env", f"IPT2XDP_BACKEND={backend}", str(BIN / f"ipt2xdp-{tool}"), *args], check=False,
                  input=input)


def in_step(ns, backend):
    out = ns.run([sys.executable, "-c", FRESH, backend]).stdout
    return json.loads(out)


@pytest.fixture(params=["nft", "legacy"])
def setup(request):
    backend = request.param
    with netns.veth_pair() as pair:
        for ns in (pair.sender, pair.receiver):
            if backend == "legacy":
                # Legacy iptables instantiates a table on first use, listing and -C included; start
                # with all four so a read-only command cannot change the ruleset text under the plan.
                for table in ("filter", "nat", "mangle", "raw"):
                    real(ns, backend, ["iptables", "-t", table, "-S"])
            ns.run(["ipset", "-exist", "create", "f2b-ips", "hash:ip", "timeout", "0", "maxelem", "65536"])
        r = pair.receiver.run(["env", f"IPT2XDP_BACKEND={backend}", sys.executable, "-m", "ipt2xdp", "import",
                               "--live", "--iface", pair.receiver_if], check=False)
        assert r.returncode == 0, r.stderr
        yield backend, pair


def replay(backend, pair, commands):
    for args in commands:
        want = real(pair.sender, backend, ["iptables", *args])
        got = wrapped(pair.receiver, backend, "iptables", args)
        assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr), args
        state = in_step(pair.receiver, backend)
        assert state == dict(state, deferring=False, key_matches=True, same=True), args
    strip = lambda text: re.sub(r"(?m)^#.*\n", "", text)  # timestamp comments
    want = real(pair.sender, backend, ["iptables-save"])
    got = wrapped(pair.receiver, backend, "iptables-save", [])
    assert (got.returncode, strip(got.stdout), got.stderr) == (want.returncode, strip(want.stdout), want.stderr)


@pytest.mark.parametrize("sequence", ["fail2ban", "docker", "ufw"])
def test_sequences_match_the_real_binary_and_keep_xdp_in_step(setup, sequence):
    backend, pair = setup
    replay(backend, pair, {"fail2ban": FAIL2BAN, "docker": DOCKER, "ufw": UFW}[sequence])


def test_bad_arguments_change_nothing(setup):
    backend, pair = setup
    before = in_step(pair.receiver, backend)["generation"]
    replay(backend, pair, BAD)
    assert in_step(pair.receiver, backend)["generation"] == before


def test_restore_through_the_wrapper(setup):
    backend, pair = setup
    rules = "*filter\n:INPUT ACCEPT [0:0]\n:BL - [0:0]\n-A INPUT -j BL\n-A BL -s 203.0.113.0/24 -j DROP\nCOMMIT\n"
    for args, text in ((["-n"], rules), ([], rules), (["--test"], rules), ([], rules.replace("COMMIT\n", "")),
                       ([], rules.replace("-j DROP", "-p tcp --dport 99999 -j DROP"))):
        want = real(pair.sender, backend, ["iptables-restore", *args], input=text)
        got = wrapped(pair.receiver, backend, "iptables-restore", args, input=text)
        assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr), args
        assert in_step(pair.receiver, backend) == dict(in_step(pair.receiver, backend), deferring=False,
                                                       key_matches=True, same=True)
    replay(backend, pair, [["-S"]])


def send_udp(pair, dport, count):
    script = ("from scapy.all import Ether, IP, UDP, Raw, sendp, conf\nimport sys\nconf.verb = 0\n"
              "f = Ether(dst=sys.argv[1]) / IP(src=sys.argv[2], dst=sys.argv[3]) / UDP(sport=4000, dport=int(sys.argv[4])) / Raw(b'x' * 8)\n"
              "sendp([f] * int(sys.argv[5]), iface=sys.argv[6])\n")
    mac = json.loads(pair.receiver.run(["ip", "-j", "link", "show", "dev", pair.receiver_if]).stdout)[0]["address"]
    pair.sender.run([sys.executable, "-c", script, mac, pair.sender_ip, pair.receiver_ip, str(dport), str(count),
                     pair.sender_if])


def test_xdp_drops_appear_in_listings_and_survive_changes_and_zero(setup):
    backend, pair = setup
    ns = pair.receiver
    for args in (["-N", "BL"], ["-A", "INPUT", "-j", "BL"], ["-A", "BL", "-p", "udp", "--dport", "9999", "-j", "DROP"]):
        assert wrapped(ns, backend, "iptables", args).returncode == 0
    send_udp(pair, 9999, 7)
    lines = wrapped(ns, backend, "iptables", ["-L", "BL", "-v", "-x", "-n"]).stdout.splitlines()
    assert lines[2].split()[0] == "7" and lines[2].split()[2] == "DROP"
    total = int(lines[2].split()[1])
    assert total == 7 * 36  # IP length, as netfilter counts: 20 IP + 8 UDP + 8 payload
    assert wrapped(ns, backend, "iptables", ["-L", "INPUT", "-v", "-n", "--line-numbers"]).stdout.splitlines()[2] \
        .split()[:4] == ["1", "7", str(total), "BL"]
    assert f"-c 7 {total} -j DROP" in wrapped(ns, backend, "iptables", ["-S", "BL", "-v"]).stdout
    assert f"[7:{total}] -A BL -p udp" in wrapped(ns, backend, "iptables-save", ["-c"]).stdout
    # netfilter itself never saw them
    assert real(ns, backend, ["iptables", "-L", "BL", "-v", "-x", "-n"]).stdout.splitlines()[2].split()[0] == "0"
    # a change through the wrapper carries the count to the rule's new position
    assert wrapped(ns, backend, "iptables", ["-I", "BL", "1", "-s", "198.51.100.1", "-j", "DROP"]).returncode == 0
    lines = wrapped(ns, backend, "iptables", ["-L", "BL", "-v", "-x", "-n"]).stdout.splitlines()
    assert lines[2].split()[0] == "0" and lines[3].split()[0] == "7"
    # -Z BL 2 zeroes that rule only
    assert wrapped(ns, backend, "iptables", ["-Z", "BL", "2"]).returncode == 0
    lines = wrapped(ns, backend, "iptables", ["-L", "-v", "-x", "-n"]).stdout.splitlines()
    assert lines[2].split()[0] == "7"
    assert wrapped(ns, backend, "iptables", ["-L", "BL", "-v", "-x", "-n"]).stdout.splitlines()[3].split()[0] == "0"


def test_concurrent_callers_lose_no_update(setup):
    import subprocess
    backend, pair = setup
    ns = pair.receiver
    procs = [subprocess.Popen(ns.argv(["env", f"IPT2XDP_BACKEND={backend}", str(BIN / "ipt2xdp-iptables"), "-w",
                                       "-A", "INPUT", "-s", f"198.51.100.{i}", "-j", "DROP"]))
             for i in range(1, 7)]
    assert [p.wait() for p in procs] == [0] * 6
    state = in_step(ns, backend)
    assert state == dict(state, deferring=False, key_matches=True, same=True)
    assert real(ns, backend, ["iptables", "-S", "INPUT"]).stdout.count("198.51.100.") == 6


def test_wait_gives_up_like_the_real_tool_when_the_wrapper_lock_is_busy(setup):
    """Legacy: -w 1 gives up with the real binary's words and exit 4 (tests/test_locking_kernel.py
    compares them with the real binary's); nft takes no lock and never fails for one, so the
    wrapper waits for its own lock there."""
    import fcntl
    import os
    import threading
    import time
    from ipt2xdp import pins
    backend, pair = setup
    path = f"/run/lock/ipt2xdp-wrapper-{pins.netns_id_of(pair.receiver.path)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    release = threading.Timer(1.5, os.close, (fd,))
    release.start()
    started = time.monotonic()
    try:
        got = wrapped(pair.receiver, backend, "iptables", ["-w", "1", "-A", "INPUT", "-j", "ACCEPT"])
    finally:
        release.join()
    listed = real(pair.receiver, backend, ["iptables", "-S"]).stdout
    if backend == "legacy":
        assert got.returncode == 4  # gave up: once the lock is released the command would succeed
        assert got.stderr == ("Can't lock /run/xtables.lock: Resource temporarily unavailable\n"
                              "Another app is currently holding the xtables lock. Stopped waiting after 1s.\n")
        assert "-A INPUT -j ACCEPT" not in listed
    else:
        assert (got.returncode, got.stderr) == (0, "") and time.monotonic() - started >= 1.4
        assert "-A INPUT -j ACCEPT" in listed
        state = in_step(pair.receiver, backend)
        assert state == dict(state, deferring=False, key_matches=True, same=True)
