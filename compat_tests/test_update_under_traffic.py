# SPDX-License-Identifier: GPL-2.0-only
"""Updates under traffic: while the sender streams probes that every version of the ruleset accepts,
`ipt2xdp import FILE` applies one version after another (defer everything, restore into netfilter,
re-plan, flip the generation). Not one probe may be lost, and none may arrive twice.

The versions (updates.py) change by adding, removing and moving rules, flipping the policy, adding
and removing user chains (jumps, gotos, RETURNs) and conntrack rules; probes are accepted by an
ACCEPT in front of DROPs that would take them, by conntrack state, by a user chain or by the policy.
A canary stream that many versions drop runs between the probes, so XDP has drops in force.

IPT2XDP_COMPAT_UPDATES sets how many imports in all, split over the legacy and nft backends (60 in
CI; `make compat-updates` runs 1,000: an import takes 1.5-2.3 s here, mostly RCU grace periods).
"""
import json
import statistics
import sys
import threading
import time

import pytest

from compat_tests import updates
from compat_tests.differential import env_int
from compat_tests.streams import STREAMS, ProbeStreams
from ipt2xdp import netns, pins
from ipt2xdp.dataplane import Dataplane

pytestmark = pytest.mark.kernel

UPDATES = env_int("IPT2XDP_COMPAT_UPDATES", 60)
SEED = env_int("IPT2XDP_COMPAT_SEED", 0)
# Probes of each stream that must be sent while one import runs. An import takes over a second and
# the sender sends a round every half millisecond, so this floor is far below what any import sees;
# it fails only if the stream stalled and an import's windows went untested.
MIN_PER_IMPORT = 50
RESTORE = {"legacy": "iptables-legacy-restore", "nft": "iptables-nft-restore"}


def _pair():
    pair = netns.veth_pair()
    pair.receiver.sh("sysctl -qw net.ipv4.icmp_ratemask=0 net.ipv4.icmp_ratelimit=0")
    return pair


def _xdp_stats(directory):
    """XDP's global counters (defer_all, classified, drop...) from the receiver's pinned maps."""
    dp = Dataplane.open_pinned(directory)
    assert dp is not None, f"nothing pinned in {directory}"
    try:
        return dp.read_stats()
    finally:
        dp.close()


def _import(pair, argv, attempts: int = 10) -> int:
    """Run the import; retry while the host's xtables lock is busy. Returns the number of retries.

    Legacy iptables serialises every namespace on /run/xtables.lock; other users of the machine (a
    long compat run) can hold it past ipt2xdp's 5 s wait, and the import then exits 4 with netfilter
    and XDP unchanged. A real administrator runs it again; so does this test, counting each retry.
    The probes stream on meanwhile and are checked all the same.
    """
    for retry in range(attempts):
        result = pair.receiver.run(argv, check=False)
        if result.returncode == 0:
            return retry
        if result.returncode != 4 or "xtables lock" not in result.stderr:
            break
    raise RuntimeError(f"{' '.join(argv)} failed with exit {result.returncode}: {result.stderr.strip()}")


def _names(pair):
    return {"S": pair.sender_ip, "NET": pair.sender_ip.rsplit(".", 1)[0] + ".0/24", "IF": pair.receiver_if}


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_the_versions_accept_the_probes_under_netfilter_alone(backend):
    """The generator's bookkeeping against the kernel: each version, restored with no XDP, delivers
    one probe of every stream, and delivers the canary exactly when the bookkeeping says so."""
    with _pair() as pair:
        names = _names(pair)
        streams = ProbeStreams(pair.sender.path, pair.receiver.path, pair.sender_ip, pair.receiver_ip)
        try:
            canary_dropped = 0
            for index, version in enumerate(updates.versions(SEED + 1, 100, names)):
                pair.receiver.run([RESTORE[backend], "-w"], input=version.render(names))
                if index == 0:
                    streams.prime()
                    streams.start_receiving()
                before = {s: streams.counts[s].received(streams.sent[s]) for s in STREAMS}
                streams.send_round()
                deadline = time.monotonic() + 2
                expected = {s: 1 for s in updates.PROBES}
                expected[updates.CANARY] = int(updates.verdict(version, updates.CANARY) == "ACCEPT")
                canary_dropped += 1 - expected[updates.CANARY]
                while True:
                    got = {s: streams.counts[s].received(streams.sent[s]) - before[s] for s in STREAMS}
                    if got == expected or time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                assert got == expected, f"version {index} ({version.changes}):\n{version.render(names)}"
            assert 10 <= canary_dropped <= 90, "the versions should drop the canary sometimes, not always"
        finally:
            streams.stop_receiving()
            streams.close()


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_no_probe_is_lost_while_the_ruleset_changes(tmp_path, backend):
    count = (UPDATES + (backend == "legacy")) // 2
    with _pair() as pair:
        names = _names(pair)
        chain = updates.versions(SEED + (backend == "nft"), count, names)
        coverage = updates.Coverage()
        path = tmp_path / "rules"
        argv = [sys.executable, "-m", "ipt2xdp", "import", str(path), "--iface", pair.receiver_if,
                "--mode", "native", "--backend", backend]
        first = next(chain)
        path.write_text(first.render(names))
        retries = _import(pair, argv)
        pinned = pins.pin_dir(netns=pins.netns_id_of(pair.receiver.path))
        streams = ProbeStreams(pair.sender.path, pair.receiver.path, pair.sender_ip, pair.receiver_ip)
        stop = threading.Event()

        def send():
            while not stop.is_set():
                streams.send_round()
                time.sleep(0.0005)

        sender = threading.Thread(target=send)
        per_import, seconds, deferred, classified = [], [], [], []
        try:
            streams.prime()
            streams.start_receiving()
            sender.start()
            last = _xdp_stats(pinned)
            for version in chain:
                text = version.render(names)
                coverage.add(version, text)
                path.write_text(text)
                before, start = dict(streams.sent), time.monotonic()
                retries += _import(pair, argv)
                seconds.append(time.monotonic() - start)
                per_import.append(min(streams.sent[s] - before[s] for s in updates.PROBES))
                # Since the previous import: packets XDP passed while this import had it deferring
                # everything, and packets the generation in force classified.
                now = _xdp_stats(pinned)
                deferred.append(now["defer_all"] - last["defer_all"])
                classified.append(now["classified"] - last["classified"])
                last = now
        finally:
            stop.set()
            if sender.is_alive():
                sender.join(timeout=10)
            streams.stop_receiving()
            streams.close()
        status = json.loads(pair.receiver.run([sys.executable, "-m", "ipt2xdp", "status", "--json"]).stdout)
        stats = status["stats"]
        sent = streams.sent
        summary = (f"{backend}: {count} imports ({statistics.median(seconds):.2f} s median, {max(seconds):.2f} s max, "
                   f"{retries} retried for a busy xtables lock); "
                   f"sent per stream {sent}; probes per import: min {min(per_import)}, median "
                   f"{statistics.median(per_import)}; per import, deferred while updating: min {min(deferred)}, "
                   f"median {statistics.median(deferred)}; classified by a generation: min {min(classified)}, "
                   f"median {statistics.median(classified)}; canary delivered "
                   f"{streams.counts['canary'].received(sent['canary'])}; XDP stats {stats}; "
                   f"versions: {coverage}")
        print(summary, flush=True)
        for name in updates.PROBES:
            lost = streams.counts[name].lost(sent[name])
            assert not lost, f"{name}: {len(lost)} of {sent[name]} probes lost, first {lost[:10]}\n{summary}"
            assert streams.counts[name].duplicated(sent[name]) == 0, f"{name}: duplicates\n{summary}"
        assert min(per_import) >= MIN_PER_IMPORT, f"the stream stalled during an import\n{summary}"
        # Every import's fail-open window and every generation in force saw probes.
        assert min(deferred) > 0 and min(classified) > 0, summary
        # The probes crossed deferring windows (fail-open during each import) and generations in force,
        # and XDP dropped traffic (the canary, when a version drops it) in between.
        assert stats["defer_all"] > 0 and stats["classified"] > 0 and stats["drop"] > 0, summary
        if count >= 30:
            assert 0 < coverage.canary_dropped < coverage.versions, summary
        if count >= 100:  # rare mutations (removing a user chain) need a few dozen versions to come up
            assert set(coverage.changes) == set(updates.MUTATIONS), summary
        if count >= 30:
            assert coverage.with_user_chains and coverage.with_conntrack and coverage.drop_policy, summary
