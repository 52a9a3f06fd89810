// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Per-flow accounting of clawker-egress (D7, D29, P10):
 *  - sock_ops follows every tracked TCP connection and, when it reaches
 *    TCP_CLOSE, emits one flow_end_event with exact payload byte counts
 *    read from the kernel's own tcp_sock counters;
 *  - cgroup_skb egress/ingress count datagram/raw packets per (socket,
 *    remote endpoint) flow, refresh TCP counters for interim reports, and
 *    parse DNS queries and answers (lib/dns.h);
 *  - sock_release tells user space when a datagram socket's flows end.
 * Only sockets that egress.bpf.c marked as owned (in scope) are touched.
 */
#include "common.bpf.h"
#include "lib/scope.h"
#include "lib/policy.h"
#include "lib/dns.h"
#include "lib/tcp.h"
#include "lib/udp_inbound.h"
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define LOOPBACK_IFINDEX 1 /* every network namespace's lo */
/* At most one DENIED record per listener per interval: SYNs come from
 * outside, and must not spend the container's whole record budget. */
#define INBOUND_DENIED_RECORD_NS (10 * 1000 * 1000ULL)


static __always_inline __u8 close_reason(__u32 old_state, int err)
{
	switch (err) {
	case 111: /* ECONNREFUSED */
		return CLOSE_REFUSED;
	case 104: /* ECONNRESET */
	case 32:  /* EPIPE */
		return CLOSE_RST;
	case 110: /* ETIMEDOUT */
		return CLOSE_TIMEOUT;
	case 100: /* ENETDOWN */
	case 101: /* ENETUNREACH */
	case 112: /* EHOSTDOWN */
	case 113: /* EHOSTUNREACH */
		return CLOSE_UNREACHABLE;
	}
	if (err)
		return CLOSE_RST;
	/* Closed with unread data or SO_LINGER 0: we sent the RST. */
	if (old_state == BPF_TCP_ESTABLISHED || old_state == BPF_TCP_CLOSE_WAIT ||
	    old_state == BPF_TCP_SYN_SENT)
		return CLOSE_RST;
	return CLOSE_FIN;
}

/*
 * Where the kernel refuses the promoter (map iterators), a TCP flow gets
 * its `flows` entry here, when its SYN goes out or its handshake completes
 * (the local end is known then): the open-flow views and interim records
 * see every flow, at the cost of a table insert per connection.
 */
static __always_inline void table_at_connect(struct bpf_sock_ops *ctx, struct sock_owner *o)
{
	struct egress_config *cfg = config();
	__u32 l6[4] = { ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2],
			ctx->local_ip6[3] };
	__u8 local_ip[EGRESS_ADDR_LEN], fam;

	if (!cfg || !cfg->tcp_table_at_connect)
		return;
	set_addr(local_ip, &fam, ctx->family, l6, ctx->local_ip4);
	table_tcp_flow(o, o->tcp_start_ns, local_ip, ctx->local_port, NULL);
}

static __always_inline void on_tcp_connect(struct bpf_sock_ops *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sock_owner *owner;

	if (!sk)
		return;
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	if (!owner)
		return; /* not in scope */
	/* The SYN goes out: no `flows` entry yet (lib/tcp.h). */
	__sync_fetch_and_and(&owner->flags, ~SOCK_F_TCP_PENDING);
	if (!(owner->flags & SOCK_F_TCP_FLOW))
		return;
	bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	table_at_connect(ctx, owner);
}

/*
 * The end of a TCP flow as the socket leaves it: exact counters (when the
 * tcp_sock could be read), the local end, the error and why it closed.
 */
static __always_inline void submit_tcp_end(struct bpf_sock_ops *ctx, struct flow_end_event *ev,
					   const struct tcp_counters *c, __u8 reason)
{
	__u32 l6[4] = { ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2],
			ctx->local_ip6[3] };
	__u8 fam;

	if (c) {
		ev->value.bytes_out = c->bytes_out;
		ev->value.bytes_in = c->bytes_in;
		ev->value.packets_out = c->packets_out;
		ev->value.packets_in = c->packets_in;
		ev->sk_err = c->sk_err;
	}
	set_addr(ev->value.local_ip, &fam, ctx->family, l6, ctx->local_ip4);
	ev->value.local_port = ctx->local_port;
	ev->end_ns = ev->hdr.ts_ns; /* the record's time: one clock read less */
	ev->close_reason = reason;
	submit_event(ev, sizeof(*ev));
}

/* A TCP flow end whose record was lost: its bytes still count for its container. */
static __always_inline void count_lost_bytes(__u64 scope_id, const struct tcp_counters *c)
{
	struct scope_usage *u = bpf_map_lookup_elem(&scope_usage, &scope_id);

	if (!u)
		return;
	__sync_fetch_and_add(&u->lost_bytes_out, c->bytes_out);
	__sync_fetch_and_add(&u->lost_bytes_in, c->bytes_in);
}

/* The end of a TCP flow without a `flows` entry: from the socket's storage. */
static __always_inline void stored_tcp_close(struct bpf_sock_ops *ctx, struct sock_owner *o,
					     const struct flow_key *key, __u32 old_state)
{
	struct flow_end_event *ev;
	struct tcp_counters c = {};

	bool have = ctx->sk && read_tcp(ctx->sk, &c);

	ev = stored_end(o, key, HOOK_SOCK_OPS);
	if (!ev) {
		if (have)
			count_lost_bytes(o->scope_cgroup_id, &c);
		return;
	}
	submit_tcp_end(ctx, ev, have ? &c : NULL,
		       (o->flags & SOCK_F_POLICY_END) ? CLOSE_POLICY
						      : close_reason(old_state, c.sk_err));
}

static __always_inline void on_tcp_close(struct bpf_sock_ops *ctx, __u32 old_state)
{
	struct flow_end_event *ev;
	struct tcp_counters c = {};
	struct sock_owner *owner;
	struct scope_usage *u;
	struct flow_key key;
	struct flow_value *v;
	__u32 old;

	if (!ctx->sk)
		return;
	owner = bpf_sk_storage_get(&sock_owners, ctx->sk, 0, 0);
	if (!owner || !(owner->flags & SOCK_F_TCP_FLOW))
		return;
	key = owner->tcp_key;
	/* Ended here, once (lib/tcp.h): a full barrier before the lookup. */
	old = __sync_fetch_and_and(&owner->flags, ~SOCK_F_TCP_FLOW);
	if (!(old & SOCK_F_TCP_FLOW))
		return;
	v = (old & SOCK_F_TCP_TABLED) ? bpf_map_lookup_elem(&flows, &key) : NULL;
	if (!v) {
		stored_tcp_close(ctx, owner, &key, old_state);
		return;
	}
	ev = reserve_event(sizeof(*ev), HOOK_SOCK_OPS, v->scope_cgroup_id);
	if (!ev && ctx->sk && read_tcp(ctx->sk, &c))
		count_lost_bytes(v->scope_cgroup_id, &c);
	if (ev) {
		__builtin_memset(ev, 0, sizeof(*ev));
		fill_header(&ev->hdr, EVENT_KIND_FLOW_END, sizeof(*ev), HOOK_SOCK_OPS);
		ev->key = key;
		__builtin_memcpy(&ev->value, v, sizeof(ev->value));
		bool have = ctx->sk && read_tcp(ctx->sk, &c);

		submit_tcp_end(ctx, ev, have ? &c : NULL,
			       ((v->flags & FLOW_F_POLICY_END) || (old & SOCK_F_POLICY_END))
				       ? CLOSE_POLICY
				       : close_reason(old_state, c.sk_err));
	}
	/* Ended exactly once: the record is out (or its loss counted). */
	u = bpf_map_lookup_elem(&scope_usage, &v->scope_cgroup_id);
	if (bpf_map_delete_elem(&flows, &key) == 0 && u)
		__sync_fetch_and_add(&u->flows, -1);
}

/*
 * Inbound (issue 15). listen() on a socket in scope: one record (dst = the
 * listening address; verdict = what the container's `inbound` policy says
 * now), and the socket's storage names who listened. Runs in the caller's
 * context (the listen syscall), for every listen: not gated by cb flags.
 */
static __always_inline void on_listen(struct bpf_sock_ops *ctx)
{
	__u32 l6[4] = { ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2],
			ctx->local_ip6[3] };
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct bpf_sock *sk = ctx->sk;
	struct sock_owner *owner;
	struct sock_event *ev;
	__u64 scope_id;
	__u8 verdict, flags;

	if (!sk || !in_scope(&scope_id))
		return;
	verdict = decide_inbound(scope_id, &flags);
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (owner) {
		owner->cgroup_id = bpf_get_current_cgroup_id();
		owner->scope_cgroup_id = scope_id;
		owner->pid = (__u32)pid_tgid;
		owner->tgid = pid_tgid >> 32;
		owner->verdict = verdict;
		owner->flags = SOCK_F_LISTENER;
		owner->tcp_refreshed_ns = 0; /* no DENIED record yet */
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
	ev->sock_cookie = bpf_get_socket_cookie(ctx);
	ev->pid = (__u32)pid_tgid;
	ev->tgid = pid_tgid >> 32;
	{
		__u8 fam;

		set_addr(ev->dst_ip, &fam, ctx->family, l6, ctx->local_ip4);
		ev->family = fam;
	}
	ev->dst_port = ctx->local_port;
	ev->sock_type = SOCK_STREAM;
	ev->protocol = IPPROTO_TCP;
	ev->verdict = verdict;
	ev->flags = flags | EVENT_F_INBOUND;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	fill_proc(&ev->process);
	submit_event(ev, sizeof(*ev));
}

/* The peer is the container itself: a loopback address, or its own address. */
static __always_inline bool peer_is_local(const struct flow_key *key, const __u8 *local)
{
	__u32 r[4], l[4];

	__builtin_memcpy(r, key->remote_ip, sizeof(r));
	__builtin_memcpy(l, local, sizeof(l));
	if (key->family == AF_INET && (bpf_ntohl(r[0]) >> 24) == 127)
		return true;
	if (key->family == AF_INET6 && !r[0] && !r[1] && !r[2] && r[3] == bpf_htonl(1))
		return true;
	return r[0] == l[0] && r[1] == l[1] && r[2] == l[2] && r[3] == l[3];
}

/*
 * A listener in scope accepted a connection (the handshake completed; this
 * runs in softirq for the new socket). Its storage is a copy of the
 * listener's (BPF_F_CLONE): the process that listened owns the flow. From
 * here the flow is an outbound one's twin (lib/tcp.h): it lives in the
 * storage, the promoter gives it its `flows` entry if it is still open a
 * second later (the container's share applies there), and its end is one
 * record at TCP_CLOSE. A short connection touches no other map (issue 12).
 */
static __always_inline void on_passive_established(struct bpf_sock_ops *ctx)
{
	__u32 r6[4] = { ctx->remote_ip6[0], ctx->remote_ip6[1], ctx->remote_ip6[2],
			ctx->remote_ip6[3] };
	__u32 l6[4] = { ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2],
			ctx->local_ip6[3] };
	__u8 local_ip[EGRESS_ADDR_LEN];
	struct sock_owner *owner;
	struct flow_key key = {};
	struct bpf_sock *sk = ctx->sk;
	__u8 verdict, flags, fam;
	__u64 now;

	if (!sk)
		return;
	/* Only a listener's accepted sockets get here, and only a listener
	 * in scope has storage to copy. */
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	if (!owner)
		return;
	key.sock_cookie = bpf_get_socket_cookie(ctx);
	set_addr(key.remote_ip, &key.family, ctx->family, r6, ctx->remote_ip4);
	key.remote_port = bpf_ntohl(ctx->remote_port);
	key.protocol = IPPROTO_TCP;
	set_addr(local_ip, &fam, ctx->family, l6, ctx->local_ip4);
	verdict = decide_inbound(owner->scope_cgroup_id, &flags);
	/* An enforced deny never lets a handshake from outside complete
	 * (cgroup_skb ingress drops it): here it is the container talking to
	 * itself, or a reload between SYN and ACK (the re-decision after the
	 * reload ends it). */
	if (peer_is_local(&key, local_ip) || enforced_deny(verdict, flags))
		verdict = VERDICT_ALLOW, flags = 0;
	now = bpf_ktime_get_boot_ns();
	owner->verdict = verdict;
	owner->tcp_verdict = verdict;
	owner->tcp_key = key;
	owner->tcp_refreshed_ns = now;
	owner->tcp_start_ns = now;
	bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	/* Last, as a full barrier: the promoter reads the flow after the
	 * flag (lib/tcp.h). The listener's flags are not the flow's. */
	__atomic_exchange_n(&owner->flags,
			    SOCK_F_INBOUND | SOCK_F_TCP_FLOW |
				    ((flags & EVENT_F_AUDIT) ? SOCK_F_AUDIT : 0),
			    __ATOMIC_SEQ_CST);
	table_at_connect(ctx, owner);
}

SEC("sockops")
int flow_sockops(struct bpf_sock_ops *ctx)
{
	switch (ctx->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		on_tcp_connect(ctx);
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		on_listen(ctx);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_passive_established(ctx);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ctx->args[1] == BPF_TCP_CLOSE)
			on_tcp_close(ctx, ctx->args[0]);
		break;
	}
	return 1;
}

/*
 * TCP: refresh the flow's counters from tcp_sock at most once a second, so
 * user space can report long flows while they are open. The throttle lives
 * in the socket's own storage: a bulk transfer costs one storage lookup and
 * a clock read per packet, and a flow-table lookup once a second.
 */
static __always_inline void refresh_tcp(struct bpf_sock *sk, struct sock_owner *owner)
{
	__u32 tabled = SOCK_F_TCP_FLOW | SOCK_F_TCP_TABLED;
	struct tcp_counters c = {};
	struct flow_value *v;
	__u64 now;

	if ((owner->flags & tabled) != tabled)
		return; /* no `flows` entry (yet): nothing to refresh */
	now = bpf_ktime_get_boot_ns();
	/* In its first second a tabled flow is refreshed on every packet: a
	 * flow tabled at connect (tcp_table_at_connect) that sends everything
	 * at once and then idles still shows those bytes while open, as the
	 * promoter's copy a second in would. */
	if (now - owner->tcp_refreshed_ns < NSEC_PER_SEC &&
	    now - owner->tcp_start_ns >= NSEC_PER_SEC)
		return;
	owner->tcp_refreshed_ns = now;
	v = bpf_map_lookup_elem(&flows, &owner->tcp_key);
	/* Its own entry: one its end removed on another CPU meanwhile may
	 * already hold another flow (a preallocated element is reused). */
	if (!v || v->start_ns != owner->tcp_start_ns)
		return;
	v->last_seen_ns = now;
	if (!v->local_port) {
		__u32 s6[4] = { sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3] };
		__u8 fam;

		set_addr(v->local_ip, &fam, sk->family, s6, sk->src_ip4);
		v->local_port = sk->src_port;
	}
	if (read_tcp(sk, &c)) {
		v->bytes_out = c.bytes_out;
		v->bytes_in = c.bytes_in;
		v->packets_out = c.packets_out;
		v->packets_in = c.packets_in;
	}
}

/* A datagram or raw packet: its flow key, payload length and local end. */
struct pkt {
	struct flow_key key;
	__u8 local_ip[EGRESS_ADDR_LEN];
	__u16 local_port;
	__u32 payload;
	__u32 l4_off;
};

static __always_inline bool parse(struct __sk_buff *skb, bool egress, struct pkt *p)
{
	__u32 l4_off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return false;
		l4_off = ip.ihl * 4;
		p->key.family = AF_INET;
		p->key.protocol = ip.protocol;
		p->payload = bpf_ntohs(ip.tot_len) - l4_off;
		__builtin_memcpy(p->key.remote_ip, egress ? &ip.daddr : &ip.saddr, 4);
		__builtin_memcpy(p->local_ip, egress ? &ip.saddr : &ip.daddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return false;
		l4_off = sizeof(ip6);
		p->key.family = AF_INET6;
		p->key.protocol = ip6.nexthdr;
		p->payload = bpf_ntohs(ip6.payload_len);
		__builtin_memcpy(p->key.remote_ip, egress ? &ip6.daddr : &ip6.saddr, 16);
		__builtin_memcpy(p->local_ip, egress ? &ip6.saddr : &ip6.daddr, 16);
	} else {
		return false;
	}
	p->l4_off = l4_off;
	if (p->key.protocol == IPPROTO_UDP) {
		struct udphdr udp;

		if (bpf_skb_load_bytes(skb, l4_off, &udp, sizeof(udp)))
			return false;
		p->key.remote_port = bpf_ntohs(egress ? udp.dest : udp.source);
		p->local_port = bpf_ntohs(egress ? udp.source : udp.dest);
		p->payload = p->payload > sizeof(udp) ? p->payload - sizeof(udp) : 0;
	}
	p->key.sock_cookie = bpf_get_socket_cookie(skb);
	return true;
}

/* A datagram socket talking to a new endpoint starts a flow (egress only). */
static __always_inline struct flow_value *start_flow(struct pkt *p, struct sock_owner *o,
						     struct bpf_sock *sk)
{
	struct scope_usage *u = usage_of(o->scope_cgroup_id);
	struct scope_released *r = bpf_map_lookup_elem(&scope_released, &o->scope_cgroup_id);
	struct egress_config *cfg = config();
	struct flow_value val = {};
	long err;

	/* its replies are replies even without the entry (lib/udp_inbound.h) */
	remember_peer(sk, &p->key);
	if (u && cfg && !within_quota(u->flows, r ? r->flows : 0, cfg->max_flows_per_scope)) {
		count_loss(u, DROP_FLOW_TABLE_FULL, SCOPE_LOSS_FLOW_QUOTA);
		return NULL;
	}
	val.start_ns = bpf_ktime_get_boot_ns();
	val.last_seen_ns = val.start_ns;
	val.cgroup_id = o->cgroup_id;
	val.scope_cgroup_id = o->scope_cgroup_id;
	val.pid = o->pid;
	val.tgid = o->tgid;
	val.verdict = o->verdict;
	val.flags = (o->flags & SOCK_F_AUDIT) ? FLOW_F_AUDIT : 0;
	__builtin_memcpy(val.comm, o->comm, sizeof(val.comm));
	val.process = o->process;
	__builtin_memcpy(val.local_ip, p->local_ip, sizeof(val.local_ip));
	val.local_port = p->local_port;
	err = bpf_map_update_elem(&flows, &p->key, &val, BPF_NOEXIST);
	if (err == -E2BIG) {
		count_loss(u, DROP_FLOW_TABLE_FULL, SCOPE_LOSS_FLOW_QUOTA);
		return NULL;
	}
	if (!err && u)
		__sync_fetch_and_add(&u->flows, 1);
	o->flags |= SOCK_F_HAS_FLOWS;
	return bpf_map_lookup_elem(&flows, &p->key);
}

/*
 * A UDP datagram to a socket in scope that is not a reply (lib/udp_inbound.h):
 * decided by the container's `inbound` (its own loopback passes, as for
 * TCP). Enforced deny: dropped and recorded DENIED (rate-limited); else it
 * starts an inbound flow, counted like any other. SK_REJECT to drop.
 */
static __always_inline int udp_inbound(struct __sk_buff *skb, struct pkt *p, struct sock_owner *o,
				       struct flow_value **v)
{
	__u8 verdict = VERDICT_ALLOW, flags = 0;

	if (skb->ifindex != LOOPBACK_IFINDEX)
		verdict = decide_inbound(o->scope_cgroup_id, &flags);
	if (enforced_deny(verdict, flags)) {
		udp_inbound_denied(o, &p->key, p->local_ip, p->local_port);
		return SK_REJECT;
	}
	*v = udp_inbound_flow(o, &p->key, p->local_ip, p->local_port, verdict, flags);
	return SK_PASS;
}

/* Counts a datagram into its flow; SK_REJECT drops it (UDP inbound). */
static __always_inline int count_datagram(struct __sk_buff *skb, struct bpf_sock *sk,
					  struct sock_owner *o, bool egress)
{
	struct pkt p = {};
	struct flow_value *v;
	__u64 segs = skb->gso_segs > 1 ? skb->gso_segs : 1;

	if (!parse(skb, egress, &p))
		return SK_PASS;
	v = bpf_map_lookup_elem(&flows, &p.key);
	if (!v) {
		if (egress) {
			v = start_flow(&p, o, sk);
		} else if (p.key.protocol == IPPROTO_UDP && is_udp(sk) &&
			   !udp_is_reply(sk, &p.key, skb->ifindex == LOOPBACK_IFINDEX)) {
			if (udp_inbound(skb, &p, o, &v) == SK_REJECT)
				return SK_REJECT;
		}
		if (!v)
			return SK_PASS;
	} else if (!egress && (v->flags & FLOW_F_INBOUND)) {
		__u8 flags;

		/* decided again per datagram: a reload to deny ends it */
		if (skb->ifindex != LOOPBACK_IFINDEX &&
		    enforced_deny(decide_inbound(o->scope_cgroup_id, &flags), flags)) {
			v->flags |= FLOW_F_POLICY_END;
			return SK_REJECT;
		}
	}
	v->last_seen_ns = bpf_ktime_get_boot_ns();
	if (egress) {
		__sync_fetch_and_add(&v->bytes_out, p.payload);
		__sync_fetch_and_add(&v->packets_out, segs);
	} else {
		__sync_fetch_and_add(&v->bytes_in, p.payload);
		__sync_fetch_and_add(&v->packets_in, segs);
	}
	return SK_PASS;
}

/*
 * Raw, ICMP and every other socket that is not plain TCP or UDP: the
 * connect/sendmsg hooks never see where its packets go, and `raw_sockets:
 * allow` only admitted the socket. Each packet it sends is decided here by
 * its IP header's destination (raw_sockets first, then the rules, as of
 * now: a reload applies to the next packet). An enforced deny drops the
 * packet (the sender gets EPERM) and is recorded; a packet whose headers
 * cannot be read is dropped too.
 */
static __always_inline bool raw_send_denied(struct __sk_buff *skb, struct bpf_sock *sk,
					    struct sock_owner *owner)
{
	struct sock_event *ev;
	struct attempt a = {};
	struct pkt p = {};
	__u8 verdict, flags;

	if (sk->type == SOCK_STREAM || (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP))
		return false;
	if (!parse(skb, true, &p))
		return true;
	a.family = p.key.family;
	/* a rule's `icmp` covers ICMPv6 too */
	a.protocol = p.key.protocol == IPPROTO_ICMPV6 ? IPPROTO_ICMP : p.key.protocol;
	a.sock_type = sk->type;
	a.dst_port = p.key.remote_port;
	__builtin_memcpy(a.dst_ip, p.key.remote_ip, sizeof(a.dst_ip));
	normalize_dst(a.dst_ip, a.family);
	verdict = decide(&a, owner->scope_cgroup_id, true, &flags);
	if (!enforced_deny(verdict, flags))
		verdict = decide(&a, owner->scope_cgroup_id, false, &flags);
	if (!enforced_deny(verdict, flags))
		return false;
	ev = reserve_event(sizeof(*ev), HOOK_SKB_EGRESS, owner->scope_cgroup_id);
	if (ev) {
		__builtin_memset(ev, 0, sizeof(*ev));
		fill_header(&ev->hdr, EVENT_KIND_SOCK, sizeof(*ev), HOOK_SKB_EGRESS);
		ev->cgroup_id = owner->cgroup_id;
		ev->scope_cgroup_id = owner->scope_cgroup_id;
		ev->sock_cookie = p.key.sock_cookie;
		ev->pid = owner->pid;
		ev->tgid = owner->tgid;
		__builtin_memcpy(ev->src_ip, p.local_ip, sizeof(ev->src_ip));
		__builtin_memcpy(ev->dst_ip, a.dst_ip, sizeof(ev->dst_ip));
		ev->src_port = p.local_port;
		ev->dst_port = a.dst_port;
		ev->family = a.family;
		ev->sock_type = sk->type;
		ev->protocol = p.key.protocol;
		ev->verdict = VERDICT_DENY;
		__builtin_memcpy(ev->comm, owner->comm, sizeof(ev->comm));
		ev->process = owner->process;
		submit_event(ev, sizeof(*ev));
	}
	return true;
}

/*
 * A packet to a listening socket of a container (a SYN, or a handshake's
 * ACK, SYN cookies included: the kernel filters both through the
 * listener). With `inbound: deny` (enforced) every such packet that did not
 * come through the container's own loopback is dropped, so no connection
 * from outside is ever accepted; each SYN is one DENIED record (src = the
 * peer, dst = the listening address), charged to the container's budget
 * but at most one per listener per INBOUND_DENIED_RECORD_NS (SYNs from
 * outside cannot spend the budget the container's own records need; the
 * SYNs past it are counted as rate_limited losses of the container).
 * `owner` is NULL for a listener opened before the container was enrolled:
 * decided all the same, recorded without its process.
 */
static __always_inline bool inbound_denied(struct __sk_buff *skb, struct bpf_sock *sk,
					   __u64 scope_id, struct sock_owner *owner)
{
	struct sock_event *ev;
	struct tcphdr th;
	struct pkt p = {};
	__u8 verdict, flags;

	if (skb->ifindex == LOOPBACK_IFINDEX)
		return false; /* the container talking to itself */
	verdict = decide_inbound(scope_id, &flags);
	if (!enforced_deny(verdict, flags))
		return false;
	if (!parse(skb, false, &p) || p.key.protocol != IPPROTO_TCP ||
	    bpf_skb_load_bytes(skb, p.l4_off, &th, sizeof(th)) || !th.syn || th.ack)
		return true; /* dropped, not a new attempt: no record */
	if (owner) {
		__u64 now = bpf_ktime_get_boot_ns();

		/* a listener's tcp_refreshed_ns: its last DENIED record */
		if (now - owner->tcp_refreshed_ns < INBOUND_DENIED_RECORD_NS) {
			count_loss(usage_of(scope_id), DROP_RATE_LIMITED, SCOPE_LOSS_RATE_LIMITED);
			return true;
		}
		owner->tcp_refreshed_ns = now;
	}
	ev = reserve_event(sizeof(*ev), HOOK_SKB_INGRESS, scope_id);
	if (!ev)
		return true;
	__builtin_memset(ev, 0, sizeof(*ev));
	fill_header(&ev->hdr, EVENT_KIND_SOCK, sizeof(*ev), HOOK_SKB_INGRESS);
	ev->scope_cgroup_id = scope_id;
	ev->sock_cookie = p.key.sock_cookie;
	if (owner) {
		ev->cgroup_id = owner->cgroup_id;
		ev->pid = owner->pid;
		ev->tgid = owner->tgid;
		__builtin_memcpy(ev->comm, owner->comm, sizeof(ev->comm));
		ev->process = owner->process;
	} else {
		ev->cgroup_id = bpf_sk_cgroup_id(sk);
	}
	__builtin_memcpy(ev->src_ip, p.key.remote_ip, sizeof(ev->src_ip));
	__builtin_memcpy(ev->dst_ip, p.local_ip, sizeof(ev->dst_ip));
	ev->src_port = bpf_ntohs(th.source);
	ev->dst_port = bpf_ntohs(th.dest);
	ev->family = p.key.family;
	ev->sock_type = SOCK_STREAM;
	ev->protocol = IPPROTO_TCP;
	ev->verdict = VERDICT_DENY;
	ev->flags = EVENT_F_INBOUND;
	submit_event(ev, sizeof(*ev));
	return true;
}

static __always_inline int account(struct __sk_buff *skb, bool egress)
{
	struct bpf_sock *sk = skb->sk;
	struct sock_owner *owner;
	int verdict = SK_PASS;

	if (!sk)
		return SK_PASS;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return SK_PASS;
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	if (!egress && sk->state == BPF_TCP_LISTEN) {
		/* Every packet to a listener is a handshake's. Decided by the
		 * socket's state, not by our storage: a listener nobody saw
		 * listen (opened before enrolment) is found by its cgroup. */
		__u64 scope_id;

		if (owner)
			scope_id = owner->scope_cgroup_id;
		else if (!sk_scope(sk, &scope_id))
			return SK_PASS;
		return inbound_denied(skb, sk, scope_id, owner) ? SK_REJECT : SK_PASS;
	}
	if (!owner)
		return SK_PASS; /* not a socket in scope: the cheap common exit */
	if (egress && raw_send_denied(skb, sk, owner))
		verdict = SK_REJECT;
	else if (sk->protocol == IPPROTO_TCP)
		refresh_tcp(sk, owner);
	else
		verdict = count_datagram(skb, sk, owner, egress);
	/* DNS (lib/dns.h), in the same program: one owner lookup per packet.
	 * A query is recorded even when its packet was denied; an inbound
	 * datagram `inbound: deny` dropped is no answer to check (a flood
	 * from outside spends no records). A connection the container
	 * accepted is no lookup of its own (a peer's source port 53 must not
	 * make its bytes DNS records). */
	if ((sk->protocol == IPPROTO_UDP || sk->protocol == IPPROTO_TCP) &&
	    !(owner->flags & SOCK_F_INBOUND) && (egress || verdict == SK_PASS)) {
		if (egress) {
			if (dns_query(skb, sk, owner))
				verdict = SK_REJECT; /* several messages in one send */
		} else
			dns_answer(skb, sk, owner);
	}
	return verdict;
}

SEC("cgroup_skb/egress")
int flow_egress(struct __sk_buff *skb)
{
	return account(skb, true);
}

SEC("cgroup_skb/ingress")
int flow_ingress(struct __sk_buff *skb)
{
	return account(skb, false);
}

/* An explicit bind() of a UDP socket in scope (lib/udp_inbound.h). */
SEC("cgroup/post_bind4")
int flow_post_bind4(struct bpf_sock *sk)
{
	udp_bound(sk, false);
	return SK_PASS;
}

SEC("cgroup/post_bind6")
int flow_post_bind6(struct bpf_sock *sk)
{
	udp_bound(sk, true);
	return SK_PASS;
}

/*
 * A socket with datagram flows is gone: user space ends its flows. A TCP
 * connect that never sent its SYN ends here (lib/tcp.h); TCP flows that
 * reached sock_ops end there instead, so most TCP sockets emit nothing here.
 */
SEC("cgroup/sock_release")
int flow_sock_release(struct bpf_sock *sk)
{
	struct sock_owner *owner = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	struct sock_release_event *ev;

	if (!owner || !(owner->flags & (SOCK_F_HAS_FLOWS | SOCK_F_TCP_PENDING)))
		return SK_PASS;
	if (owner->flags & SOCK_F_TCP_PENDING)
		end_unsent_tcp(owner, HOOK_SOCK_RELEASE);
	if (!(owner->flags & SOCK_F_HAS_FLOWS))
		return SK_PASS;
	ev = reserve_event(sizeof(*ev), HOOK_SOCK_RELEASE, owner->scope_cgroup_id);
	if (!ev)
		return SK_PASS;
	fill_header(&ev->hdr, EVENT_KIND_SOCK_RELEASE, sizeof(*ev), HOOK_SOCK_RELEASE);
	ev->sock_cookie = bpf_get_socket_cookie(sk);
	submit_event(ev, sizeof(*ev));
	return SK_PASS;
}
