// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Every socket family (BPF LSM, lsm_cgroup). cgroup/sock_create only runs
 * for inet sockets, and packet sockets send below cgroup_skb: without this
 * program an agent with CAP_NET_RAW (Docker's default) could open
 * AF_PACKET and put hand-built frames on the wire unrecorded.
 *
 * Families that cannot reach a network by themselves (unix, netlink) pass
 * unrecorded; inet is decided at connect/sendmsg/sock_create (egress.bpf.c).
 * Every other family (packet, XDP, vsock, bluetooth, CAN, ...) is a "raw"
 * socket for the policy (`raw_sockets`, deny unless allowed) and is one
 * record, allowed or not (l4_proto=packet for AF_PACKET).
 *
 * Loaded only where BPF LSM is active; `clawker-egress check` says so.
 */
#include "common.bpf.h"
#include "lib/scope.h"
#include "lib/policy.h"
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline void emit_socket(__u64 scope_id, int family, int type, int protocol,
					__u8 verdict, __u8 flags)
{
	struct sock_event *ev = reserve_event(sizeof(*ev), HOOK_LSM_SOCKET, scope_id);
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (!ev)
		return;
	__builtin_memset(ev, 0, sizeof(*ev));
	fill_header(&ev->hdr, EVENT_KIND_SOCK, sizeof(*ev), HOOK_LSM_SOCKET);
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->scope_cgroup_id = scope_id;
	ev->pid = (__u32)pid_tgid;
	ev->tgid = pid_tgid >> 32;
	ev->family = family;
	ev->sock_type = type;
	/* AF_PACKET's protocol is an ethertype in network order */
	ev->protocol = family == AF_PACKET ? bpf_ntohs((__u16)protocol) : (__u16)protocol;
	ev->verdict = verdict;
	ev->flags = flags;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	fill_proc(&ev->process);
	submit_event(ev, sizeof(*ev));
}

SEC("lsm_cgroup/socket_create")
int BPF_PROG(lsm_socket_create, int family, int type, int protocol, int kern)
{
	struct attempt a = {};
	__u64 scope_id;
	__u8 verdict, flags;

	if (kern || family == AF_INET || family == AF_INET6 || family == AF_UNIX ||
	    family == AF_NETLINK)
		return 1;
	if (!in_scope(&scope_id))
		return 1;
	a.family = family;
	a.sock_type = type;
	a.protocol = protocol;
	verdict = decide(&a, scope_id, true, &flags);
	emit_socket(scope_id, family, type, protocol, verdict, flags);
	return enforced_deny(verdict, flags) ? 0 : 1;
}
