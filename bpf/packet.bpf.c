// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Packet (and every other non-inet) sockets where BPF LSM programs cannot
 * load (lsm.bpf.c decides them at creation where they can).
 *
 * cgroup/sock_create only runs for inet sockets, and AF_PACKET frames
 * leave below cgroup_skb: nothing in the cgroup hooks sees them. The
 * sock_send_length tracepoint fires after every sendmsg of every socket
 * family (write, send, sendto, sendmsg, sendmmsg, io_uring) in the sender's
 * context. For a sender in scope on a family that can reach a network
 * without inet (packet, XDP, vsock, ...):
 *  - the socket is recorded once (`hook=packet_send`, `l4_proto=packet`);
 *  - when the policy denies raw sockets the sending process is killed
 *    (SIGKILL), and recorded DENIED: a tracepoint cannot fail the call, so
 *    what that one call sent has left (docs/SECURITY.md: residual risk).
 * Every other process pays one family read per send.
 */
#include "common.bpf.h"
#include "lib/scope.h"
#include "lib/policy.h"
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SIGKILL 9

struct sock_common___pk {
	unsigned short skc_family;
} __attribute__((preserve_access_index));

struct sock___pk {
	struct sock_common___pk __sk_common;
	__u16 sk_type;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

/* Packet sockets already recorded as allowed (one record per socket). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8);
} packet_seen SEC(".maps");

SEC("tp_btf/sock_send_length")
int BPF_PROG(packet_send, struct sock___pk *sk, int ret, int flags_)
{
	struct attempt a = {};
	__u64 scope_id;
	__u8 verdict, flags, *seen;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family == AF_INET || family == AF_INET6 || family == AF_UNIX || family == AF_NETLINK)
		return 0;
	if (!in_scope_global(&scope_id))
		return 0;
	a.family = family;
	a.sock_type = BPF_CORE_READ(sk, sk_type);
	a.protocol = BPF_CORE_READ(sk, sk_protocol);
	if (family == AF_PACKET)
		a.protocol = bpf_ntohs(a.protocol); /* an ethertype, network order */
	verdict = decide(&a, scope_id, true, &flags);
	if (enforced_deny(verdict, flags)) {
		bpf_send_signal(SIGKILL);
		emit_attempt(HOOK_PACKET_SEND, scope_id, &a, 0, verdict, flags);
		return 0;
	}
	seen = bpf_sk_storage_get(&packet_seen, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!seen || *seen)
		return 0;
	*seen = 1;
	emit_attempt(HOOK_PACKET_SEND, scope_id, &a, 0, verdict, flags);
	return 0;
}
