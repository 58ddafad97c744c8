# SPDX-License-Identifier: GPL-2.0-only
"""cProfile of the watcher's served sync (watch/warm.py) at N rules, in process.

A namespace pair, N rules restored with the real backend, ipt2xdp imported on the veth; then the
watcher's Warm.sync runs as it does for a wrapper's change (counts_pid set), the last of a few
changes profiled. Its own step timing (read, parse, host, plan+flip) is printed per sync.

    sudo .venv/bin/python bench/prof_sync.py nft|legacy [--rules 10000] [--top 45] [--sort tottime]
"""
import argparse
import cProfile
import os
import pstats
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.wrapper_bench import ruleset  # noqa: E402
from ipt2xdp import netns  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=("nft", "legacy"))
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--match", help="only functions whose file:line(name) matches this regular expression")
    args = parser.parse_args()
    backend = args.backend
    os.environ["IPT2XDP_BACKEND"] = backend
    from ipt2xdp.watch.triggers import NftTrigger, CounterTrigger
    from ipt2xdp.watch import legacydigest
    with netns.veth_pair() as pair:
        xdp = pair.receiver
        xdp.run([f"iptables-{backend}-restore"], input=ruleset(args.rules))
        r = xdp.run(["env", f"IPT2XDP_BACKEND={backend}", sys.executable, "-m", "ipt2xdp", "import", "--live",
                     "--iface", pair.receiver_if], check=False)
        assert r.returncode == 0, r.stderr
        with xdp.entered():
            from ipt2xdp.watch.warm import Warm, warm_up
            import types
            warm_up()
            trigger = NftTrigger() if backend == "nft" else CounterTrigger("legacy", legacydigest.digest, 1.0)
            w = Warm([])
            w.host_trigger = types.SimpleNamespace(messages=0)
            print(w.sync(backend, counts_pid=os.getpid()))
            profile = cProfile.Profile()
            for i in range(3):
                subprocess.run([f"iptables-{backend}", "-A", "INPUT", "-s", f"192.0.2.{i + 1}", "-j", "DROP"],
                               check=True)
                w.note(trigger.check())  # what the watcher's served sync drains first
                if i == 2:
                    profile.enable()
                print(w.sync(backend, counts_pid=os.getpid()))
            profile.disable()
            trigger.close()
            stats = pstats.Stats(profile).sort_stats(args.sort)
            stats.print_stats(*([args.match] if args.match else []), args.top)
        xdp.run([sys.executable, "-m", "ipt2xdp", "detach", "--all"], check=False)


if __name__ == "__main__":
    main()
