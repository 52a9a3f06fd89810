/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * Maps and helpers shared by the BPF objects of clawker-egress. Each object
 * includes the same definitions; user space pins every map once and the
 * second object reuses the pinned maps, so both see one ring buffer, one
 * flow table and one set of counters.
 */
#ifndef CLAWKER_COMMON_BPF_H
#define CLAWKER_COMMON_BPF_H

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
#define SOCK_RAW 3

/* cgroup programs: 1 lets the operation proceed, 0 is EPERM / drop. */
#define SK_PASS 1
#define SK_REJECT 0

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
 * Open flows. A plain hash, not LRU: an entry is never evicted behind our
 * back; a flow that finds the table full is counted (DROP_FLOW_TABLE_FULL)
 * and still recorded as an attempt.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

/* Written by user space only: what interim records already reported. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_reported);
} flow_reported SEC(".maps");

/* Which compiled rule set governs each scope cgroup (see egress.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_SCOPED_CGROUPS);
	__type(key, __u64);
	__type(value, struct container_policy);
} container_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EGRESS_MAX_POLICIES * EGRESS_MAX_RULES);
	__type(key, __u32);
	__type(value, struct policy_rule);
} policy_rules SEC(".maps");

/* Audited break-glass: policy off for a scope cgroup until it expires. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_SCOPED_CGROUPS);
	__type(key, __u64);
	__type(value, struct bypass_entry);
} bypass SEC(".maps");

/* Addresses each scope cgroup learned from DNS answers (per container). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_DNS_ENTRIES);
	__type(key, struct dns_key);
	__type(value, struct dns_value);
} dns_cache SEC(".maps");

/* (rule set, name hash) -> bitmask of the set's domain rules it matches. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_POLICIES * EGRESS_MAX_RULES);
	__type(key, struct domain_key);
	__type(value, __u64);
} domain_rules SEC(".maps");

/* Who owns each socket in scope; freed with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_owner);
} sock_owners SEC(".maps");

static __always_inline void count_drop(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&egress_drops, &slot);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/* Reserve a ring buffer record, counting the loss against `hook`. */
static __always_inline void *reserve_event(__u32 size, enum egress_hook hook)
{
	void *ev = bpf_ringbuf_reserve(&events, size, 0);

	if (!ev)
		count_drop(DROP_RINGBUF_FIRST + hook);
	return ev;
}

static __always_inline void fill_header(struct event_header *h, __u16 kind, __u16 size,
					enum egress_hook hook)
{
	h->kind = kind;
	h->size = size;
	h->version = EGRESS_ABI_VERSION;
	h->hook = hook;
	h->_pad = 0;
	h->ts_ns = bpf_ktime_get_boot_ns();
}

/* IPv4-mapped IPv6 (::ffff:a.b.c.d) as the IPv4 address it is on the wire. */
static __always_inline bool v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void set_addr(__u8 *dst, __u8 *family, __u32 fam, const __u32 *a6,
				     __u32 a4)
{
	__u32 w[4] = {};

	if (fam == AF_INET6 && !v4_mapped(a6)) {
		w[0] = a6[0];
		w[1] = a6[1];
		w[2] = a6[2];
		w[3] = a6[3];
		*family = AF_INET6;
	} else {
		w[0] = fam == AF_INET6 ? a6[3] : a4;
		*family = AF_INET;
	}
	__builtin_memcpy(dst, w, 16);
}

#endif /* CLAWKER_COMMON_BPF_H */
