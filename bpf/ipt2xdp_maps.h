/* SPDX-License-Identifier: GPL-2.0-only */
/* Map definitions of the ipt2xdp XDP program.
 *
 * Two kinds of maps:
 *  - global: `ipt2xdp_state` (which generation is in force) and `ipt2xdp_stats`;
 *  - per generation: each `ipt2xdp_g_*` is an ARRAY_OF_MAPS with IPT2XDP_GEN_SLOTS entries whose
 *    inner maps hold one generation's data. The declarations below give the inner map template the
 *    verifier checks against; userspace creates the real inner maps sized to the ruleset
 *    (BPF_F_INNER_MAP lets array sizes differ between generations; hash sizes may always differ).
 * Map names are mirrored once in ipt2xdp/abi.py.
 *
 * Inner templates give key_size/value_size rather than __type(): clang 14 emits only forward
 * declarations for structs reached through the nested pointers of a map-in-map definition, and
 * libbpf cannot size a forward declaration. `ipt2xdp_abi` below carries their full BTF instead.
 */
#ifndef IPT2XDP_MAPS_H
#define IPT2XDP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "ipt2xdp_kern_user.h"

/* state[0]: active generation slot; the single word an update flips. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ipt2xdp_state);
} ipt2xdp_state SEC(".maps");

/* stats[0].packets[IPT2XDP_STAT_*]: packets per reason, all generations. One value holding every
 * reason: a packet bumps two (its reason and its verdict) after one lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ipt2xdp_stats);
} ipt2xdp_stats SEC(".maps");

/* csum_scratch[0]: per-CPU room for L4 checksum verification (the 512-byte stack has none). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ipt2xdp_csum_scratch);
} ipt2xdp_csum_scratch SEC(".maps");

/* abi[0]: never read by the program. Its value type holds every shared struct by value, so the
 * object's BTF describes their layout for tests/test_abi.py and for the load-time check. */
struct ipt2xdp_abi {
	struct ipt2xdp_state state;
	struct ipt2xdp_gen_config gen_config;
	struct ipt2xdp_addr_dir addr_dir;
	struct ipt2xdp_addr_bound addr_bound;
	struct ipt2xdp_class_row class_row;
	struct ipt2xdp_slot slot;
	struct ipt2xdp_exact_key exact_key;
	struct ipt2xdp_counter counter;
	struct ipt2xdp_src_fast_key src_fast_key;
	struct ipt2xdp_src_fast_value src_fast_value;
	struct ipt2xdp_fast_entry fast_entry;
	struct ipt2xdp_stats stats;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ipt2xdp_abi);
} ipt2xdp_abi SEC(".maps");

#define IPT2XDP_INNER_ARRAY(name, value_type)                                                        \
	struct name {                                                                                \
		__uint(type, BPF_MAP_TYPE_ARRAY);                                                    \
		__uint(max_entries, 1);                                                              \
		__uint(map_flags, BPF_F_INNER_MAP);                                                  \
		__uint(key_size, sizeof(__u32));                                                     \
		__uint(value_size, sizeof(value_type));                                              \
	}

/* A fixed-size inner array: every generation has the same max_entries, so the verifier can
 * inline its lookups (it refuses to for BPF_F_INNER_MAP arrays, whose size may vary). */
#define IPT2XDP_INNER_FIXED_ARRAY(name, value_type, entries)                                         \
	struct name {                                                                                \
		__uint(type, BPF_MAP_TYPE_ARRAY);                                                    \
		__uint(max_entries, entries);                                                        \
		__uint(key_size, sizeof(__u32));                                                     \
		__uint(value_size, sizeof(value_type));                                              \
	}

#define IPT2XDP_OUTER(name, inner)                                                                   \
	struct {                                                                                     \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);                                            \
		__uint(max_entries, IPT2XDP_GEN_SLOTS);                                              \
		__type(key, __u32);                                                                  \
		__array(values, struct inner);                                                       \
	} name SEC(".maps")

/* cfg[0]: the generation's geometry and default action. */
IPT2XDP_INNER_FIXED_ARRAY(ipt2xdp_inner_cfg, struct ipt2xdp_gen_config, 1);
IPT2XDP_OUTER(ipt2xdp_g_cfg, ipt2xdp_inner_cfg);

/* slots[s]: action and kind of each rule slot. */
IPT2XDP_INNER_FIXED_ARRAY(ipt2xdp_inner_slots, struct ipt2xdp_slot, IPT2XDP_MAX_SLOTS);
IPT2XDP_OUTER(ipt2xdp_g_slots, ipt2xdp_inner_slots);

/* value_class[IPT2XDP_VC_* + value]: class row of a protocol, port, ICMP type/code, TCP flags. */
IPT2XDP_INNER_FIXED_ARRAY(ipt2xdp_inner_value_class, __u32, IPT2XDP_VC_ENTRIES);
IPT2XDP_OUTER(ipt2xdp_g_value_class, ipt2xdp_inner_value_class);

/* addr_dir[field * 65536 + (addr >> 16)]: where to search addr_bounds for one /16 block. */
IPT2XDP_INNER_FIXED_ARRAY(ipt2xdp_inner_addr_dir, struct ipt2xdp_addr_dir, IPT2XDP_ADDR_DIR_ENTRIES);
IPT2XDP_OUTER(ipt2xdp_g_addr_dir, ipt2xdp_inner_addr_dir);

/* addr_bounds[i]: sorted interval starts (host byte order) and their class rows. */
IPT2XDP_INNER_FIXED_ARRAY(ipt2xdp_inner_addr_bounds, struct ipt2xdp_addr_bound, IPT2XDP_MAX_BOUNDS);
IPT2XDP_OUTER(ipt2xdp_g_addr_bounds, ipt2xdp_inner_addr_bounds);

/* class_rows[row]: the rule bitmap and summary of one class, and the member bitmaps of groups.
 * Sized per generation (BPF_F_INNER_MAP): rows follow the ruleset and are 2 KiB each. */
IPT2XDP_INNER_ARRAY(ipt2xdp_inner_class_rows, struct ipt2xdp_class_row);
IPT2XDP_OUTER(ipt2xdp_g_class_rows, ipt2xdp_inner_class_rows);

/* counters[cpu * counter_stride + counter]: per-rule packets and bytes of this generation, for
 * the rules the classifier decides (a slot's or exact_set's counter; gen_config.default_counter
 * and the two after it). A fast-path rule has no slot here: its entry counts it. An ARRAY strided
 * per CPU rather than a PERCPU_ARRAY: the kernel refuses BPF_F_INNER_MAP for PERCPU_ARRAY, and
 * only BPF_F_INNER_MAP lets each generation size it to its own rules. */
IPT2XDP_INNER_ARRAY(ipt2xdp_inner_counters, struct ipt2xdp_counter);
IPT2XDP_OUTER(ipt2xdp_g_counters, ipt2xdp_inner_counters);

/* counter_rules[counter]: the rule id counted at counters[cpu * counter_stride + counter]. Never
 * read by the program: userspace names its counts (and the slots' rules) with it. */
IPT2XDP_INNER_ARRAY(ipt2xdp_inner_counter_rules, __u32);
IPT2XDP_OUTER(ipt2xdp_g_counter_rules, ipt2xdp_inner_counter_rules);

/* iif_class[ifindex]: class row of an input interface (missing: gen_config.iif_default_row). */
struct ipt2xdp_inner_iif_class {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
};
IPT2XDP_OUTER(ipt2xdp_g_iif_class, ipt2xdp_inner_iif_class);

/* exact_set[key]: counter of the rule of a merged run whose exact values equal the key. */
struct ipt2xdp_inner_exact_set {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(struct ipt2xdp_exact_key));
	__uint(value_size, sizeof(__u32));
};
IPT2XDP_OUTER(ipt2xdp_g_exact_set, ipt2xdp_inner_exact_set);

/* src_fast[key]: the blocklist fast path (struct ipt2xdp_src_fast_key); empty without one. Per
 * CPU: each entry counts what it decides (struct ipt2xdp_fast_entry). */
struct ipt2xdp_inner_src_fast {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(struct ipt2xdp_src_fast_key));
	__uint(value_size, sizeof(struct ipt2xdp_fast_entry));
};
IPT2XDP_OUTER(ipt2xdp_g_src_fast, ipt2xdp_inner_src_fast);

/* tuple_fast[key]: the exact-tuple fast path (struct ipt2xdp_exact_key); empty without one. Per
 * CPU, as src_fast. */
struct ipt2xdp_inner_tuple_fast {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(struct ipt2xdp_exact_key));
	__uint(value_size, sizeof(struct ipt2xdp_fast_entry));
};
IPT2XDP_OUTER(ipt2xdp_g_tuple_fast, ipt2xdp_inner_tuple_fast);

#endif /* IPT2XDP_MAPS_H */
