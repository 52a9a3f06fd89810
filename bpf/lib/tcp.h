/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * A TCP flow as its socket's storage holds it (issue 12). connect() writes
 * the whole flow into the socket's `sock_owners` entry and nothing else:
 * no `flows` entry for a short connection. A flow still open a second later
 * is copied into `flows` by the promoter (promote.bpf.c, run by user space
 * before it reads the open flows), where interim records and the open-flow
 * views find it. Its end is one record either way: from the `flows` entry
 * when there is one, else from the storage (flow.bpf.c).
 *
 * Who ends a flow: the one that clears SOCK_F_TCP_FLOW (an atomic
 * fetch-and, a full barrier). The promoter first sets SOCK_F_TCP_TABLED
 * (atomically, on the same word: only a flow whose end has not begun gets
 * an entry), then inserts, then reads the flag after a full barrier of its
 * own. An end that saw SOCK_F_TCP_TABLED looks the entry up: either it
 * finds it, or the promoter sees the end and removes what it inserted. An
 * end that did not see it skips the lookup.
 */
#ifndef CLAWKER_LIB_TCP_H
#define CLAWKER_LIB_TCP_H

#include "maps.h"
#include "events.h"
#include "proc.h"

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

/* The flow's `flows` value as its socket's storage holds it. */
static __always_inline void stored_flow(const struct sock_owner *o, struct flow_value *v)
{
	__u32 flags = o->flags;

	v->start_ns = o->tcp_start_ns;
	v->last_seen_ns = o->tcp_start_ns;
	v->cgroup_id = o->cgroup_id;
	v->scope_cgroup_id = o->scope_cgroup_id;
	v->pid = o->pid;
	v->tgid = o->tgid;
	v->verdict = o->tcp_verdict;
	v->flags = ((flags & SOCK_F_AUDIT) ? FLOW_F_AUDIT : 0) |
		   ((flags & SOCK_F_TCP_PENDING) ? 0 : FLOW_F_SYN_SENT) |
		   ((flags & SOCK_F_POLICY_END) ? FLOW_F_POLICY_END : 0) |
		   ((flags & SOCK_F_INBOUND) ? FLOW_F_INBOUND : 0);
	__builtin_memcpy(v->comm, o->comm, sizeof(v->comm));
	v->process = o->process;
}

/* Over quota or no room: counted once; its end comes from the storage. */
static __always_inline void untracked(struct sock_owner *o, struct scope_usage *u)
{
	__sync_fetch_and_or(&o->flags, SOCK_F_TCP_UNTRACKED);
	count_full(u, MAP_FULL_FLOWS_TCP, SCOPE_FULL_FLOWS);
}

/*
 * Give the open TCP flow that started at `start` its `flows` entry: the
 * promoter for a flow a second old, or the sock_ops program at once where
 * the kernel refuses the promoter (egress_config.tcp_table_at_connect).
 * The container's flow quota applies; `c` (may be NULL) are its counters
 * now. The race with the flow's end is settled as the header says.
 */
static __always_inline void table_tcp_flow(struct sock_owner *o, __u64 start,
					   const __u8 *local_ip, __u16 local_port,
					   const struct tcp_counters *c)
{
	struct flow_value val = {};
	struct flow_key key = o->tcp_key;
	__u64 scope = o->scope_cgroup_id;
	struct scope_usage *u = usage_of(scope);
	struct scope_released *r = bpf_map_lookup_elem(&scope_released, &scope);
	struct egress_config *cfg = config();
	__u32 old;
	long err;

	if (u && cfg && !within_quota(u->flows, r ? r->flows : 0, cfg->max_flows_per_scope)) {
		untracked(o, u);
		return;
	}
	/* Marked first: from now on its end looks for the entry. */
	old = __sync_fetch_and_or(&o->flags, SOCK_F_TCP_TABLED);
	if ((old & SOCK_F_TCP_TABLED) || !(old & SOCK_F_TCP_FLOW))
		return;
	if (o->tcp_start_ns != start) {
		/* a new flow on the socket: the next run sees it whole */
		__sync_fetch_and_and(&o->flags, ~SOCK_F_TCP_TABLED);
		return;
	}
	stored_flow(o, &val);
	__builtin_memcpy(val.local_ip, local_ip, EGRESS_ADDR_LEN);
	val.local_port = local_port;
	if (c) {
		val.bytes_out = c->bytes_out;
		val.bytes_in = c->bytes_in;
		val.packets_out = c->packets_out;
		val.packets_in = c->packets_in;
	}
	err = bpf_map_update_elem(&flows, &key, &val, BPF_NOEXIST);
	if (err) {
		if (err != -EEXIST)
			untracked(o, u);
		return;
	}
	if (u)
		__sync_fetch_and_add(&u->flows, 1);
	/*
	 * Did the flow end meanwhile? A full barrier after the insert, then
	 * the flag: if its end did not find this entry, nothing else would
	 * ever remove it. A new flow on the same socket has another start.
	 */
	old = __sync_fetch_and_or(&o->flags, 0);
	if ((old & SOCK_F_TCP_FLOW) && o->tcp_start_ns == start)
		return;
	if (bpf_map_delete_elem(&flows, &key) == 0 && u)
		__sync_fetch_and_add(&u->flows, -1);
}

/* A flow end record from the storage, identity filled in; NULL if lost. */
static __always_inline struct flow_end_event *stored_end(const struct sock_owner *o,
							 const struct flow_key *key,
							 enum egress_hook hook)
{
	__u64 now = bpf_ktime_get_boot_ns();
	struct flow_end_event *ev = reserve_event_at(sizeof(*ev), hook, o->scope_cgroup_id, now);

	if (!ev)
		return NULL;
	__builtin_memset(ev, 0, sizeof(*ev));
	fill_header_at(&ev->hdr, EVENT_KIND_FLOW_END, sizeof(*ev), hook, now);
	ev->key = *key;
	stored_flow(o, &ev->value);
	return ev;
}

/*
 * A connect that never sent its SYN (no route, no source port, ...) and
 * is now replaced or released: its end, `unreachable`, as user space made
 * it when such flows had a `flows` entry. Nothing was sent: no counters.
 */
static __always_inline void end_unsent_tcp(struct sock_owner *o, enum egress_hook hook)
{
	struct flow_end_event *ev;
	struct flow_key key = o->tcp_key;
	__u32 old = __sync_fetch_and_and(&o->flags, ~SOCK_F_TCP_FLOW);

	if (!(old & SOCK_F_TCP_FLOW))
		return;
	ev = stored_end(o, &key, hook);
	if (!ev)
		return;
	ev->end_ns = ev->hdr.ts_ns;
	ev->close_reason = CLOSE_UNREACHABLE;
	submit_event(ev, sizeof(*ev));
}

#endif /* CLAWKER_LIB_TCP_H */
