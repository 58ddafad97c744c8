// SPDX-License-Identifier: GPL-2.0-only
/* ipt2xdp's ipset guard: counts calls of the kernel functions that change set membership into
 * ipt2xdp_setguard[IPT2XDP_SETGUARD_LIVE] (see ipt2xdp_setguard.h), at entry and at exit.
 *
 * Entry: the count moves before the change can take effect, so XDP stops trusting the copy no
 * later than netfilter starts seeing the change. Exit: an import that read the count while a
 * change was in progress (xt_SET's ip_set_del runs in softirq without the ipset mutex, so a
 * listing may still have seen the old member) finds it moved again and defers as well.
 *
 * Removing: ip_set_udel (`ipset del`, restore), ip_set_del (xt_SET --del-set), ip_set_flush,
 * ip_set_destroy. Adding: ip_set_uadd (`ipset add`, restore; with forceadd an add may evict a
 * member, which the planner covers by also guarding removals with additions), ip_set_add (xt_SET
 * --add-set). Both: ip_set_swap (contents exchanged), ip_set_rename (names re-bound). Timeouts
 * expire without any call: the import's deadline covers them. All are nfnetlink handlers or xt_SET
 * exports in net/netfilter/ipset/ip_set_core.c, present in vmlinux BTF on kernels that build ipset
 * in (in the ip_set module's BTF otherwise). Counts from other network namespaces only cost
 * offload.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ipt2xdp_setguard.h"

static __always_inline void bump(int removals, int additions)
{
	__u32 key = IPT2XDP_SETGUARD_LIVE;
	struct ipt2xdp_setguard *live = bpf_map_lookup_elem(&ipt2xdp_setguard, &key);

	if (!live)
		return;
	if (removals)
		__sync_fetch_and_add(&live->removals, 1);
	if (additions)
		__sync_fetch_and_add(&live->additions, 1);
}

#define GUARD(func, removals, additions)                                                            \
	SEC("fentry/" #func) int guard_enter_##func(void *ctx)                                      \
	{                                                                                            \
		bump(removals, additions);                                                           \
		return 0;                                                                            \
	}                                                                                            \
	SEC("fexit/" #func) int guard_exit_##func(void *ctx)                                        \
	{                                                                                            \
		bump(removals, additions);                                                           \
		return 0;                                                                            \
	}

GUARD(ip_set_udel, 1, 0)
GUARD(ip_set_del, 1, 0)
GUARD(ip_set_flush, 1, 0)
GUARD(ip_set_destroy, 1, 0)
GUARD(ip_set_uadd, 0, 1)
GUARD(ip_set_add, 0, 1)
GUARD(ip_set_swap, 1, 1)
GUARD(ip_set_rename, 1, 1)

char _license[] SEC("license") = "GPL";
