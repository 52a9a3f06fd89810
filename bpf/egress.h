/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * The kernel <-> user-space ABI of clawker-egress: event records, map keys and
 * values, and the constants both sides agree on.
 *
 * This header is the single source of truth. The BPF programs include it, and
 * build.rs runs bindgen over it to generate the Rust types in `kernel::abi`.
 * Never mirror a struct by hand on the Rust side.
 *
 * Compatibility rules:
 *  - every record starts with `struct event_header`; user space checks `kind`,
 *    `version` and `size` before it reads a byte of the body;
 *  - a change to any struct layout bumps EGRESS_ABI_VERSION, which also
 *    versions the bpffs pin directory (a pinned map is only reused when its
 *    definition is identical).
 */
#ifndef CLAWKER_EGRESS_H
#define CLAWKER_EGRESS_H

#include <linux/types.h>

#define EGRESS_ABI_VERSION 1

#define EGRESS_COMM_LEN 16
#define EGRESS_ADDR_LEN 16 /* IPv4 uses the first 4 bytes, network order */

/* Default ring buffer size (P6): 1 MiB. User space may override it. */
#define EGRESS_RINGBUF_DEFAULT_BYTES (1u << 20)

/* Maximum number of container cgroups the kernel knows as "in scope". */
#define EGRESS_MAX_SCOPED_CGROUPS 16384

/* How many ancestor levels are checked for an enrolled container cgroup. */
#define EGRESS_SCOPE_MAX_DEPTH 8

/* Record kinds. A kind number is never reused for another shape. */
enum event_kind {
	EVENT_KIND_SOCK = 1, /* one socket operation seen at a cgroup hook */
};

/* The hook that produced a record; also the index of the drop counters. */
enum egress_hook {
	HOOK_CONNECT4 = 0,
	HOOK_CONNECT6 = 1,
	HOOK_SENDMSG4 = 2,
	HOOK_SENDMSG6 = 3,
	HOOK_RECVMSG4 = 4,
	HOOK_RECVMSG6 = 5,
	HOOK_SOCK_CREATE = 6,
	HOOK_MAX = 7,
};

/* What the policy decided (D3). */
enum egress_verdict {
	VERDICT_ALLOW = 0,
	VERDICT_DENY = 1,
	VERDICT_BYPASS = 2,
};

/* Which processes are recorded (and, later, enforced). */
enum egress_scope_mode {
	/* everything under the attach cgroup (an explicit --cgroup-root) */
	SCOPE_ALL = 0,
	/* only cgroups enrolled in `scoped_cgroups` and their descendants */
	SCOPE_ENROLLED = 1,
};

/* Common prefix of every ring buffer record. */
struct event_header {
	__u16 kind;    /* enum event_kind */
	__u16 size;    /* sizeof the whole record, header included */
	__u8 version;  /* EGRESS_ABI_VERSION of the producer */
	__u8 hook;     /* enum egress_hook */
	__u16 _pad;
	__u64 ts_ns;   /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME */
};

/* EVENT_KIND_SOCK: one connect/sendmsg/recvmsg/sock_create. */
struct sock_event {
	struct event_header hdr;
	__u64 cgroup_id;       /* cgroup of the calling task (the leaf) */
	__u64 scope_cgroup_id; /* enrolled ancestor that put it in scope, 0 if none */
	__u64 sock_cookie;     /* bpf_get_socket_cookie(): flow key */
	__u32 pid;             /* thread id */
	__u32 tgid;            /* process id */
	__u8 src_ip[EGRESS_ADDR_LEN];
	__u8 dst_ip[EGRESS_ADDR_LEN]; /* the remote peer, pre-rewrite */
	__u16 src_port;        /* host order; 0 when not yet assigned */
	__u16 dst_port;        /* host order */
	__u16 family;          /* AF_INET, AF_INET6, AF_PACKET, ... */
	__u16 sock_type;       /* SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, ... */
	__u16 protocol;        /* IPPROTO_* (or ETH_P_* for AF_PACKET) */
	__u8 verdict;          /* enum egress_verdict */
	__u8 _pad0;
	char comm[EGRESS_COMM_LEN];
};

/* Single-entry array `egress_config`, written by user space at start-up. */
struct egress_config {
	__u32 self_tgid;  /* the daemon: its own traffic is never recorded */
	__u32 scope_mode; /* enum egress_scope_mode */
};

/*
 * Indexes of the per-CPU `egress_drops` counter array. Slots 0 .. HOOK_MAX-1
 * count failed bpf_ringbuf_reserve() per hook: the kernel cannot tell user
 * space about ring buffer losses any other way. New loss reasons get new
 * slots after them.
 */
enum egress_drop {
	DROP_RINGBUF_FIRST = 0,
	DROP_MAX = HOOK_MAX,
};

#endif /* CLAWKER_EGRESS_H */
