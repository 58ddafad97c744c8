/* SPDX-License-Identifier: GPL-2.0-only */
/* The ipset guard: shared by the XDP program and bpf/ipt2xdp_setguard.bpf.c (mirrored in
 * ipt2xdp/setguard.py). XDP decides `-m set` rules from a copy of the sets' members taken at import.
 * The guard programs (ipt2xdp_setguard.bpf.c) count every request that may change a set into
 * `live` when it starts and when it is done; the import waits until none is in flight, reads the
 * counts, copies the sets, and stores the counts in expect[generation slot]. A DROP whose truth depends on the sets not having lost (or gained)
 * members is compiled as IPT2XDP_ACT_SET_GUARDED | bits and only drops while the counts it depends
 * on are unchanged and, for removals, before the earliest element timeout (deadline_ns); otherwise
 * the packet goes to netfilter, which holds the sets in force. No polling: a change is seen by the
 * next packet.
 */
#ifndef IPT2XDP_SETGUARD_H
#define IPT2XDP_SETGUARD_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "ipt2xdp_kern_user.h"

/* ipt2xdp_setguard[0] is live, [1 + generation slot] what that generation was built from. */
#define IPT2XDP_SETGUARD_LIVE 0
#define IPT2XDP_SETGUARD_ENTRIES (1 + IPT2XDP_GEN_SLOTS)

/* Slot actions 0x10..0x13: a DROP guarded by the sets; the low bits say which changes break it. */
#define IPT2XDP_ACT_SET_GUARDED 0x10
#define IPT2XDP_GUARD_REMOVALS 1 /* members removed (del, flush, destroy, swap, timeouts) */
#define IPT2XDP_GUARD_ADDITIONS 2 /* members added (add, swap, forceadd) */
/* What setguard_action() returns for a guarded DROP whose sets changed: pass, do not count. */
#define IPT2XDP_ACT_SET_STALE 0x20

struct ipt2xdp_setguard {
	__u64 removals; /* live: requests that may remove members, counted as they start */
	__u64 additions; /* live: requests that may add members; expect: the values read */
	__u64 deadline_ns; /* expect only: bpf_ktime_get_ns() bound before any element times out */
	__u64 settled; /* live only: requests counted in removals that are done */
	__u64 netns_cookie; /* live only: the namespace whose sets are guarded (0: count every one) */
};
_Static_assert(sizeof(struct ipt2xdp_setguard) == 40, "abi");

/* The one map both objects share: the loader pins it beside the program and sets its pin path in
 * both objects before loading them, so they open the same map. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IPT2XDP_SETGUARD_ENTRIES);
	__type(key, __u32);
	__type(value, struct ipt2xdp_setguard);
} ipt2xdp_setguard SEC(".maps");

/* The action a slot's action byte stands for now: guarded DROPs become DROP while their sets are
 * as the generation saw them, IPT2XDP_ACT_SET_STALE otherwise (or if a lookup fails). */
static __always_inline __u32 setguard_action(__u32 gen_slot, __u32 action)
{
	__u32 live_key = IPT2XDP_SETGUARD_LIVE, want_key = 1 + gen_slot;
	struct ipt2xdp_setguard *live, *want;

	if ((action & ~3U) != IPT2XDP_ACT_SET_GUARDED)
		return action;
	live = bpf_map_lookup_elem(&ipt2xdp_setguard, &live_key);
	want = bpf_map_lookup_elem(&ipt2xdp_setguard, &want_key);
	if (!live || !want)
		return IPT2XDP_ACT_SET_STALE;
	if (action & IPT2XDP_GUARD_REMOVALS) {
		if (*(volatile __u64 *)&live->removals != want->removals)
			return IPT2XDP_ACT_SET_STALE;
		if (want->deadline_ns != ~0ULL && bpf_ktime_get_ns() >= want->deadline_ns)
			return IPT2XDP_ACT_SET_STALE;
	}
	if ((action & IPT2XDP_GUARD_ADDITIONS) && *(volatile __u64 *)&live->additions != want->additions)
		return IPT2XDP_ACT_SET_STALE;
	return IPT2XDP_ACT_DROP;
}

#endif /* IPT2XDP_SETGUARD_H */
