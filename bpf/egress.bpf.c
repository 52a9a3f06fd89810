// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * cgroup socket hooks of clawker-egress: every outbound attempt made under the
 * attach cgroup (connect, sendmsg, recvmsg, socket creation) goes through
 * decide() -- the policy seam -- and becomes one `struct sock_event` in the
 * ring buffer.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "egress.h"

/* Not in the UAPI headers BPF programs can include. */
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

/* sock_addr and sock programs: 1 lets the operation proceed, 0 is EPERM. */
#define SK_PASS 1
#define SK_REJECT 0

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EGRESS_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} egress_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct egress_config);
} egress_config SEC(".maps");

/* Container cgroups in scope (SCOPE_ENROLLED); the value is unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_SCOPED_CGROUPS);
	__type(key, __u64);
	__type(value, __u8);
} scoped_cgroups SEC(".maps");

/*
 * Is the current task in scope? Returns false for the daemon itself and, in
 * SCOPE_ENROLLED mode, for every task outside an enrolled cgroup. On success
 * *scope_id is the outermost enrolled ancestor (0 in SCOPE_ALL mode): a
 * container's own sub-cgroups are attributed to the container.
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

/*
 * The policy seam: every decision point asks here. Today it always allows;
 * the policy issue fills it with per-container rules.
 */
static __always_inline __u8 decide(const struct sock_event *ev)
{
	(void)ev;
	return VERDICT_ALLOW;
}

static __always_inline void count_drop(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&egress_drops, &slot);

	if (n)
		*n += 1;
}

static __always_inline struct sock_event *reserve(enum egress_hook hook, __u64 scope_id)
{
	struct sock_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (!ev) {
		count_drop(DROP_RINGBUF_FIRST + hook);
		return NULL;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hdr.kind = EVENT_KIND_SOCK;
	ev->hdr.size = sizeof(*ev);
	ev->hdr.version = EGRESS_ABI_VERSION;
	ev->hdr.hook = hook;
	ev->hdr.ts_ns = bpf_ktime_get_boot_ns();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->scope_cgroup_id = scope_id;
	ev->pid = (__u32)pid_tgid;
	ev->tgid = pid_tgid >> 32;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	return ev;
}

static __always_inline void copy_v4(__u8 *dst, __u32 addr_be)
{
	__builtin_memcpy(dst, &addr_be, 4);
}

static __always_inline void copy_v6(__u8 *dst, const __u32 *addr_be)
{
	__u32 w[4] = { addr_be[0], addr_be[1], addr_be[2], addr_be[3] };

	__builtin_memcpy(dst, w, 16);
}

/*
 * Shared body of connect/sendmsg/recvmsg. `from_msg` selects the source
 * address given by the caller (sendmsg cmsg) over the socket's own binding.
 */
static __always_inline int on_sock_addr(struct bpf_sock_addr *ctx, enum egress_hook hook,
					bool v6, bool may_deny)
{
	struct bpf_sock *sk = ctx->sk;
	struct sock_event *ev;
	__u64 scope_id;
	__u8 verdict;

	if (!in_scope(&scope_id))
		return SK_PASS;
	ev = reserve(hook, scope_id);
	if (!ev)
		return SK_PASS; /* loss is counted; never block on our own failure */

	ev->family = v6 ? AF_INET6 : AF_INET;
	ev->sock_type = ctx->type;
	ev->protocol = ctx->protocol;
	ev->dst_port = bpf_ntohs((__u16)ctx->user_port);
	if (v6) {
		__u32 d[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2],
			       ctx->user_ip6[3] };
		copy_v6(ev->dst_ip, d);
	} else {
		copy_v4(ev->dst_ip, ctx->user_ip4);
	}
	if (sk) {
		ev->sock_cookie = bpf_get_socket_cookie(ctx);
		ev->src_port = sk->src_port;
		if (v6) {
			__u32 s[4] = { sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2],
				       sk->src_ip6[3] };
			copy_v6(ev->src_ip, s);
		} else {
			copy_v4(ev->src_ip, sk->src_ip4);
		}
	}

	verdict = decide(ev);
	ev->verdict = verdict;
	bpf_ringbuf_submit(ev, 0);
	if (may_deny && verdict == VERDICT_DENY)
		return SK_REJECT;
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
	return on_sock_addr(ctx, HOOK_SENDMSG4, false, true);
}

SEC("cgroup/sendmsg6")
int egress_sendmsg6(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, HOOK_SENDMSG6, true, true);
}

/* recvmsg programs must return 1 (verifier): they observe, never deny. */
SEC("cgroup/recvmsg4")
int egress_recvmsg4(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, HOOK_RECVMSG4, false, false);
}

SEC("cgroup/recvmsg6")
int egress_recvmsg6(struct bpf_sock_addr *ctx)
{
	return on_sock_addr(ctx, HOOK_RECVMSG6, true, false);
}

/*
 * Socket creation. TCP and UDP sockets are recorded when they connect or
 * send, so here only the sockets those hooks never see are recorded: raw,
 * ICMP "ping" and every non-TCP/UDP protocol (D9).
 */
SEC("cgroup/sock_create")
int egress_sock_create(struct bpf_sock *sk)
{
	struct sock_event *ev;
	__u64 scope_id;
	__u8 verdict;

	if ((sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP) ||
	    (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP))
		return SK_PASS;
	if (!in_scope(&scope_id))
		return SK_PASS;
	ev = reserve(HOOK_SOCK_CREATE, scope_id);
	if (!ev)
		return SK_PASS;
	ev->family = sk->family;
	ev->sock_type = sk->type;
	ev->protocol = sk->protocol;
	verdict = decide(ev);
	ev->verdict = verdict;
	bpf_ringbuf_submit(ev, 0);
	return verdict == VERDICT_DENY ? SK_REJECT : SK_PASS;
}
