// SPDX-License-Identifier: GPL-2.0-only
/* ipt2xdp's ipset guard: counts, into ipt2xdp_setguard[IPT2XDP_SETGUARD_LIVE] (see
 * ipt2xdp_setguard.h), every request that may change an ipset, when it starts and when it is done.
 *
 * Ipset members change only through nfnetlink requests (the ipset tool, libipset, pyroute2: add,
 * del, flush, destroy, swap, rename, restore), through xt_SET targets (the planner never mirrors a
 * set that a -j SET rule changes), and by element timeouts (the import's deadline). An nfnetlink
 * request is processed inside the syscall that sends it on a NETLINK_NETFILTER socket, or inside an
 * io_uring request. So:
 *  - sys_enter of write/writev/pwritev2/sendto/sendmsg/sendmmsg/splice/sendfile on such a socket
 *    (any of them, without looking, for 32-bit tasks), unless its messages are read-only ipset
 *    commands or belong to other nfnetlink subsystems, counts a start before the kernel reads
 *    the request, and marks the thread; its sys_exit counts the request done;
 *  - an io_uring request that may write to a socket (any namespace: its file is not resolved yet
 *    when it is submitted) counts a start when submitted and is done when its completion is posted.
 * Starts bump removals and additions alike: which command it is would need the request's bytes.
 * XDP compares the starts; the import waits until starts == done before reading the sets, so no
 * request it did not see can still change them afterwards. Other nfnetlink users (iptables-nft,
 * nft, conntrack) in the namespace count too: they only cost offload until the next import.
 *
 * Raw tracepoints rather than fentry on ip_set_udel & co.: those need BPF_PROG_TYPE_TRACING,
 * which kernels built without ftrace direct calls (as this project's test kernel) do not offer.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "ipt2xdp_setguard.h"

#define AF_NETLINK 16
#define NETLINK_NETFILTER 12
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define TS_COMPAT 0x0002

/* The kernel types read, through CO-RE relocations against vmlinux BTF. */
struct pt_regs {
	unsigned long di, si, dx;
} __attribute__((preserve_access_index));
struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));
struct net {
	__u64 net_cookie;
} __attribute__((preserve_access_index));
typedef struct {
	struct net *net;
} possible_net_t;
struct sock_common {
	unsigned short skc_family;
	possible_net_t skc_net;
} __attribute__((preserve_access_index));
struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));
struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));
struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));
struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));
struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));
struct thread_info {
	__u32 status;
} __attribute__((preserve_access_index));
struct task_struct {
	struct thread_info thread_info;
	struct files_struct *files;
} __attribute__((preserve_access_index));
struct io_kiocb {
	__u8 opcode;
} __attribute__((preserve_access_index));

/* Threads inside a counted syscall, and io_uring requests in flight (key: request address). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} setguard_busy SEC(".maps");

static __always_inline struct ipt2xdp_setguard *live(void)
{
	__u32 key = IPT2XDP_SETGUARD_LIVE;

	return bpf_map_lookup_elem(&ipt2xdp_setguard, &key);
}

/* Whether a request on this file may reach the guarded namespace's nfnetlink: a NETLINK_NETFILTER
 * socket of that namespace (ipsets and nfnetlink requests are per namespace), or unknown. */
static __always_inline int may_be_nfnetlink(struct file *file)
{
	struct ipt2xdp_setguard *g = live();
	struct socket *sock;
	struct sock *sk;

	if (!file)
		return 1;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 1;
	if (BPF_CORE_READ(sk, __sk_common.skc_family) != AF_NETLINK ||
	    BPF_CORE_READ(sk, sk_protocol) != NETLINK_NETFILTER)
		return 0;
	return !g || !g->netns_cookie || BPF_CORE_READ(sk, __sk_common.skc_net.net, net_cookie) == g->netns_cookie;
}

static __always_inline struct file *fd_file(struct task_struct *task, unsigned long fd)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **table;
	struct file *file = 0;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return (struct file *)-1; /* not an open file: the syscall fails */
	table = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &table[fd]);
	return file ? file : (struct file *)-1;
}

static __always_inline void start(__u64 key)
{
	struct ipt2xdp_setguard *g = live();
	__u8 one = 1;

	if (!g)
		return;
	/* mark first: a start without a mark would never be done (safe, but stale for good) */
	if (bpf_map_update_elem(&setguard_busy, &key, &one, BPF_ANY) != 0)
		return;
	__sync_fetch_and_add(&g->removals, 1);
	__sync_fetch_and_add(&g->additions, 1);
}

static __always_inline void done(__u64 key)
{
	struct ipt2xdp_setguard *g = live();

	if (!g || g->removals == g->settled) /* nothing in flight: skip the hash lookup */
		return;
	if (bpf_map_delete_elem(&setguard_busy, &key) == 0)
		__sync_fetch_and_add(&g->settled, 1);
}

struct user_iovec {
	void *base;
	__u64 len;
};
struct user_msghdr {
	void *name;
	__u64 namelen;
	struct user_iovec *iov;
	__u64 iovlen;
};
struct nlmsghdr_min {
	__u32 len;
	__u16 type;
};


#define NFNL_SUBSYS_IPSET 6
#define NFNL_MSG_BATCH_BEGIN 0x10
#define MAX_MESSAGES 16

/* Whether the nlmsghdr at base is a message that may change ipsets: an ipset command other than
 * protocol, list, save, test, header, type, get_byname and get_byindex. */
static __always_inline int ipset_change(struct nlmsghdr_min *nlh)
{
	__u8 cmd = nlh->type & 0xff;

	if (nlh->type >> 8 != NFNL_SUBSYS_IPSET)
		return 0;
	return !(cmd == 1 || cmd == 7 || cmd == 8 || (cmd >= 11 && cmd <= 15));
}

/* Whether the request may change an ipset. One skb carries the whole send. If it starts with a
 * batch, nfnetlink hands all of it to the batch's subsystem (ipset has no batches: only counted
 * to be safe); otherwise each message goes to its own subsystem, so every message is looked at.
 * Sends in several pieces (other than a batch) or with more than MAX_MESSAGES messages, and
 * unreadable ones, count. The bytes are read before the kernel copies them: a thread rewriting
 * its own request meanwhile could slip past; no ipset client does that. */
static __always_inline int may_change_sets(long id, struct pt_regs *regs)
{
	struct user_msghdr msg = {};
	struct user_iovec iov;
	struct nlmsghdr_min nlh;
	__u16 res_id;
	__u64 offset = 0;
	int i;

	if (id == 1 || id == 44) { /* write, sendto: (fd, buf, len) */
		iov.base = (void *)BPF_CORE_READ(regs, si);
		iov.len = BPF_CORE_READ(regs, dx);
		msg.iovlen = 1;
	} else if (id == 46) { /* sendmsg: (fd, msg, flags) */
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)BPF_CORE_READ(regs, si)) || !msg.iovlen ||
		    bpf_probe_read_user(&iov, sizeof(iov), msg.iov))
			return 1;
	} else if (id == 20) { /* writev: (fd, iov, iovcnt) */
		msg.iovlen = BPF_CORE_READ(regs, dx);
		if (!msg.iovlen || bpf_probe_read_user(&iov, sizeof(iov), (void *)BPF_CORE_READ(regs, si)))
			return 1;
	} else {
		return 1;
	}
	if (bpf_probe_read_user(&nlh, sizeof(nlh), iov.base))
		return 1;
	if (nlh.type == NFNL_MSG_BATCH_BEGIN) {
		if (bpf_probe_read_user(&res_id, sizeof(res_id), iov.base + 18)) /* nfgenmsg.res_id */
			return 1;
		return bpf_ntohs(res_id) == NFNL_SUBSYS_IPSET;
	}
	if (msg.iovlen != 1)
		return 1;
	for (i = 0; i < MAX_MESSAGES; i++) {
		if (ipset_change(&nlh) || nlh.len < 16)
			return 1;
		offset += (nlh.len + 3) & ~3U; /* NLMSG_ALIGN */
		if (offset >= iov.len)
			return 0;
		if (bpf_probe_read_user(&nlh, sizeof(nlh), iov.base + offset))
			return 1;
	}
	return 1;
}

SEC("raw_tp/sys_enter")
int guard_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	struct task_struct *task;
	unsigned long fd;
	struct file *file;
	long id = ctx->args[1];

	switch (id) {
	case 1: case 20: case 44: case 46: case 307: case 328: /* write writev sendto sendmsg sendmmsg pwritev2 */
	case 40: case 275: /* sendfile splice */
	case 4: case 146: case 102: case 369: case 370: case 345: case 313: case 187: case 239: case 379:
		break; /* ia32: write writev socketcall sendto sendmsg sendmmsg splice sendfile sendfile64 pwritev2 */
	default:
		return 0;
	}
	task = (struct task_struct *)bpf_get_current_task();
	if (BPF_CORE_READ(task, thread_info.status) & TS_COMPAT) {
		if (id == 4 || id == 146 || id == 102 || id == 369 || id == 370 || id == 345 || id == 313 ||
		    id == 187 || id == 239 || id == 379)
			start(bpf_get_current_pid_tgid());
		return 0;
	}
	if (id == 4 || id == 146 || id == 102 || id == 369 || id == 370 || id == 345 || id == 313 || id == 187 ||
	    id == 239 || id == 379)
		return 0;
	fd = id == 275 ? BPF_CORE_READ(regs, dx) : BPF_CORE_READ(regs, di); /* splice: fd_out */
	file = fd_file(task, fd);
	if (file != (struct file *)-1 && may_be_nfnetlink(file) && may_change_sets(id, regs))
		start(bpf_get_current_pid_tgid());
	return 0;
}

SEC("raw_tp/sys_exit")
int guard_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	done(bpf_get_current_pid_tgid());
	return 0;
}

SEC("raw_tp/io_uring_submit_req")
int guard_uring_submit(struct bpf_raw_tracepoint_args *ctx)
{
	struct io_kiocb *req = (struct io_kiocb *)ctx->args[0];
	__u8 op = BPF_CORE_READ(req, opcode);

	/* The file is assigned after this point, so go by the operation: writev, write_fixed,
	 * sendmsg, write, send, splice, send_zc, sendmsg_zc, and any newer than this list (49+). */
	if (op == 2 || op == 5 || op == 9 || op == 23 || op == 26 || op == 30 || op == 47 || op >= 48)
		start((__u64)req);
	return 0;
}

SEC("raw_tp/io_uring_complete")
int guard_uring_complete(struct bpf_raw_tracepoint_args *ctx)
{
	done((__u64)ctx->args[1]);
	return 0;
}

char _license[] SEC("license") = "GPL";
