# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp explain --loaded` against the real thing: after an import in a namespace, for each
packet of a list, explain's verdict must be the verdict the loaded program gives the same packet
(BPF_PROG_TEST_RUN here, on frames built by scapy, not by explain), the verdicts must be the
ones worked out by hand, and what explain calls DROP must really be dropped in XDP when the packet
is sent over the veth (and what it calls PASS must not be)."""
import json
import re
import socket
import sys

import pytest

from tests.nsutil import inside, python_in

pytestmark = pytest.mark.kernel

RULES = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:BLOCK - [0:0]
:SERVICES - [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -j BLOCK
-A INPUT -j SERVICES
-A INPUT -p tcp -m tcp --dport 23 -j LOG --log-prefix "telnet "
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A BLOCK -s 10.1.99.0/24 -j RETURN
-A BLOCK -s 10.0.0.0/12 -j DROP
-A SERVICES -p tcp -m tcp --dport 22 -j ACCEPT
-A SERVICES -p udp -m udp --dport 53 -j ACCEPT
-A SERVICES -p tcp -m multiport --dports 8000:8100 -m conntrack --ctstate NEW -j ACCEPT
COMMIT
"""
OUT = "198.51.100.7"  # a source outside every blocked range
# (spec with S = sender, R = receiver; expected verdict, code, deciding rule)
PACKETS = [
    # a flow the receiver opened (conntrack has it): the spec says nothing, so explain models a
    # packet never seen (DROP) but compares with the program under the entry the kernel holds
    ("udp S:6000 > R:5000", "DROP", "ok.policy", "filter/INPUT#0"),
    ("tcp OUT:4242 > R:22", "PASS", "ok.accept", "filter/SERVICES#1"),
    ("tcp OUT:4242 > R:25", "DROP", "ok.policy", "filter/INPUT#0"),
    ("tcp OUT:4242 > R:25 flags A", "DROP", "ok.policy", "filter/INPUT#0"),
    ("tcp 10.1.2.3:4242 > R:22", "DROP", "ok.drop", "filter/BLOCK#2"),
    ("tcp 10.1.99.1:4242 > R:22", "PASS", "ok.accept", "filter/SERVICES#1"),
    ("tcp OUT:4242 > R:23", "PASS", "target.log", "filter/INPUT#5"),
    # a valid SYN without an entry is surely NEW (checksum verified in XDP); SYN+FIN surely INVALID
    ("tcp OUT:4242 > R:8050", "PASS", "ok.accept", "filter/SERVICES#3"),
    ("tcp OUT:4243 > R:8050 flags SF", "DROP", "ok.policy", "filter/INPUT#0"),  # not the tuple above
    ("udp OUT:5000 > R:53", "PASS", "ok.accept", "filter/SERVICES#2"),
    ("udp OUT:5000 > R:54", "DROP", "ok.policy", "filter/INPUT#0"),
    ("icmp OUT > R type echo-request", "PASS", "match.ctstate-unsure", "filter/INPUT#1"),
    ("gre OUT > R", "PASS", "match.ctstate-unsure", "filter/INPUT#1"),
    ("tcp OUT:4242 > 203.0.113.5:22", "PASS", "guard.not-local", "-"),
    ("udp OUT:5000 > R:54 frag first", "PASS", "packet.fragment", "-"),
]


def ipt2xdp(ns, *args):
    return ns.run(["env", "IPT2XDP_BACKEND=legacy", sys.executable, "-m", "ipt2xdp", *args], check=False)


def scapy_frame(spec, mac):
    """The packet of a spec, built by scapy (independently of explain's own frame builder)."""
    from scapy.all import ICMP, IP, TCP, UDP, Ether, raw

    m = re.fullmatch(r"(\w+) ([\d.]+)(?::(\d+))? > ([\d.]+)(?::(\d+))?(?: flags (\w+))?(?: type [\w-]+)?"
                     r"(?: frag (\w+))?", spec)
    proto, src, sport, dst, dport, flags, frag = m.groups()
    ip = IP(src=src, dst=dst, flags="MF" if frag else 0)
    if proto == "tcp":
        l4 = TCP(sport=int(sport), dport=int(dport), flags=flags or "S")
    elif proto == "udp":
        l4 = UDP(sport=int(sport), dport=int(dport)) / b"payload!"
    elif proto == "icmp":
        l4 = ICMP(type=8)
    else:
        ip.proto, l4 = 47, b"\0" * 20
    return raw(Ether(dst=mac) / ip / l4)


def label(rule):
    return f"{rule['table']}/{rule['chain']}#{rule['index']}" if rule else "-"


def test_explain_loaded_agrees_with_the_program_and_with_the_wire(pair, tmp_path):
    rx, tx = pair.receiver, pair.sender
    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    result = ipt2xdp(rx, "import", str(rules), "--iface", pair.receiver_if, "--mode", "native", "--backend", "legacy")
    assert result.returncode == 0, result.stderr

    def open_flow():
        """The flow of the first packet, opened by the receiver so that conntrack holds it (again
        before each phase: an unreplied UDP entry lives 30 s)."""
        with inside(rx):
            flow = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            flow.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            flow.bind((pair.receiver_ip, 5000))
        flow.sendto(b"open", (pair.sender_ip, 6000))
        flow.close()

    open_flow()

    specs = [p[0].replace("OUT", "198.51.100.7").replace("S:", pair.sender_ip + ":").replace("R:", pair.receiver_ip + ":")
             .replace("> R ", f"> {pair.receiver_ip} ").replace("> R", f"> {pair.receiver_ip}") for p in PACKETS]
    explained = []
    for spec, (_, verdict, code, rule) in zip(specs, PACKETS):
        out = ipt2xdp(rx, "explain", "--loaded", "--json", "--packet", spec)
        assert out.returncode == 0, f"{spec}: {out.stdout}{out.stderr}"
        document = json.loads(out.stdout)
        model = document["model"]
        assert (model["verdict"], model["code"], label(model["rule"])) == (verdict, code, rule), spec
        assert document["agree"] is True and document["program"] is not None
        explained.append(document)
    assert "model_under_kernel_conntrack" in explained[0]  # the flow is known: compared as FOUND
    assert explained[0]["model_under_kernel_conntrack"]["verdict"] == "PASS"
    assert all("model_under_kernel_conntrack" not in d for d in explained[1:])
    assert explained[4]["model"]["path"] == [{"table": "filter", "chain": "INPUT", "index": 3,
                                             "text": "-A INPUT -j BLOCK"}]
    # what the loaded program should do with the packet, conntrack as the kernel holds it now
    expected = [d.get("model_under_kernel_conntrack", d["model"])["verdict"] for d in explained]

    # the program itself on scapy's frames, arriving on the attached device
    link = rx.run(["ip", "-o", "link", "show", pair.receiver_if]).stdout
    ifindex, mac = int(link.split(":")[0]), re.search(r"link/ether (\S+)", link).group(1)
    frames = [scapy_frame(s, mac) for s in specs]
    code = (f"import json\nfrom ipt2xdp import pins\nfrom ipt2xdp.dataplane import Dataplane\n"
            f"dp = Dataplane.open_pinned(pins.pin_dir())\n"
            f"print(json.dumps([dp.test_run(bytes.fromhex(h), ingress_ifindex={ifindex})[0] "
            f"for h in {[f.hex() for f in frames]!r}]))")
    open_flow()
    retvals = json.loads(python_in(rx, code).stdout)
    assert ["DROP" if r == 1 else "PASS" for r in retvals] == expected

    # and on the wire: each packet sent over the veth is dropped in XDP exactly when explain says DROP
    def xdp_dropped():
        return json.loads(ipt2xdp(rx, "status", "--json").stdout)["xdp_dropped_packets"]

    dropped = xdp_dropped()

    open_flow()
    with inside(tx):
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sender.bind((pair.sender_if, 0))
    try:
        for spec, frame, verdict in zip(specs, frames, expected):
            for _ in range(3):
                sender.send(frame)
            before, dropped = dropped, xdp_dropped()
            assert dropped - before == (3 if verdict == "DROP" else 0), spec
    finally:
        sender.close()

    # the readable form says the same
    closed = specs[2]
    out = ipt2xdp(rx, "explain", "--loaded", "--packet", closed)
    assert out.returncode == 0, out.stderr
    assert "verdict:  DROP in XDP" in out.stdout and "rule:     filter/INPUT policy: -P INPUT DROP" in out.stdout
    assert "program:  DROP (BPF_PROG_TEST_RUN" in out.stdout and "agrees with the model" in out.stdout

    # a program that does not do what its stored plan says (simulated: maps of another ruleset
    # loaded under the same plan key) is reported loudly, with exit status 1
    lenient = RULES.replace("--dport 22 -j ACCEPT", "-m multiport --dports 22,25 -j ACCEPT")
    tamper = (f"from ipt2xdp import hostinfo, loader\nfrom ipt2xdp.compile import compile\n"
              f"from ipt2xdp.parse import parse\nfrom ipt2xdp.plan import plan\n"
              f"key = loader.status(include_counters=False)['ruleset']['source_digest']\n"
              f"p = plan(parse({lenient!r}), hostinfo.read_host_context(attached=[{pair.receiver_if!r}]))\n"
              f"loader.apply(compile(p.rules, p.default, overflow='defer'), source_digest=key)\n")
    python_in(rx, tamper)
    out = ipt2xdp(rx, "explain", "--loaded", "--packet", closed)
    assert out.returncode == 1
    assert "MODEL AND LOADED PROGRAM DISAGREE" in out.stdout and "verdict: model DROP, program PASS" in out.stdout
