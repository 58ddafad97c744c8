# SPDX-License-Identifier: GPL-2.0-only
"""ctypes mirrors of bpf/ipt2xdp_kern_user.h, and the names and shapes of the program's maps.

Three locks keep this file and the C header in step (STYLE.md): _Static_assert in C, the size
asserts below, tests/test_abi.py (sizes and member offsets against the object's BTF, constants
against the header), and loader.check_abi() at load time (key/value sizes of every map).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

# --- constants (bpf/ipt2xdp_kern_user.h) ---------------------------------------------------------
GEN_SLOTS = 2
DEFER_ALL = 0xFFFFFFFF
SUMMARY_WORDS = 4
MAX_WORDS = 64 * SUMMARY_WORDS
MAX_SLOTS = 64 * MAX_WORDS
MAX_GROUPS = 8
MAX_STEPS = 1024
ADDR_SEARCH_STEPS = 17
MAX_COUNTER_STRIDE = 1 << 22
MAX_BOUNDS = 1 << 18

F_SRC, F_DST, F_PROTO, F_SPORT, F_DPORT, F_IIF, F_ICMP, F_TCP_FLAGS = range(8)
NUM_FIELDS = 8  # fields with their own class row
F_CT_STATE = 8  # a field_mask bit only: the conntrack class is folded into the protocol's index

CT_CLASSES = 4  # conntrack classes (CT_*), each with its 256 protocol values in value_class
VC_PROTO = 0  # + ct_class * 256 + protocol
VC_SPORT = CT_CLASSES * 256
VC_DPORT = VC_SPORT + 65537
VC_ICMP = VC_DPORT + 65537
VC_TCP_FLAGS = VC_ICMP + 65537
VC_ENTRIES = VC_TCP_FLAGS + 65
NO_PORT = 65536
NOT_ICMP = 65536
NOT_TCP = 64
ADDR_DIR_ENTRIES = 2 * 65536
SRC_FAST_PLENS = 4  # prefix lengths the blocklist fast path probes at most (GenConfig.src_fast_plens)
SRC_FAST_DSTS = 16  # destination ranges the fast path applies to at most (GenConfig.src_fast_dst_*)
TUPLE_FAST_SHAPES = 4  # key shapes the exact-tuple fast path probes at most (GenConfig.tuple_fast_*)
# conntrack classes (value_class[VC_PROTO + class * 256 + proto])
CT_NONE, CT_FOUND, CT_NOT_LOOKED_UP, CT_NONE_VERIFIED = 0, 1, 2, 3
CSUM_CHUNK = 512       # bytes per bpf_csum_diff call (the helper's limit)
CSUM_MAX_CHUNKS = 4    # L4 bytes XDP verifies: at most CSUM_CHUNK * CSUM_MAX_CHUNKS

ACT_DROP, ACT_ACCEPT, ACT_DEFER, ACT_CONTINUE = 1, 2, 3, 4
SLOT_RULE, SLOT_SET = 0, 1
# bpf/ipt2xdp_setguard.h: guarded DROP actions, and the shared guard map
ACT_SET_GUARDED, ACT_SET_STALE = 0x10, 0x20
GUARD_REMOVALS, GUARD_ADDITIONS = 1, 2
SETGUARD_LIVE = 0
SETGUARD_ENTRIES = 1 + GEN_SLOTS  # live + one expectation per generation slot
K_SRC, K_DST, K_PROTO, K_SPORT, K_DPORT = 1, 2, 4, 8, 16

STAT_NAMES = ("defer_all", "not_ipv4", "malformed", "fragment", "lookup_fail", "budget",
              "classified", "drop", "pass", "not_local", "nat_flow")
NUM_STATS = len(STAT_NAMES)

# Names that read_counters() gives the counters that are not rules. In the kernel they sit right
# after the rules' counters (gen_config.default_counter, default_counter + 1, + 2).
DEFAULT_COUNTER = 0xFFFFFFFF   # the default action (chain policy)
OVERFLOW_COUNTER = 0xFFFFFFFE  # the catch-all DEFER slot that replaces rules beyond capacity
NAT_NEW_COUNTER = 0xFFFFFFFD   # drops nat PREROUTING would have seen (default_counter + 2, if nat_new)
NAT_NEW_ON, NAT_NEW_TCP_LOOSE = 1, 2  # GenConfig.nat_new bits
NAT_FLOWS = 4  # GenConfig.nat_new: conntrack may hold NATed flows (IPT2XDP_NAT_FLOWS)
NAT_EXPECT = 8  # with NAT_FLOWS: helpers may expect connections, NATed like their master (IPT2XDP_NAT_EXPECT)

BPF_F_INNER_MAP = 1 << 12

# Fixed max_entries of the inner maps that have no BPF_F_INNER_MAP (compile sizes them exactly).
FIXED_INNER_ENTRIES = {"cfg": 1, "slots": MAX_SLOTS, "value_class": VC_ENTRIES, "addr_dir": ADDR_DIR_ENTRIES,
                       "addr_bounds": MAX_BOUNDS}


# --- structs -------------------------------------------------------------------------------------
class State(ctypes.Structure):
    _fields_ = [("active", ctypes.c_uint32), ("last_slot", ctypes.c_uint32), ("generation", ctypes.c_uint64)]


class GenConfig(ctypes.Structure):
    _fields_ = [("generation", ctypes.c_uint64), ("field_mask", ctypes.c_uint32), ("nslots", ctypes.c_uint32),
                ("counter_stride", ctypes.c_uint32), ("default_action", ctypes.c_uint32),
                ("default_counter", ctypes.c_uint32), ("iif_default_row", ctypes.c_uint32),
                ("ngroups", ctypes.c_uint32), ("group_fields", ctypes.c_uint16 * MAX_GROUPS),
                ("group_row", ctypes.c_uint32 * MAX_GROUPS), ("src_fast_plens", ctypes.c_uint8 * SRC_FAST_PLENS),
                ("src_fast_ndst", ctypes.c_uint32), ("src_fast_dst_lo", ctypes.c_uint32 * SRC_FAST_DSTS),
                ("src_fast_dst_hi", ctypes.c_uint32 * SRC_FAST_DSTS), ("nat_new", ctypes.c_uint32),
                ("tuple_fast_fields", ctypes.c_uint8 * TUPLE_FAST_SHAPES),
                ("tuple_fast_src_plen", ctypes.c_uint8 * TUPLE_FAST_SHAPES),
                ("tuple_fast_dst_plen", ctypes.c_uint8 * TUPLE_FAST_SHAPES),
                ("tuple_fast_proto_mask", ctypes.c_uint8 * TUPLE_FAST_SHAPES),
                # masks of the key parts: addresses in network byte order, the two ports as the
                # key's one word (sport then dport in memory); compile.py derives them from the shape
                ("tuple_fast_src_mask", ctypes.c_uint32 * TUPLE_FAST_SHAPES),
                ("tuple_fast_dst_mask", ctypes.c_uint32 * TUPLE_FAST_SHAPES),
                ("tuple_fast_port_mask", ctypes.c_uint32 * TUPLE_FAST_SHAPES)]


class AddrDir(ctypes.Structure):
    _fields_ = [("first", ctypes.c_uint32), ("count", ctypes.c_uint32)]


class AddrBound(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint32), ("row", ctypes.c_uint32)]


class ClassRow(ctypes.Structure):
    _fields_ = [("summary", ctypes.c_uint64 * SUMMARY_WORDS), ("words", ctypes.c_uint64 * MAX_WORDS)]


class Slot(ctypes.Structure):
    _fields_ = [("counter", ctypes.c_uint32), ("next", ctypes.c_uint32), ("set_id", ctypes.c_uint16),
                ("action", ctypes.c_uint8), ("kind", ctypes.c_uint8), ("key_fields", ctypes.c_uint8),
                ("src_plen", ctypes.c_uint8), ("dst_plen", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


class ExactKey(ctypes.Structure):
    # src/dst/sport/dport in network byte order, as read from the packet: pack them with
    # ipt2xdp.compile (struct.pack("!I") / "!H"), never as host integers.
    _fields_ = [("src", ctypes.c_uint8 * 4), ("dst", ctypes.c_uint8 * 4), ("sport", ctypes.c_uint8 * 2),
                ("dport", ctypes.c_uint8 * 2), ("set_id", ctypes.c_uint16), ("proto", ctypes.c_uint8),
                ("pad", ctypes.c_uint8)]


class Counter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class SrcFastKey(ctypes.Structure):
    # src in network byte order, masked to plen (ipt2xdp.fastpath packs it)
    _fields_ = [("src", ctypes.c_uint8 * 4), ("plen", ctypes.c_uint32)]


class SrcFastValue(ctypes.Structure):
    _fields_ = [("counter", ctypes.c_uint32), ("action", ctypes.c_uint32)]


class FastEntry(ctypes.Structure):
    # a fast-path map's per-CPU value in the kernel: the decision (the same on every CPU) and
    # this CPU's count of packets it decided (MapShape.counted)
    _fields_ = [("decision", SrcFastValue), ("count", Counter)]


class SetGuard(ctypes.Structure):
    _fields_ = [("removals", ctypes.c_uint64), ("additions", ctypes.c_uint64), ("deadline_ns", ctypes.c_uint64),
                ("settled", ctypes.c_uint64), ("netns_cookie", ctypes.c_uint64)]


class Stats(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64 * NUM_STATS)]


class CsumScratch(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint8 * (CSUM_CHUNK + 4))]


STRUCTS = {
    "ipt2xdp_state": State, "ipt2xdp_gen_config": GenConfig, "ipt2xdp_addr_dir": AddrDir,
    "ipt2xdp_addr_bound": AddrBound, "ipt2xdp_class_row": ClassRow,
    "ipt2xdp_slot": Slot, "ipt2xdp_exact_key": ExactKey, "ipt2xdp_counter": Counter,
    "ipt2xdp_setguard": SetGuard, "ipt2xdp_csum_scratch": CsumScratch,
    "ipt2xdp_src_fast_key": SrcFastKey, "ipt2xdp_src_fast_value": SrcFastValue,
    "ipt2xdp_fast_entry": FastEntry, "ipt2xdp_stats": Stats,
}
_SIZES = {State: 16, GenConfig: 160 + 8 * SRC_FAST_DSTS, AddrDir: 8, AddrBound: 8, ClassRow: 8 * (SUMMARY_WORDS + MAX_WORDS),
          Slot: 16, ExactKey: 16, Counter: 16, SetGuard: 40, CsumScratch: CSUM_CHUNK + 4, SrcFastKey: 8,
          SrcFastValue: 8, FastEntry: 24, Stats: 8 * NUM_STATS}
for _cls, _size in _SIZES.items():
    assert ctypes.sizeof(_cls) == _size, f"abi: sizeof({_cls.__name__}) != {_size}"


# --- maps ----------------------------------------------------------------------------------------
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12


@dataclass(frozen=True)
class MapShape:
    name: str        # map name in the object (outer map for generation maps)
    map_type: int    # inner map type for generation maps
    key_size: int
    value_size: int
    map_flags: int = 0
    # A generation map the program counts in (the fast paths): the kernel map is a PERCPU_HASH
    # whose value per CPU is this value_size of plan (what compile.Tables holds, the same on
    # every CPU) followed by a Counter. The Dataplane writes and reads it; everything above it
    # sees value_size-byte values.
    counted: bool = False

    @property
    def kernel_type(self) -> int:
        return BPF_MAP_TYPE_PERCPU_HASH if self.counted else self.map_type

    @property
    def kernel_value_size(self) -> int:
        return self.value_size + ctypes.sizeof(Counter) if self.counted else self.value_size


MAP_STATE = MapShape("ipt2xdp_state", BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(State))
MAP_STATS = MapShape("ipt2xdp_stats", BPF_MAP_TYPE_PERCPU_ARRAY, 4, ctypes.sizeof(Stats))  # one entry
MAP_CSUM_SCRATCH = MapShape("ipt2xdp_csum_scratch", BPF_MAP_TYPE_PERCPU_ARRAY, 4, ctypes.sizeof(CsumScratch))
MAP_SETGUARD = MapShape("ipt2xdp_setguard", BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(SetGuard))
PROGRAM_NAME = "ipt2xdp_xdp"

# Per-generation maps: logical name (as in compile.Tables) -> shape of the inner map.
GEN_MAPS = {
    # cfg, slots, value_class, addr_dir and addr_bounds have a fixed size (no BPF_F_INNER_MAP), so
    # the verifier inlines their lookups; the rest are sized per generation.
    "cfg": MapShape("ipt2xdp_g_cfg", BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(GenConfig)),
    "slots": MapShape("ipt2xdp_g_slots", BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(Slot)),
    "value_class": MapShape("ipt2xdp_g_value_class", BPF_MAP_TYPE_ARRAY, 4, 4),
    "addr_dir": MapShape("ipt2xdp_g_addr_dir", BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(AddrDir)),
    "addr_bounds": MapShape("ipt2xdp_g_addr_bounds", BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(AddrBound)),
    "class_rows": MapShape("ipt2xdp_g_class_rows", BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(ClassRow), BPF_F_INNER_MAP),
    # max_entries = counter_stride * possible CPUs (the loader multiplies)
    "counters": MapShape("ipt2xdp_g_counters", BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(Counter), BPF_F_INNER_MAP),
    # the rule id of each counter (slots and exact_set hold counters, not rule ids); userspace only
    "counter_rules": MapShape("ipt2xdp_g_counter_rules", BPF_MAP_TYPE_ARRAY, 4, 4, BPF_F_INNER_MAP),
    "iif_class": MapShape("ipt2xdp_g_iif_class", BPF_MAP_TYPE_HASH, 4, 4),
    "exact_set": MapShape("ipt2xdp_g_exact_set", BPF_MAP_TYPE_HASH, ctypes.sizeof(ExactKey), 4),
    # the fast paths: per-CPU in the kernel, each entry counting its hits (MapShape.counted)
    "src_fast": MapShape("ipt2xdp_g_src_fast", BPF_MAP_TYPE_HASH, ctypes.sizeof(SrcFastKey), ctypes.sizeof(SrcFastValue),
                         counted=True),
    "tuple_fast": MapShape("ipt2xdp_g_tuple_fast", BPF_MAP_TYPE_HASH, ctypes.sizeof(ExactKey), ctypes.sizeof(SrcFastValue),
                           counted=True),
}
