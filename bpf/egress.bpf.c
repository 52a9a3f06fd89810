// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Decision points of clawker-egress: the cgroup sock_addr hooks (connect,
 * sendmsg) and socket creation (inet families; lsm.bpf.c sees the rest). Every decision goes through
 * decide() -- the policy seam. A denied attempt is one record; an allowed
 * one becomes a flow (flow.bpf.c records it when it ends).
 */
#include "common.bpf.h"
#include "lib/scope.h"
#include "lib/policy.h"
#include "lib/tcp.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline void set_owner(struct sock_owner *o, __u64 scope_id, __u8 verdict,
				      __u32 flags)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	o->cgroup_id = bpf_get_current_cgroup_id();
	o->scope_cgroup_id = scope_id;
	o->pid = (__u32)pid_tgid;
	o->tgid = pid_tgid >> 32;
	o->verdict = verdict;
	o->flags = (o->flags & ~SOCK_F_AUDIT) | flags;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
	fill_proc(&o->process);
}

static __always_inline bool same_key(const struct flow_key *x, const struct flow_key *y)
{
	const __u64 *a = (const __u64 *)x, *b = (const __u64 *)y;

	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/*
 * A TCP connect starts its flow here, where the caller is known: the whole
 * flow goes into the socket's storage, one allocation and no other map
 * operation (lib/tcp.h: a flow still open a second later is promoted into
 * `flows`; its end is one record either way). A connect retried on the
 * same socket to the same destination stays one flow; one to another
 * destination ends the first (it never sent its SYN).
 */
static __always_inline void start_tcp_flow(const struct attempt *a, struct sock_owner *owner,
					   __u64 scope_id, __u8 verdict, __u8 flags, __u64 cookie,
					   enum egress_hook hook)
{
	struct flow_key key = {};
	__u32 audit = (flags & EVENT_F_AUDIT) ? SOCK_F_AUDIT : 0;

	key.sock_cookie = cookie;
	key.family = a->family;
	key.protocol = a->protocol;
	key.remote_port = a->dst_port;
	__builtin_memcpy(key.remote_ip, a->dst_ip, sizeof(key.remote_ip));
	if (owner->flags & SOCK_F_TCP_FLOW) {
		/* connect() retried on the same socket: one flow, as it began */
		if (same_key(&owner->tcp_key, &key))
			return;
		end_unsent_tcp(owner, hook);
	}
	set_owner(owner, scope_id, verdict, SOCK_F_TCP_PENDING | audit);
	owner->flags &= ~(SOCK_F_TCP_UNTRACKED | SOCK_F_TCP_TABLED | SOCK_F_POLICY_END);
	owner->tcp_verdict = verdict;
	owner->tcp_key = key;
	/* Its start, and the first counter refresh (flow.bpf.c) a second from
	 * now: a short connection's packets only check the clock. */
	owner->tcp_start_ns = bpf_ktime_get_boot_ns();
	owner->tcp_refreshed_ns = owner->tcp_start_ns;
	/* Last, as a full barrier: the promoter reads the flow after the flag. */
	__sync_fetch_and_or(&owner->flags, SOCK_F_TCP_FLOW);
}

/*
 * The destination the kernel will use for an unspecified one (0.0.0.0, ::,
 * ::ffff:0.0.0.0), as the routing code picks it: IPv4 goes to the source
 * address (IP_PKTINFO's, else the bound one) or, with none, to 127.0.0.1;
 * IPv6 goes to the loopback address of the bound source's family
 * (::ffff:127.0.0.1 for a v4-mapped source: an IPv4 connection). Decided on
 * anything else, `deny 127.0.0.0/8` would have a side door.
 */
static __always_inline void real_dst(struct bpf_sock_addr *ctx, struct bpf_sock *sk,
				     struct attempt *a, bool v6, bool is_connect)
{
	__u32 w[4];

	__builtin_memcpy(w, a->dst_ip, sizeof(w));
	if (a->family == AF_INET) {
		__u32 src = 0;

		if (w[0] != 0)
			return;
		if (!v6 && !is_connect)
			src = ctx->msg_src_ip4;
		if (!src && !v6)
			src = sk->src_ip4;
		if (!src && v6) {
			__u32 s6[4] = { sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2],
					sk->src_ip6[3] };

			if (v4_mapped(s6))
				src = s6[3];
		}
		w[0] = src ? src : bpf_htonl(0x7f000001);
		__builtin_memcpy(a->dst_ip, w, sizeof(w));
		return;
	}
	if ((w[0] | w[1] | w[2] | w[3]) != 0)
		return;
	{
		__u32 s6[4] = { sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3] };

		if (v4_mapped(s6)) {
			/* 127.0.0.1, byte by byte: a 16-byte constant would
			 * become a .rodata map the loader does not pin */
			a->family = AF_INET;
			__builtin_memset(a->dst_ip, 0, sizeof(a->dst_ip));
			a->dst_ip[0] = 127;
			a->dst_ip[3] = 1;
			return;
		}
	}
	normalize_dst(a->dst_ip, a->family);
}

static __always_inline int on_sock_addr(struct bpf_sock_addr *ctx, enum egress_hook hook,
					bool v6, bool is_connect)
{
	struct bpf_sock *sk = ctx->sk;
	struct attempt a = {};
	struct sock_owner *owner;
	__u64 scope_id, cookie;
	__u8 verdict, flags;

	if (!sk || !in_scope(&scope_id))
		return SK_PASS;
	{
		__u32 d6[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2],
				ctx->user_ip6[3] };
		set_addr(a.dst_ip, &a.family, v6 ? AF_INET6 : AF_INET, d6, ctx->user_ip4);
	}
	real_dst(ctx, sk, &a, v6, is_connect);
	a.protocol = ctx->protocol;
	a.sock_type = ctx->type;
	a.dst_port = bpf_ntohs((__u16)ctx->user_port);
	cookie = bpf_get_socket_cookie(ctx);

	verdict = decide(&a, scope_id, false, &flags);
	if (enforced_deny(verdict, flags)) {
		emit_attempt(hook, scope_id, &a, cookie, verdict, flags);
		return SK_REJECT;
	}
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (a.protocol == IPPROTO_TCP) {
		if (!is_connect)
			return SK_PASS;
		if (owner) {
			start_tcp_flow(&a, owner, scope_id, verdict, flags, cookie, hook);
		} else {
			/* No storage, no flow: still on record, as an attempt. */
			count_full(usage_of(scope_id), MAP_FULL_FLOWS_TCP, SCOPE_FULL_FLOWS);
			emit_attempt(hook, scope_id, &a, cookie, verdict, flags);
		}
	} else if (owner) {
		/* Datagram flows start at their first packet (flow.bpf.c). */
		set_owner(owner, scope_id, verdict, (flags & EVENT_F_AUDIT) ? SOCK_F_AUDIT : 0);
	}
	return SK_PASS;
}

SEC("cgroup/connect4")
int egress_connect4(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, HOOK_CONNECT4, false, true);
}

SEC("cgroup/connect6")
int egress_connect6(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, HOOK_CONNECT6, true, true);
}

SEC("cgroup/sendmsg4")
int egress_sendmsg4(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, HOOK_SENDMSG4, false, false);
}

SEC("cgroup/sendmsg6")
int egress_sendmsg6(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, HOOK_SENDMSG6, true, false);
}

/*
 * Socket creation. TCP and UDP sockets are seen when they connect or send;
 * here only the sockets those hooks never see are recorded: raw, packet,
 * ICMP and every non-TCP/UDP protocol (D9). Their packets become flows in
 * flow.bpf.c, owned by whoever created the socket.
 */
SEC("cgroup/sock_create")
int egress_sock_create(struct bpf_sock *sk)
{
	struct attempt a = {};
	struct sock_owner *owner;
	__u64 scope_id, cookie;
	__u8 verdict, flags;

	if ((sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP) ||
	    (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP))
		return SK_PASS;
	if (!in_scope(&scope_id))
		return SK_PASS;
	a.family = sk->family;
	a.sock_type = sk->type;
	a.protocol = sk->protocol;
	cookie = bpf_get_socket_cookie(sk);
	verdict = decide(&a, scope_id, true, &flags);
	emit_attempt(HOOK_SOCK_CREATE, scope_id, &a, cookie, verdict, flags);
	if (enforced_deny(verdict, flags))
		return SK_REJECT;
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (owner)
		set_owner(owner, scope_id, verdict, (flags & EVENT_F_AUDIT) ? SOCK_F_AUDIT : 0);
	return SK_PASS;
}
