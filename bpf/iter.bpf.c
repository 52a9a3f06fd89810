// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Decided once is not enough (issue 9, item 7): after a policy reload and
 * at a bypass end, user space runs these socket iterators. Each in-scope
 * socket (one that carries our sock_owners storage) that talks to one
 * remote end -- every TCP connection, every connected UDP socket -- is
 * decided again with decide() against its remote address and port. A
 * socket the policy now denies (enforced) is ended with the
 * bpf_sock_destroy() kfunc (>= 6.5): TCP sends a RST and its flow record
 * ends with close_reason=policy (FLOW_F_POLICY_END, read by flow.bpf.c at
 * TCP_CLOSE); a UDP socket is disconnected with ECONNABORTED.
 *
 * Iterators walk the network namespace of the process that opens them:
 * user space opens one per namespace its containers use.
 *
 * Output: one struct sweep_record per decided socket (bpf_seq_write), and
 * a SWEEP_FAILED record after the SWEEP_ENDED one of a socket that could
 * not be ended.
 */
#include "common.bpf.h"
#include "lib/policy.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TCP_TIME_WAIT 6
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/* Kernel types read with CO-RE (the ___ce suffix is dropped when matching). */
struct in6_addr___ce {
	union {
		__u32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned short skc_family;
	volatile unsigned char skc_state;
	__u32 skc_daddr;
	__u32 skc_rcv_saddr;
	__u16 skc_dport;
	struct in6_addr___ce skc_v6_daddr;
	struct in6_addr___ce skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct seq_file;
struct udp_sock;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
	__u32 uid;
	int bucket;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* The socket's remote end as a decision input (IPv4-mapped as IPv4). */
static __always_inline void remote_of(struct sock_common *skc, __u8 protocol,
				      struct attempt *a)
{
	__u32 d6[4];

	d6[0] = skc->skc_v6_daddr.in6_u.u6_addr32[0];
	d6[1] = skc->skc_v6_daddr.in6_u.u6_addr32[1];
	d6[2] = skc->skc_v6_daddr.in6_u.u6_addr32[2];
	d6[3] = skc->skc_v6_daddr.in6_u.u6_addr32[3];
	set_addr(a->dst_ip, &a->family, skc->skc_family, d6, skc->skc_daddr);
	normalize_dst(a->dst_ip, a->family);
	a->protocol = protocol;
	a->sock_type = protocol == IPPROTO_TCP ? SOCK_STREAM : SOCK_DGRAM;
	a->dst_port = bpf_ntohs(skc->skc_dport);
}

/* An accepted connection from the container itself: a loopback peer, or
 * its own address (what cgroup_skb ingress lets through its loopback). */
static __always_inline bool inbound_from_self(struct sock_common *skc, const struct attempt *a)
{
	__u32 r[4], l[4], l6[4];

	__builtin_memcpy(r, a->dst_ip, sizeof(r));
	if (a->family == AF_INET && (bpf_ntohl(r[0]) >> 24) == 127)
		return true;
	if (a->family == AF_INET6 && !r[0] && !r[1] && !r[2] && r[3] == bpf_htonl(1))
		return true;
	l6[0] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[0];
	l6[1] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[1];
	l6[2] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[2];
	l6[3] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[3];
	{
		__u8 fam;
		__u8 local[EGRESS_ADDR_LEN];

		set_addr(local, &fam, skc->skc_family, l6, skc->skc_rcv_saddr);
		__builtin_memcpy(l, local, sizeof(l));
	}
	return r[0] == l[0] && r[1] == l[1] && r[2] == l[2] && r[3] == l[3];
}

/*
 * Decide one owned socket again; end it when the policy now denies it.
 * `flow` is its flow entry, if known: marked so its record says policy.
 */
static __always_inline void redecide(struct seq_file *seq, struct sock_common *skc,
				     struct sock_owner *owner, __u8 protocol,
				     struct flow_key *flow)
{
	struct sweep_record rec = {};
	struct attempt a = {};
	struct flow_value *v;
	__u8 verdict, flags = 0;

	remote_of(skc, protocol, &a);
	if (owner->flags & SOCK_F_INBOUND)
		/* accepted: the `inbound` switch decides, the container's own
		 * connections to itself always pass */
		verdict = inbound_from_self(skc, &a) ? VERDICT_ALLOW
						     : decide_inbound(owner->scope_cgroup_id, &flags);
	else
		verdict = decide(&a, owner->scope_cgroup_id, false, &flags);
	rec.scope_cgroup_id = owner->scope_cgroup_id;
	__builtin_memcpy(rec.remote_ip, a.dst_ip, sizeof(rec.remote_ip));
	rec.remote_port = a.dst_port;
	rec.family = a.family;
	rec.protocol = protocol;
	if (verdict != VERDICT_DENY || (flags & EVENT_F_AUDIT)) {
		rec.outcome = verdict == VERDICT_DENY ? SWEEP_AUDIT : SWEEP_KEPT;
		bpf_seq_write(seq, &rec, sizeof(rec));
		return;
	}
	/*
	 * The record first: when the output buffer is full the kernel shows
	 * this socket again after flushing it, which only works while the
	 * socket is still in the hash table (an ended one would be skipped,
	 * its record lost).
	 */
	rec.outcome = SWEEP_ENDED;
	if (bpf_seq_write(seq, &rec, sizeof(rec)))
		return;
	v = flow ? bpf_map_lookup_elem(&flows, flow) : NULL;
	if (v)
		v->flags |= FLOW_F_POLICY_END;
	/* A TCP flow without a `flows` entry ends from the storage (lib/tcp.h). */
	if (protocol == IPPROTO_TCP)
		__sync_fetch_and_or(&owner->flags, SOCK_F_POLICY_END);
	owner->verdict = VERDICT_DENY;
	rec.err = bpf_sock_destroy(skc);
	if (rec.err) {
		/* corrects the SWEEP_ENDED above */
		rec.outcome = SWEEP_FAILED;
		bpf_seq_write(seq, &rec, sizeof(rec));
	}
}

SEC("iter/tcp")
int sweep_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct sock_owner *owner;
	struct flow_key *flow;
	unsigned char state;

	if (!skc)
		return 0;
	state = skc->skc_state;
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return 0; /* not a full socket: no storage, nothing left to stop */
	owner = bpf_sk_storage_get(&sock_owners, skc, 0, 0);
	if (!owner)
		return 0; /* not in scope (or not opened by a container's connect) */
	if (state == TCP_LISTEN)
		return 0; /* no remote end: cgroup_skb decides each SYN as of now */
	flow = (owner->flags & SOCK_F_TCP_FLOW) ? &owner->tcp_key : NULL;
	redecide(ctx->meta->seq, skc, owner, IPPROTO_TCP, flow);
	return 0;
}

SEC("iter/udp")
int sweep_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;
	struct sock_common *skc;
	struct sock_owner *owner;
	struct flow_key key = {};

	if (!sk)
		return 0;
	skc = &sk->__sk_common;
	if (!skc->skc_dport)
		return 0; /* unconnected: every send names its destination and is decided then */
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	if (!owner)
		return 0;
	{
		struct attempt a = {};

		/* Its datagram flow, as flow.bpf.c keyed it at the first packet. */
		remote_of(skc, IPPROTO_UDP, &a);
		key.sock_cookie = bpf_get_socket_cookie(sk);
		__builtin_memcpy(key.remote_ip, a.dst_ip, sizeof(key.remote_ip));
		key.remote_port = a.dst_port;
		key.family = a.family;
		key.protocol = IPPROTO_UDP;
	}
	redecide(ctx->meta->seq, (struct sock_common *)sk, owner, IPPROTO_UDP, &key);
	return 0;
}
