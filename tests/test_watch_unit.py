# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp watch` without the kernel: the loop's order (defer at once, re-import after the burst,
retry with backoff), trigger plumbing (nf_tables message decoding, counters, plug-ins), the -w
parser, and the systemd units (rendered, then checked by systemd-analyze verify)."""
import os
import shutil
import struct
import subprocess
import sys

import pytest

from ipt2xdp.watch import service, triggers
from ipt2xdp.watch.triggers import Change, CounterTrigger, Trigger
from ipt2xdp.wrapper import cmdline


class Scripted(Trigger):
    """A poll trigger that reports the given changes at its first checks, then nothing."""

    name = "scripted"
    poll_interval = 0.01

    def __init__(self, batches):
        self.batches = list(batches)
        self.rebased = 0

    def check(self):
        return self.batches.pop(0) if self.batches else []

    def rebase(self):
        self.rebased += 1


class Recording(service.Watcher):
    def __init__(self, trigger, fail_times=0, **kw):
        super().__init__([trigger], **kw)
        self.events = []
        self.fail_times = fail_times

    def defer_now(self, changes):
        self.events.append(("defer", tuple(c.detail for c in changes)))

    def reconcile(self, reasons):
        self.events.append(("reimport", reasons))
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("planner exploded")


def run_steps(watcher, seconds):
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        watcher.step()


def test_relaxing_change_defers_before_one_reimport_of_the_burst():
    burst = [[Change("nftables", "DELRULE x1")], [Change("nftables", "NEWRULE x1")], [],
             [Change("host", "sysctls changed", relaxing=False)]]
    watcher = Recording(Scripted(burst), debounce=0.1)
    run_steps(watcher, 0.4)
    kinds = [kind for kind, _ in watcher.events]
    assert kinds[0] == "defer" and "reimport" in kinds
    assert kinds.index("defer") < kinds.index("reimport")
    assert kinds.count("reimport") == 1, watcher.events      # the burst is one re-import
    assert watcher.events[-1] == ("reimport", "change in host, nftables")
    # the non-relaxing change did not defer on its own
    assert [d for k, d in watcher.events if k == "defer"] == [("DELRULE x1",), ("NEWRULE x1",)]


def test_failed_reimport_is_retried_with_backoff(monkeypatch):
    monkeypatch.setattr(service, "RETRY_FIRST", 0.05)
    watcher = Recording(Scripted([[Change("legacy", "a -> b")]]), fail_times=2, debounce=0.0)
    watcher.retry_delay = 0.05
    run_steps(watcher, 0.6)
    reimports = [r for k, r in watcher.events if k == "reimport"]
    assert reimports[:3] == ["change in legacy", "change in retry", "change in retry"] and len(reimports) == 3
    assert watcher.retry_at is None and watcher.retry_delay == 0.05


def test_a_broken_trigger_counts_as_a_change():
    class Broken(Trigger):
        name = "broken"
        poll_interval = 0.01

        def check(self):
            raise OSError("netlink went away")
    watcher = Recording(Broken(), debounce=0.5)
    watcher.step()
    import time
    time.sleep(0.02)
    watcher.step()
    assert watcher.events and watcher.events[0][0] == "defer" and "assuming a change" in watcher.events[0][1][0]


def test_counter_trigger_reports_a_changed_counter_once():
    value = [1]
    trigger = CounterTrigger("ipset", lambda: value[0], 1.0)
    assert trigger.check() == []
    value[0] = 2
    assert trigger.check() == [Change("ipset", "1 -> 2", True)]
    assert trigger.check() == []
    value[0] = 3
    trigger.rebase()
    assert trigger.check() == []


def test_tc_trigger_reports_a_changed_hook_once_and_polls():
    state = [()]
    trigger = triggers.TcTrigger(lambda: state[0])
    try:
        assert trigger.poll_interval and trigger.fileno() is not None  # tcx attachments notify nothing
        assert trigger.check() == []
        state[0] = (("eth0", "1 tcx program"),)
        assert trigger.check() == [Change("tc", "tc ingress filters or programs changed", True)]
        assert trigger.check() == []
        state[0] = ()
        trigger.rebase()
        assert trigger.check() == []
    finally:
        trigger.close()


def test_plugins_register_their_triggers(monkeypatch):
    monkeypatch.setattr(triggers, "_FACTORIES", {})
    triggers.register("mirror", lambda: CounterTrigger("mirror", lambda: 0, 1.0))
    triggers.register("absent", lambda: None)  # a factory may decline on this host
    built = triggers.build()
    assert [t.name for t in built] == ["mirror"]
    assert triggers.build(["nosuch"]) == []


def _nlmsg(kind, family, body=b""):
    payload = struct.pack("=BBH", family, 0, 0) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, 0, 0) + payload


class FakeSocket:
    def __init__(self, chunks):
        self.chunks = list(chunks)

    def recv(self, size):
        if not self.chunks:
            raise BlockingIOError()
        chunk = self.chunks.pop(0)
        if isinstance(chunk, Exception):
            raise chunk
        return chunk

    def close(self):
        pass


def nft_trigger(chunks):
    trigger = triggers.NftTrigger.__new__(triggers.NftTrigger)
    trigger._sock = FakeSocket(chunks)
    return trigger


def test_nft_messages_are_decoded_and_ip6_arp_and_generation_ignored():
    nft = triggers.NFNL_SUBSYS_NFTABLES << 8
    batch = (_nlmsg(nft | 6, 2) + _nlmsg(nft | 6, 2) + _nlmsg(nft | 8, 1) + _nlmsg(nft | 6, 10) +
             _nlmsg(nft | 3, 3) + _nlmsg(nft | triggers.NFT_MSG_NEWGEN, 0))
    assert nft_trigger([batch]).check() == [Change("nftables", "DELRULE x1, NEWRULE x2")]
    assert nft_trigger([_nlmsg(nft | 6, 10) + _nlmsg(nft | 15, 0)]).check() == []


def test_lost_notifications_count_as_a_change():
    import errno
    changes = nft_trigger([OSError(errno.ENOBUFS, "No buffer space available")]).check()
    assert changes == [Change("nftables", "notifications lost x1")]


@pytest.mark.parametrize("text,seconds", [("1", 1.0), ("1.5", 1.0), ("0.5", 0.0), ("0x10", 16.0), ("010", 8.0),
                                          ("abc", 0.0), ("5", 5.0)])
def test_wait_seconds_are_read_like_iptables_sscanf(text, seconds):
    if text[0].isdigit():  # iptables takes a separate word as -w's value only when it is a number
        assert cmdline.parse_iptables(["-w", text, "-A", "INPUT"]).wait == seconds
    assert cmdline.parse_iptables([f"--wait={text}", "-L"]).wait == seconds


def test_watch_help_and_exit_codes_are_documented():
    out = subprocess.run([sys.executable, "-m", "ipt2xdp", "watch", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--debounce" in out.stdout and "--trigger" in out.stdout
    assert service.EXIT_STOPPED == 0 and service.EXIT_FAILED == 1 and service.EXIT_USAGE == 2


def test_systemd_units_render_and_verify(tmp_path):
    env = tmp_path / "default"
    out = subprocess.run([sys.executable, "-m", "ipt2xdp", "service", "install", "--iface", "eth0", "--iface", "eth1",
                          "--unit-dir", str(tmp_path), "--env-file", str(env), "--no-enable"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert env.read_text().splitlines()[-1] == "IPT2XDP_IMPORT_ARGS='--iface eth0 --iface eth1 --mode auto'"
    boot = (tmp_path / "ipt2xdp-boot.service").read_text()
    command = os.path.join(os.path.dirname(sys.executable), "ipt2xdp")
    assert f"ExecStart={command} import --live $IPT2XDP_IMPORT_ARGS" in boot and "@IPT2XDP@" not in boot
    for unit in ("netfilter-persistent.service", "ufw.service", "docker.service", "firewalld.service"):
        assert unit in boot.split("After=", 1)[1].splitlines()[0]
    assert "\nBefore=" not in boot  # docker is After=network-online.target: Before= it would be a cycle
    watch = (tmp_path / "ipt2xdp-watch.service").read_text()
    assert f"ExecStart={command} watch" in watch and "RestartPreventExitStatus=2" in watch
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = [str(tmp_path / "ipt2xdp-boot.service"), str(tmp_path / "ipt2xdp-watch.service")]
    instance = tmp_path / "ipt2xdp-watch@ns1.service"
    instance.symlink_to(tmp_path / "ipt2xdp-watch@.service")
    verify = subprocess.run([analyze, "verify", "--man=no", *units, str(instance)], capture_output=True, text=True)
    assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr
    # and the check can fail: a misspelt key is reported
    bad = tmp_path / "broken.service"
    bad.write_text(watch.replace("RestartSec=2s", "RestartSecs=2s"))
    verify = subprocess.run([analyze, "verify", "--man=no", str(bad)], capture_output=True, text=True)
    assert "Unknown key 'RestartSecs'" in verify.stderr


def test_the_collector_stays_off_from_a_sync_until_the_clean_up(monkeypatch):
    """Turned on again at the end of a sync, the collector would run the collections the sync put
    off before the caller gets its answer; warm.collect() (after the answer) turns it on."""
    import gc

    from ipt2xdp.watch.warm import Warm

    warm = Warm([])
    outcomes = iter(["planned", RuntimeError("re-planning failed")])

    def fake_sync(backend, counts_pid=None, later=None):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    monkeypatch.setattr(warm, "_sync", fake_sync)
    assert gc.isenabled()
    try:
        assert warm.sync("nft") == "planned"
        assert not gc.isenabled()
        with pytest.raises(RuntimeError):
            warm.sync("nft")
        assert not gc.isenabled() and warm.uncollected == 2 and warm.collect_due
        warm._leftovers.append(("ruleset", "text"))
        warm.release()  # after each answer: frees, but no full collection and the collector stays off
        assert not warm._leftovers and not gc.isenabled() and warm.uncollected == 2 and warm.collect_due
        frozen = gc.get_freeze_count()
        warm.collect()
        assert gc.isenabled() and warm.uncollected == 0 and not warm.collect_due
        # what is left is frozen: later collections walk only what later syncs make
        assert gc.get_freeze_count() > frozen
    finally:
        gc.enable()
        gc.unfreeze()


def test_every_so_many_collections_walk_the_frozen_heap_again(monkeypatch):
    import gc

    from ipt2xdp.watch import warm as warm_module

    warm = warm_module.Warm([])
    calls = []
    monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
    monkeypatch.setattr(gc, "collect", lambda: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    try:
        for _ in range(warm_module.UNFREEZE_EVERY):
            warm.collect_due = True
            warm.collect()
        assert calls.count("collect") == calls.count("freeze") == warm_module.UNFREEZE_EVERY
        assert calls.count("unfreeze") == 1 and calls[-3:] == ["unfreeze", "collect", "freeze"]
    finally:
        monkeypatch.undo()
        gc.enable()


def test_a_change_seen_while_a_served_caller_changes_netfilter_marks_stale_without_deferring_again(monkeypatch):
    """A caller between "begin" and "done" made XDP defer already and holds the lock every flip
    waits for: the watcher moves the stale mark (so its abort keeps deferring) and writes no map.
    Without a caller in that window, a relaxing change defers at once."""
    import types

    from ipt2xdp import loader
    from ipt2xdp.wrapper import sync

    calls = []
    monkeypatch.setattr(sync, "mark_stale", lambda: calls.append("mark") or 1)
    monkeypatch.setattr(loader, "defer_all", lambda on=True: calls.append(("defer", on)))
    watcher = service.Watcher([Scripted([])])
    caller = types.SimpleNamespace(pid=4242, begun=(True, 0))
    watcher.server = types.SimpleNamespace(sessions={7: caller})
    watcher.defer_now([Change("nftables", "NEWRULE x1")])
    assert calls == ["mark"]
    caller.begun = None  # its "done" came: a later change defers again
    watcher.defer_now([Change("nftables", "DELRULE x1")])
    assert calls == ["mark", "mark", ("defer", True)]


def test_the_read_back_after_syncs_that_took_the_generation_waits_for_a_longer_pause():
    """A check of what served syncs took without reading back (watch/holding.py) waits for 1 s
    without a call (10 s at the latest); any other pending change keeps the usual debounce."""
    from ipt2xdp.watch import holding

    watcher = service.Watcher([Scripted([])], debounce=0.2, max_delay=2.0)
    watcher.pending = [Change(holding.SOURCE, "the ruleset wrapper pid 1's change left", relaxing=False)]
    assert watcher._delays() == (service.VERIFY_IDLE, service.VERIFY_LATEST) == (1.0, 10.0)
    watcher.pending.append(Change("nftables", "NEWRULE x1"))
    assert watcher._delays() == (0.2, 2.0)


def test_the_generation_is_read_from_a_newgen_answer_and_none_from_an_error():
    from ipt2xdp import nftgen

    attrs = struct.pack("=HH", 8, nftgen.NFTA_GEN_ID) + struct.pack("!I", 4242)
    body = struct.pack("=BBH", 0, 0, 0) + attrs
    newgen = struct.pack("=IHHII", 16 + len(body), 10 << 8 | nftgen.NFT_MSG_NEWGEN, 0, 1, 0) + body
    assert nftgen.generation_of(newgen) == 4242
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -2) + bytes(16)
    assert nftgen.generation_of(error) is None
    assert nftgen.generation_of(b"") is None
