# SPDX-License-Identifier: GPL-2.0-only
"""plan's kept splits of the DROP rules after a jump (splitmemo) never make a plan differ from a
fresh one: fail2ban's bursts (bans inserted first in f2b-sshd, unbans), a changed jump condition
(the ways' matches change, the rules' do not), edits of the rules after the jump; and a kept
split keyed without the ways' matches is caught by the same comparison."""
import pytest

from ipt2xdp import plan as planner, splitmemo
from tests.test_replan_memo import Watcher, _fresh
from tests.fingerprint import HOSTS

HOST = HOSTS["receiver"]
REJECT = "-A f2b-sshd -s {} -j REJECT --reject-with icmp-port-unreachable"


def base():
    rules = [f"-A INPUT -s 10.2.{i // 256}.{i % 256}/32 -p tcp -m tcp --dport {(20, 22, 2222, 80)[i % 4]} -j DROP"
             for i in range(40)]
    return "\n".join(["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                      ":f2b-sshd - [0:0]", "-A INPUT -p tcp -m tcp --dport 22 -j f2b-sshd", *rules,
                      "-A INPUT -s 10.3.0.0/16 -j DROP", "-A f2b-sshd -j RETURN", "COMMIT", ""])


def _ban(text, address):
    return text.replace("-A f2b-sshd ", REJECT.format(address) + "\n-A f2b-sshd ", 1)


def edits():
    """(what, text) for each step, each an edit of the one before."""
    text = base()
    steps = [("start", text)]
    for n in range(1, 4):
        text = _ban(text, f"192.0.2.{n}/32")
        steps.append((f"ban {n}", text))
    text = text.replace(REJECT.format("192.0.2.2/32") + "\n", "")
    steps.append(("unban", text))
    text = text.replace("--dport 22 -j f2b-sshd", "--dport 2222 -j f2b-sshd")
    steps.append(("jump condition", text))
    text = text.replace("-A f2b-sshd -j RETURN", "-A f2b-sshd -s 10.2.0.0/24 -j RETURN")
    steps.append(("return condition", text))
    text = text.replace("-A INPUT -s 10.2.0.5/32 -p tcp -m tcp --dport 22 -j DROP\n", "")
    steps.append(("delete after the jump", text))
    text = text.replace("-A INPUT -s 10.3.0.0/16 -j DROP", "-A INPUT -s 10.3.0.0/16 -j DROP\n-A INPUT -j DROP")
    steps.append(("append", text))
    text = _ban(text.replace("--dport 2222 -j f2b-sshd", "--dport 22 -j f2b-sshd"), "192.0.2.9/32")
    steps.append(("back", text))
    return steps


@pytest.fixture
def watcher():
    splitmemo.SPLITS.clear()
    yield Watcher()
    planner.TERM_MEMO = None
    splitmemo.SPLITS.clear()


def _replan_all(watcher):
    """[(what, whether the watcher's plan equals a fresh one)] over edits()."""
    return [(what, watcher.sync(text, HOST)["plan"] == _fresh(text, HOST)["plan"]) for what, text in edits()]


def test_kept_splits_give_the_fresh_plan(watcher, monkeypatch):
    calls = []
    real = splitmemo.jumppaths.split
    monkeypatch.setattr(splitmemo.jumppaths, "split", lambda h, m: calls.append(m) or real(h, m))
    assert all(same for _, same in _replan_all(watcher)), _replan_all(watcher)
    assert splitmemo.SPLITS, "the planner kept no split"
    text = _ban(edits()[-1][1], "192.0.2.77/32")
    calls.clear()
    replanned = watcher.sync(text, HOST)["plan"]
    assert calls == [], "a ban changes no rule after the jump nor a way's match: nothing to split again"
    assert replanned == _fresh(text, HOST)["plan"]
    assert len(calls) > 40  # the fresh plan splits every rule after the jump


def test_a_one_shot_plan_keeps_nothing():
    planner.TERM_MEMO = None
    splitmemo.SPLITS.clear()
    _fresh(edits()[1][1], HOST)
    assert not splitmemo.SPLITS


def test_splits_keyed_without_the_ways_are_caught(watcher, monkeypatch):
    monkeypatch.setattr(splitmemo, "_ways_of", lambda history: ())
    assert not all(same for _, same in _replan_all(watcher))
