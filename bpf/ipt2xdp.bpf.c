// SPDX-License-Identifier: GPL-2.0-only
/* ipt2xdp: the one fixed XDP program. Its behaviour comes only from map contents.
 *
 * A packet is parsed, then judged by the generation of maps in force:
 *  0. a source in the generation's blocklist fast path (src_fast: prefixes every packet from which
 *     the plan drops with one rule, whatever else it holds) goes straight to that rule's DROP;
 *     then the exact-tuple fast path (tuple_fast: boxes of exact source/destination prefixes,
 *     protocol and ports, one hash probe per key shape the generation uses) likewise;
 *     the class bitmaps below hold the rest of the plan only;
 *  1. each constrained field maps the packet's value to a class row (ports, protocol, ICMP, TCP
 *     flags: direct array index; addresses: a /16 directory then a short binary search over sorted
 *     interval starts; input interface: a hash);
 *  2. each class row owns a bitmap of the rule slots that may match it, plus a summary bitmap with
 *     one bit per nonzero 64-bit word, in one map value: one lookup per field, then plain loads.
 *     Slots are grouped by the set of fields they constrain (see gen_config); per group the
 *     summaries of its fields and members are AND-ed, and only words where some group has a
 *     candidate are ever read, so the cost stays nearly flat as slots grow (aggregated bit
 *     vectors, Baboescu & Varghese 2001, without their weakness for interleaved wildcards);
 *  3. the lowest set bit >= k of the AND is the first slot that matches. A SET slot (a merged run of
 *     rules differing only in exact values) confirms with one hash lookup and, on a miss, matching
 *     resumes after it. A CONTINUE slot resumes at a later slot (RETURN of an inlined user chain);
 *  4. no slot left: the default action (the chain policy outcome).
 *
 * The invariant: XDP never drops what netfilter would accept. Any doubt (non-IPv4, fragments,
 * malformed or truncated headers, a failed lookup, the per-packet work budget spent, no generation
 * in force) gives XDP_PASS, and netfilter decides.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ipt2xdp_kern_user.h"
#include "ipt2xdp_maps.h"
#include "ipt2xdp_setguard.h"
#include "parsing.h"

#define ENOENT 2
#define AF_INET 2
#define BPF_F_CURRENT_NETNS (-1)

/* Conntrack lookup from XDP (net/netfilter/nf_conntrack_bpf.c). The kernel's struct bpf_ct_opts
 * is 16 bytes since 6.x (NF_BPF_CT_OPTS_SZ; ct_zone_* were added after the 12-byte original):
 * checked against /sys/kernel/btf/vmlinux. libbpf resolves the kfuncs by name from vmlinux BTF
 * (composite argument types are compatible whatever their members; a bare forward declaration is
 * not, so nf_conn gets a placeholder member: the program never reads it). */
struct nf_conn {
	__u64 opaque;
};
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};
_Static_assert(sizeof(struct bpf_ct_opts) == 16, "NF_BPF_CT_OPTS_SZ");
extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *xdp_ctx, struct bpf_sock_tuple *bpf_tuple,
					 __u32 tuple__sz, struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

/* The kernel structures the route check reads, relocated by libbpf against the running kernel's
 * BTF (CO-RE: the ___ipt2xdp suffix is dropped when matching, only the named members must exist).
 * bpf_cast_to_kern_ctx (Linux 6.3) turns the xdp_md into the xdp_buff it stands for. */
struct ipv4_devconf___ipt2xdp {
	int data[1];
} __attribute__((preserve_access_index));
struct in_device___ipt2xdp {
	struct ipv4_devconf___ipt2xdp cnf;
} __attribute__((preserve_access_index));
struct net_device___ipt2xdp {
	struct in_device___ipt2xdp *ip_ptr;
} __attribute__((preserve_access_index));
struct xdp_rxq_info___ipt2xdp {
	struct net_device___ipt2xdp *dev;
} __attribute__((preserve_access_index));
struct xdp_buff___ipt2xdp {
	struct xdp_rxq_info___ipt2xdp *rxq;
} __attribute__((preserve_access_index));
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* What the classifier reads from a packet. parse_packet fills all but value[] (there only the
 * TCP flags of TCP and the type and code of ICMP: no room for another member in the 512-byte
 * stack); class_values fills the rest of value[] once the blocklist fast path has missed (a hit
 * sets only the protocol's class key, for nat_would_see). Every member is set before it is read:
 * nothing is zeroed per packet (a privileged program may read stack it never wrote). */
struct packet_fields {
	__u32 src_net, dst_net; /* network byte order, as in the packet */
	__u32 value[IPT2XDP_NUM_FIELDS]; /* host order; addresses, value_class index, or ifindex */
	__u16 sport_net, dport_net; /* network byte order; 0 without ports; adjacent, in this order
				     * (tuple_fast_hit reads them as one word) */
	__u16 ip_len; /* IP total length, what iptables byte counters count (16 bits, as in the
			* header: a wider field grew the main stack past its 512-byte limit) */
	__u8 proto;
	__u8 tos; /* for the route lookup: policy rules may select on it */
};

/* The generation in force for this packet: its slot index and config. Inner maps are looked up
 * from the outer maps where needed, not kept: ARRAY_OF_MAPS lookups are inlined (a few
 * instructions), and keeping nine pointers on the stack overflowed the 512-byte stack limit
 * shared by the program and its bpf_loop callback. */
struct generation {
	struct ipt2xdp_gen_config *cfg;
	__u32 slot;
};

static __always_inline void *gen_map(void *outer, struct generation *gen)
{
	return bpf_map_lookup_elem(outer, &gen->slot);
}

/* One packet in stats: its reason and its verdict (IPT2XDP_STAT_DROP or _PASS). */
static __always_inline void count_stat(__u32 stat, __u32 verdict)
{
	__u32 zero = 0;
	struct ipt2xdp_stats *stats = bpf_map_lookup_elem(&ipt2xdp_stats, &zero);

	if (!stats)
		return;
	if (stat < IPT2XDP_NUM_STATS)
		stats->packets[stat] += 1;
	stats->packets[verdict == XDP_DROP ? IPT2XDP_STAT_DROP : IPT2XDP_STAT_PASS] += 1;
}

/* Index of the lowest set bit of x (x != 0), branch-free (de Bruijn multiply and a table): with
 * branches, each path gave the verifier a distinct constant word index and the step callback
 * never converged; a table load is one imprecise value. */
static const __u8 debruijn64[64] = {
	0,  1,  48, 2,  57, 49, 28, 3,  61, 58, 50, 42, 38, 29, 17, 4,  62, 55, 59, 36, 53, 51,
	43, 22, 45, 39, 33, 30, 24, 18, 12, 5,  63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21,
	44, 32, 23, 11, 46, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9,  13, 8,  7,  6,
};

static __always_inline __u32 ctz64(__u64 x)
{
	return debruijn64[((x & -x) * 0x03f79d71b4cb0a89ULL) >> 58];
}

/* Parse; returns IPT2XDP_STAT_CLASSIFIED when the packet can be classified, else the reason to pass. */
static __always_inline __u32 parse_packet(struct xdp_md *ctx, struct packet_fields *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor nh = { .pos = data };
	struct ethhdr *eth;
	struct iphdr *iph;
	struct tcphdr *tcph;
	struct udphdr *udph;
	struct icmphdr_min *icmph;
	__u32 tot_len, l4_end;
	int proto;

	proto = parse_ethhdr(&nh, data_end, &eth);
	if (proto < 0)
		return IPT2XDP_STAT_MALFORMED;
	if (proto != bpf_htons(ETH_P_IP))
		return IPT2XDP_STAT_NOT_IPV4;
	proto = parse_iphdr(&nh, data_end, &iph);
	if (proto < 0)
		return IPT2XDP_STAT_MALFORMED;
	/* The stack trims to tot_len and drops packets shorter than it claims; netfilter sees the
	 * trimmed packet, so L4 headers must fit within tot_len too. */
	tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len < iph->ihl * 4 || (void *)iph + tot_len > data_end)
		return IPT2XDP_STAT_MALFORMED;
	/* Netfilter judges reassembled packets; XDP sees the pieces. */
	if (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return IPT2XDP_STAT_FRAGMENT;
	/* The stack processes IP options after PREROUTING and before filter/INPUT: bad ones get an
	 * ICMP parameter problem, source routes are dropped. Only netfilter plus the stack can tell
	 * what happens, so such packets are passed (counted with the malformed ones). */
	if (iph->ihl != 5)
		return IPT2XDP_STAT_MALFORMED;

	pkt->src_net = iph->saddr;
	pkt->dst_net = iph->daddr;
	pkt->proto = proto;
	pkt->tos = iph->tos;
	pkt->ip_len = tot_len;
	pkt->sport_net = 0;
	pkt->dport_net = 0;

	if (proto == IPPROTO_TCP) {
		if (parse_tcphdr(&nh, data_end, &tcph) < 0)
			return IPT2XDP_STAT_MALFORMED;
		pkt->sport_net = tcph->source;
		pkt->dport_net = tcph->dest;
		/* byte 13 of the TCP header; the low six bits are FIN..URG */
		pkt->value[IPT2XDP_F_TCP_FLAGS] = IPT2XDP_VC_TCP_FLAGS + (((__u8 *)tcph)[13] & 0x3f);
	} else if (proto == IPPROTO_UDP) {
		if (parse_udphdr(&nh, data_end, &udph) < 0)
			return IPT2XDP_STAT_MALFORMED;
		pkt->sport_net = udph->source;
		pkt->dport_net = udph->dest;
	} else if (proto == IPPROTO_ICMP) {
		if (parse_icmphdr(&nh, data_end, &icmph) < 0)
			return IPT2XDP_STAT_MALFORMED;
		pkt->value[IPT2XDP_F_ICMP] = IPT2XDP_VC_ICMP + icmph->type * 256 + icmph->code;
	} else {
		return IPT2XDP_STAT_CLASSIFIED;
	}
	l4_end = nh.pos - (void *)iph;
	if (l4_end > tot_len)
		return IPT2XDP_STAT_MALFORMED;
	return IPT2XDP_STAT_CLASSIFIED;
}

/* The protocol's class key before any conntrack lookup (ct_class refines it). */
static __always_inline void proto_value_unlooked(struct packet_fields *pkt)
{
	pkt->value[IPT2XDP_F_PROTO] = IPT2XDP_VC_PROTO + IPT2XDP_CT_NOT_LOOKED_UP * 256 + pkt->proto;
}

/* The class lookup key of each field (value[]), from what parse_packet read and left there. */
static __always_inline void class_values(struct xdp_md *ctx, struct packet_fields *pkt)
{
	__u32 proto = pkt->proto;

	pkt->value[IPT2XDP_F_SRC] = bpf_ntohl(pkt->src_net);
	pkt->value[IPT2XDP_F_DST] = bpf_ntohl(pkt->dst_net);
	proto_value_unlooked(pkt);
	pkt->value[IPT2XDP_F_SPORT] = IPT2XDP_VC_SPORT + IPT2XDP_NO_PORT;
	pkt->value[IPT2XDP_F_DPORT] = IPT2XDP_VC_DPORT + IPT2XDP_NO_PORT;
	pkt->value[IPT2XDP_F_IIF] = ctx->ingress_ifindex;
	if (proto != IPPROTO_ICMP)
		pkt->value[IPT2XDP_F_ICMP] = IPT2XDP_VC_ICMP + IPT2XDP_NOT_ICMP;
	if (proto != IPPROTO_TCP)
		pkt->value[IPT2XDP_F_TCP_FLAGS] = IPT2XDP_VC_TCP_FLAGS + IPT2XDP_NOT_TCP;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		pkt->value[IPT2XDP_F_SPORT] = IPT2XDP_VC_SPORT + bpf_ntohs(pkt->sport_net);
		pkt->value[IPT2XDP_F_DPORT] = IPT2XDP_VC_DPORT + bpf_ntohs(pkt->dport_net);
	}
}

/* Whether conntrack's tcp_error/udp_error would pass the length and checksum of this TCP or UDP
 * packet (parse_packet has checked the TCP data offset against the IP total length, and that
 * there are no IP options: L4 starts at byte 34). UDP: 8 <= length field <= IP payload, and a
 * zero checksum is not checked. The checksum is nf_ip_checksum's: the pseudo-header with the IP
 * payload length, then the whole payload up to tot_len. A packet whose checksum verifies here
 * verifies in conntrack too (which may also skip it: CHECKSUM_UNNECESSARY, or the sysctl off);
 * one that does not, or is too long to check, or a failed helper, is "not verified" and the
 * planner keeps NEW and INVALID both possible for it. Scratch space comes from a per-CPU map:
 * this function runs on top of the main program's full stack. */
static __noinline int l4_verified(struct xdp_md *ctx, struct packet_fields *pkt)
{
	__u32 zero = 0, len = pkt->ip_len - 20, n, size, i;
	struct ipt2xdp_csum_scratch *scratch;
	__be32 *words;
	__s64 sum;

	scratch = bpf_map_lookup_elem(&ipt2xdp_csum_scratch, &zero);
	if (!scratch || len > IPT2XDP_CSUM_CHUNK * IPT2XDP_CSUM_MAX_CHUNKS)
		return 0;
	words = (__be32 *)scratch->bytes;
	if (pkt->proto == IPPROTO_UDP) {
		if (bpf_xdp_load_bytes(ctx, 34, scratch->bytes, 8) < 0)
			return 0;
		n = bpf_ntohs(((struct udphdr *)scratch->bytes)->len);
		if (n < 8 || n > len)
			return 0;
		if (!((struct udphdr *)scratch->bytes)->check)
			return 1;
	}
	words[0] = pkt->src_net;
	words[1] = pkt->dst_net;
	words[2] = bpf_htonl((pkt->proto << 16) | len);
	sum = bpf_csum_diff(0, 0, words, 12, 0);
#pragma unroll
	for (i = 0; i < IPT2XDP_CSUM_MAX_CHUNKS; i++) {
		if (len <= i * IPT2XDP_CSUM_CHUNK)
			break;
		n = len - i * IPT2XDP_CSUM_CHUNK;
		if (n > IPT2XDP_CSUM_CHUNK)
			n = IPT2XDP_CSUM_CHUNK;
		/* n is 1..CHUNK here; the mask (an identity on that range, hidden from the compiler)
		 * lets the verifier see the bounds bpf_xdp_load_bytes needs */
		asm volatile("" : "+r"(n));
		n = ((n - 1) & (IPT2XDP_CSUM_CHUNK - 1)) + 1;
		if (sum < 0 || bpf_xdp_load_bytes(ctx, 34 + i * IPT2XDP_CSUM_CHUNK, scratch->bytes, n) < 0)
			return 0;
		/* an odd tail is summed as if padded with zeros, as the Internet checksum is */
		scratch->bytes[n] = 0;
		scratch->bytes[n + 1] = 0;
		scratch->bytes[n + 2] = 0;
		size = ((n + 3) >> 2) << 2; /* 4..CHUNK: CHUNK is a multiple of 4 */
		sum = bpf_csum_diff(0, 0, words, size, (__u32)sum);
	}
	if (sum < 0)
		return 0;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

/* Conntrack class of a TCP or UDP packet, folded into the protocol's class index: an entry in
 * either direction is FOUND; -ENOENT is NONE_VERIFIED or NONE (l4_verified, asked only if
 * `verify`: else the two share a class row and NONE stands for both); any other error stays
 * NOT_LOOKED_UP. Called only when the protocol's rows differ between conntrack classes
 * (ct_matters) and for nat_would_see. Not inlined: its 50 bytes of stack stay off the path of the
 * bpf_loop callback (program + callback must fit in 512 bytes). Global, not static: the verifier
 * checks it once on its own instead of once per call site (two call sites made loading the
 * program take 0.35 s instead of 0.12); the pointer a global function gets may be NULL. The
 * lookup is in the netns of the receiving device and zone 0, as conntrack would see the packet
 * unless raw/PREROUTING changes the zone (those packets are deferred by the planner's guards). */
__noinline int ct_class(struct xdp_md *ctx, struct packet_fields *pkt, int verify)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_ct_opts opts = {};
	struct nf_conn *ct;
	__u32 cls;

	if (!pkt)
		return 0;
	tuple.ipv4.saddr = pkt->src_net;
	tuple.ipv4.daddr = pkt->dst_net;
	tuple.ipv4.sport = pkt->sport_net;
	tuple.ipv4.dport = pkt->dport_net;
	opts.netns_id = BPF_F_CURRENT_NETNS;
	opts.l4proto = pkt->proto;
	ct = bpf_xdp_ct_lookup(ctx, &tuple, sizeof(tuple.ipv4), &opts, sizeof(opts));
	if (ct) {
		bpf_ct_release(ct);
		pkt->value[IPT2XDP_F_PROTO] = IPT2XDP_VC_PROTO + IPT2XDP_CT_FOUND * 256 + pkt->proto;
	} else if (opts.error == -ENOENT) {
		cls = verify && l4_verified(ctx, pkt) ? IPT2XDP_CT_NONE_VERIFIED : IPT2XDP_CT_NONE;
		pkt->value[IPT2XDP_F_PROTO] = IPT2XDP_VC_PROTO + cls * 256 + pkt->proto;
	}
	return 0;
}

static __always_inline __u32 mask_net(__u8 plen)
{
	return bpf_htonl(plen >= 32 ? 0xffffffffU : plen ? ~(0xffffffffU >> plen) : 0);
}

/* Whether the fast path applies to a packet to dst (host byte order): the plan's rules on the
 * destination alone (the guard for non-local destinations) decide the others first. */
static __always_inline int src_fast_destination(struct ipt2xdp_gen_config *cfg, __u32 dst)
{
	int i;

#pragma unroll
	for (i = 0; i < IPT2XDP_SRC_FAST_DSTS; i++) {
		if (i >= cfg->src_fast_ndst)
			break;
		if (dst - cfg->src_fast_dst_lo[i] <= cfg->src_fast_dst_hi[i] - cfg->src_fast_dst_lo[i])
			return 1;
	}
	return 0;
}

/* The blocklist fast path: the entry of src_fast (the generation's map) holding the packet's
 * source, or NULL. An entry is a source prefix every packet from which (to a destination in
 * src_fast_dst_*) this generation drops with one rule, whatever its other fields
 * (ipt2xdp/fastpath.py proves it from the plan), so classifying would reach the same rule;
 * entries never overlap, so the first hit is the only one. */
static __always_inline struct ipt2xdp_fast_entry *src_fast_hit(void *src_fast, struct generation *gen,
								struct packet_fields *pkt)
{
	struct ipt2xdp_fast_entry *hit;
	struct ipt2xdp_src_fast_key key;
	__u32 plen;
	int i;

#pragma unroll
	for (i = 0; i < IPT2XDP_SRC_FAST_PLENS; i++) {
		plen = gen->cfg->src_fast_plens[i];
		if (!plen)
			break;
		key.src = pkt->src_net & mask_net(plen);
		key.plen = plen;
		hit = bpf_map_lookup_elem(src_fast, &key);
		if (hit)
			return hit;
	}
	return NULL;
}

/* The exact-tuple fast path: the entry of tuple_fast (the generation's map) whose box holds the
 * packet, or NULL. Per shape the generation uses, the packet's source and destination masked to
 * its prefix lengths, protocol and ports (0 for other protocols: a shape with a port fixes TCP or
 * UDP), the parts outside the shape 0. An entry is a box every packet in which (to a destination
 * in src_fast_dst_*) this generation drops with one rule (ipt2xdp/tuplefast.py proves it from the
 * plan); boxes never overlap, so the first hit is the only one. The key lives in the caller's
 * match_ctx: a 16-byte struct of its own grew the stack past its 512-byte limit. */
static __always_inline struct ipt2xdp_fast_entry *tuple_fast_hit(void *tuple_fast, struct generation *gen,
								  struct packet_fields *pkt,
								  struct ipt2xdp_exact_key *key)
{
	struct ipt2xdp_gen_config *cfg = gen->cfg;
	struct ipt2xdp_fast_entry *hit;
	__u32 ports;
	int i;

	/* sport_net and dport_net, adjacent as in the key: one load, one mask, one store */
	__builtin_memcpy(&ports, &pkt->sport_net, sizeof(ports));
#pragma unroll
	for (i = 0; i < IPT2XDP_TUPLE_FAST_SHAPES; i++) {
		if (!cfg->tuple_fast_fields[i])
			break;
		/* branch-free: compile derives the masks from the shape (0 for a part outside it) */
		key->src = pkt->src_net & cfg->tuple_fast_src_mask[i];
		key->dst = pkt->dst_net & cfg->tuple_fast_dst_mask[i];
		*(__u32 *)&key->sport = ports & cfg->tuple_fast_port_mask[i];
		key->set_id = i;
		key->proto = pkt->proto & cfg->tuple_fast_proto_mask[i];
		key->pad = 0;
		hit = bpf_map_lookup_elem(tuple_fast, key);
		if (hit)
			return hit;
	}
	return NULL;
}

/* Class row index of the packet's protocol under conntrack class cls, or ~0 if the lookup fails. */
static __always_inline __u32 proto_row_index(void *value_class, __u32 cls, __u32 proto)
{
	__u32 key = IPT2XDP_VC_PROTO + cls * 256 + proto;
	__u32 *row = bpf_map_lookup_elem(value_class, &key);

	return row ? *row : ~0U;
}

/* What a TCP or UDP packet needs from conntrack, given the generation's class rows of its protocol
 * (a class row holds every slot that may match the class): 0 if the rows are the same for every
 * conntrack class (no slot's match depends on it: no lookup), CT_LOOKUP if only the lookup can
 * tell them apart, CT_LOOKUP | CT_VERIFY if NONE and NONE_VERIFIED differ too (the L4 checksum
 * costs more than the lookup). Rows are compared by index: the compiler gives equal bitmaps of a
 * field one class; distinct indexes with equal contents would only cost a needless lookup. */
#define CT_LOOKUP 1
#define CT_VERIFY 2
static __always_inline int ct_matters(struct generation *gen, __u32 proto)
{
	void *value_class = gen_map(&ipt2xdp_g_value_class, gen);
	__u32 none, verified;

	if (!value_class)
		return CT_LOOKUP | CT_VERIFY;
	none = proto_row_index(value_class, IPT2XDP_CT_NONE, proto);
	verified = proto_row_index(value_class, IPT2XDP_CT_NONE_VERIFIED, proto);
	if (none != verified || none == ~0U)
		return CT_LOOKUP | CT_VERIFY;
	if (proto_row_index(value_class, IPT2XDP_CT_FOUND, proto) != none ||
	    proto_row_index(value_class, IPT2XDP_CT_NOT_LOOKED_UP, proto) != none)
		return CT_LOOKUP;
	return 0;
}

static __always_inline int load_generation(__u32 slot, struct generation *gen)
{
	__u32 zero = 0;
	void *cfg_map;

	gen->slot = slot;
	cfg_map = bpf_map_lookup_elem(&ipt2xdp_g_cfg, &slot);
	if (!cfg_map)
		return -1;
	gen->cfg = bpf_map_lookup_elem(cfg_map, &zero);
	if (!gen->cfg)
		return -1;
	return 0;
}

/* Address -> class row: the /16 directory bounds the search to the boundaries inside one block,
 * usually none, so most lookups cost two array reads. */
static __always_inline int addr_row(struct generation *gen, __u32 field, __u32 addr, __u32 *row)
{
	__u32 key = field * 65536 + (addr >> 16);
	void *addr_dir = gen_map(&ipt2xdp_g_addr_dir, gen);
	void *addr_bounds = gen_map(&ipt2xdp_g_addr_bounds, gen);
	struct ipt2xdp_addr_bound *bound;
	struct ipt2xdp_addr_dir *dir;
	__u32 lo, n, half, mid, i;

	if (!addr_dir || !addr_bounds)
		return -1;
	dir = bpf_map_lookup_elem(addr_dir, &key);
	if (!dir)
		return -1;
	lo = dir->first; /* bounds[lo].start <= addr, by construction */
	n = dir->count; /* the answer lies in lo..lo+n */
	for (i = 0; i < IPT2XDP_ADDR_SEARCH_STEPS && n; i++) {
		half = (n + 1) / 2;
		mid = lo + half;
		bound = bpf_map_lookup_elem(addr_bounds, &mid);
		if (!bound)
			return -1;
		if (bound->start <= addr) {
			lo = mid;
			n -= half;
		} else {
			n = half - 1;
		}
	}
	if (n)
		return -1;
	bound = bpf_map_lookup_elem(addr_bounds, &lo);
	if (!bound)
		return -1;
	*row = bound->row;
	return 0;
}

static __always_inline int field_row(struct generation *gen, struct packet_fields *pkt, __u32 field, __u32 *row)
{
	__u32 *found;
	void *map;

	if (field == IPT2XDP_F_SRC || field == IPT2XDP_F_DST)
		return addr_row(gen, field, pkt->value[field], row);
	if (field == IPT2XDP_F_IIF) {
		map = gen_map(&ipt2xdp_g_iif_class, gen);
		if (!map)
			return -1;
		found = bpf_map_lookup_elem(map, &pkt->value[field]);
		*row = found ? *found : gen->cfg->iif_default_row;
		return 0;
	}
	map = gen_map(&ipt2xdp_g_value_class, gen);
	if (!map)
		return -1;
	found = bpf_map_lookup_elem(map, &pkt->value[field]);
	if (!found)
		return -1;
	*row = *found;
	return 0;
}

/* SET slot: the counter of the run's rule whose exact values equal the packet's, or -1. */
static __always_inline long set_probe(struct generation *gen, struct ipt2xdp_slot *slot, struct packet_fields *pkt)
{
	struct ipt2xdp_exact_key key = {};
	void *exact_set = gen_map(&ipt2xdp_g_exact_set, gen);
	__u32 *counter;

	if (!exact_set)
		return -1;
	if (slot->key_fields & IPT2XDP_K_SRC)
		key.src = pkt->src_net & mask_net(slot->src_plen);
	if (slot->key_fields & IPT2XDP_K_DST)
		key.dst = pkt->dst_net & mask_net(slot->dst_plen);
	if (slot->key_fields & IPT2XDP_K_SPORT)
		key.sport = pkt->sport_net;
	if (slot->key_fields & IPT2XDP_K_DPORT)
		key.dport = pkt->dport_net;
	if (slot->key_fields & IPT2XDP_K_PROTO)
		key.proto = pkt->proto;
	key.set_id = slot->set_id;
	counter = bpf_map_lookup_elem(exact_set, &key);
	return counter ? (long)*counter : -1;
}

/* First word index >= start whose summary bit is set in cand, or -1. */
static __always_inline int next_candidate_word(__u64 *cand, __u32 start)
{
	__u64 bits;
	int i;

#pragma unroll
	for (i = 0; i < IPT2XDP_SUMMARY_WORDS; i++) {
		if (start >= (__u32)(i + 1) * 64)
			continue;
		bits = cand[i];
		if (start > (__u32)i * 64)
			bits &= ~0ULL << (start - i * 64);
		if (bits)
			return i * 64 + ctz64(bits);
	}
	return -1;
}

static __always_inline void count_rule(struct generation *gen, __u32 counter, struct packet_fields *pkt)
{
	__u32 key = bpf_get_smp_processor_id() * gen->cfg->counter_stride + counter;
	void *counters = gen_map(&ipt2xdp_g_counters, gen);
	struct ipt2xdp_counter *c;

	if (counter >= gen->cfg->counter_stride || !counters)
		return;
	c = bpf_map_lookup_elem(counters, &key);

	if (c) {
		c->packets += 1;
		c->bytes += pkt->ip_len;
	}
}

static __always_inline __u32 to_xdp(__u32 action)
{
	/* Only a proven DROP drops; ACCEPT, DEFER and anything unexpected pass. */
	return action == IPT2XDP_ACT_DROP ? XDP_DROP : XDP_PASS;
}

/* Whether the kernel delivers this packet locally, so that a filter/INPUT DROP may be taken. Asked
 * only on the way to XDP_DROP: the planner's local destinations are a snapshot from the import,
 * and an address removed since may now be forwarded (filter/FORWARD decides it, not INPUT).
 * ip_route_input_slow() delivers multicast and 255.255.255.255 without the FIB: those keep the
 * planner's view. Otherwise the lookup is the one the stack makes (ingress device, all policy
 * rules; ports, protocol and TOS for rules that select on them), and only two answers mean the
 * packet never reaches filter/FORWARD:
 *  - NOT_FWDED: a route of type local or broadcast (INPUT), or no route at all (the stack drops
 *    it; with forwarding on it answers ICMP unreachable, which an XDP drop leaves out, as before);
 *  - FWD_DISABLED: forwarding is off on the device, so the stack delivers locally or drops
 *    (ip_route_input_slow: !IN_DEV_FORWARD -> ip_error, no FORWARD hook).
 * Anything else (a unicast route, blackhole/unreachable/prohibit routes, an error) passes.
 * The helper's first test is the ingress device's forwarding flag (bpf_ipv4_fib_lookup: FWD_DISABLED
 * before any FIB work); it is read here first, as IN_DEV_FORWARD reads it, because the helper call
 * chain costs about a quarter of a blocklist drop. A device without IPv4 config is left to the
 * helper. Inlined: a call and return cost as much again on kernels with return thunks.
 * `fib` is scratch space of the caller's: a struct here would not fit in the 512-byte stack. */
static __always_inline int delivered_locally(struct xdp_md *ctx, struct packet_fields *pkt, struct bpf_fib_lookup *fib)
{
	struct xdp_buff___ipt2xdp *kctx = bpf_cast_to_kern_ctx(ctx);
	struct in_device___ipt2xdp *in_dev;
	__u32 dst = bpf_ntohl(pkt->dst_net);
	long rc;

	if ((dst >> 28) == 0xe || dst == 0xffffffffU)
		return 1;
	in_dev = kctx->rxq->dev->ip_ptr;
	if (in_dev && !in_dev->cnf.data[IPV4_DEVCONF_FORWARDING - 1])
		return 1;
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = pkt->proto;
	fib->sport = pkt->sport_net;
	fib->dport = pkt->dport_net;
	fib->tot_len = pkt->ip_len;
	fib->tos = pkt->tos;
	fib->ipv4_src = pkt->src_net;
	fib->ipv4_dst = pkt->dst_net;
	fib->ifindex = ctx->ingress_ifindex;
	rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	return rc == BPF_FIB_LKUP_RET_NOT_FWDED || rc == BPF_FIB_LKUP_RET_FWD_DISABLED;
}

/* Matching state shared with the per-step callback of bpf_loop(). bpf_loop keeps verification
 * cheap: the verifier checks the step body once instead of once per iteration and branch, which
 * a plain bounded loop of IPT2XDP_MAX_STEPS exceeded (1M instructions); since Linux 5.18 the call
 * is inlined into a plain loop, so a step costs no helper call. */
struct match_ctx {
	struct generation gen;
	struct packet_fields *pkt;
	union {
		struct {
			/* Fields no group uses and groups past ngroups are never read (group_fields
			 * masks them, the group loop stops at ngroups); they hold any valid row so
			 * the verifier sees one map. */
			struct ipt2xdp_class_row *rows[IPT2XDP_NUM_FIELDS];
			struct ipt2xdp_class_row *members[IPT2XDP_MAX_GROUPS];
		};
		/* Once matching is done: the route lookup before a DROP (delivered_locally). The
		 * 512-byte stack of the program and its calls has no room for both. */
		struct bpf_fib_lookup fib;
		/* Before matching: the key of the exact-tuple fast path (tuple_fast_hit) */
		struct ipt2xdp_exact_key tuple_key;
	};
	__u64 cand[IPT2XDP_SUMMARY_WORDS]; /* words where some group may have a matching slot */
	__u32 nslots;
	__u32 k; /* next slot that may match */
	__u32 done; /* 0: budget left; 1: decided by a slot; 2: no slot left (default action) */
	__u32 stat;
	__u32 action;
	__u32 counter;
};

/* Slots of word w (masked to slots >= k) that match the packet: per group, its members AND its
 * fields' rows; OR over the groups. */
static __always_inline __u64 match_word(struct match_ctx *m, __u32 w, __u32 k)
{
	__u64 x = 0, xg, low = ~0ULL;
	__u32 g, f, fields;

	w &= IPT2XDP_MAX_WORDS - 1;
	if (w == k >> 6)
		low <<= (k & 63);
#pragma unroll
	for (g = 0; g < IPT2XDP_MAX_GROUPS; g++) {
		if (g >= m->gen.cfg->ngroups)
			break;
		fields = m->gen.cfg->group_fields[g];
		xg = m->members[g]->words[w];
		/* branch-free: a field outside the group ORs in all ones (a branch per field and group
		 * made the verifier's state count explode) */
#pragma unroll
		for (f = 0; f < IPT2XDP_NUM_FIELDS; f++)
			xg &= m->rows[f]->words[w] | (((__u64)((fields >> f) & 1)) - 1);
		x |= xg;
	}
	return x & low;
}

static long match_step(__u32 index, void *data)
{
	struct match_ctx *m = data;
	struct ipt2xdp_slot *slot;
	void *slots;
	__u32 s, k = m->k;
	long counter;
	__u64 x;
	int w;

	/* One candidate word per step: a scan loop inside the callback made the verifier track every
	 * word index precisely and exceed its budget; a step is cheap since bpf_loop is inlined. */
	if (k >= m->nslots)
		goto no_slot_left;
	w = next_candidate_word(m->cand, k >> 6);
	if (w < 0)
		goto no_slot_left;
	x = match_word(m, (__u32)w, k);
	if (!x) {
		m->k = ((__u32)w + 1) * 64;
		return 0;
	}
	s = (__u32)w * 64 + ctz64(x);
	slots = gen_map(&ipt2xdp_g_slots, &m->gen);
	if (!slots)
		goto lookup_fail;
	slot = bpf_map_lookup_elem(slots, &s);
	if (!slot)
		goto lookup_fail;
	counter = slot->counter;
	if (slot->kind == IPT2XDP_SLOT_SET) {
		counter = set_probe(&m->gen, slot, m->pkt);
		if (counter < 0) {
			m->k = s + 1;
			return 0;
		}
	}
	if (slot->action == IPT2XDP_ACT_CONTINUE) {
		/* forward only: compile guarantees next > s; the budget bounds the rest */
		m->k = slot->next > s ? slot->next : s + 1;
		return 0;
	}
	m->done = 1;
	m->stat = IPT2XDP_STAT_CLASSIFIED;
	m->action = slot->action;
	m->counter = (__u32)counter;
	return 1;

no_slot_left:
	m->done = 2;
	m->stat = IPT2XDP_STAT_CLASSIFIED;
	return 1;
lookup_fail:
	m->done = 1;
	m->stat = IPT2XDP_STAT_LOOKUP_FAIL;
	return 1;
}

/* Candidate words: OR over groups of (member summary AND the summaries of the group's fields).
 * Straight-line code in the main program, so branches per field are cheap to verify here. */
static __always_inline void candidate_words(struct match_ctx *m)
{
	__u64 c[IPT2XDP_SUMMARY_WORDS];
	__u32 g, f, fields;
	int i;

#pragma unroll
	for (g = 0; g < IPT2XDP_MAX_GROUPS; g++) {
		if (g >= m->gen.cfg->ngroups)
			break;
		fields = m->gen.cfg->group_fields[g];
#pragma unroll
		for (i = 0; i < IPT2XDP_SUMMARY_WORDS; i++)
			c[i] = m->members[g]->summary[i];
#pragma unroll
		for (f = 0; f < IPT2XDP_NUM_FIELDS; f++) {
			if (!(fields & (1U << f)))
				continue;
#pragma unroll
			for (i = 0; i < IPT2XDP_SUMMARY_WORDS; i++)
				c[i] &= m->rows[f]->summary[i];
		}
#pragma unroll
		for (i = 0; i < IPT2XDP_SUMMARY_WORDS; i++)
			m->cand[i] |= c[i];
	}
}

/* The conntrack class of a TCP or UDP packet (IPT2XDP_CT_*), looked up now if the classifier did
 * not ask, or asked without the checksum verification `verify` wants (NONE stands for both then). */
static __always_inline __u32 ct_class_asked(struct xdp_md *ctx, struct packet_fields *pkt, int verify)
{
	__u32 cls = (pkt->value[IPT2XDP_F_PROTO] - IPT2XDP_VC_PROTO) >> 8;

	if (cls == IPT2XDP_CT_NOT_LOOKED_UP || (verify && cls == IPT2XDP_CT_NONE)) {
		ct_class(ctx, pkt, verify);
		cls = (pkt->value[IPT2XDP_F_PROTO] - IPT2XDP_VC_PROTO) >> 8;
	}
	return cls;
}

/* The ICMP type of an ICMP packet, from the class key parse_packet left in value[]. */
static __always_inline __u32 icmp_type(const struct packet_fields *pkt)
{
	return (pkt->value[IPT2XDP_F_ICMP] - IPT2XDP_VC_ICMP) >> 8;
}

/* Whether netfilter's nat PREROUTING would have seen a packet XDP drops: it runs only for a packet
 * that makes a new conntrack entry (nf_nat_inet_fn). 1: it would (no entry; UDP, or a TCP flag
 * combination tcp_new() starts or picks up a connection with, the checksum verified as conntrack
 * would), 0: it would not (an entry exists; TCP flags conntrack refuses without one; ICMP that is
 * not a request: an error is RELATED or INVALID, a reply never makes an entry), -1: XDP cannot
 * tell (an ICMP request or another protocol may have an entry it cannot look up; an unverified
 * checksum; a SYN may reopen a closed entry; a failed lookup). */
static __always_inline int nat_would_see(struct xdp_md *ctx, struct packet_fields *pkt, __u32 nat_new)
{
	__u32 cls, flags, type;

	if (pkt->proto == IPPROTO_ICMP) {
		type = icmp_type(pkt);
		return type == 8 || type == 13 || type == 15 || type == 17 ? -1 : 0;
	}
	if (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP)
		return -1;
	cls = ct_class_asked(ctx, pkt, 1);
	flags = (pkt->value[IPT2XDP_F_TCP_FLAGS] - IPT2XDP_VC_TCP_FLAGS) & ~0x08U; /* tcp_error masks PSH */
	if (cls == IPT2XDP_CT_FOUND)
		return pkt->proto == IPPROTO_TCP && (flags & 0x02) ? -1 : 0;
	if (cls != IPT2XDP_CT_NONE_VERIFIED)
		return -1;
	if (pkt->proto == IPPROTO_UDP || flags == 0x02 || flags == 0x22)
		return 1;
	return (flags == 0x10 || flags == 0x30) && (nat_new & IPT2XDP_NAT_NEW_TCP_LOOSE);
}

/* Whether a packet XDP would drop may belong to a flow conntrack has NATed (asked only where the
 * plan says NATed flows may exist: IPT2XDP_NAT_FLOWS). Such a packet is rewritten in PREROUTING
 * whatever the rules say now: the reply to a masqueraded connection is addressed to this host and
 * leaves PREROUTING addressed to the container behind it, so filter/INPUT never sees it. An
 * entry found in either direction, a failed lookup, and every protocol bpf_xdp_ct_lookup cannot
 * look up (ICMP replies and errors of a masqueraded ping, GRE, ...) count as may; but not an ICMP
 * echo request: it is the original direction of its flow (the reply tuple of a masqueraded ping
 * is an echo reply), which conntrack rewrites only for a DNAT, and the packets a DNAT rule or nat
 * chain before filter/INPUT may touch are deferred by the planner's guards already. With
 * IPT2XDP_NAT_EXPECT every TCP/UDP packet counts as may: one without an entry may be the first of
 * a connection a helper expects, which conntrack NATs like its master's. */
static __always_inline int may_be_natted(struct xdp_md *ctx, struct packet_fields *pkt, __u32 nat_new)
{
	__u32 cls;

	if (pkt->proto == IPPROTO_ICMP)
		return icmp_type(pkt) != 8;
	if (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP)
		return 1;
	if (nat_new & IPT2XDP_NAT_EXPECT) /* an expected connection: no entry yet, NATed anyway */
		return 1;
	/* verified when nat_would_see asks next, so that it needs no second lookup */
	cls = ct_class_asked(ctx, pkt, nat_new & IPT2XDP_NAT_NEW_ON);
	return cls == IPT2XDP_CT_FOUND || cls == IPT2XDP_CT_NOT_LOOKED_UP;
}

/* Classify with the generation in force. Returns the stat reason; *verdict is the XDP action. */
static __always_inline __u32 classify(struct xdp_md *ctx, struct packet_fields *pkt, __u32 *verdict)
{
	struct ipt2xdp_class_row *any_row, *row;
	struct ipt2xdp_fast_entry *fast = NULL; /* the fast-path entry that decided, if one did */
	struct ipt2xdp_gen_config *cfg;
	void *fast_map;
	struct ipt2xdp_state *state;
	struct match_ctx m; /* zeroed below, past the fast path, which needs none of it but gen */
	struct generation *gen = &m.gen;
	__u32 zero = 0, f, g, row_index, mask;
	void *rows;

	state = bpf_map_lookup_elem(&ipt2xdp_state, &zero);
	if (!state)
		return IPT2XDP_STAT_LOOKUP_FAIL;
	if (state->active >= IPT2XDP_GEN_SLOTS)
		return IPT2XDP_STAT_DEFER_ALL;
	if (load_generation(state->active, gen) < 0)
		return IPT2XDP_STAT_DEFER_ALL;
	/* group geometry is read from cfg, never copied into match_ctx: copies refined by branches
	 * multiplied the states in which the verifier had to check the step callback */
	cfg = gen->cfg;
	if ((cfg->src_fast_plens[0] || cfg->tuple_fast_fields[0]) &&
	    src_fast_destination(cfg, bpf_ntohl(pkt->dst_net))) {
		/* the class bitmaps lack what the fast paths decide (fastpath.reduce_classifier):
		 * without their maps, netfilter decides */
		if (cfg->src_fast_plens[0]) {
			fast_map = gen_map(&ipt2xdp_g_src_fast, gen);
			if (!fast_map)
				return IPT2XDP_STAT_LOOKUP_FAIL;
			fast = src_fast_hit(fast_map, gen, pkt);
		}
		if (!fast && cfg->tuple_fast_fields[0]) {
			fast_map = gen_map(&ipt2xdp_g_tuple_fast, gen);
			if (!fast_map)
				return IPT2XDP_STAT_LOOKUP_FAIL;
			fast = tuple_fast_hit(fast_map, gen, pkt, &m.tuple_key);
		}
		if (fast) {
			m.action = fast->decision.action; /* counted in the entry, below */
			/* class_values did not run: the one key read past a decision (nat_would_see) */
			proto_value_unlooked(pkt);
			goto decided_by_rule;
		}
	}
	__builtin_memset(&m.pkt, 0, sizeof(m) - __builtin_offsetof(struct match_ctx, pkt));
	class_values(ctx, pkt);
	if (!cfg->nslots || !cfg->ngroups)
		goto no_slot_left;
	rows = gen_map(&ipt2xdp_g_class_rows, gen);
	if (!rows)
		return IPT2XDP_STAT_LOOKUP_FAIL;
	/* group 0 always exists when there are slots: its member row stands in for unused entries */
	row_index = cfg->group_row[0];
	any_row = bpf_map_lookup_elem(rows, &row_index);
	if (!any_row)
		return IPT2XDP_STAT_LOOKUP_FAIL;
	m.pkt = pkt;
	m.nslots = cfg->nslots;
	mask = cfg->field_mask;
	if ((mask & (1U << IPT2XDP_F_CT_STATE)) && (pkt->proto == IPPROTO_TCP || pkt->proto == IPPROTO_UDP)) {
		g = ct_matters(gen, pkt->proto);
		if (g)
			ct_class(ctx, pkt, g & CT_VERIFY);
	}

#pragma unroll
	for (f = 0; f < IPT2XDP_NUM_FIELDS; f++) {
		m.rows[f] = any_row;
		if (!(mask & (1U << f)))
			continue;
		if (field_row(gen, pkt, f, &row_index) < 0)
			return IPT2XDP_STAT_LOOKUP_FAIL;
		row = bpf_map_lookup_elem(rows, &row_index);
		if (!row)
			return IPT2XDP_STAT_LOOKUP_FAIL;
		m.rows[f] = row;
	}
#pragma unroll
	for (g = 0; g < IPT2XDP_MAX_GROUPS; g++) {
		m.members[g] = any_row;
		if (g >= cfg->ngroups || g == 0)
			continue;
		row_index = cfg->group_row[g];
		row = bpf_map_lookup_elem(rows, &row_index);
		if (!row)
			return IPT2XDP_STAT_LOOKUP_FAIL;
		m.members[g] = row;
	}
	candidate_words(&m);

	bpf_loop(IPT2XDP_MAX_STEPS, match_step, &m, 0);
	if (!m.done)
		return IPT2XDP_STAT_BUDGET;
	if (m.stat != IPT2XDP_STAT_CLASSIFIED)
		return m.stat;
	if (m.done == 2) {
no_slot_left:
		m.action = cfg->default_action;
		m.counter = cfg->default_counter;
	} else {
decided_by_rule:
		/* a DROP that trusts a copy of ipset members which has since changed: netfilter
		 * decides, and counts the packet itself */
		m.action = setguard_action(gen->slot, m.action);
		if (m.action == IPT2XDP_ACT_SET_STALE) {
			*verdict = to_xdp(m.action);
			return IPT2XDP_STAT_CLASSIFIED;
		}
	}
	/* not counted: netfilter counts the packet where it goes */
	if (to_xdp(m.action) == XDP_DROP && !delivered_locally(ctx, pkt, &m.fib))
		return IPT2XDP_STAT_NOT_LOCAL;
	if ((cfg->nat_new & IPT2XDP_NAT_FLOWS) && to_xdp(m.action) == XDP_DROP &&
	    may_be_natted(ctx, pkt, cfg->nat_new))
		return IPT2XDP_STAT_NAT_FLOW; /* netfilter decides, and counts it where it goes */
	if ((cfg->nat_new & IPT2XDP_NAT_NEW_ON) && to_xdp(m.action) == XDP_DROP) {
		int seen = nat_would_see(ctx, pkt, cfg->nat_new);

		if (seen < 0) /* netfilter drops it, and counts it where it goes */
			return IPT2XDP_STAT_CLASSIFIED;
		if (seen)
			count_rule(gen, cfg->default_counter + 2, pkt);
	}
	if (fast) { /* this CPU's share of the entry: no counters lookup */
		fast->count.packets += 1;
		fast->count.bytes += pkt->ip_len;
	} else {
		count_rule(gen, m.counter, pkt);
	}
	*verdict = to_xdp(m.action);
	return IPT2XDP_STAT_CLASSIFIED;
}

SEC("xdp")
int ipt2xdp_xdp(struct xdp_md *ctx)
{
	struct packet_fields pkt;
	__u32 verdict = XDP_PASS;
	__u32 stat;

	stat = parse_packet(ctx, &pkt);
	if (stat == IPT2XDP_STAT_CLASSIFIED)
		stat = classify(ctx, &pkt, &verdict);
	count_stat(stat, verdict);
	return verdict;
}

char _license[] SEC("license") = "GPL";

