# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp demo`: the main job on the bundled server ruleset, inside two throwaway namespaces.

It never touches the host's firewall or interfaces: a sender and a receiver namespace joined by veth
are created, the bundled ruleset goes into the receiver's netfilter through `ipt2xdp import`, traffic
is sent, the report and counters are printed, and both namespaces are deleted, also on failure.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "run ipt2xdp on a bundled server ruleset inside throwaway network namespaces"

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "server.rules"

# (description, scapy layers after IP(dst=receiver), source address or None for the sender's own, count)
TRAFFIC = (
    ("blocklisted network 203.0.113.0/24 -> tcp/80", "TCP(dport=80, flags='S')", "203.0.113.7", 40),
    ("blocklisted host 198.51.100.66 -> udp/53", "UDP(dport=53)/Raw(b'q')", "198.51.100.66", 40),
    ("192.0.2.200 -> ssh (blocked for ssh only)", "TCP(dport=22, flags='S')", "192.0.2.200", 40),
    ("telnet probes -> tcp/23", "TCP(dport=23, flags='S')", None, 20),
    ("SMB probes -> tcp/445", "TCP(dport=445, flags='S')", None, 20),
    ("SSDP -> udp/1900", "UDP(dport=1900)/Raw(b'M-SEARCH')", None, 40),
    ("ping (rate-limited: netfilter decides)", "ICMP()", None, 10),
    ("web -> tcp/443 (accepted)", "TCP(dport=443, flags='S')", None, 20),
    ("closed port -> tcp/8080 (policy DROP)", "TCP(dport=8080, flags='S')", None, 20),
)

SENDER = r"""
import json, sys
from scapy.all import Ether, IP, TCP, UDP, ICMP, Raw, sendp, conf
conf.verb = 0
spec = json.loads(sys.argv[1])
for description, layers, source, count in spec["traffic"]:
    ip = IP(src=source or spec["sender_ip"], dst=spec["receiver_ip"])
    frames = [Ether(dst=spec["receiver_mac"]) / ip / eval(layers)] * count
    sendp(frames, iface=spec["sender_if"])
"""


def add_arguments(parser):
    parser.add_argument("--mode", choices=("native", "generic", "auto"), default="native",
                        help="XDP attach mode on the receiver's veth (default: native)")
    parser.add_argument("--backend", choices=("legacy", "nft"), default="nft",
                        help="netfilter backend inside the demo namespace (default: nft)")


def _section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def _ipt2xdp(ns, *args, check=True):
    result = ns.run([sys.executable, "-m", "ipt2xdp", *args], check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ipt2xdp {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def run(args) -> int:
    from ipt2xdp import netns

    with netns.veth_pair() as pair:
        rcv = pair.receiver
        env_backend = f"IPT2XDP_BACKEND={args.backend}"
        print(f"sender   {pair.sender.name} {pair.sender_if} {pair.sender_ip}")
        print(f"receiver {rcv.name} {pair.receiver_if} {pair.receiver_ip}  (netfilter: {args.backend})")

        _section(f"ruleset ({EXAMPLE.name}), dry run: what XDP decides")
        print(rcv.run(["env", env_backend, sys.executable, "-m", "ipt2xdp", "import", "--dry-run",
                       str(EXAMPLE), "--iface", pair.receiver_if]).stdout, end="")

        _section("import: restore into netfilter, offload to XDP")
        out = rcv.run(["env", env_backend, sys.executable, "-m", "ipt2xdp", "import", str(EXAMPLE),
                       "--iface", pair.receiver_if, "--mode", args.mode])
        print(out.stdout + out.stderr, end="")

        mac = json.loads(rcv.run(["ip", "-j", "link", "show", "dev", pair.receiver_if]).stdout)[0]["address"]
        spec = {"traffic": TRAFFIC, "sender_ip": pair.sender_ip, "receiver_ip": pair.receiver_ip,
                "receiver_mac": mac, "sender_if": pair.sender_if}
        _section("traffic from the sender namespace")
        for description, _layers, _source, count in TRAFFIC:
            print(f"  {count:4d} x {description}")
        pair.sender.run([sys.executable, "-c", SENDER, json.dumps(spec)])

        _section("ipt2xdp status: per-rule XDP counters")
        status = _ipt2xdp(rcv, "status")
        print(status.stdout, end="")
        report = json.loads(_ipt2xdp(rcv, "status", "--json").stdout)

        _section(f"netfilter's own view (iptables-{args.backend} -L INPUT -v -n -x)")
        print(rcv.run([f"iptables-{args.backend}", "-L", "INPUT", "-v", "-n", "-x"]).stdout, end="")

        dropped = report.get("xdp_dropped_packets", 0)
        sent = sum(count for *_rest, count in TRAFFIC)
        _section("result")
        print(f"XDP dropped {dropped} of {sent} packets before netfilter saw them.")
        _ipt2xdp(rcv, "detach", "--all")
        print("detached; namespaces removed.")
    # A demo in which XDP dropped nothing means the data path is broken: say so with the exit code.
    return 0 if dropped > 0 else 1
