# SPDX-License-Identifier: GPL-2.0-only
"""Every ruleset in ../shared/rulesets that iptables accepts loads (missing chains and ipsets declared)
and goes through the harness on both backends, netfilter alone compared with netfilter + ipt2xdp
(IPT2XDP_COMPAT_ATTACH, default native; none compares netfilter alone with itself).

Files iptables refuses are listed in REFUSED with the reason; a file that loads although listed, or
fails although not listed, fails the test, so the list cannot silently hide a regression.
"""
import os
from pathlib import Path

import pytest

from compat_tests import differential, harness, packets

pytestmark = pytest.mark.kernel

ROOT = Path(os.environ.get("IPT2XDP_SHARED_RULESETS", Path(__file__).resolve().parents[2] / "shared" / "rulesets"))
if not ROOT.is_dir():
    ROOT = Path("/work/shared/rulesets")
_V6 = "IPv6 ruleset (ip6tables syntax)"
_NOT_SAVE = "not iptables-save text (CLI output or action template)"
REFUSED = {
    "netfilter_iptables__ipt-restore_dumps_ip6tables.dump": _V6,
    "netfilter_iptables__ipt-save_dumps_fedora27-ip6tables": _V6,
    "real/Parser_Test__data__ip6tables-save": _V6,
    "real/Synology_Diskstation_DS414__ip6tables-save_jul_2016": _V6,
    "ufw__conf__before6.rules": _V6,
    "real/Parser_Test__data__iptables-save": "parser torture test: unknown option --something-else",
    "ufw__tests_good_route_result": _NOT_SAVE,
    "ufw__tests_good_rules_result": _NOT_SAVE,
    "ufw__tests_ipv6_rules64_result": _NOT_SAVE,
    "ufw__tests_unique_rule_lines.derived.txt": _NOT_SAVE,
}
FILES = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
               if p.is_file() and p.name != "MANIFEST.txt" and not p.parent.name.endswith("_templates"))


def test_the_shared_rulesets_are_there():
    assert len(FILES) >= 30, f"expected the shared rulesets under {ROOT}"


@pytest.mark.parametrize("name", FILES)
def test_shared_ruleset_runs_through_the_harness(name):
    text = (ROOT / name).read_text(errors="replace")
    corpus = packets.generate(text, differential.env_int("IPT2XDP_COMPAT_PROBES", 200), seed=1)
    try:
        cmp = harness.compare(text, corpus, attach=differential.attach_from_env(),
                              receiver_if=harness.guess_receiver_if(text))
    except harness.LoadError as error:
        assert name in REFUSED, f"{name} no longer loads: {error}"
        return
    assert name not in REFUSED, f"{name} now loads: remove it from REFUSED"
    assert not cmp.disagreements, cmp.report()
