# SPDX-License-Identifier: GPL-2.0-only
"""Seeded random rulesets through netfilter alone and netfilter + ipt2xdp, probe by probe.

CI: IPT2XDP_COMPAT_RULESETS seeds (default 200) x 200 probes on both backends with ipt2xdp attached in
native mode, a slice of IPT2XDP_COMPAT_GENERIC seeds (default 20) in generic mode and one of
IPT2XDP_COMPAT_FORWARDING seeds (default 12) with forwarding on (receiver forwards to a third
namespace, FORWARD rules in the ruleset, TTL-1 probes), checked by
IPT2XDP_COMPAT_WORKERS processes (differential.run_seeds). IPT2XDP_COMPAT_ATTACH=none instead checks
the harness (netfilter alone twice: any disagreement is the harness's fault).
"""
import os

import pytest

from compat_tests import differential, harness, packets, rulegen
from ipt2xdp.resources import bpf_object_path

pytestmark = pytest.mark.kernel

FIRST = differential.env_int("IPT2XDP_COMPAT_SEED", 0)
COUNT = differential.env_int("IPT2XDP_COMPAT_RULESETS", 200)
GENERIC = differential.env_int("IPT2XDP_COMPAT_GENERIC", 20)
PROBES = differential.env_int("IPT2XDP_COMPAT_PROBES", 200)
ATTACH = os.environ.get("IPT2XDP_COMPAT_ATTACH", "native")


FORWARDING = differential.env_int("IPT2XDP_COMPAT_FORWARDING", 12)


def _check(seeds, attach, forwarding=False):
    failures = differential.run_seeds(seeds, attach, n_probes=PROBES, forwarding=forwarding)
    assert not failures, f"{len(failures)} of {len(seeds)} seeds disagree (attach={attach}, forwarding=" \
        f"{forwarding}):\n\n" + "\n\n".join(failures[:5])


def test_random_rulesets_agree():
    _check(range(FIRST, FIRST + COUNT), ATTACH)


@pytest.mark.skipif(ATTACH == "none" or GENERIC == 0, reason="generic slice only with ipt2xdp attached")
def test_random_rulesets_agree_in_generic_mode():
    # other seeds than the native run: more rulesets seen in all
    _check(range(FIRST + COUNT, FIRST + COUNT + GENERIC), "generic")


@pytest.mark.skipif(FORWARDING == 0, reason="IPT2XDP_COMPAT_FORWARDING=0")
def test_random_rulesets_agree_with_forwarding_on():
    # The receiver forwards (ip_forward=1) to a third namespace; FORWARD has rules too.
    first = FIRST + COUNT + GENERIC
    _check(range(first, first + FORWARDING), ATTACH, forwarding=True)


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
