// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Decision points of clawker-egress: the cgroup sock_addr hooks (connect,
 * sendmsg, recvmsg) and socket creation. Every decision goes through
 * decide() -- the policy seam. A denied attempt is one record; an allowed
 * one becomes a flow (flow.bpf.c records it when it ends).
 */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Is the current task in scope? Never the daemon itself; in SCOPE_ENROLLED
 * mode only tasks under an enrolled cgroup. *scope_id is the outermost
 * enrolled ancestor (0 in SCOPE_ALL mode): a container's own sub-cgroups
 * are attributed to the container.
 */
static __always_inline bool in_scope(__u64 *scope_id)
{
	__u32 zero = 0;
	struct egress_config *cfg = bpf_map_lookup_elem(&egress_config, &zero);
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	*scope_id = 0;
	if (!cfg || cfg->self_tgid == tgid)
		return false;
	if (cfg->scope_mode == SCOPE_ALL)
		return true;

	for (int level = 1; level <= EGRESS_SCOPE_MAX_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (id == 0)
			break;
		if (bpf_map_lookup_elem(&scoped_cgroups, &id)) {
			*scope_id = id;
			return true;
		}
	}
	return false;
}

/* What a decision is about. */
struct attempt {
	__u8 family;
	__u8 protocol;
	__u16 sock_type;
	__u16 dst_port;
	__u8 dst_ip[EGRESS_ADDR_LEN];
};

static __always_inline bool port_matches(const struct policy_rule *r, __u16 port)
{
	if (r->port_lo == 0 && r->port_hi == 0)
		return true;
	return port >= r->port_lo && port <= r->port_hi;
}

static __always_inline bool addr_matches(const struct policy_rule *r, const struct attempt *a)
{
	__u32 ra[4], aa[4];

	if (r->kind == RULE_ANY)
		return true;
	if (r->family != a->family)
		return false;
	__builtin_memcpy(ra, r->addr, sizeof(ra));
	__builtin_memcpy(aa, a->dst_ip, sizeof(aa));
	for (int w = 0; w < 4; w++) {
		int bits = (int)r->prefix_len - 32 * w;
		__u32 mask;

		if (bits <= 0)
			break;
		mask = bits >= 32 ? 0xffffffffu : ~((1u << (32 - bits)) - 1);
		if ((bpf_ntohl(ra[w]) ^ bpf_ntohl(aa[w])) & mask)
			return false;
	}
	return true;
}

/*
 * Which domain rules of the rule set match the name this scope cgroup
 * learned `a`'s address from (a bit per rule index), 0 if none: the DNS
 * answer was recorded in `dns_cache` before the application could read it.
 */
static __always_inline __u64 domain_mask(const struct container_policy *cp,
					 const struct attempt *a, __u64 scope_id)
{
	struct dns_key dk = {};
	struct domain_key rk = {};
	struct dns_value *v;
	__u64 mask = 0, *m;

	dk.scope_cgroup_id = scope_id;
	dk.family = a->family;
	__builtin_memcpy(dk.addr, a->dst_ip, sizeof(dk.addr));
	v = bpf_map_lookup_elem(&dns_cache, &dk);
	if (!v || v->expires_ns < bpf_ktime_get_boot_ns())
		return 0;
	rk.rule_set = cp->rule_set;
	for (__u32 i = 0; i < DNS_MAX_SUFFIXES; i++) {
		if (i >= v->n_suffix)
			break;
		rk.hash = v->suffix[i];
		rk.wildcard = 1;
		m = bpf_map_lookup_elem(&domain_rules, &rk);
		if (m)
			mask |= *m;
		if (i == 0) {
			rk.wildcard = 0;
			m = bpf_map_lookup_elem(&domain_rules, &rk);
			if (m)
				mask |= *m;
		}
	}
	return mask;
}

/* First matching rule of the container's rule set, else its default. */
static __always_inline __u8 evaluate(const struct container_policy *cp, const struct attempt *a,
				     __u64 scope_id)
{
	__u32 base = cp->rule_set * EGRESS_MAX_RULES;
	__u64 domains = domain_mask(cp, a, scope_id);

	for (__u32 i = 0; i < EGRESS_MAX_RULES; i++) {
		__u32 key = base + i;
		struct policy_rule *r = bpf_map_lookup_elem(&policy_rules, &key);

		if (!r || r->kind == RULE_END)
			break;
		if (r->protocol && r->protocol != a->protocol)
			continue;
		if (!port_matches(r, a->dst_port))
			continue;
		if (r->kind == RULE_DOMAIN ? (domains >> i) & 1 : addr_matches(r, a))
			return r->action;
	}
	return cp->default_action;
}

/*
 * The policy seam: every decision point asks here. An active bypass wins
 * (recorded as BYPASSED); a cgroup without a policy is observed only; raw
 * and other non-TCP/UDP sockets get the policy's raw action. In audit mode a
 * DENY is returned with EVENT_F_AUDIT set and the caller lets it through.
 */
static __always_inline __u8 decide(const struct attempt *a, __u64 scope_id, bool raw,
				   __u8 *flags)
{
	struct bypass_entry *b = bpf_map_lookup_elem(&bypass, &scope_id);
	struct container_policy *cp;
	__u8 verdict;

	*flags = 0;
	if (b && b->until_ns > bpf_ktime_get_boot_ns())
		return VERDICT_BYPASS;
	cp = bpf_map_lookup_elem(&container_policy, &scope_id);
	if (!cp) {
		/* A container whose labels are not known yet: the default section. */
		__u64 fallback = 0;

		cp = bpf_map_lookup_elem(&container_policy, &fallback);
	}
	if (!cp)
		return VERDICT_ALLOW; /* no policy: observe only */
	verdict = raw ? cp->raw_action : evaluate(cp, a, scope_id);
	if (verdict == VERDICT_DENY && cp->mode == POLICY_AUDIT)
		*flags = EVENT_F_AUDIT;
	return verdict;
}

static __always_inline bool enforced_deny(__u8 verdict, __u8 flags)
{
	return verdict == VERDICT_DENY && !(flags & EVENT_F_AUDIT);
}

/* One record for an attempt that will not become a flow. */
static __always_inline void emit_attempt(enum egress_hook hook, __u64 scope_id,
					 const struct attempt *a, __u64 cookie, __u8 verdict,
					 __u8 flags)
{
	struct sock_event *ev = reserve_event(sizeof(*ev), hook);
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (!ev)
		return;
	__builtin_memset(ev, 0, sizeof(*ev));
	fill_header(&ev->hdr, EVENT_KIND_SOCK, sizeof(*ev), hook);
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->scope_cgroup_id = scope_id;
	ev->sock_cookie = cookie;
	ev->pid = (__u32)pid_tgid;
	ev->tgid = pid_tgid >> 32;
	ev->family = a->family;
	ev->sock_type = a->sock_type;
	ev->protocol = a->protocol;
	ev->dst_port = a->dst_port;
	__builtin_memcpy(ev->dst_ip, a->dst_ip, sizeof(ev->dst_ip));
	ev->verdict = verdict;
	ev->flags = flags;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	bpf_ringbuf_submit(ev, 0);
}

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
}

/* A TCP connect starts its flow here, where the caller is known. */
static __always_inline void start_tcp_flow(struct bpf_sock_addr *ctx, const struct attempt *a,
					   __u64 scope_id, __u8 verdict, __u8 flags, __u64 cookie,
					   enum egress_hook hook)
{
	struct flow_key key = {};
	struct flow_value val = {};
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	long err;

	key.sock_cookie = cookie;
	key.family = a->family;
	key.protocol = a->protocol;
	key.remote_port = a->dst_port;
	__builtin_memcpy(key.remote_ip, a->dst_ip, sizeof(key.remote_ip));
	val.start_ns = bpf_ktime_get_boot_ns();
	val.last_seen_ns = val.start_ns;
	val.cgroup_id = bpf_get_current_cgroup_id();
	val.scope_cgroup_id = scope_id;
	val.pid = (__u32)pid_tgid;
	val.tgid = pid_tgid >> 32;
	val.verdict = verdict;
	val.flags = (flags & EVENT_F_AUDIT) ? FLOW_F_AUDIT : 0;
	bpf_get_current_comm(val.comm, sizeof(val.comm));
	err = bpf_map_update_elem(&flows, &key, &val, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST: connect() retried on the same socket */) {
		/* Table full: count it, and keep the attempt visible. */
		count_drop(DROP_FLOW_TABLE_FULL);
		emit_attempt(hook, scope_id, a, cookie, verdict, flags);
	}
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
		if (owner)
			set_owner(owner, scope_id, verdict, SOCK_F_TCP_PENDING);
		start_tcp_flow(ctx, &a, scope_id, verdict, flags, cookie, hook);
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
 * recvmsg programs must return 1 (verifier). Received datagrams are counted
 * per flow by the cgroup_skb ingress program; these stay attached as the
 * hook the DNS answer path will use.
 */
SEC("cgroup/recvmsg4")
int egress_recvmsg4(struct bpf_sock_addr *ctx)
{
	return SK_PASS;
}

SEC("cgroup/recvmsg6")
int egress_recvmsg6(struct bpf_sock_addr *ctx)
{
	return SK_PASS;
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
