# SPDX-License-Identifier: GPL-2.0-only
"""Seeded random rulesets through netfilter alone and netfilter + attach, probe by probe.

With IPT2XDP_COMPAT_ATTACH=none (the default until `ipt2xdp import` lands) both sides are netfilter
alone, which proves the harness deterministic: any disagreement is the harness's fault.
"""
import pytest

from compat_tests import differential, harness, packets, rulegen
from ipt2xdp.resources import bpf_object_path

pytestmark = pytest.mark.kernel

FIRST = differential.env_int("IPT2XDP_COMPAT_SEED", 0)
COUNT = differential.env_int("IPT2XDP_COMPAT_RULESETS", 20)
PROBES = differential.env_int("IPT2XDP_COMPAT_PROBES", 200)


@pytest.mark.parametrize("seed", range(FIRST, FIRST + COUNT))
def test_random_ruleset_fates_agree(seed):
    failure = differential.check_seed(seed, differential.attach_from_env(), n_probes=PROBES)
    assert failure is None, failure.report()


def test_a_failing_seed_is_shrunk_to_a_small_reproducer():
    """A deliberately wrong "XDP side" (drop everything) must fail, and shrink to an empty ruleset."""
    drop_all = harness.xdp_object_attach(str(bpf_object_path("empty_drop.bpf.o")))
    seed = next(s for s in range(100) if 4 <= rulegen.rule_count(rulegen.generate(s)) <= 8
                and rulegen.generate(s).policies["INPUT"] == "ACCEPT")
    failure = differential.check_seed(seed, drop_all, backends=("legacy",), n_probes=40)
    assert failure is not None and failure.comparison.disagreements
    assert failure.shrunk.count("\n-A ") == 0, failure.shrunk  # every rule was irrelevant to the failure
    assert failure.shrunk_comparison.disagreements
    report = failure.report()
    assert f"seed {seed}" in report and "shrunk reproducer" in report


def test_corpus_is_deterministic():
    text = rulegen.render(rulegen.generate(3))
    assert packets.generate(text, 200, 3) == packets.generate(text, 200, 3)
    assert packets.generate(text, 200, 3) != packets.generate(text, 200, 4)
