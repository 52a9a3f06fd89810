// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * AF_XDP sockets (XSK) at their setup, for hosts where BPF LSM programs
 * cannot load (lsm.bpf.c refuses every raw family at socket() where they
 * can; this program is attached either way).
 *
 * An XSK sends without sendmsg: after bind(), poll(POLLOUT) drives
 * xsk_generic_xmit -> __dev_direct_xmit, so packet.bpf.c's sock_send_length
 * tracepoint never fires, and the frames leave below every cgroup_skb hook.
 * What an XSK cannot do without is its setup through setsockopt(SOL_XDP):
 * the UMEM it sends from (XDP_UMEM_REG; a shared UMEM needs an XSK that
 * registered one) and its rings. cgroup/setsockopt runs for sockets of
 * every family in the socket's cgroup, before the protocol's handler, and
 * can fail the call. For a task in scope on an XSK:
 *  - `raw_sockets: deny`: every SOL_XDP option is refused (EPERM) and each
 *    refusal recorded DENIED (`hook=xsk_setup`, `l4_proto=family:44`);
 *  - otherwise the socket is recorded once, at its first SOL_XDP option.
 * Every other setsockopt returns 1 at once with its arguments untouched
 * (the kernel then uses the caller's own buffer).
 *
 * Residual (docs/SECURITY.md "Raw sockets"): the kernel skips cgroup
 * sockopt programs for 32-bit (compat) syscalls, so an agent that can make
 * them (IA32 emulation on, seccomp allowing them) sets an XSK up unseen.
 * `--cap-drop NET_RAW` closes AF_XDP (and AF_PACKET) at the source.
 */
#include "common.bpf.h"
#include "lib/scope.h"
#include "lib/policy.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SOL_XDP 283
#ifndef AF_XDP
#define AF_XDP 44
#endif
/* The most of optval a program is given (PAGE_SIZE; 4 KiB is the least). */
#define SOCKOPT_SEEN_BYTES 4096

/* XSKs already recorded as allowed (one record per socket). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8);
} xsk_seen SEC(".maps");

SEC("cgroup/setsockopt")
int xsk_setup(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct attempt a = {};
	__u64 scope_id;
	__u8 verdict, flags, *seen;

	if (ctx->level != SOL_XDP) {
		/* Beyond what the program sees: 0 = "use the caller's buffer"
		 * (older kernels fail the call with EFAULT otherwise). */
		if (ctx->optlen > SOCKOPT_SEEN_BYTES)
			ctx->optlen = 0;
		return 1;
	}
	if (!sk || sk->family != AF_XDP || !in_scope(&scope_id))
		return 1;
	a.family = AF_XDP;
	a.sock_type = sk->type;
	a.protocol = sk->protocol;
	verdict = decide(&a, scope_id, true, &flags);
	if (enforced_deny(verdict, flags)) {
		emit_attempt(HOOK_XSK_SETUP, scope_id, &a, 0, verdict, flags);
		return 0;
	}
	seen = bpf_sk_storage_get(&xsk_seen, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!seen || *seen)
		return 1;
	*seen = 1;
	emit_attempt(HOOK_XSK_SETUP, scope_id, &a, 0, verdict, flags);
	return 1;
}
