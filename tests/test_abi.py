# SPDX-License-Identifier: GPL-2.0-only
"""abi.py against the built object's BTF (sizes, member names and offsets) and against the header's
#defines. bpftool 7.1's JSON: types[] with kind, name, size, members[{name, bits_offset}]."""
import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ipt2xdp import abi
from ipt2xdp.resources import bpf_object_path

HEADER = Path(__file__).resolve().parents[1] / "bpf" / "ipt2xdp_kern_user.h"


@pytest.fixture(scope="module")
def btf_structs():
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed")
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(bpf_object_path())],
                         check=True, capture_output=True, text=True).stdout
    return {t["name"]: t for t in json.loads(out)["types"] if t.get("kind") == "STRUCT"}


@pytest.mark.parametrize("name", sorted(abi.STRUCTS))
def test_struct_matches_btf(btf_structs, name):
    mirror = abi.STRUCTS[name]
    assert name in btf_structs, f"{name} missing from the object's BTF"
    btf = btf_structs[name]
    assert ctypes.sizeof(mirror) == btf["size"], f"{name}: size {ctypes.sizeof(mirror)} != BTF {btf['size']}"
    btf_members = [(m["name"], m["bits_offset"] // 8) for m in btf["members"]]
    ours = [(f[0], getattr(mirror, f[0]).offset) for f in mirror._fields_]
    assert ours == btf_members, f"{name}: members differ"


def _defines():
    out = {}
    for m in re.finditer(r"^#define (IPT2XDP_\w+) (.+?)(?:\s*/\*.*)?$", HEADER.read_text(), re.M):
        try:
            out[m.group(1)] = m.group(2).strip()
        except ValueError:
            pass
    return out


def _eval(expr, defs):
    expr = re.sub(r"IPT2XDP_\w+", lambda m: f"({_eval(defs[m.group(0)], defs)})", expr)
    return eval(expr.replace("U", ""), {})  # noqa: S307 - our own header's integer expressions


@pytest.mark.parametrize("c_name,py_value", [
    ("IPT2XDP_GEN_SLOTS", abi.GEN_SLOTS), ("IPT2XDP_DEFER_ALL", abi.DEFER_ALL),
    ("IPT2XDP_SUMMARY_WORDS", abi.SUMMARY_WORDS), ("IPT2XDP_MAX_SLOTS", abi.MAX_SLOTS),
    ("IPT2XDP_MAX_WORDS", abi.MAX_WORDS), ("IPT2XDP_MAX_STEPS", abi.MAX_STEPS),
    ("IPT2XDP_MAX_BOUNDS", abi.MAX_BOUNDS), ("IPT2XDP_MAX_GROUPS", abi.MAX_GROUPS), ("IPT2XDP_MAX_COUNTER_STRIDE", abi.MAX_COUNTER_STRIDE),
    ("IPT2XDP_VC_SPORT", abi.VC_SPORT), ("IPT2XDP_VC_DPORT", abi.VC_DPORT), ("IPT2XDP_VC_ICMP", abi.VC_ICMP),
    ("IPT2XDP_VC_TCP_FLAGS", abi.VC_TCP_FLAGS), ("IPT2XDP_VC_ENTRIES", abi.VC_ENTRIES),
    ("IPT2XDP_ACT_DROP", abi.ACT_DROP), ("IPT2XDP_ACT_ACCEPT", abi.ACT_ACCEPT),
    ("IPT2XDP_ACT_DEFER", abi.ACT_DEFER), ("IPT2XDP_ACT_CONTINUE", abi.ACT_CONTINUE),
    ("IPT2XDP_SLOT_SET", abi.SLOT_SET), ("IPT2XDP_K_DPORT", abi.K_DPORT), ("IPT2XDP_F_TCP_FLAGS", abi.F_TCP_FLAGS),
    ("IPT2XDP_F_CT_STATE", abi.F_CT_STATE), ("IPT2XDP_NUM_FIELDS", abi.NUM_FIELDS),
    ("IPT2XDP_VC_PROTO", abi.VC_PROTO), ("IPT2XDP_CT_NONE", abi.CT_NONE), ("IPT2XDP_CT_FOUND", abi.CT_FOUND),
    ("IPT2XDP_CT_NOT_LOOKED_UP", abi.CT_NOT_LOOKED_UP), ("IPT2XDP_CT_NONE_VERIFIED", abi.CT_NONE_VERIFIED),
    ("IPT2XDP_CT_CLASSES", abi.CT_CLASSES), ("IPT2XDP_CSUM_CHUNK", abi.CSUM_CHUNK),
    ("IPT2XDP_CSUM_MAX_CHUNKS", abi.CSUM_MAX_CHUNKS), ("IPT2XDP_SRC_FAST_PLENS", abi.SRC_FAST_PLENS),
    ("IPT2XDP_SRC_FAST_DSTS", abi.SRC_FAST_DSTS), ("IPT2XDP_TUPLE_FAST_SHAPES", abi.TUPLE_FAST_SHAPES),
    ("IPT2XDP_NUM_STATS", abi.NUM_STATS), ("IPT2XDP_STAT_PASS", abi.STAT_NAMES.index("pass")),
    ("IPT2XDP_STAT_BUDGET", abi.STAT_NAMES.index("budget")),
    ("IPT2XDP_STAT_NOT_LOCAL", abi.STAT_NAMES.index("not_local")),
    ("IPT2XDP_STAT_NAT_FLOW", abi.STAT_NAMES.index("nat_flow")), ("IPT2XDP_NAT_FLOWS", abi.NAT_FLOWS),
    ("IPT2XDP_NAT_NEW_ON", abi.NAT_NEW_ON), ("IPT2XDP_NAT_NEW_TCP_LOOSE", abi.NAT_NEW_TCP_LOOSE),
])
def test_constant_matches_header(c_name, py_value):
    assert _eval(_defines()[c_name], _defines()) == py_value


def test_classifier_enums_match_abi():
    from ipt2xdp.classifier import CtClass, Field, Verdict
    assert (Verdict.DROP, Verdict.ACCEPT, Verdict.DEFER, Verdict.CONTINUE) == (
        abi.ACT_DROP, abi.ACT_ACCEPT, abi.ACT_DEFER, abi.ACT_CONTINUE)
    assert [Field.SRC, Field.DST, Field.PROTO, Field.SPORT, Field.DPORT, Field.IIF, Field.ICMP, Field.TCP_FLAGS] == \
        list(range(abi.NUM_FIELDS))
    assert Field.CT_STATE == abi.F_CT_STATE
    assert (CtClass.NONE, CtClass.FOUND, CtClass.NOT_LOOKED_UP, CtClass.NONE_VERIFIED) == (
        abi.CT_NONE, abi.CT_FOUND, abi.CT_NOT_LOOKED_UP, abi.CT_NONE_VERIFIED)
    assert len(CtClass) == abi.CT_CLASSES and abi.VC_SPORT == abi.VC_PROTO + abi.CT_CLASSES * 256


def test_load_time_check_lists_every_difference(monkeypatch):
    """The loader compares every map of the object with abi.py before loading (cilium style)."""
    import dataclasses

    from ipt2xdp import libbpf
    from ipt2xdp.dataplane import check_abi
    from ipt2xdp.errors import AbiMismatch

    obj = libbpf.BpfObject(str(bpf_object_path()))
    try:
        check_abi(obj)  # the shipped object agrees
        shapes = dict(abi.GEN_MAPS)
        shapes["slots"] = dataclasses.replace(shapes["slots"], value_size=24)
        shapes["exact_set"] = dataclasses.replace(shapes["exact_set"], key_size=12)
        monkeypatch.setattr(abi, "GEN_MAPS", shapes)
        monkeypatch.setattr(abi, "MAP_CSUM_SCRATCH", dataclasses.replace(abi.MAP_CSUM_SCRATCH, value_size=512))
        with pytest.raises(AbiMismatch) as info:
            check_abi(obj)
        assert info.value.differences == ["ipt2xdp_csum_scratch: ValueSize 516 != 512",
                                          "ipt2xdp_g_slots.inner: ValueSize 16 != 24",
                                          "ipt2xdp_g_exact_set.inner: KeySize 16 != 12"]
        assert info.value.exit_code == 3 and "rebuild" in str(info.value)
    finally:
        obj.close()


def test_missing_bpffs_is_a_one_line_error(monkeypatch, tmp_path):
    from ipt2xdp import pins
    from ipt2xdp.errors import LoadError

    monkeypatch.setenv("IPT2XDP_BPFFS", str(tmp_path))
    with pytest.raises(LoadError) as info:
        pins.pin_dir()
    assert f"mount -t bpf bpf {tmp_path}" in str(info.value) and "\n" not in str(info.value)
