// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * The promoter (issue 12, lib/tcp.h): a TCP flow lives in its socket's
 * storage from connect() on; one still open a second later gets its
 * `flows` entry here, where interim records and the open-flow views read
 * it. User space runs this iterator over `sock_owners` before every read
 * of the open flows (once a second), so a flow shows from its first or
 * second second on, idle or not; a short connection never touches `flows`.
 *
 * The entry carries the storage's identity, the local end and the counters
 * as tcp_sock has them now. The container's flow quota applies here: a
 * flow over it (or one the table cannot hold) is counted once and stays in
 * the storage, which still makes its end record (flow.bpf.c).
 */
#include "common.bpf.h"
#include "lib/tcp.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Kernel types read with CO-RE (the ___pr suffix is dropped when matching). */
struct in6_addr___pr {
	union {
		__u32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common___pr {
	unsigned short skc_family;
	__u32 skc_rcv_saddr;
	__u16 skc_num;
	struct in6_addr___pr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock___pr {
	struct sock_common___pr __sk_common;
} __attribute__((preserve_access_index));

struct seq_file;
struct bpf_map;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_iter__bpf_sk_storage_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
	struct sock___pr *sk;
	void *value;
} __attribute__((preserve_access_index));

SEC("iter/bpf_sk_storage_map")
int promote_tcp(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sock___pr *sk = ctx->sk;
	struct sock_owner *o = ctx->value;
	struct tcp_counters c = {};
	struct sock_common___pr *skc;
	__u8 local_ip[EGRESS_ADDR_LEN], fam;
	__u32 l6[4];
	__u64 start;

	/*
	 * A byte of output every 1,024 sockets: one read() of an iterator
	 * that wrote nothing stops after a million objects (-EAGAIN); with
	 * output it returns and the next read() goes on from there.
	 */
	if ((ctx->meta->seq_num & 1023) == 0) {
		__u8 mark = 0;

		bpf_seq_write(ctx->meta->seq, &mark, sizeof(mark));
	}
	if (!sk || !o)
		return 0;
	/* An open TCP flow whose SYN went out, not promoted or refused before. */
	if ((o->flags & (SOCK_F_TCP_FLOW | SOCK_F_TCP_PENDING | SOCK_F_TCP_UNTRACKED |
			 SOCK_F_TCP_TABLED)) != SOCK_F_TCP_FLOW)
		return 0;
	start = o->tcp_start_ns;
	if (bpf_ktime_get_boot_ns() - start < NSEC_PER_SEC)
		return 0;
	skc = &sk->__sk_common;
	l6[0] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[0];
	l6[1] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[1];
	l6[2] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[2];
	l6[3] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[3];
	set_addr(local_ip, &fam, skc->skc_family, l6, skc->skc_rcv_saddr);
	table_tcp_flow(o, start, local_ip, skc->skc_num, read_tcp(sk, &c) ? &c : NULL);
	return 0;
}
