# SPDX-License-Identifier: GPL-2.0-only
"""Time ipt2xdp's parse and print of a 100,000-rule ruleset against `iptables-restore --test`.

Usage: sudo .venv/bin/python bench/parse_bench.py [RULES]   (root: iptables runs in a namespace)
Two rulesets: "blocklist" (the shape of real big rulesets: -s X -j DROP plus a few service rules)
and "mixed" (every rule different: ports, comments, multiport, conntrack, REJECT).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.common import stamp, use_tree  # noqa: E402

use_tree()

from ipt2xdp.netns import create_namespace, delete_namespace  # noqa: E402
from ipt2xdp.parse import lark_parser, parse  # noqa: E402
from ipt2xdp.render import render  # noqa: E402


def addr(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def blocklist(n: int) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    for i in range(n):
        if i % 100 == 0:
            lines.append(f"-A INPUT -p tcp -m tcp --dport {i % 65535 + 1} -j ACCEPT")
        else:
            lines.append(f"-A INPUT -s {addr(i)}/32 -j DROP")
    return "\n".join(lines + ["COMMIT"]) + "\n"


def mixed(n: int) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    for i in range(n):
        a, k = addr(i), i % 4
        if k == 0:
            lines.append(f"-A INPUT -s {a}/32 -p tcp -m tcp --dport {i % 65535 + 1} -j DROP")
        elif k == 1:
            lines.append(f'-A INPUT -s {a}/32 -p udp -m udp --sport 1024:65535 -m comment --comment "rule {i}" -j ACCEPT')
        elif k == 2:
            lines.append(f"-A INPUT -d {a}/32 -i eth0 -p tcp -m multiport --dports 80,443,8000:8080 "
                         "-m conntrack --ctstate NEW -j REJECT --reject-with icmp-port-unreachable")
        else:
            lines.append(f"-A INPUT -s {a}/32 -j DROP")
    return "\n".join(lines + ["COMMIT"]) + "\n"


def best_of(runs: int, fn):
    times = []
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def run(n: int = 100_000, repeats: int = 3, log=print) -> dict:
    start = time.perf_counter()
    lark_parser()
    grammar_load = time.perf_counter() - start
    log(f"  grammar load (once per process): {grammar_load * 1000:.0f} ms")
    res = {"meta": {**stamp(), "method": {"rules": n, "ipt2xdp": f"best of {repeats}",
                                          "iptables": "one run of `iptables-*-restore --test` in a private namespace",
                                          "roundtrip": "render(parse(x)) == x asserted"}},
           "grammar_s": grammar_load, "rulesets": {}}
    ns = create_namespace("bench") if os.geteuid() == 0 else None
    try:
        for name, make in (("blocklist", blocklist), ("mixed", mixed)):
            text = make(n)
            t_parse, ruleset = best_of(repeats, lambda: parse(text, name))
            t_render, out = best_of(repeats, lambda: render(ruleset))
            assert out == text, f"{name}: render(parse(x)) != x"
            row = {"rules": n, "mb": len(text) / 1e6, "parse_s": t_parse, "print_s": t_render}
            line = f"  {name:9s} {n} rules, {len(text) / 1e6:.1f} MB: parse {t_parse:.2f} s, print {t_render:.2f} s"
            for binary in ("iptables-legacy-restore", "iptables-nft-restore"):
                if ns is None:
                    continue
                t_ipt, result = best_of(1, lambda: ns.run([binary, "--test"], check=False, input=text))
                status = "" if result.returncode == 0 else f" (exit {result.returncode})"
                row[binary] = t_ipt if result.returncode == 0 else None
                line += f", {binary} --test {t_ipt:.2f} s{status}"
            res["rulesets"][name] = row
            log(line)
    finally:
        if ns is not None:
            delete_namespace(ns.name)
    return res


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    run(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
