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

/* Over quota or no room: counted once; its end comes from the storage. */
static __always_inline void untracked(struct sock_owner *o, struct scope_usage *u)
{
	__sync_fetch_and_or(&o->flags, SOCK_F_TCP_UNTRACKED);
	count_full(u, MAP_FULL_FLOWS_TCP, SCOPE_FULL_FLOWS);
}

SEC("iter/bpf_sk_storage_map")
int promote_tcp(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sock___pr *sk = ctx->sk;
	struct sock_owner *o = ctx->value;
	struct flow_value val = {};
	struct tcp_counters c = {};
	struct scope_released *r;
	struct egress_config *cfg;
	struct scope_usage *u;
	struct flow_key key;
	__u64 start, scope;
	__u32 old;
	long err;

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
	key = o->tcp_key;
	scope = o->scope_cgroup_id;
	u = usage_of(scope);
	r = bpf_map_lookup_elem(&scope_released, &scope);
	cfg = config();
	if (u && cfg && !within_quota(u->flows, r ? r->flows : 0, cfg->max_flows_per_scope)) {
		untracked(o, u);
		return 0;
	}
	/* Marked first: from now on its end looks for the entry (lib/tcp.h). */
	old = __sync_fetch_and_or(&o->flags, SOCK_F_TCP_TABLED);
	if ((old & SOCK_F_TCP_TABLED) || !(old & SOCK_F_TCP_FLOW))
		return 0;
	if (o->tcp_start_ns != start) {
		/* a new flow on the socket: the next run sees it whole */
		__sync_fetch_and_and(&o->flags, ~SOCK_F_TCP_TABLED);
		return 0;
	}
	stored_flow(o, &val);
	{
		struct sock_common___pr *skc = &sk->__sk_common;
		__u32 l6[4] = { skc->skc_v6_rcv_saddr.in6_u.u6_addr32[0],
				skc->skc_v6_rcv_saddr.in6_u.u6_addr32[1],
				skc->skc_v6_rcv_saddr.in6_u.u6_addr32[2],
				skc->skc_v6_rcv_saddr.in6_u.u6_addr32[3] };
		__u8 fam;

		set_addr(val.local_ip, &fam, skc->skc_family, l6, skc->skc_rcv_saddr);
		val.local_port = skc->skc_num;
	}
	if (read_tcp(sk, &c)) {
		val.bytes_out = c.bytes_out;
		val.bytes_in = c.bytes_in;
		val.packets_out = c.packets_out;
		val.packets_in = c.packets_in;
	}
	err = bpf_map_update_elem(&flows, &key, &val, BPF_NOEXIST);
	if (err) {
		if (err != -EEXIST)
			untracked(o, u);
		return 0;
	}
	if (u)
		__sync_fetch_and_add(&u->flows, 1);
	/*
	 * Did the flow end meanwhile (lib/tcp.h)? A full barrier after the
	 * insert, then the flag: if its end did not find this entry, nothing
	 * else would ever remove it. A new flow on the same socket has
	 * another start time.
	 */
	old = __sync_fetch_and_or(&o->flags, 0);
	if ((old & SOCK_F_TCP_FLOW) && o->tcp_start_ns == start)
		return 0;
	if (bpf_map_delete_elem(&flows, &key) == 0 && u)
		__sync_fetch_and_add(&u->flows, -1);
	return 0;
}
