// SPDX-License-Identifier: GPL-2.0-only
// Placeholder until the classifier lands: passes every packet to netfilter.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int ipt2xdp_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
