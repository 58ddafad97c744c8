// SPDX-License-Identifier: GPL-2.0-only
// The "empty" XDP program that benchmarks measure beside ipt2xdp: it drops everything and does nothing else.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_drop_all(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
