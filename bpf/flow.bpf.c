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
#include "lib/policy.h"
#include "lib/dns.h"
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define RCV_SHUTDOWN 1

/* Kernel types read with CO-RE (the suffix is dropped when matching). */
struct sock___ce {
	int sk_err;
	__u8 sk_shutdown;
} __attribute__((preserve_access_index));

struct tcp_sock___ce {
	__u64 bytes_sent;
	__u64 bytes_retrans;
	__u64 bytes_received;
	__u32 segs_in;
	__u32 segs_out;
} __attribute__((preserve_access_index));

struct tcp_counters {
	__u64 bytes_out, bytes_in, packets_out, packets_in;
	int sk_err;
};

/*
 * Payload bytes: sent minus retransmitted (each byte once), received minus
 * the peer's FIN (which advances the sequence space by one).
 */
static __always_inline bool read_tcp(void *sk, struct tcp_counters *c)
{
	struct tcp_sock___ce *tp = (void *)bpf_skc_to_tcp_sock(sk);
	struct sock___ce *s = (void *)tp;
	__u64 received;

	if (!tp)
		return false;
	/* A trusted (BTF) pointer: plain CO-RE loads, no probe-read helper
	 * call per field. */
	c->bytes_out = tp->bytes_sent - tp->bytes_retrans;
	received = tp->bytes_received;
	if ((s->sk_shutdown & RCV_SHUTDOWN) && received > 0)
		received -= 1;
	c->bytes_in = received;
	c->packets_out = tp->segs_out;
	c->packets_in = tp->segs_in;
	c->sk_err = s->sk_err;
	return true;
}

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

static __always_inline void on_tcp_connect(struct bpf_sock_ops *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct sock_owner *owner;
	struct flow_value *v;

	if (!sk)
		return;
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	if (!owner)
		return; /* not in scope */
	owner->flags &= ~SOCK_F_TCP_PENDING;
	if (!(owner->flags & SOCK_F_TCP_FLOW))
		return; /* no flow entry (table or quota full): nothing to end */
	v = bpf_map_lookup_elem(&flows, &owner->tcp_key);
	if (v) {
		/* The local end is bound by now: interim records name it (and
		 * their Community ID) before the first counter refresh. */
		__u32 l6[4] = { ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2],
				ctx->local_ip6[3] };
		__u8 fam;

		v->flags |= FLOW_F_SYN_SENT;
		set_addr(v->local_ip, &fam, ctx->family, l6, ctx->local_ip4);
		v->local_port = ctx->local_port;
	}
	bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
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
	ev->end_ns = bpf_ktime_get_boot_ns();
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

/* The end of a TCP flow that had no `flows` entry: from the socket's storage. */
static __always_inline void untracked_tcp_close(struct bpf_sock_ops *ctx, struct sock_owner *o,
						const struct flow_key *key, __u32 old_state)
{
	struct flow_end_event *ev;
	struct tcp_counters c = {};

	bool have = ctx->sk && read_tcp(ctx->sk, &c);

	o->flags &= ~SOCK_F_TCP_UNTRACKED;
	ev = reserve_event(sizeof(*ev), HOOK_SOCK_OPS, o->scope_cgroup_id);
	if (!ev) {
		if (have)
			count_lost_bytes(o->scope_cgroup_id, &c);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	fill_header(&ev->hdr, EVENT_KIND_FLOW_END, sizeof(*ev), HOOK_SOCK_OPS);
	ev->key = *key;
	ev->value.start_ns = o->tcp_start_ns;
	ev->value.cgroup_id = o->cgroup_id;
	ev->value.scope_cgroup_id = o->scope_cgroup_id;
	ev->value.pid = o->pid;
	ev->value.tgid = o->tgid;
	ev->value.verdict = o->verdict;
	ev->value.flags = (o->flags & SOCK_F_AUDIT) ? FLOW_F_AUDIT : 0;
	__builtin_memcpy(ev->value.comm, o->comm, sizeof(ev->value.comm));
	ev->value.process = o->process;
	submit_tcp_end(ctx, ev, have ? &c : NULL, close_reason(old_state, c.sk_err));
}

static __always_inline void on_tcp_close(struct bpf_sock_ops *ctx, __u32 old_state)
{
	struct flow_end_event *ev;
	struct tcp_counters c = {};
	struct sock_owner *owner;
	struct scope_usage *u;
	struct flow_key key;
	struct flow_value *v;

	if (!ctx->sk)
		return;
	owner = bpf_sk_storage_get(&sock_owners, ctx->sk, 0, 0);
	if (!owner || !(owner->flags & SOCK_F_TCP_FLOW))
		return;
	key = owner->tcp_key;
	owner->flags &= ~SOCK_F_TCP_FLOW;
	if (owner->flags & SOCK_F_TCP_UNTRACKED) {
		untracked_tcp_close(ctx, owner, &key, old_state);
		return;
	}
	v = bpf_map_lookup_elem(&flows, &key);
	if (!v)
		return;
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
			       (v->flags & FLOW_F_POLICY_END) ? CLOSE_POLICY
							     : close_reason(old_state, c.sk_err));
	}
	/* Ended exactly once: the record is out (or its loss counted). */
	u = bpf_map_lookup_elem(&scope_usage, &v->scope_cgroup_id);
	if (bpf_map_delete_elem(&flows, &key) == 0 && u)
		__sync_fetch_and_add(&u->flows, -1);
}

SEC("sockops")
int flow_sockops(struct bpf_sock_ops *ctx)
{
	switch (ctx->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		on_tcp_connect(ctx);
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
	struct tcp_counters c = {};
	struct flow_value *v;
	__u64 now = bpf_ktime_get_boot_ns();

	if (!(owner->flags & SOCK_F_TCP_FLOW) || now - owner->tcp_refreshed_ns < NSEC_PER_SEC)
		return;
	owner->tcp_refreshed_ns = now;
	v = bpf_map_lookup_elem(&flows, &owner->tcp_key);
	if (!v)
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
static __always_inline struct flow_value *start_flow(struct pkt *p, struct sock_owner *o)
{
	struct scope_usage *u = usage_of(o->scope_cgroup_id);
	struct scope_released *r = bpf_map_lookup_elem(&scope_released, &o->scope_cgroup_id);
	struct egress_config *cfg = config();
	struct flow_value val = {};
	long err;

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

static __always_inline void count_datagram(struct __sk_buff *skb, struct sock_owner *o,
					   bool egress)
{
	struct pkt p = {};
	struct flow_value *v;
	__u64 segs = skb->gso_segs > 1 ? skb->gso_segs : 1;

	if (!parse(skb, egress, &p))
		return;
	v = bpf_map_lookup_elem(&flows, &p.key);
	if (!v) {
		if (!egress)
			return; /* inbound traffic the container did not start */
		v = start_flow(&p, o);
		if (!v)
			return;
	}
	v->last_seen_ns = bpf_ktime_get_boot_ns();
	if (egress) {
		__sync_fetch_and_add(&v->bytes_out, p.payload);
		__sync_fetch_and_add(&v->packets_out, segs);
	} else {
		__sync_fetch_and_add(&v->bytes_in, p.payload);
		__sync_fetch_and_add(&v->packets_in, segs);
	}
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
	if (!owner)
		return SK_PASS; /* not a socket in scope: the cheap common exit */
	if (egress && raw_send_denied(skb, sk, owner))
		verdict = SK_REJECT;
	else if (sk->protocol == IPPROTO_TCP)
		refresh_tcp(sk, owner);
	else
		count_datagram(skb, owner, egress);
	/* DNS (lib/dns.h), in the same program: one owner lookup per packet.
	 * A query is recorded even when its packet was denied. */
	if (sk->protocol == IPPROTO_UDP || sk->protocol == IPPROTO_TCP) {
		if (egress)
			dns_query(skb, sk, owner);
		else
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

/*
 * A socket with datagram flows (or a TCP connect that never sent its SYN)
 * is gone: user space ends its flows. TCP flows that reached sock_ops end
 * there instead, so most TCP sockets emit nothing here.
 */
SEC("cgroup/sock_release")
int flow_sock_release(struct bpf_sock *sk)
{
	struct sock_owner *owner = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	struct sock_release_event *ev;

	if (!owner || !(owner->flags & (SOCK_F_HAS_FLOWS | SOCK_F_TCP_PENDING)))
		return SK_PASS;
	ev = reserve_event(sizeof(*ev), HOOK_SOCK_RELEASE, owner->scope_cgroup_id);
	if (!ev)
		return SK_PASS;
	fill_header(&ev->hdr, EVENT_KIND_SOCK_RELEASE, sizeof(*ev), HOOK_SOCK_RELEASE);
	ev->sock_cookie = bpf_get_socket_cookie(sk);
	submit_event(ev, sizeof(*ev));
	return SK_PASS;
}
