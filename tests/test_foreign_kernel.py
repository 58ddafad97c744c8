# SPDX-License-Identifier: GPL-2.0-only
"""Hooks outside the planned ruleset, with real packets over veth between two namespaces.

The receiver plans from iptables-nft, whose filter/INPUT drops the UDP ports below. Something the
plan's text does not show acts first: a native nftables redirect or a counting chain, or
iptables-legacy's nat table. Each case measures the same traffic twice, with netfilter alone and
then with XDP attached, and requires the same fate (and the same nftables counter), while XDP
still drops the ports no such statement acts on. Controls: a
harmless native table (accept rules, an empty chain) leaves XDP dropping, seen by the real
iptables-nft DROP rule's counter staying still while nothing is delivered.
"""
import json
import re
import subprocess
import sys
import tempfile
import time

import pytest

from tests.nsutil import drain, send_udp, udp_receiver

pytestmark = pytest.mark.kernel
COUNT = 20


def cli(ns, *args, check=True):
    return ns.run(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-m", "ipt2xdp", *args], check=check)


def delivered(pair, port, listen_port=None) -> int:
    """UDP datagrams to `port` that reach a socket on listen_port (after any redirect)."""
    sock = udp_receiver(pair.receiver, listen_port or port)
    try:
        send_udp(pair.sender, pair.receiver_ip, port, COUNT)
        time.sleep(0.2)
        return drain(sock)
    finally:
        sock.close()


def drop_counter(pair, port) -> int:
    out = pair.receiver.run(["iptables-nft", "-L", "INPUT", "-v", "-n", "-x"]).stdout
    return int(next(line for line in out.splitlines() if f"dpt:{port}" in line).split()[0])


def nft_counter(pair, family, table, chain) -> int:
    out = pair.receiver.run(["nft", "list", "chain", family, table, chain]).stdout
    return int(re.search(r"counter packets (\d+)", out).group(1))


def drop_ports(pair, *ports):
    for port in ports:
        pair.receiver.run(["iptables-nft", "-A", "INPUT", "-p", "udp", "--dport", str(port), "-j", "DROP"])


def dry_run_notes(pair) -> list:
    return json.loads(cli(pair.receiver, "import", "--live", "--dry-run", "--json").stdout)["notes"]


def explain_loaded(pair, spec) -> dict:
    """explain --loaded: the model's verdict, checked against the loaded program's (agree)."""
    document = json.loads(cli(pair.receiver, "explain", "--loaded", "--json", "--packet", spec).stdout)
    assert document["agree"] is True, document
    return document


def attach(pair):
    cli(pair.receiver, "import", "--live", "--iface", pair.receiver_if)


def nft(pair, script):
    # nft wants a newline or ";" after a chain's closing brace before the table's
    pair.receiver.run(["nft", "-f", "-"], input=script.replace("} }", "}; }"))


def test_native_redirect_and_counter_keep_their_packets(pair):
    drop_ports(pair, 7001, 7002, 7009)
    nft(pair, """table ip natty { chain pre { type nat hook prerouting priority dstnat; policy accept;
                                                udp dport 7001 redirect to :7101; } }
                 table inet logger { chain in { type filter hook input priority -10; policy accept;
                                                udp dport 7002 counter; } }""")
    alone = (delivered(pair, 7001, 7101), delivered(pair, 7002), nft_counter(pair, "inet", "logger", "in"))
    assert alone == (COUNT, 0, COUNT)  # redirected past the DROP; counted, then dropped by filter/INPUT
    attach(pair)
    with_xdp = (delivered(pair, 7001, 7101), delivered(pair, 7002), nft_counter(pair, "inet", "logger", "in") - COUNT)
    assert with_xdp == alone
    # only the packets those statements may act on are deferred: XDP still drops port 7009
    before = drop_counter(pair, 7009)
    assert delivered(pair, 7009) == 0 and drop_counter(pair, 7009) == before
    notes = dry_run_notes(pair)
    assert any(n.startswith("foreign.nft:") and "table ip natty chain pre" in n for n in notes), notes
    spec = f"udp 198.51.100.7:1 > {pair.receiver_ip}:7002 iface {pair.receiver_if}"
    explained = explain_loaded(pair, spec)
    assert (explained["model"]["verdict"], explained["model"]["code"]) == ("PASS", "foreign.nft")


KUBE_PROXY = """table ip kube-proxy {{
    set nodeport-ips {{ type ipv4_addr; elements = {{ {ip} }}; }}
    map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; elements = {{ {ip} . udp . 7201 : goto service-a }}; }}
    map service-nodeports {{ type inet_proto . inet_service : verdict; elements = {{ udp . 7202 : goto service-b }}; }}
    map no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict;
        elements = {{ {ip} . udp . 7203 : goto reject-chain }}; }}
    chain filter-input {{ type filter hook input priority -110; policy accept; ct state new jump service-endpoints-check; }}
    chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}
    chain reject-chain {{ counter reject; }}
    chain service-endpoints-check {{ ip daddr . meta l4proto . th dport vmap @no-endpoint-services; }}
    chain services {{ ip daddr . meta l4proto . th dport vmap @service-ips;
        ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports; }}
    chain service-a {{ meta l4proto udp dnat to {ip}:7301; }}
    chain service-b {{ meta l4proto udp dnat to {ip}:7302; }}
}}
"""


def test_kube_proxy_nftables_services_keep_their_packets_and_xdp_drops_the_rest(pair):
    # kube-proxy's nftables layout: a service address and port DNATed (service-ips), a node port
    # (nodeport-ips . service-nodeports), a service without endpoints rejected before filter/INPUT.
    # XDP must leave exactly those to netfilter; before their maps bounded the effects, it
    # deferred every packet (7009 reached netfilter)
    drop_ports(pair, 7201, 7202, 7203, 7009)
    pair.receiver.run(["nft", "-f", "-"], input=KUBE_PROXY.format(ip=pair.receiver_ip))

    def fates():
        return (delivered(pair, 7201, 7301), delivered(pair, 7202, 7302), delivered(pair, 7203),
                nft_counter(pair, "ip", "kube-proxy", "reject-chain"))
    alone = fates()
    assert alone == (COUNT, COUNT, 0, COUNT)
    attach(pair)
    with_xdp = fates()
    assert with_xdp[:3] == alone[:3] and with_xdp[3] - alone[3] == COUNT
    before = drop_counter(pair, 7009)
    assert delivered(pair, 7009) == 0 and drop_counter(pair, 7009) == before  # dropped in XDP
    for port in (7201, 7202, 7203):
        spec = f"udp 198.51.100.7:1 > {pair.receiver_ip}:{port} iface {pair.receiver_if}"
        explained = explain_loaded(pair, spec)
        assert (explained["model"]["verdict"], explained["model"]["code"]) == ("PASS", "foreign.nft"), port


def test_harmless_native_table_leaves_offload_on(pair):
    drop_ports(pair, 7003)
    nft(pair, """table inet plain { chain pre { type filter hook prerouting priority -150; policy accept;
                                                 udp dport 7003 accept; ip saddr 192.0.2.1 drop; }
                                    chain empty_in { type filter hook input priority 0; policy accept; }
                                    chain late { type filter hook input priority 10; policy accept;
                                                 udp dport 7003 counter log; } }""")
    assert (delivered(pair, 7003), drop_counter(pair, 7003)) == (0, COUNT)  # netfilter alone drops
    attach(pair)
    assert (delivered(pair, 7003), drop_counter(pair, 7003)) == (0, COUNT)  # XDP dropped: the rule saw none
    assert not any(n.startswith("foreign.") for n in dry_run_notes(pair))


def test_legacy_nat_on_an_nft_host_keeps_its_packets(pair):
    drop_ports(pair, 7004, 7005)
    pair.receiver.run(["iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "7004",
                       "-j", "REDIRECT", "--to-ports", "7104"])
    alone = (delivered(pair, 7004, 7104), drop_counter(pair, 7005))
    delivered(pair, 7005)
    assert alone[0] == COUNT and drop_counter(pair, 7005) == COUNT
    attach(pair)
    assert delivered(pair, 7004, 7104) == COUNT   # the legacy REDIRECT still happens
    assert delivered(pair, 7005) == 0 and drop_counter(pair, 7005) == COUNT  # other ports: XDP drops
    notes = dry_run_notes(pair)
    assert any(n.startswith("foreign.legacy:") and "nat/PREROUTING #1" in n for n in notes), notes


def drift(pair):
    result = cli(pair.receiver, "status", "--json", check=False)
    return result.returncode, json.loads(result.stdout)["drift"]["host_changed"]


def wait_for_log(log, text, count):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and open(log.name).read().count(text) < count:
        time.sleep(0.1)
    assert open(log.name).read().count(text) >= count, open(log.name).read()


NATTY = """table ip natty { chain pre { type nat hook prerouting priority dstnat; policy accept;
                                     udp dport 7006 redirect to :7106; } }"""


def test_a_native_table_appearing_is_drift_and_watch_replans(pair):
    drop_ports(pair, 7006)
    attach(pair)
    assert drift(pair) == (0, False)
    nft(pair, NATTY)
    assert drift(pair) == (1, True)   # status: the host facts the plan was made from changed
    log = tempfile.NamedTemporaryFile("w+", prefix="ipt2xdp-watch-", suffix=".log")
    proc = subprocess.Popen(pair.receiver.argv(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-m", "ipt2xdp",
                                                "watch", "--trigger", "nftables"]),
                            stderr=log, stdout=subprocess.DEVNULL)
    spec = f"udp 198.51.100.7:1 > {pair.receiver_ip}:7006 iface {pair.receiver_if}"
    try:
        wait_for_log(log, "re-imported", 1)  # its first check finds the drift
        assert drift(pair) == (0, False)
        assert explain_loaded(pair, spec)["model"]["code"] == "foreign.nft"
        assert delivered(pair, 7006, 7106) == COUNT
        # notifications: the native table goes (XDP drops again), and comes back (XDP defers again)
        pair.receiver.run(["nft", "delete", "table", "ip", "natty"])
        wait_for_log(log, "re-imported", 2)
        assert explain_loaded(pair, spec)["model"]["verdict"] == "DROP"
        before = drop_counter(pair, 7006)
        assert delivered(pair, 7006) == 0 and drop_counter(pair, 7006) == before
        nft(pair, NATTY)
        wait_for_log(log, "re-imported", 3)
        assert delivered(pair, 7006, 7106) == COUNT
        assert explain_loaded(pair, spec)["model"]["code"] == "foreign.nft"
    finally:
        proc.kill()
        proc.wait()
        log.close()


# ------------------------------------------------- native tables changing around served wrapper calls
# The watcher lists only the nf_tables tables iptables-nft-save does not show (nftlist.py) and, on a
# wrapper's change, re-reads them only because an nf_tables notification arrived: a native table
# that appears (or goes) between two wrapper calls, or while one is applied, must still reach the
# plan the call flips to.

def wrapper(pair, *args, env=()):
    from tests.test_wrapper_kernel import BIN

    got = pair.receiver.run(["env", "IPT2XDP_BACKEND=nft", *env, str(BIN / "ipt2xdp-iptables"), "-w", *args],
                            check=False)
    assert (got.returncode, got.stderr) == (0, ""), (args, got.stderr)


def served(pair) -> int:
    return json.loads(cli(pair.receiver, "status", "--json", "--no-drift").stdout)["watcher"]["served"]


@pytest.fixture
def watched_nft(pair):
    from tests.nsutil import start_watch, stop_watch

    drop_ports(pair, 7006)
    attach(pair)
    proc, log = start_watch(pair.receiver, ready=(": in step", "re-imported"))
    try:
        yield pair, log
    finally:
        stop_watch(proc, log)


def assert_native_redirect_in_force(pair, spec):
    assert explain_loaded(pair, spec)["model"]["code"] == "foreign.nft"
    assert delivered(pair, 7006, 7106) == COUNT


def assert_xdp_drops_7006(pair, spec):
    assert explain_loaded(pair, spec)["model"]["verdict"] == "DROP"
    before = drop_counter(pair, 7006)
    assert delivered(pair, 7006) == 0 and drop_counter(pair, 7006) == before


def test_native_table_changed_between_served_wrapper_calls(watched_nft):
    from tests.test_wrapper_kernel import BIN

    pair, log = watched_nft
    spec = f"udp 198.51.100.7:1 > {pair.receiver_ip}:7006 iface {pair.receiver_if}"
    script = NATTY.replace("} }", "}; }")
    call = f"{BIN / 'ipt2xdp-iptables'} -w -A INPUT -s 192.0.2.{{}} -j DROP"
    # nft, then at once a wrapper call (within the watcher's debounce): its served sync drains the
    # notification and must list the new native table.
    pair.receiver.run(["env", "IPT2XDP_BACKEND=nft", "sh", "-c", f"nft -f - && {call.format(1)}"], input=script)
    assert served(pair) == 1, open(log.name).read()
    assert_native_redirect_in_force(pair, spec)
    pair.receiver.run(["env", "IPT2XDP_BACKEND=nft", "sh", "-c", f"nft delete table ip natty && {call.format(2)}"])
    assert served(pair) == 2, open(log.name).read()
    assert_xdp_drops_7006(pair, spec)
    # A wrapper call with no nf_tables change but its own leaves the (re-read) native facts alone.
    wrapper(pair, "-A", "INPUT", "-s", "192.0.2.3", "-j", "DROP")
    assert_xdp_drops_7006(pair, spec)


def test_native_table_changed_while_a_served_wrapper_change_is_applied(watched_nft, tmp_path):
    pair, log = watched_nft
    spec = f"udp 198.51.100.7:1 > {pair.receiver_ip}:7006 iface {pair.receiver_if}"
    script = tmp_path / "native.nft"
    # The "real binary" runs an nft script, then the real iptables-nft: the native change lands
    # between the watcher's "begin" (XDP deferring) and "done".
    fake = tmp_path / "xtables-nft-multi"
    fake.write_text(f"#!/bin/bash\nnft -f {script} || exit 99\n"
                    "exec -a iptables /usr/sbin/xtables-nft-multi \"$@\"\n")
    fake.chmod(0o755)
    for i, (nft_script, check) in enumerate([(NATTY.replace("} }", "}; }"), assert_native_redirect_in_force),
                                             ("delete table ip natty", assert_xdp_drops_7006),
                                             (NATTY.replace("} }", "}; }"), assert_native_redirect_in_force)], 1):
        script.write_text(nft_script + "\n")
        wrapper(pair, "-A", "INPUT", "-s", f"192.0.2.{10 + i}", "-j", "DROP", env=(f"IPT2XDP_SBIN={tmp_path}",))
        assert served(pair) == i, open(log.name).read()
        check(pair, spec)


def test_relevant_listing_judges_as_the_whole_ruleset(pair):
    """nftlist.list_relevant leaves out the tables iptables-nft-save shows (and ip6), and the chains
    judged as native are those of the whole `nft list ruleset`, planning from either backend: an
    ip table named like iptables-nft's but incompatible (a native mangle) stays native."""
    from ipt2xdp import backend, foreign, nftlist
    from ipt2xdp.parse import parse

    ns = pair.receiver
    ns.run(["iptables-nft-restore"], input="*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp --dport 5 -j DROP\n"
                                           "COMMIT\n*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
    ns.run(["iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "9", "-j", "REDIRECT",
            "--to-ports", "99"])
    ns.run(["nft", "-f", "-"], input="""
table inet fw { chain pre { type filter hook prerouting priority -150; policy accept; udp dport 7 counter; }; }
table ip6 six { chain pre { type filter hook prerouting priority -150; policy accept; counter; }; }
table ip mangle { chain PREROUTING { type filter hook prerouting priority -150; policy accept; numgen inc mod 2 0 counter; }; }
""")
    with ns.entered():
        assert set(nftlist.tables()) == {("ip", "filter"), ("ip", "raw"), ("inet", "fw"), ("ip6", "six"),
                                         ("ip", "mangle")}
        for planned, other in (("nft", ("nat",)), ("legacy", ("raw", "filter"))):
            names = [t.name for t in parse(backend.save(planned), "<live>").tables]
            whole = foreign.read_foreign(planned, nft=foreign.read_nft_json())  # the whole listing
            _, cheap = foreign.read_netfilter(planned, planned_tables=names)
            assert (cheap.other_text, cheap.other_tables, cheap.unreadable) == \
                (whole.other_text, other, whole.unreadable) and whole.other_text
            assert foreign.native_chains(cheap, names, cheap.other_tables) == \
                foreign.native_chains(whole, names, whole.other_tables)
            assert {(c.family, c.table) for c in cheap.native} == {("inet", "fw"), ("ip", "mangle")}
            assert {(c.family, c.table) for c in whole.native} >= {("ip", "filter"), ("ip", "raw")}


def test_native_table_changed_between_served_calls_planning_from_legacy(pair):
    """Planning from iptables-legacy, every foreign fact comes from nf_tables: a native table that
    appears or goes right before a served wrapper call (a legacy change) reaches its plan too."""
    from tests.nsutil import start_watch, stop_watch
    from tests.test_wrapper_kernel import BIN

    ns = pair.receiver
    env = ["env", "IPT2XDP_BACKEND=legacy"]
    ns.run(["iptables-legacy", "-A", "INPUT", "-p", "udp", "--dport", "7006", "-j", "DROP"])
    ns.run([*env, sys.executable, "-m", "ipt2xdp", "import", "--live", "--iface", pair.receiver_if])
    proc, log = start_watch(ns, ready=(": in step", "re-imported"))
    call = f"{BIN / 'ipt2xdp-iptables'} -w -A INPUT -s 192.0.2.{{}} -j DROP"
    try:
        ns.run([*env, "sh", "-c", f"nft -f - && {call.format(1)}"], input=NATTY.replace("} }", "}; }"))
        assert "served sync #1" in open(log.name).read()
        assert delivered(pair, 7006, 7106) == COUNT
        ns.run([*env, "sh", "-c", f"nft delete table ip natty && {call.format(2)}"])
        assert "served sync #2" in open(log.name).read()
        before = int(next(line for line in ns.run(["iptables-legacy", "-L", "INPUT", "-v", "-n", "-x"]).stdout
                          .splitlines() if "dpt:7006" in line).split()[0])
        assert delivered(pair, 7006) == 0
        after = int(next(line for line in ns.run(["iptables-legacy", "-L", "INPUT", "-v", "-n", "-x"]).stdout
                         .splitlines() if "dpt:7006" in line).split()[0])
        assert after == before  # dropped in XDP, not by netfilter
    finally:
        stop_watch(proc, log)
