/* SPDX-License-Identifier: GPL-2.0-only */
/* Bounds-checked header parsing with a cursor, in the xdp-tools style: each parse_*() checks that
 * its header lies inside the packet, advances the cursor, and returns the next protocol or -1.
 */
#ifndef IPT2XDP_PARSING_H
#define IPT2XDP_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

#ifndef IP_MF
#define IP_MF 0x2000
#endif
#ifndef IP_OFFSET
#define IP_OFFSET 0x1fff
#endif

/* <linux/icmp.h> drags in libc's socket headers, which -target bpf cannot build; the 8 bytes
 * netfilter's icmp match reads are all we need. */
struct icmphdr_min {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 rest;
};

struct hdr_cursor {
	void *pos;
};

/* Ethernet: returns the ethertype in network byte order. VLAN and QinQ tags are not skipped: a
 * tagged frame is reported as ETH_P_8021Q/8021AD and passed to the stack untouched. */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end, struct ethhdr **ethhdr)
{
	struct ethhdr *eth = nh->pos;

	if ((void *)(eth + 1) > data_end)
		return -1;
	nh->pos = eth + 1;
	*ethhdr = eth;
	return eth->h_proto;
}

/* IPv4 with options: checks version, ihl >= 5 and that the whole header (options included) lies
 * in the packet; returns the L4 protocol number. */
static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end, struct iphdr **iphdr)
{
	struct iphdr *iph = nh->pos;
	int hdrsize;

	if ((void *)(iph + 1) > data_end)
		return -1;
	if (iph->version != 4 || iph->ihl < 5)
		return -1;
	hdrsize = iph->ihl * 4;
	if (nh->pos + hdrsize > data_end)
		return -1;
	nh->pos += hdrsize;
	*iphdr = iph;
	return iph->protocol;
}

/* TCP: the fixed header and a data offset that covers at least it must lie before `end` (the
 * smaller of the packet end and the IP total length). Returns the header length or -1. */
static __always_inline int parse_tcphdr(struct hdr_cursor *nh, void *end, struct tcphdr **tcphdr)
{
	struct tcphdr *h = nh->pos;
	int len;

	if ((void *)(h + 1) > end)
		return -1;
	len = h->doff * 4;
	if (len < (int)sizeof(*h) || nh->pos + len > end)
		return -1;
	nh->pos += len;
	*tcphdr = h;
	return len;
}

static __always_inline int parse_udphdr(struct hdr_cursor *nh, void *end, struct udphdr **udphdr)
{
	struct udphdr *h = nh->pos;

	if ((void *)(h + 1) > end)
		return -1;
	nh->pos = h + 1;
	*udphdr = h;
	return sizeof(*h);
}

/* ICMP: netfilter's icmp match reads a whole struct icmphdr (8 bytes); so do we. */
static __always_inline int parse_icmphdr(struct hdr_cursor *nh, void *end, struct icmphdr_min **icmphdr)
{
	struct icmphdr_min *h = nh->pos;

	if ((void *)(h + 1) > end)
		return -1;
	nh->pos = h + 1;
	*icmphdr = h;
	return sizeof(*h);
}

#endif /* IPT2XDP_PARSING_H */
