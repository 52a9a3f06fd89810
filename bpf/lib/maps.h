/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The maps every BPF object of clawker-egress shares. Each object includes
 * the same definitions; user space pins every map once and the other
 * objects reuse the pinned maps, so all see one ring buffer, one flow table
 * and one set of counters.
 */
#ifndef CLAWKER_LIB_MAPS_H
#define CLAWKER_LIB_MAPS_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "egress.h"

/* Not in the UAPI headers BPF programs can include. */
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define AF_NETLINK 16
#define AF_PACKET 17
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define E2BIG 7
#define EEXIST 17
#define NSEC_PER_SEC 1000000000ULL

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
 * Per scope cgroup (container) fairness and loss accounting (P14). Entries
 * are made by user space at enrolment (and key 0 for SCOPE_ALL); the kernel
 * only looks them up. `scope_usage` is written by the kernel only,
 * `scope_released` by user space only: each counter has one writer.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_SCOPED_CGROUPS + 1);
	__type(key, __u64);
	__type(value, struct scope_usage);
} scope_usage SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_SCOPED_CGROUPS + 1);
	__type(key, __u64);
	__type(value, struct scope_released);
} scope_released SEC(".maps");

/*
 * Open flows. A plain hash, not LRU: an entry is never evicted behind our
 * back; a flow that finds the table (or its container's share) full is
 * counted and still recorded as an attempt.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

/*
 * Written by user space only: what interim records already reported. Not
 * preallocated: only flows that outlived flow_active_interval have an
 * entry, so its memory follows them, not the table size (docs/SCALE.md).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
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

/* Addresses each scope cgroup learned from DNS answers (per container).
 * Allocated as used: a full cache of whole names would be ~28 MiB. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESS_MAX_DNS_ENTRIES);
	__type(key, struct dns_key);
	__type(value, struct dns_value);
} dns_cache SEC(".maps");

/* (rule set, name hash) -> the name and the set's domain rules it matches. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EGRESS_MAX_POLICIES * EGRESS_MAX_RULES);
	__type(key, struct domain_key);
	__type(value, struct domain_value);
} domain_rules SEC(".maps");

/* Who owns each socket in scope; freed with the socket. Cloned with a
 * listener's accepted sockets (sk_clone_lock): an inbound connection starts
 * with its listener's owner, no lookup needed in softirq. Only listeners
 * are ever cloned, so the outbound path pays nothing for it. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct sock_owner);
} sock_owners SEC(".maps");

static __always_inline struct egress_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&egress_config, &zero);
}

#endif /* CLAWKER_LIB_MAPS_H */
