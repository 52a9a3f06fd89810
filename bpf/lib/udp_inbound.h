/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * UDP inbound (issue 15), for flow.bpf.c. A datagram arriving at a
 * container's UDP socket is a *reply* when that socket is connected (the
 * kernel delivers a connected socket only its peer's datagrams) or has sent
 * to the datagram's source (address and port): its outbound flow is open in
 * `flows` (same key: socket, peer), or the peer is among the last
 * UDP_SENT_PEERS the socket started a flow with (`udp_sent`: a flow that
 * ended idle, or got no entry because the share was full). Anything else is
 * *inbound*: decided by the container's `inbound` policy like a TCP
 * connection to a listener, and recorded once per flow.
 */
#ifndef CLAWKER_LIB_UDP_INBOUND_H
#define CLAWKER_LIB_UDP_INBOUND_H

#include "maps.h"
#include "addr.h"
#include "events.h"
#include "policy.h"
#include "proc.h"
#include "scope.h"

/* A power of two: the slot is `next & (UDP_SENT_PEERS - 1)`. */
#define UDP_SENT_PEERS 4
/* At most one DENIED record per socket per 10 ms (as for a TCP listener),
 * at most one new inbound flow per socket per 1 ms: datagrams from outside
 * (sources are free to spoof) must not spend the container's record
 * budget or flow share; what is past either is counted `rate_limited`. */
#define UDP_INBOUND_DENIED_RECORD_NS (10 * 1000 * 1000ULL)
#define UDP_INBOUND_NEW_FLOW_NS (1000 * 1000ULL)

struct udp_peer {
	__u8 ip[EGRESS_ADDR_LEN];
	__u16 port; /* host order */
	__u8 family;
	__u8 _pad;
};

/* The peers a UDP socket in scope last started flows with (written on the
 * egress path only when a flow starts, read on ingress only when a
 * datagram has no flow). Freed with the socket. */
struct udp_sent {
	struct udp_peer peer[UDP_SENT_PEERS];
	__u32 next;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct udp_sent);
} udp_sent SEC(".maps");

static __always_inline bool is_udp(const struct bpf_sock *sk)
{
	return sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP;
}

static __always_inline bool peer_is(const struct udp_peer *p, const struct flow_key *k,
				    bool any_port)
{
	const __u64 *a = (const __u64 *)p->ip, *b = (const __u64 *)k->remote_ip;

	return a[0] == b[0] && a[1] == b[1] && p->family == k->family &&
	       (any_port || p->port == k->remote_port);
}

static __always_inline bool sent_to(const struct udp_sent *s, const struct flow_key *k,
				    bool any_port)
{
	for (int i = 0; i < UDP_SENT_PEERS; i++)
		if (peer_is(&s->peer[i], k, any_port))
			return true;
	return false;
}

/* An unconnected UDP socket starts a flow to `k`'s peer (egress). */
static __always_inline void remember_peer(struct bpf_sock *sk, const struct flow_key *k)
{
	struct udp_sent *s;
	__u32 i;

	if (!is_udp(sk) || sk->dst_port)
		return; /* connected: its peer is the kernel's to check */
	s = bpf_sk_storage_get(&udp_sent, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s || sent_to(s, k, false))
		return;
	i = s->next++ & (UDP_SENT_PEERS - 1);
	__builtin_memcpy(s->peer[i].ip, k->remote_ip, sizeof(s->peer[i].ip));
	s->peer[i].port = k->remote_port;
	s->peer[i].family = k->family;
}

/*
 * A datagram without a flow: a reply after all (see above)? On the
 * namespace's loopback any port of an address the socket sent to will do:
 * the one NAT inside a container's namespace is Docker's embedded DNS
 * (127.0.0.11:53 rewritten to its real port before cgroup_skb egress sees
 * it, the answer rewritten back before ingress), and loopback traffic is
 * never denied, only recorded.
 */
static __always_inline bool udp_is_reply(struct bpf_sock *sk, const struct flow_key *k,
					 bool loopback)
{
	struct udp_sent *s;

	if (sk->dst_port)
		return true;
	s = bpf_sk_storage_get(&udp_sent, sk, 0, 0);
	return s && sent_to(s, k, loopback);
}

/* The DENIED record of an inbound datagram (src = the peer, dst = the
 * container's address and port), at most one per socket per interval. */
static __always_inline void udp_inbound_denied(struct sock_owner *o, const struct flow_key *k,
					       const __u8 *local_ip, __u16 local_port)
{
	struct sock_event *ev;
	__u64 now = bpf_ktime_get_boot_ns();

	/* a UDP socket's tcp_refreshed_ns: its last inbound record or flow */
	if (now - o->tcp_refreshed_ns < UDP_INBOUND_DENIED_RECORD_NS) {
		count_loss(usage_of(o->scope_cgroup_id), DROP_RATE_LIMITED,
			   SCOPE_LOSS_RATE_LIMITED);
		return;
	}
	o->tcp_refreshed_ns = now;
	ev = reserve_event(sizeof(*ev), HOOK_SKB_INGRESS, o->scope_cgroup_id);
	if (!ev)
		return;
	__builtin_memset(ev, 0, sizeof(*ev));
	fill_header(&ev->hdr, EVENT_KIND_SOCK, sizeof(*ev), HOOK_SKB_INGRESS);
	ev->cgroup_id = o->cgroup_id;
	ev->scope_cgroup_id = o->scope_cgroup_id;
	ev->sock_cookie = k->sock_cookie;
	ev->pid = o->pid;
	ev->tgid = o->tgid;
	__builtin_memcpy(ev->comm, o->comm, sizeof(ev->comm));
	ev->process = o->process;
	__builtin_memcpy(ev->src_ip, k->remote_ip, sizeof(ev->src_ip));
	__builtin_memcpy(ev->dst_ip, local_ip, sizeof(ev->dst_ip));
	ev->src_port = k->remote_port;
	ev->dst_port = local_port;
	ev->family = k->family;
	ev->sock_type = SOCK_DGRAM;
	ev->protocol = IPPROTO_UDP;
	ev->verdict = VERDICT_DENY;
	ev->flags = EVENT_F_INBOUND;
	submit_event(ev, sizeof(*ev));
}

/* A new inbound flow (not enforced-denied): `flows` entry with
 * FLOW_F_INBOUND, at most one per socket per UDP_INBOUND_NEW_FLOW_NS and
 * only in the lower half of the container's share (the other half stays
 * for the flows it starts itself). NULL: not tracked (counted). */
static __always_inline struct flow_value *udp_inbound_flow(struct sock_owner *o,
							   const struct flow_key *k,
							   const __u8 *local_ip, __u16 local_port,
							   __u8 verdict, __u8 flags)
{
	struct scope_usage *u = usage_of(o->scope_cgroup_id);
	struct scope_released *r = bpf_map_lookup_elem(&scope_released, &o->scope_cgroup_id);
	struct egress_config *cfg = config();
	struct flow_value val = {};
	__u64 now = bpf_ktime_get_boot_ns();

	if (now - o->tcp_refreshed_ns < UDP_INBOUND_NEW_FLOW_NS) {
		count_loss(u, DROP_RATE_LIMITED, SCOPE_LOSS_RATE_LIMITED);
		return NULL;
	}
	o->tcp_refreshed_ns = now;
	if (u && cfg &&
	    !within_quota(u->flows, r ? r->flows : 0, cfg->max_flows_per_scope / 2)) {
		count_loss(u, DROP_FLOW_TABLE_FULL, SCOPE_LOSS_FLOW_QUOTA);
		return NULL;
	}
	val.start_ns = now;
	val.last_seen_ns = now;
	val.cgroup_id = o->cgroup_id;
	val.scope_cgroup_id = o->scope_cgroup_id;
	val.pid = o->pid;
	val.tgid = o->tgid;
	val.verdict = verdict;
	val.flags = FLOW_F_INBOUND | ((flags & EVENT_F_AUDIT) ? FLOW_F_AUDIT : 0);
	__builtin_memcpy(val.comm, o->comm, sizeof(val.comm));
	val.process = o->process;
	__builtin_memcpy(val.local_ip, local_ip, sizeof(val.local_ip));
	val.local_port = local_port;
	if (bpf_map_update_elem(&flows, k, &val, BPF_NOEXIST)) {
		count_loss(u, DROP_FLOW_TABLE_FULL, SCOPE_LOSS_FLOW_QUOTA);
		return NULL;
	}
	if (u)
		__sync_fetch_and_add(&u->flows, 1);
	o->flags |= SOCK_F_HAS_FLOWS;
	return bpf_map_lookup_elem(&flows, k);
}

/*
 * An explicit bind() of a UDP socket in scope (cgroup/post_bind4/6, `v6`, in the
 * caller's context, after the kernel chose the port): the UDP listener.
 * The socket gets its owner now (who bound it: an inbound datagram names
 * that process even if the socket never sends) and one `listen` record
 * (dst = the bound address; verdict = the container's `inbound` now).
 */
static __always_inline void udp_bound(struct bpf_sock *sk, bool v6)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct sock_owner *owner;
	struct sock_event *ev;
	__u64 scope_id;
	__u8 verdict, flags, fam;

	if (!is_udp(sk) || !in_scope(&scope_id))
		return;
	verdict = decide_inbound(scope_id, &flags);
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (owner) {
		owner->cgroup_id = bpf_get_current_cgroup_id();
		owner->scope_cgroup_id = scope_id;
		owner->pid = (__u32)pid_tgid;
		owner->tgid = pid_tgid >> 32;
		owner->verdict = VERDICT_ALLOW; /* its sends are decided when they come */
		bpf_get_current_comm(owner->comm, sizeof(owner->comm));
		fill_proc(&owner->process);
	}
	ev = reserve_event(sizeof(*ev), HOOK_LISTEN, scope_id);
	if (!ev)
		return;
	__builtin_memset(ev, 0, sizeof(*ev));
	fill_header(&ev->hdr, EVENT_KIND_SOCK, sizeof(*ev), HOOK_LISTEN);
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->scope_cgroup_id = scope_id;
	ev->sock_cookie = bpf_get_socket_cookie(sk);
	ev->pid = (__u32)pid_tgid;
	ev->tgid = pid_tgid >> 32;
	if (v6) { /* each hook may read only its own family's address */
		__u32 s6[4] = { sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3] };

		set_addr(ev->dst_ip, &fam, AF_INET6, s6, 0);
	} else {
		__u32 none[4] = {};

		set_addr(ev->dst_ip, &fam, AF_INET, none, sk->src_ip4);
	}
	ev->family = fam;
	ev->dst_port = sk->src_port;
	ev->sock_type = SOCK_DGRAM;
	ev->protocol = IPPROTO_UDP;
	ev->verdict = verdict;
	ev->flags = flags | EVENT_F_INBOUND;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	fill_proc(&ev->process);
	submit_event(ev, sizeof(*ev));
}

#endif /* CLAWKER_LIB_UDP_INBOUND_H */
