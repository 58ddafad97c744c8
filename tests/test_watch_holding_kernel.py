# SPDX-License-Identifier: GPL-2.0-only
"""watch/holding.py against the kernel (iptables-nft): a served sync takes the predicted ruleset
without reading it back only while the nf_tables generation says the caller's command was the one
transaction since the last read; otherwise it reads back. The read-back after such a sync finds
a prediction that was wrong (here: a command other than the one predicted, which the generation
cannot tell), plans again, and from then on every sync reads back. After every step the plan in
force is compared with a fresh import of what the kernel holds."""
import gc
import os
import sys
import types

import pytest

from ipt2xdp import netns
from ipt2xdp.watch import holding, predict
from ipt2xdp.watch.warm import PREDICTION_IN_KERNEL, Warm
from tests.nsutil import unload_and_close
from tests.test_wrapper_kernel import in_step, real

pytestmark = pytest.mark.kernel

BASE = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:BL - [0:0]
-A INPUT -s 198.51.100.0/24 -j DROP
-A INPUT -j BL
COMMIT
"""


def fresh(ns):
    state = in_step(ns, "nft")
    return state["key_matches"] and state["same"] and not state["deferring"]


def served(ns, warm, predicted, ran):
    """One served change: predicted at its begin, ran by the real binary, then the sync."""
    warm.predict("nft", predicted, os.getpid(), ran_on="nft")
    real(ns, "nft", ["iptables", *ran])
    return warm.sync("nft", counts_pid=os.getpid())


def test_a_sync_takes_the_prediction_only_while_the_generation_says_the_kernel_holds_it(monkeypatch):
    monkeypatch.setenv(predict.MODE_ENV, "always")
    pair = netns.veth_pair()
    try:
        ns = pair.receiver
        real(ns, "nft", ["iptables-restore"], input=BASE)
        r = ns.run(["env", "IPT2XDP_BACKEND=nft", sys.executable, "-m", "ipt2xdp", "import", "--live", "--iface",
                    pair.receiver_if], check=False)
        assert r.returncode == 0, r.stderr
        with ns.entered():
            warm = Warm([])
            warm.host_trigger = types.SimpleNamespace(messages=0)  # host facts kept between syncs
            warm.sync("nft", counts_pid=os.getpid())  # the first read-back: the base of predictions
            assert warm._base[3] == holding.generation("nft")

            one = ["-A", "INPUT", "-s", "192.0.2.1", "-p", "tcp", "--dport", "22", "-j", "DROP"]
            what = served(ns, warm, one, one)
            assert PREDICTION_IN_KERNEL in what and warm.unverified == os.getpid(), what
            assert fresh(ns)
            what = warm.sync("nft")  # the read-back once the burst is over
            assert "is the prediction taken" in what and warm.unverified is None, what

            # Another writer commits between the read and the command: read back.
            two = ["-I", "BL", "1", "-s", "192.0.2.2", "-j", "ACCEPT"]
            warm.predict("nft", two, os.getpid(), ran_on="nft")
            real(ns, "nft", ["iptables", "-A", "INPUT", "-s", "192.0.2.0/24", "-j", "ACCEPT"])
            real(ns, "nft", ["iptables", *two])
            what = warm.sync("nft", counts_pid=os.getpid())
            assert PREDICTION_IN_KERNEL not in what and warm.unverified is None, what
            assert fresh(ns)

            # A command the wrapper ran on the other backend (the generation may move for another
            # writer's transaction): read back.
            warm.predict("nft", one, os.getpid(), ran_on="legacy")
            real(ns, "nft", ["iptables", "-A", "OUTPUT", "-j", "ACCEPT"])
            what = warm.sync("nft", counts_pid=os.getpid())
            assert PREDICTION_IN_KERNEL not in what and fresh(ns), what

            # Deleting by specification: the first rule that renders as it does.
            what = served(ns, warm, ["-D", "INPUT", "-s", "192.0.2.0/24", "-j", "ACCEPT"],
                          ["-D", "INPUT", "-s", "192.0.2.0/24", "-j", "ACCEPT"])
            assert PREDICTION_IN_KERNEL in what and fresh(ns), what

            # Commands left to the read-back: a list of addresses, a match the parser keeps as words,
            # a new chain.
            for command in (["-I", "BL", "-s", "192.0.2.3,192.0.2.4", "-j", "DROP"],
                            ["-N", "BL2"],
                            ["-A", "BL", "-m", "pkttype", "--pkt-type", "broadcast", "-j", "DROP"]):
                what = served(ns, warm, command, command)
                assert PREDICTION_IN_KERNEL not in what, (command, what)
                assert fresh(ns), command

            # A prediction that is not what ran (the generation cannot tell) is taken, then found.
            predicted = ["-A", "INPUT", "-s", "192.0.2.7", "-j", "DROP"]
            ran = ["-A", "INPUT", "-s", "192.0.2.8", "-j", "DROP"]
            what = served(ns, warm, predicted, ran)
            assert PREDICTION_IN_KERNEL in what, what
            assert not fresh(ns)  # the window the read-back after the burst closes
            what = warm.sync("nft")
            assert "is not the prediction taken" in what and not warm.trust_generations, what
            assert fresh(ns)
            what = served(ns, warm, one[:-2] + ["-j", "ACCEPT"], one[:-2] + ["-j", "ACCEPT"])
            assert PREDICTION_IN_KERNEL not in what, what  # no longer trusted: read back
            assert fresh(ns)
            warm.collect()  # the collector, off since the first sync, on again
    finally:
        gc.enable()
        unload_and_close(pair)
