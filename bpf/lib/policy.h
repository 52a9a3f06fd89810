/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The policy seam: every decision point (connect, sendmsg, socket creation,
 * per-packet raw sends, the re-decision of open sockets after a reload)
 * asks decide() here, so one policy is applied the same way everywhere.
 */
#ifndef CLAWKER_LIB_POLICY_H
#define CLAWKER_LIB_POLICY_H

#include "maps.h"

/* What a decision is about. */
struct attempt {
	__u8 family;
	__u8 protocol;
	__u16 sock_type;
	__u16 dst_port;
	__u8 dst_ip[EGRESS_ADDR_LEN];
};

/* One record for an attempt that will not become a flow (a denied
 * connect or send, a raw or packet socket, an AF_XDP setup). */
static __always_inline void emit_attempt(enum egress_hook hook, __u64 scope_id,
					 const struct attempt *a, __u64 cookie, __u8 verdict,
					 __u8 flags)
{
	struct sock_event *ev = reserve_event(sizeof(*ev), hook, scope_id);
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
	fill_proc(&ev->process);
	submit_event(ev, sizeof(*ev));
}

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
 * Is the suffix of `len` bytes of the cached name exactly the rule's name?
 * Both are stored right-aligned in DNS_NAME_LEN bytes, so the suffix and
 * the rule name end at the same byte: compare the last `len` bytes, eight
 * at a time from the end (constant offsets; the verifier sees each word).
 * The hash found the entry; this makes a colliding name match nothing.
 * A global function: the verifier checks it once, not at every call site
 * of every loop iteration. Words are little-endian (x86-64, arm64).
 */
__attribute__((noinline)) int same_name(const struct dns_value *v, const struct domain_value *r,
				       __u32 len)
{
	if (!v || !r || r->name_len != len || len == 0 || len > DNS_NAME_LEN)
		return false;
	for (__u32 w = 0; w < DNS_NAME_LEN / 8; w++) {
		__u32 start = DNS_NAME_LEN - 8 * (w + 1);
		__u64 a, b, keep = ~0ULL;

		if (8 * w >= len)
			break;
		__builtin_memcpy(&a, &v->name[start], 8);
		__builtin_memcpy(&b, &r->name[start], 8);
		if (8 * (w + 1) > len)
			keep <<= 8 * (8 * (w + 1) - len); /* bytes before the suffix */
		if ((a ^ b) & keep)
			return false;
	}
	return true;
}

/* The mask of a (rule set, suffix) entry, if the entry is for this very name. */
static __always_inline __u64 rules_for(struct domain_key *rk, const struct dns_value *v,
				       __u32 len)
{
	struct domain_value *r = bpf_map_lookup_elem(&domain_rules, rk);

	return r && same_name(v, r, len) ? r->mask : 0;
}

/*
 * Which domain rules of the rule set match the name this scope cgroup
 * learned `a`'s address from (a bit per rule index), 0 if none: the DNS
 * answer was recorded in `dns_cache` before the application could read it.
 * suffix[0] is the whole name (exact and wildcard rules), the others its
 * proper suffixes (wildcard rules). A global function (checked once by the
 * verifier): evaluate() calls it only when it reaches a domain rule.
 */
__attribute__((noinline)) __u64 domain_mask(const struct container_policy *cp,
					    const struct attempt *a, __u64 scope_id)
{
	struct dns_key dk = {};
	struct domain_key rk = {};
	struct dns_value *v;
	__u64 mask = 0;

	if (!cp || !a)
		return 0;
	dk.scope_cgroup_id = scope_id;
	dk.family = a->family;
	__builtin_memcpy(dk.addr, a->dst_ip, sizeof(dk.addr));
	v = bpf_map_lookup_elem(&dns_cache, &dk);
	if (!v || v->expires_ns < bpf_ktime_get_boot_ns())
		return 0;
	rk.rule_set = cp->rule_set;
	for (__u32 i = 0; i < DNS_MAX_SUFFIXES; i++) {
		__u32 len;

		if (i >= v->n_suffix)
			break;
		len = v->suffix_len[i];
		rk.hash = v->suffix[i];
		rk.wildcard = 1;
		mask |= rules_for(&rk, v, len);
		if (i == 0) {
			rk.wildcard = 0;
			mask |= rules_for(&rk, v, len);
		}
	}
	return mask;
}

/*
 * First matching rule of the container's rule set, else its default. The
 * DNS cache is read at the first domain rule the attempt's protocol and
 * port reach, not before (issue 12): a connect that an address rule
 * decides first, or a rule set without domain rules, costs no lookup.
 */
static __always_inline __u8 evaluate(const struct container_policy *cp, const struct attempt *a,
				     __u64 scope_id)
{
	__u32 base = cp->rule_set * EGRESS_MAX_RULES;
	__u64 domains = 0;
	bool looked = false;

	for (__u32 i = 0; i < EGRESS_MAX_RULES; i++) {
		__u32 key = base + i;
		struct policy_rule *r = bpf_map_lookup_elem(&policy_rules, &key);

		if (!r || r->kind == RULE_END)
			break;
		if (r->protocol && r->protocol != a->protocol)
			continue;
		if (!port_matches(r, a->dst_port))
			continue;
		if (r->kind == RULE_DOMAIN) {
			if (!looked) {
				domains = domain_mask(cp, a, scope_id);
				looked = true;
			}
			if ((domains >> i) & 1)
				return r->action;
		} else if (addr_matches(r, a)) {
			return r->action;
		}
	}
	return cp->default_action;
}

/*
 * The policy seam: every decision point asks here. An active bypass wins
 * (recorded as BYPASSED); a cgroup without a policy is observed only; raw
 * and other non-TCP/UDP sockets get the policy's raw action. In audit mode a
 * DENY is returned with EVENT_F_AUDIT set and the caller lets it through.
 */
static __always_inline bool bypassed(__u64 scope_id)
{
	struct bypass_entry *b = bpf_map_lookup_elem(&bypass, &scope_id);

	return b && b->until_ns > bpf_ktime_get_boot_ns();
}

/* The container's policy; a container whose labels are not known yet gets
 * the default section (key 0); NULL: no policy, observe only. */
static __always_inline struct container_policy *policy_of(__u64 scope_id)
{
	struct container_policy *cp = bpf_map_lookup_elem(&container_policy, &scope_id);

	if (!cp && scope_id != 0) {
		__u64 fallback = 0;

		cp = bpf_map_lookup_elem(&container_policy, &fallback);
	}
	return cp;
}

static __always_inline __u8 decide(const struct attempt *a, __u64 scope_id, bool raw,
				   __u8 *flags)
{
	struct container_policy *cp;
	__u8 verdict;

	*flags = 0;
	if (bypassed(scope_id))
		return VERDICT_BYPASS;
	cp = policy_of(scope_id);
	if (!cp)
		return VERDICT_ALLOW; /* no policy: observe only */
	verdict = raw ? cp->raw_action : evaluate(cp, a, scope_id);
	if (verdict == VERDICT_DENY && cp->mode == POLICY_AUDIT)
		*flags = EVENT_F_AUDIT;
	return verdict;
}

/*
 * Inbound (issue 15): may a connection from outside the container reach
 * one of its listeners? The policy's `inbound` switch, with the same
 * bypass and audit rules as decide(); no policy allows (observe only).
 */
static __always_inline __u8 decide_inbound(__u64 scope_id, __u8 *flags)
{
	struct container_policy *cp;

	*flags = 0;
	if (bypassed(scope_id))
		return VERDICT_BYPASS;
	cp = policy_of(scope_id);
	if (!cp || cp->inbound_action != VERDICT_DENY)
		return VERDICT_ALLOW;
	if (cp->mode == POLICY_AUDIT)
		*flags = EVENT_F_AUDIT;
	return VERDICT_DENY;
}

static __always_inline bool enforced_deny(__u8 verdict, __u8 flags)
{
	return verdict == VERDICT_DENY && !(flags & EVENT_F_AUDIT);
}

#endif /* CLAWKER_LIB_POLICY_H */
