# SPDX-License-Identifier: GPL-2.0-only
"""What one poll of `ipt2xdp watch`'s legacy trigger costs at 10k rules, against iptables-legacy-save.

    sudo .venv/bin/python -m bench.legacy_poll [--rules 10000]

Runs in a throwaway namespace; prints CPU and wall time per digest for a plain ruleset and for one
with a comment on every rule (256-byte match blobs: the largest tables per rule), and the wall time
of one iptables-legacy-save. The watcher's default interval (1 s) comes from these figures.
"""
from __future__ import annotations

import argparse
import sys

SCRIPT = r"""
import resource, subprocess, sys, time
rules, comment = int(sys.argv[1]), sys.argv[2] == "comment"
lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":BL - [0:0]",
         "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-A INPUT -j BL"]
for i in range(rules):
    lines.append(f"-A BL -s 10.{i // 250 % 250}.{i % 250}.0/24 -p tcp -m tcp --dport {1000 + i % 5000}"
                 + (f' -m comment --comment "rule {i}"' if comment else "") + " -j DROP")
lines.append("COMMIT")
subprocess.run(["iptables-legacy-restore"], input="\n".join(lines) + "\n", text=True, check=True)
from ipt2xdp.watch import legacydigest
first = legacydigest.digest()
before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(20):
    assert legacydigest.digest() == first
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 20 * 1000
wall = (time.perf_counter() - started) / 20 * 1000
started = time.perf_counter()
for _ in range(5):
    subprocess.run(["iptables-legacy-save"], capture_output=True, check=True)
save = (time.perf_counter() - started) / 5 * 1000
print(f"{rules} rules, {sys.argv[2]:7}: digest {cpu:5.1f} ms CPU, {wall:5.1f} ms wall; "
      f"iptables-legacy-save {save:5.1f} ms wall")
"""


def main() -> int:
    from ipt2xdp import netns

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=10000)
    args = parser.parse_args()
    for kind in ("plain", "comment"):
        ns = netns.create_namespace("poll")
        try:
            print(ns.run([sys.executable, "-c", SCRIPT, str(args.rules), kind]).stdout, end="")
        finally:
            netns.delete_namespace(ns.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
