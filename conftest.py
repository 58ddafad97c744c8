# SPDX-License-Identifier: GPL-2.0-only
"""Test tiers for tests/ and compat_tests/.

Tests marked `kernel` need root, BPF, XDP and network namespaces. They skip only on a machine that
truly lacks one of those; with IPT2XDP_REQUIRE_KERNEL=1 (set by .ci/run) a missing feature is a
failure, and so is a run in which no kernel test executed.
"""
from __future__ import annotations

import ctypes
import os
import shutil

import pytest

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_ARRAY = 2
_kernel_results = {"passed": 0, "failed": 0, "skipped": 0}


def _bpf_works() -> str:
    """Return "" if an array map can be created, else the reason it cannot."""
    if _SYS_BPF is None:
        return f"no bpf syscall number known for {os.uname().machine}"
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[1], attr[2], attr[3] = _BPF_MAP_TYPE_ARRAY, 4, 4, 1
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(_SYS_BPF, _BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        return f"bpf(BPF_MAP_CREATE) failed: {os.strerror(ctypes.get_errno())}"
    os.close(fd)
    return ""


def kernel_tier_missing() -> str:
    """Why the kernel tier cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "not root"
    if not os.path.exists("/proc/self/ns/net"):
        return "kernel without network namespaces"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return _bpf_works()


_MISSING = None


def _shared_rulesets() -> str:
    """../shared/rulesets beside the checkout (as in CI), or /work/shared/rulesets, or the env var."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("IPT2XDP_SHARED_RULESETS", ""),
                  os.path.join(here, "..", "shared", "rulesets"), "/work/shared/rulesets"]
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "MANIFEST.txt")):
            return os.path.realpath(candidate)
    raise pytest.UsageError("the shared rulesets (../shared/rulesets) are missing; "
                            "set IPT2XDP_SHARED_RULESETS to their directory")


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: needs root, BPF, XDP and network namespaces")
    # Tests read the real rulesets from here; a missing directory fails the run instead of
    # quietly parametrizing nothing.
    os.environ["IPT2XDP_SHARED_RULESETS"] = _shared_rulesets()


def pytest_sessionstart(session):
    if os.geteuid() == 0 and shutil.which("ip"):
        from ipt2xdp.netns import remove_stale_namespaces

        remove_stale_namespaces()


def pytest_runtest_setup(item):
    global _MISSING
    if item.get_closest_marker("kernel") is None:
        return
    if _MISSING is None:
        _MISSING = kernel_tier_missing()
    if _MISSING:
        if os.environ.get("IPT2XDP_REQUIRE_KERNEL") == "1":
            pytest.fail(f"kernel tier required but unavailable: {_MISSING}", pytrace=False)
        pytest.skip(f"kernel tier unavailable: {_MISSING}")


def pytest_runtest_logreport(report):
    if "kernel" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail") and report.skipped:
            key = "xfailed"  # a strict xfail that failed as expected: known gap, not a skip
        else:
            key = "passed" if report.passed else "skipped" if report.skipped else "failed"
        _kernel_results[key] = _kernel_results.get(key, 0) + 1


def pytest_terminal_summary(terminalreporter):
    r = _kernel_results
    terminalreporter.write_line(
        f"kernel tier: {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped"
        + (f", {r['xfailed']} known gaps (strict xfail)" if r.get("xfailed") else ""))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("IPT2XDP_REQUIRE_KERNEL") == "1":
        if _kernel_results["passed"] == 0 or _kernel_results["skipped"]:
            session.exitstatus = 1
