# SPDX-License-Identifier: GPL-2.0-only
"""The ipset guard's ABI: bpf/ipt2xdp_setguard.h against abi.py, and the shared map declared alike
in the XDP object and the guard object (both open the same pinned map)."""
import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ipt2xdp import abi, libbpf
from ipt2xdp.resources import bpf_object_path
from tests.test_abi import _eval

HEADERS = Path(__file__).resolve().parents[1] / "bpf"


def _defines():
    out = {}
    for header in ("ipt2xdp_kern_user.h", "ipt2xdp_setguard.h"):
        for m in re.finditer(r"^#define (IPT2XDP_\w+) (.+?)(?:\s*/\*.*)?$", (HEADERS / header).read_text(), re.M):
            out[m.group(1)] = m.group(2).strip()
    return out


@pytest.mark.parametrize("c_name,py_value", [
    ("IPT2XDP_ACT_SET_GUARDED", abi.ACT_SET_GUARDED), ("IPT2XDP_ACT_SET_STALE", abi.ACT_SET_STALE),
    ("IPT2XDP_GUARD_REMOVALS", abi.GUARD_REMOVALS), ("IPT2XDP_GUARD_ADDITIONS", abi.GUARD_ADDITIONS),
    ("IPT2XDP_SETGUARD_LIVE", abi.SETGUARD_LIVE), ("IPT2XDP_SETGUARD_ENTRIES", abi.SETGUARD_ENTRIES),
])
def test_constant_matches_header(c_name, py_value):
    assert _eval(_defines()[c_name], _defines()) == py_value


def test_guard_bits_match_the_classifier():
    from ipt2xdp.classifier import GUARD_ADDITIONS, GUARD_REMOVALS
    assert (GUARD_REMOVALS, GUARD_ADDITIONS) == (abi.GUARD_REMOVALS, abi.GUARD_ADDITIONS)
    assert abi.ACT_SET_GUARDED | 3 < abi.ACT_SET_STALE  # guarded actions never read as stale


@pytest.mark.parametrize("object_name", ["ipt2xdp.bpf.o", "ipt2xdp_setguard.bpf.o"])
def test_struct_and_map_in_both_objects(object_name):
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed")
    path = str(bpf_object_path(object_name))
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", path], check=True, capture_output=True, text=True).stdout
    btf = next(t for t in json.loads(out)["types"] if t.get("kind") == "STRUCT" and t["name"] == "ipt2xdp_setguard")
    assert btf["size"] == ctypes.sizeof(abi.SetGuard)
    assert [(m["name"], m["bits_offset"] // 8) for m in btf["members"]] == \
        [(f[0], getattr(abi.SetGuard, f[0]).offset) for f in abi.SetGuard._fields_]
    obj = libbpf.BpfObject(path)
    try:
        l, m = libbpf.lib(), obj.map(abi.MAP_SETGUARD.name)
        assert (l.bpf_map__type(m), l.bpf_map__key_size(m), l.bpf_map__value_size(m), l.bpf_map__max_entries(m)) == \
            (abi.MAP_SETGUARD.map_type, 4, abi.MAP_SETGUARD.value_size, abi.SETGUARD_ENTRIES)
    finally:
        obj.close()
