/* SPDX-License-Identifier: GPL-2.0-only */
/* The ABI shared by bpf/ipt2xdp.bpf.c and ipt2xdp/abi.py: fixed-width structs and constants only,
 * no kernel headers. Every struct has explicit padding and a _Static_assert on its size; abi.py
 * mirrors them with ctypes, and tests/test_abi.py plus the loader check the mirror against BTF.
 */
#ifndef IPT2XDP_KERN_USER_H
#define IPT2XDP_KERN_USER_H

#include <linux/types.h>

/* Generation slots of every ARRAY_OF_MAPS outer map. */
#define IPT2XDP_GEN_SLOTS 2
/* state.active values besides 0..GEN_SLOTS-1: pass every packet to netfilter. */
#define IPT2XDP_DEFER_ALL 0xffffffffU

/* Classifier capacity: rule slots (after merging runs into hash sets), bitmap geometry. */
#define IPT2XDP_SUMMARY_WORDS 4 /* one summary bit per 64-bit bitmap word */
#define IPT2XDP_MAX_WORDS (64 * IPT2XDP_SUMMARY_WORDS) /* 256 bitmap words per class row */
#define IPT2XDP_MAX_SLOTS (64 * IPT2XDP_MAX_WORDS) /* 16384 */
#define IPT2XDP_MAX_GROUPS 8 /* shape groups: slots constraining the same set of fields */
/* Upper bounds on work per packet; running out means XDP_PASS (netfilter decides). */
#define IPT2XDP_MAX_STEPS 1024 /* steps: a candidate word, a set probe or a CONTINUE jump each */
#define IPT2XDP_MAX_COUNTER_STRIDE (1U << 22) /* counters per CPU (counter_rules: their rules) */
#define IPT2XDP_MAX_BOUNDS (1U << 18) /* addr_bounds entries (src and dst intervals together) */
#define IPT2XDP_ADDR_SEARCH_STEPS 17 /* binary search within one /16 block (< 2^17 bounds) */

/* Fields (bits of gen_config.field_mask); mirrors ipt2xdp.classifier.Field. */
#define IPT2XDP_F_SRC 0
#define IPT2XDP_F_DST 1
#define IPT2XDP_F_PROTO 2
#define IPT2XDP_F_SPORT 3
#define IPT2XDP_F_DPORT 4
#define IPT2XDP_F_IIF 5
#define IPT2XDP_F_ICMP 6
#define IPT2XDP_F_TCP_FLAGS 7
#define IPT2XDP_NUM_FIELDS 8 /* fields with their own class row */
/* Conntrack class from bpf_xdp_ct_lookup (IPT2XDP_CT_*). Only a field_mask bit (look it up): its
 * value is folded into the protocol's class index (value_class[IPT2XDP_VC_PROTO + class * 256 +
 * proto]), so it costs no class row and no bitmap AND of its own. 9..10 reserved: length, ttl. */
#define IPT2XDP_F_CT_STATE 8

/* value_class index layout (ARRAY of __u32 class rows, one region per small-domain field). */
#define IPT2XDP_CT_CLASSES 4 /* conntrack classes (IPT2XDP_CT_*) */
#define IPT2XDP_VC_PROTO 0 /* IPT2XDP_CT_CLASSES conntrack classes x 256 protocols */
#define IPT2XDP_VC_SPORT (IPT2XDP_CT_CLASSES * 256) /* 65536 ports + 1 "no port" */
#define IPT2XDP_VC_DPORT (IPT2XDP_VC_SPORT + 65537)
#define IPT2XDP_VC_ICMP (IPT2XDP_VC_DPORT + 65537) /* type*256+code, + 1 "not ICMP" */
#define IPT2XDP_VC_TCP_FLAGS (IPT2XDP_VC_ICMP + 65537) /* 64 flag bytes + 1 "not TCP" */
#define IPT2XDP_VC_ENTRIES (IPT2XDP_VC_TCP_FLAGS + 65)
#define IPT2XDP_NO_PORT 65536
#define IPT2XDP_NOT_ICMP 65536
#define IPT2XDP_NOT_TCP 64
#define IPT2XDP_NAT_NEW_ON 1 /* gen_config.nat_new */
#define IPT2XDP_NAT_NEW_TCP_LOOSE 2 /* nf_conntrack_tcp_loose: a TCP ACK without an entry makes one */
/* gen_config.nat_new: conntrack may hold NATed flows here (a nat table or a native nat chain): a
 * packet of a known flow may be rewritten in PREROUTING (the reply of a masqueraded connection
 * goes to a container, not to filter/INPUT), so a drop is taken only for TCP/UDP without an entry */
#define IPT2XDP_NAT_FLOWS 4
/* gen_config.nat_new, with IPT2XDP_NAT_FLOWS: conntrack helpers may be assigned too, so a TCP/UDP
 * packet without an entry may open a connection a helper expects (FTP data, TFTP, SIP media), and
 * an expectation of a NATed master connection NATs its first packet in PREROUTING without any nat
 * rule (nf_nat_follow_master): no TCP/UDP drop is taken */
#define IPT2XDP_NAT_EXPECT 8
/* Conntrack classes (value_class[IPT2XDP_VC_PROTO + class * 256 + proto]); looked up only when
 * the generation's field_mask has IPT2XDP_F_CT_STATE, else every packet is NOT_LOOKED_UP. */
#define IPT2XDP_CT_NONE 0 /* TCP/UDP, no entry (-ENOENT); length or checksum not verified */
#define IPT2XDP_CT_FOUND 1 /* TCP/UDP, an entry exists (either direction) */
#define IPT2XDP_CT_NOT_LOOKED_UP 2 /* other protocols, ICMP, or a lookup error */
/* TCP/UDP, no entry, and what tcp_error/udp_error check of length and checksum passes (the
 * checksum over the whole IP payload, as nf_ip_checksum computes it); TCP flags are judged by
 * the planner through the TCP flags field. */
#define IPT2XDP_CT_NONE_VERIFIED 3
/* The L4 checksum is verified in chunks of IPT2XDP_CSUM_CHUNK bytes (bpf_csum_diff's limit)
 * copied into a per-CPU scratch buffer; longer IP payloads stay unverified (IPT2XDP_CT_NONE). */
#define IPT2XDP_CSUM_CHUNK 512
#define IPT2XDP_CSUM_MAX_CHUNKS 4
/* Prefix lengths the blocklist fast path probes at most (gen_config.src_fast_plens). */
#define IPT2XDP_SRC_FAST_PLENS 4
/* Destination ranges the fast paths apply to at most (gen_config.src_fast_dst_*). */
#define IPT2XDP_SRC_FAST_DSTS 16
/* Key shapes the exact-tuple fast path probes at most (gen_config.tuple_fast_*). */
#define IPT2XDP_TUPLE_FAST_SHAPES 4
/* addr_dir: one entry per /16 block, src blocks first then dst blocks. */
#define IPT2XDP_ADDR_DIR_ENTRIES (2 * 65536)

/* Actions (slot.action, gen_config.default_action); mirrors ipt2xdp.classifier.Verdict. */
#define IPT2XDP_ACT_DROP 1
#define IPT2XDP_ACT_ACCEPT 2
#define IPT2XDP_ACT_DEFER 3
#define IPT2XDP_ACT_CONTINUE 4

/* Slot kinds. */
#define IPT2XDP_SLOT_RULE 0 /* the bitmap bit alone decides */
#define IPT2XDP_SLOT_SET 1 /* bit means "maybe": confirm with an exact_set lookup */

/* exact_set key parts a SET slot uses (slot.key_fields). */
#define IPT2XDP_K_SRC 1
#define IPT2XDP_K_DST 2
#define IPT2XDP_K_PROTO 4
#define IPT2XDP_K_SPORT 8
#define IPT2XDP_K_DPORT 16

/* Global stats (PERCPU_ARRAY, not per generation): why packets got their verdict. */
#define IPT2XDP_STAT_DEFER_ALL 0 /* no generation in force, or deliberately deferring */
#define IPT2XDP_STAT_NOT_IPV4 1
#define IPT2XDP_STAT_MALFORMED 2 /* bad ihl/tot_len, truncated headers */
#define IPT2XDP_STAT_FRAGMENT 3
#define IPT2XDP_STAT_LOOKUP_FAIL 4 /* a map lookup failed: pass */
#define IPT2XDP_STAT_BUDGET 5 /* IPT2XDP_MAX_STEPS exhausted: pass */
#define IPT2XDP_STAT_CLASSIFIED 6 /* reached a rule or the default */
#define IPT2XDP_STAT_DROP 7
#define IPT2XDP_STAT_PASS 8
/* a DROP verdict not taken: the kernel's routing no longer delivers the destination locally (an
 * address removed since the import, forwarded now): filter/INPUT does not see the packet */
#define IPT2XDP_STAT_NOT_LOCAL 9
#define IPT2XDP_STAT_NAT_FLOW 10 /* a DROP passed: the packet may belong to a NATed flow */
#define IPT2XDP_NUM_STATS 11

/* stats[0] (PERCPU_ARRAY): packets per IPT2XDP_STAT_* on this CPU. */
struct ipt2xdp_stats {
	__u64 packets[IPT2XDP_NUM_STATS];
};
_Static_assert(sizeof(struct ipt2xdp_stats) == 8 * IPT2XDP_NUM_STATS, "abi");

/* csum_scratch[0] (PERCPU_ARRAY): a chunk of L4 bytes for bpf_csum_diff, padded to 4 bytes. */
struct ipt2xdp_csum_scratch {
	__u8 bytes[IPT2XDP_CSUM_CHUNK + 4];
};
_Static_assert(sizeof(struct ipt2xdp_csum_scratch) == IPT2XDP_CSUM_CHUNK + 4, "abi");

/* state[0]: which generation slot packets read. Written last by an update (the flip). */
struct ipt2xdp_state {
	__u32 active; /* 0..IPT2XDP_GEN_SLOTS-1, or IPT2XDP_DEFER_ALL */
	__u32 last_slot; /* the slot last made active (kept while active is DEFER_ALL) */
	__u64 generation; /* generation number in force (informational) */
};
_Static_assert(sizeof(struct ipt2xdp_state) == 16, "abi");

/* cfg[0] of a generation: geometry of its maps and the default action. Class ids stored in
 * value_class, addr_bounds and iif_class are class_rows indexes. */
struct ipt2xdp_gen_config {
	__u64 generation;
	__u32 field_mask; /* bit IPT2XDP_F_*: field constrained by some slot (others are skipped) */
	__u32 nslots;
	__u32 counter_stride; /* counters per CPU: counters[cpu * counter_stride + counter] */
	__u32 default_action; /* IPT2XDP_ACT_DROP/ACCEPT/DEFER */
	__u32 default_counter; /* counter of the default action (after the rules' counters) */
	__u32 iif_default_row; /* class row of ifindexes absent from iif_class */
	__u32 ngroups;
	/* Shape groups. A slot belongs to one group; a group's fields are the fields its slots
	 * constrain, and a field's rows hold bits only for slots of groups that use the field. A
	 * slot of group g matches iff its bit is set in group_row[g] and in the packet's row of every
	 * field of g. So a slot that leaves a field open never spreads its bit over that field's rows,
	 * and the summaries stay selective when wildcard rules interleave (the weak spot of ABV). */
	__u16 group_fields[IPT2XDP_MAX_GROUPS]; /* bit IPT2XDP_F_* */
	__u32 group_row[IPT2XDP_MAX_GROUPS]; /* class_rows index of the group's member bitmap */
	/* Prefix lengths of the src_fast entries, most entries first; 0 ends the list (all 0: no
	 * fast path). The program probes src_fast once per length before any class row. */
	__u8 src_fast_plens[IPT2XDP_SRC_FAST_PLENS];
	/* ...and only for destinations in one of these src_fast_ndst ranges (host byte order,
	 * inclusive): the plan's rules that look at the destination alone (the planner's guard for
	 * non-local destinations) decide the others before any source rule. */
	__u32 src_fast_ndst;
	__u32 src_fast_dst_lo[IPT2XDP_SRC_FAST_DSTS];
	__u32 src_fast_dst_hi[IPT2XDP_SRC_FAST_DSTS];
	/* IPT2XDP_NAT_FLOWS: see there. IPT2XDP_NAT_NEW_ON (+ _TCP_LOOSE): count the drops nat
	 * PREROUTING would have seen (off: the program does nothing more for a drop). Netfilter runs nat PREROUTING only for a packet that
	 * makes a new conntrack entry; where its traversal of a dropped packet ends at the policy
	 * (every nat PREROUTING rule's packets are deferred), such drops also count on counter
	 * default_counter + 2, and a drop XDP cannot place that way is passed to netfilter. */
	__u32 nat_new;
	/* The exact-tuple fast path (map tuple_fast, ipt2xdp/tuplefast.py): per shape, most entries
	 * first, the key parts (IPT2XDP_K_*; 0 ends the list) and the prefix lengths the addresses
	 * are masked to; and the same as masks the program ANDs the packet's values with to make
	 * the key (a part outside the shape: mask 0): source, destination (network byte order),
	 * the two ports as one word of struct ipt2xdp_exact_key (sport then dport, as in memory),
	 * the protocol. Probed after src_fast, for the destinations in src_fast_dst_* too. */
	__u8 tuple_fast_fields[IPT2XDP_TUPLE_FAST_SHAPES];
	__u8 tuple_fast_src_plen[IPT2XDP_TUPLE_FAST_SHAPES];
	__u8 tuple_fast_dst_plen[IPT2XDP_TUPLE_FAST_SHAPES];
	__u8 tuple_fast_proto_mask[IPT2XDP_TUPLE_FAST_SHAPES];
	__u32 tuple_fast_src_mask[IPT2XDP_TUPLE_FAST_SHAPES];
	__u32 tuple_fast_dst_mask[IPT2XDP_TUPLE_FAST_SHAPES];
	__u32 tuple_fast_port_mask[IPT2XDP_TUPLE_FAST_SHAPES];
};
_Static_assert(sizeof(struct ipt2xdp_gen_config) == 160 + 8 * IPT2XDP_SRC_FAST_DSTS, "abi");

/* addr_dir[field * 65536 + (addr >> 16)]: the addr_bounds range covering one /16 block. */
struct ipt2xdp_addr_dir {
	__u32 first; /* addr_bounds index of the interval that contains block << 16 (absolute) */
	__u32 count; /* boundaries after it that still start inside the block */
};
_Static_assert(sizeof(struct ipt2xdp_addr_dir) == 8, "abi");

/* addr_bounds[i]: an interval of addresses starting at `start` (host byte order) up to the next. */
struct ipt2xdp_addr_bound {
	__u32 start; /* host byte order */
	__u32 row; /* class row (class_rows index) */
};
_Static_assert(sizeof(struct ipt2xdp_addr_bound) == 8, "abi");

/* class_rows[row]: the slots a packet of this class may match (bit s = slot s), and a summary
 * with bit w set iff words[w] is nonzero. One fixed-size value per row, so a packet needs one
 * lookup per field and then reads words directly; memory is rows x 2 KiB, rows ~ the ruleset. */
struct ipt2xdp_class_row {
	__u64 summary[IPT2XDP_SUMMARY_WORDS];
	__u64 words[IPT2XDP_MAX_WORDS];
};
_Static_assert(sizeof(struct ipt2xdp_class_row) == 8 * (IPT2XDP_SUMMARY_WORDS + IPT2XDP_MAX_WORDS), "abi");

/* slots[s]: what slot s does when its bit is the lowest in the AND of the field bitmaps. */
struct ipt2xdp_slot {
	__u32 counter; /* a RULE slot's counter (counter_rules[counter]: its rule id) */
	__u32 next; /* CONTINUE: slot index to resume at (nslots = the default action) */
	__u16 set_id; /* SET: the set's tag in exact_set keys */
	__u8 action; /* IPT2XDP_ACT_* */
	__u8 kind; /* IPT2XDP_SLOT_* */
	__u8 key_fields; /* SET: IPT2XDP_K_* parts of the key */
	__u8 src_plen; /* SET: prefix lengths the addresses are masked to */
	__u8 dst_plen;
	__u8 pad;
};
_Static_assert(sizeof(struct ipt2xdp_slot) == 16, "abi");

/* exact_set key: a packet's values masked to a SET slot's shape; parts not in key_fields are 0. */
struct ipt2xdp_exact_key {
	__u32 src; /* network byte order, masked to src_plen */
	__u32 dst; /* network byte order, masked to dst_plen */
	__u16 sport; /* network byte order */
	__u16 dport; /* network byte order */
	__u16 set_id;
	__u8 proto;
	__u8 pad;
};
_Static_assert(sizeof(struct ipt2xdp_exact_key) == 16, "abi");

/* counters[cpu * counter_stride + counter] (per generation). Each CPU owns its stride, so plain
 * increments are safe; bytes count the IP total length, as iptables counts at filter/INPUT. */
struct ipt2xdp_counter {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct ipt2xdp_counter) == 16, "abi");

/* src_fast[{source masked to plen, plen}]: a source prefix every packet from which the generation
 * drops with one rule whatever its other fields (ipt2xdp/fastpath.py proves it from the plan).
 * The program takes that decision before classifying; prefixes in the map never overlap. */
struct ipt2xdp_src_fast_key {
	__u32 src; /* network byte order, masked to plen */
	__u32 plen; /* 1..32 */
};
_Static_assert(sizeof(struct ipt2xdp_src_fast_key) == 8, "abi");

struct ipt2xdp_src_fast_value {
	__u32 counter; /* rule id of the deciding rule (not a counters index: the entry counts it) */
	__u32 action; /* IPT2XDP_ACT_DROP, or a guarded DROP (IPT2XDP_ACT_SET_GUARDED | bits) */
};
_Static_assert(sizeof(struct ipt2xdp_src_fast_value) == 8, "abi");

/* What a fast-path map holds per CPU (both are PERCPU_HASH): the decision, identical on every CPU
 * (the loader writes it so), and this CPU's packets and bytes decided by the entry. Counting in the
 * entry the lookup returned saves a counters lookup per hit (a call the verifier cannot inline for
 * the per-generation counters array); userspace adds these to the rule's counter
 * (ipt2xdp/dataplane.py read_counters), so iptables -L -v stays exact. */
struct ipt2xdp_fast_entry {
	struct ipt2xdp_src_fast_value decision;
	struct ipt2xdp_counter count;
};
_Static_assert(sizeof(struct ipt2xdp_fast_entry) == 24, "abi");

/* tuple_fast[key]: the exact-tuple fast path. The key is a struct ipt2xdp_exact_key of the packet's
 * values masked to one shape (gen_config.tuple_fast_*), set_id = the shape's index; the value a
 * struct ipt2xdp_fast_entry. Boxes in the map never overlap (ipt2xdp/tuplefast.py). */

#endif /* IPT2XDP_KERN_USER_H */
