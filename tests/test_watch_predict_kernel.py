# SPDX-License-Identifier: GPL-2.0-only
"""watch/predict.py against the real binaries, both backends: before each command of the
fail2ban, Docker and ufw sequences the ruleset is saved and the command's effect predicted; after
the real binary ran it, the ruleset read back must render to the same canonical text as the
prediction (what `ipt2xdp watch` requires before it flips to the predicted plan). Every command
of those sequences that succeeds and changes a table is predicted (none is left to the slow path).

The served path itself (a prediction that holds gives a fresh import's plan, one that does not is
planned again) is in tests/test_watch_serve_kernel.py."""
import re

import pytest

from ipt2xdp import netns
from ipt2xdp.parse import parse
from ipt2xdp.render import canonical
from ipt2xdp.watch import predict
from tests.test_wrapper_kernel import DOCKER, FAIL2BAN, UFW, real

pytestmark = pytest.mark.kernel

CHANGING = re.compile(r"^-[ADRINPFX]$|^--(append|delete|replace|insert|new-chain|policy|flush|delete-chain)$")
EXTRA = [  # beyond the three sequences: -R, -D and -I by number, -F and -X of a table, quoting
    ["-N", "T"], ["-A", "T", "-m", "comment", "--comment", "two words", "-j", "ACCEPT"],
    ["-A", "T", "-s", "10.1.0.0/16", "-p", "udp", "-m", "udp", "--sport", "53", "-j", "RETURN"],
    ["-I", "T", "2", "-p", "icmp", "--icmp-type", "echo-request", "-j", "DROP"],
    ["-R", "T", "1", "-s", "198.51.100.0/24", "-j", "DROP"], ["-D", "T", "3"],
    ["-D", "T", "-p", "icmp", "-m", "icmp", "--icmp-type", "8", "-j", "DROP"],
    ["-P", "FORWARD", "DROP"], ["-F", "T"], ["-X", "T"], ["-P", "FORWARD", "ACCEPT"],
    ["-N", "U"], ["-N", "V"], ["-A", "INPUT", "-j", "U"], ["-F"], ["-X"],
]
TABLES = {"raw": "PREROUTING OUTPUT", "mangle": "PREROUTING INPUT FORWARD OUTPUT POSTROUTING",
          "nat": "PREROUTING INPUT OUTPUT POSTROUTING", "filter": "INPUT FORWARD OUTPUT"}


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_predictions_hold_for_what_the_real_binary_leaves(backend):
    ns = netns.create_namespace("predict")
    try:
        # The tables exist, as in a namespace XDP was imported into (a table the command would make
        # is not predicted: predict.py).
        real(ns, backend, ["iptables-restore"], input="".join(
            f"*{table}\n" + "".join(f":{chain} ACCEPT [0:0]\n" for chain in chains.split()) + "COMMIT\n"
            for table, chains in TABLES.items()))
        ns.run(["ipset", "-exist", "create", "f2b-ips", "hash:ip"])
        tried = held = 0
        for args in FAIL2BAN + DOCKER + UFW + EXTRA:
            before = real(ns, backend, ["iptables-save"]).stdout
            command = predict.read_command(args)
            text = None
            if command is not None:
                ruleset = parse(before, "<before>")
                text = predict.predicted_text(before, command, predict.rule_matcher(ruleset))
            result = real(ns, backend, ["iptables", *args])
            if result.returncode != 0 or not any(CHANGING.match(a) for a in args):
                continue
            after = real(ns, backend, ["iptables-save"]).stdout
            tried += 1
            assert text is not None, (args, before)
            assert canonical(parse(text, "<predicted>")) == canonical(parse(after, "<after>")), (args, text, after)
            held += 1
        assert tried == held >= 40
    finally:
        netns.delete_namespace(ns.name)
