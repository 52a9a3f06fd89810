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

#define EGRESS_ABI_VERSION 9

#define EGRESS_COMM_LEN 16
#define EGRESS_ADDR_LEN 16 /* IPv4 uses the first 4 bytes, network order */

/* Default ring buffer size (P6): 1 MiB. User space may override it. */
#define EGRESS_RINGBUF_DEFAULT_BYTES (1u << 20)
/*
 * The record budget's unit (P14): a record costs one unit per this many
 * bytes it takes on the ring (a flow record 1, an exec record 9).
 */
#define EGRESS_RECORD_UNIT_BYTES 256

/* Maximum number of container cgroups the kernel knows as "in scope". */
#define EGRESS_MAX_SCOPED_CGROUPS 16384

/* How many ancestor levels are checked for an enrolled container cgroup. */
#define EGRESS_SCOPE_MAX_DEPTH 8

/*
 * Flow table capacity (concurrent flows across every container): the
 * default of `flow_table_size`, which sets it at load (1,000 containers
 * with 100 open flows each fit; docs/SCALE.md "Flow table").
 */
#define EGRESS_MAX_FLOWS 131072

/* Record kinds. A kind number is never reused for another shape. */
enum event_kind {
	EVENT_KIND_SOCK = 1,         /* a denied attempt, or a raw/packet socket */
	EVENT_KIND_FLOW_END = 2,     /* a TCP connection closed (sock_ops) */
	EVENT_KIND_SOCK_RELEASE = 3, /* a socket whose flows user space ends */
	EVENT_KIND_DNS = 4,          /* a DNS query a container sent, or an answer it received */
	EVENT_KIND_EXEC = 5,         /* a process in scope ran execve (exec.bpf.c) */
	EVENT_KIND_FORK = 6,         /* a process in scope made a new process (not a thread) */
	EVENT_KIND_EXIT = 7,         /* a process in scope ended (its last thread) */
};

/* The hook that produced a record; also the index of the drop counters. */
enum egress_hook {
	HOOK_CONNECT4 = 0,
	HOOK_CONNECT6 = 1,
	HOOK_SENDMSG4 = 2,
	HOOK_SENDMSG6 = 3,
	/* 4: retired (recvmsg4, never emitted a record) */
	HOOK_XSK_SETUP = 5, /* cgroup/setsockopt SOL_XDP: an AF_XDP socket's setup (5 was
			     * the retired recvmsg6, which never emitted a record) */
	HOOK_SOCK_CREATE = 6,
	HOOK_SOCK_OPS = 7,
	HOOK_SKB_EGRESS = 8,
	HOOK_SKB_INGRESS = 9,
	HOOK_SOCK_RELEASE = 10,
	HOOK_DNS = 11,
	HOOK_LSM_SOCKET = 12, /* lsm_cgroup/socket_create: every socket family */
	HOOK_PACKET_SEND = 13, /* tp_btf/sock_send_length: non-inet sends */
	HOOK_EXEC = 14,        /* tp_btf/sched_process_exec */
	HOOK_FORK = 15,        /* tp_btf/sched_process_fork */
	HOOK_EXIT = 16,        /* tp_btf/sched_process_exit */
	HOOK_LISTEN = 17,      /* sock_ops TCP_LISTEN_CB: a socket in scope listens */
	HOOK_MAX = 18,
};

/* What the policy decided (D3). */
enum egress_verdict {
	VERDICT_ALLOW = 0,
	VERDICT_DENY = 1,
	VERDICT_BYPASS = 2,
};

/* Policy limits: rule sets in the kernel and rules per set. */
#define EGRESS_MAX_POLICIES 256
#define EGRESS_MAX_RULES 64
/*
 * container_policy.rule_set of a cgroup with no rules (the default action
 * decides; also the fail-closed deny-all): out of policy_rules' range, so
 * no lookup finds a rule and no slot is spent.
 */
#define EGRESS_NO_RULES EGRESS_MAX_POLICIES
#define EGRESS_BYPASS_REASON_LEN 128
#define EGRESS_USER_LEN 32

/* Which processes are recorded (and, later, enforced). */
enum egress_scope_mode {
	/* everything under the attach cgroup (an explicit --cgroup-root) */
	SCOPE_ALL = 0,
	/* only cgroups enrolled in `scoped_cgroups` and their descendants */
	SCOPE_ENROLLED = 1,
};

/*
 * Which process did it: with the tgid, the key that joins a record to the
 * process's exec record (`process_key` = boot id, tgid, start time). Read
 * from the current task wherever pid/tgid are (lib/proc.h, fill_proc()).
 */
struct proc_ident {
	__u64 start_ns; /* the process's start (thread group leader), boot time */
	__u32 ppid;     /* the real parent's tgid */
	/*
	 * Which program image: the leader's self_exec_id (low 32 bits), which
	 * every execve() raises and fork copies. A record names the program
	 * whose exec record carries the same id; a process whose exec record
	 * was lost matches none (no `exe`, never the program it ran before).
	 */
	__u32 exec_id;
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
	__u8 flags;            /* EVENT_F_* */
	char comm[EGRESS_COMM_LEN];
	struct proc_ident process;
};

/* sock_event.flags */
#define EVENT_F_AUDIT 0x1 /* DENY decided in audit mode: not enforced */
/* Inbound (issue 15): a listen (HOOK_LISTEN: dst = the listening address)
 * or a connection attempt to a listener (HOOK_SKB_INGRESS: src = the peer
 * that connected, dst = the container's address). */
#define EVENT_F_INBOUND 0x2

/* /proc/<pid>/stat start times are in clock ticks (USER_HZ = 100). */
#define EGRESS_CLOCK_TICK_NS 10000000ULL

/* Single-entry array `egress_config`, written by user space at start-up. */
struct egress_config {
	/* the daemon: its own traffic is never recorded. Matched by tgid AND
	 * start time, cleared when it stops (a reused pid is not exempt). */
	__u32 self_tgid;
	__u32 scope_mode;        /* enum egress_scope_mode */
	__u64 self_start_ticks;  /* field 22 of /proc/<self_tgid>/stat */
	/* Per-container record budget (P14): one record per interval on
	 * average, bursts up to burst_ns ahead (0 interval: no limit). */
	__u64 record_interval_ns;
	__u64 record_burst_ns;
	/* Per-container share of the shared tables (0: no quota). */
	__u32 max_flows_per_scope;
	__u32 max_dns_per_scope;
	/* The cgroup the programs are attached to and its depth below the v2
	 * root: programs on global hooks (tracepoints) keep to its subtree. */
	__u64 attach_cgroup_id;
	__u32 attach_level;
	/* Per-container share of `dns_pending` (0: no quota). */
	__u32 max_dns_pending_per_scope;
	/* 1: a TCP flow gets its `flows` entry when its SYN goes out (or its
	 * handshake completes), not from the promoter a second later: set
	 * where the kernel refuses map iterators (promote.bpf.c, lib/tcp.h). */
	__u32 tcp_table_at_connect;
	/* 1: every child of the attach cgroup is a container (Docker's own
	 * cgroupfs parent, `docker/`): a child not enrolled yet is in scope
	 * as itself, so a container that connects before user space enrolled
	 * it is still recorded and decided (lib/scope.h). */
	__u32 children_in_scope;
};

/* Why an answer changed nothing (dns_event.rejected; 0: it counted). */
enum dns_reject {
	DNS_REJECT_NONE = 0,
	DNS_REJECT_UNSOLICITED = 1,  /* no query of this socket with that id and type */
	DNS_REJECT_MISMATCH = 2,     /* server address/port, protocol or question differ */
	DNS_REJECT_LOCAL_SENDER = 3, /* sent by a socket in scope (a container answering itself) */
	DNS_REJECT_SEGMENTED = 4,    /* a query: one send (UDP GSO, TSO) carrying several
				      * messages to a DNS server, dropped (only the first
				      * would be parsed) */
	DNS_REJECT_MAX = 5,
};

/*
 * Indexes of the per-CPU `egress_drops` counter array. Slots 0 .. HOOK_MAX-1
 * count failed bpf_ringbuf_reserve() per hook: the kernel cannot tell user
 * space about ring buffer losses any other way. New reasons get new slots
 * at the end. DROP_* slots count lost records; MAP_FULL_* count a map (or a
 * container's share of it) with no room where nothing was lost, only
 * detail (user space: clawker_egress_kernel_map_full_total{map}).
 */
enum egress_drop {
	DROP_RINGBUF_FIRST = 0,
	/* a new datagram flow found the flow table (or its container's share)
	 * full: its packets go unrecorded (counted per packet) */
	DROP_FLOW_TABLE_FULL = HOOK_MAX,
	/* a DNS answer found dns_cache (or its container's share) full: that
	 * address gets no domain verdict (the DNS record is still written) */
	MAP_FULL_DNS_CACHE,
	/* the container's record budget was spent: the record was not written */
	DROP_RATE_LIMITED,
	/* a DNS query found dns_pending (or its container's share) full: its
	 * answer will not count (the name gets no domain verdict; the query is
	 * still recorded) */
	MAP_FULL_DNS_PENDING,
	/* DNS answers that changed nothing, by enum dns_reject (not losses:
	 * each is also recorded) */
	DNS_REJECTED_FIRST,
	/* a new TCP flow found the flow table (or its container's share) full:
	 * it gets no interim records, its end is still one record (from the
	 * socket's storage) */
	MAP_FULL_FLOWS_TCP = DNS_REJECTED_FIRST + DNS_REJECT_MAX,
	/* rejected answers not recorded: past one record per socket per
	 * DNS_REJECTED_RECORD_NS (each is still counted by its reason above;
	 * none is charged to the container's record budget) */
	DNS_ANSWERS_UNRECORDED,
	DROP_MAX,
};

/* Per-container loss reasons: `scope_usage.lost[]` (records that do not exist). */
enum scope_loss {
	SCOPE_LOSS_RATE_LIMITED = 0, /* its record budget was spent */
	SCOPE_LOSS_RINGBUF_FULL = 1, /* the ring buffer was full */
	SCOPE_LOSS_FLOW_QUOTA = 2,   /* a datagram flow not recorded: table or its share full */
	SCOPE_LOSS_MAX = 3,
};

/* Per-container full tables: `scope_usage.full[]` (no record lost, detail missing). */
enum scope_full {
	SCOPE_FULL_FLOWS = 0, /* a TCP flow the flow table could not hold: no interim records */
	SCOPE_FULL_DNS = 1,   /* an answer not cached or a query not awaited: no domain verdict */
	SCOPE_FULL_MAX = 2,
};

/* `scope_usage` value, per scope cgroup: written by the kernel only. */
struct scope_usage {
	__u64 tat_ns;      /* GCRA: when the record budget is full again */
	__u64 flows;       /* `flows` entries made, minus those the kernel removed */
	__u64 dns_entries; /* `dns_cache` entries made */
	__u64 dns_pending; /* `dns_pending` entries made, minus those the kernel removed */
	__u64 lost[SCOPE_LOSS_MAX];
	/* Payload bytes of TCP flow ends whose record was lost: the volume an
	 * agent moved stays on record even when its flows' records do not. */
	__u64 lost_bytes_out;
	__u64 lost_bytes_in;
	__u64 full[SCOPE_FULL_MAX];
};

/* `scope_released` value, per scope cgroup: written by user space only. */
struct scope_released {
	__u64 flows;       /* `flows` entries user space removed */
	__u64 dns_entries; /* `dns_cache` entries user space expired */
	__u64 dns_pending; /* `dns_pending` entries user space expired */
};

/* How a flow ended. */
enum close_reason {
	CLOSE_NONE = 0,
	CLOSE_FIN = 1,          /* orderly TCP close */
	CLOSE_RST = 2,          /* TCP reset, by either side */
	CLOSE_TIMEOUT = 3,      /* TCP retransmission or keepalive timeout */
	CLOSE_REFUSED = 4,      /* connect() answered with RST */
	CLOSE_UNREACHABLE = 5,  /* connect() failed: no route, ICMP unreachable */
	CLOSE_SOCKET = 6,       /* a datagram/raw socket was closed */
	CLOSE_IDLE = 7,         /* no packet for the idle timeout */
	CLOSE_DENIED = 8,       /* the policy denied it: nothing flowed */
	CLOSE_POLICY = 9,       /* ended by a policy change (reload, bypass end) */
};

/*
 * One flow: one socket talking to one remote endpoint with one protocol.
 * IPv4 (and v4-mapped IPv6) addresses use the first 4 bytes, family AF_INET.
 */
struct flow_key {
	__u64 sock_cookie;
	__u8 remote_ip[EGRESS_ADDR_LEN];
	__u16 remote_port; /* host order; 0 for portless protocols */
	__u8 family;
	__u8 protocol;     /* IPPROTO_* */
	__u32 _pad;
};

/* flow_value.flags */
#define FLOW_F_SYN_SENT 0x1 /* sock_ops saw the SYN: it will end this flow */
#define FLOW_F_AUDIT 0x2    /* its DENY verdict was not enforced (audit mode) */
#define FLOW_F_POLICY_END 0x4 /* ended by a policy change: close_reason=policy */
#define FLOW_F_INBOUND 0x8  /* accepted by a listener in scope: remote = the peer that connected */

/* `flows` map value: identity at creation, counters kept up to date. */
struct flow_value {
	__u64 start_ns;     /* boot time */
	__u64 last_seen_ns; /* last packet (TCP: refreshed at most once a second) */
	__u64 cgroup_id;
	__u64 scope_cgroup_id;
	__u64 bytes_out;    /* payload bytes (TCP: unique bytes, no retransmits) */
	__u64 bytes_in;
	__u64 packets_out;  /* packets on the wire (TCP: segments) */
	__u64 packets_in;
	__u32 pid;
	__u32 tgid;
	__u8 local_ip[EGRESS_ADDR_LEN];
	__u16 local_port;
	__u8 verdict;
	__u8 flags;
	__u32 _pad;
	char comm[EGRESS_COMM_LEN];
	struct proc_ident process;
};

/* `flow_reported` map value: what user space already reported (interim). */
struct flow_reported {
	__u64 bytes_out;
	__u64 bytes_in;
	__u64 packets_out;
	__u64 packets_in;
	__u64 last_report_ns;
};

/* EVENT_KIND_FLOW_END: the final state of a TCP flow. */
struct flow_end_event {
	struct event_header hdr;
	struct flow_key key;
	struct flow_value value;
	__u64 end_ns;
	__s32 sk_err;       /* the socket error at close (errno), 0 if none */
	__u8 close_reason;  /* enum close_reason */
	__u8 _pad[3];
};

/* EVENT_KIND_SOCK_RELEASE: every flow of this socket has ended. */
struct sock_release_event {
	struct event_header hdr;
	__u64 sock_cookie;
};

/* sock_owner.flags */
#define SOCK_F_HAS_FLOWS 0x1   /* datagram/raw flows exist: report the release */
#define SOCK_F_TCP_PENDING 0x2 /* connect() allowed, no SYN yet */
#define SOCK_F_AUDIT 0x4       /* its last decision was an unenforced DENY */

#define SOCK_F_TCP_FLOW 0x8    /* tcp_key names this socket's TCP flow */
#define SOCK_F_TCP_UNTRACKED 0x10 /* never gets a `flows` entry (table or share
				   * full): its end is built from this storage */
#define SOCK_F_LISTENER 0x20   /* set by listen() (owner = who listened); every
				* socket's storage is copied into the sockets it
				* accepts (BPF_F_CLONE) */
#define SOCK_F_INBOUND 0x40    /* an accepted connection (decided by `inbound`) */
#define SOCK_F_POLICY_END 0x80 /* its TCP flow is ended by a policy change */
#define SOCK_F_TCP_TABLED 0x100 /* its TCP flow has (or is getting) a `flows`
				 * entry: the promoter's or an inbound flow's
				 * (bpf/lib/tcp.h) */
#define SOCK_F_DNS_ASKED 0x200 /* it sent a DNS query: its received datagrams
				* may be answers (bpf/lib/dns.h) */

/* Per-socket storage: who owns a socket in scope (set in process context). */
struct sock_owner {
	__u64 cgroup_id;
	__u64 scope_cgroup_id;
	__u64 tcp_refreshed_ns; /* last refresh of the TCP flow's counters */
	__u32 pid;
	__u32 tgid;
	__u32 flags;
	__u8 verdict;
	__u8 tcp_verdict; /* the TCP flow's verdict at connect() */
	__u8 _pad[2];
	char comm[EGRESS_COMM_LEN];
	/* The TCP flow (bpf/lib/tcp.h): its key as connect() decided it
	 * (sock_ops, release and the promoter find the flow by it, never by
	 * re-deriving the address) and its connect() time. */
	struct flow_key tcp_key;
	__u64 tcp_start_ns;
	struct proc_ident process;
};

/*
 * Re-decision of open sockets (iter.bpf.c): after a policy reload or a
 * bypass end, the socket iterators decide every in-scope TCP socket and
 * connected UDP socket again and end those the policy now denies. The
 * iterator writes one sweep_record per socket it decided (not a ring
 * record: user space reads the iterator's output directly).
 */
enum sweep_outcome {
	SWEEP_KEPT = 0,     /* still allowed (or bypassed) */
	SWEEP_ENDED = 1,    /* denied: bpf_sock_destroy() ended it */
	SWEEP_AUDIT = 2,    /* denied in audit mode: left open */
	SWEEP_FAILED = 3,   /* follows the socket's SWEEP_ENDED: bpf_sock_destroy()
			     * failed after all (err) */
};

struct sweep_record {
	__u64 scope_cgroup_id;
	__u8 remote_ip[EGRESS_ADDR_LEN];
	__u16 remote_port; /* host order */
	__u8 family;
	__u8 protocol;     /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 outcome;      /* enum sweep_outcome */
	__u8 _pad[3];
	__s32 err;         /* bpf_sock_destroy()'s result when it failed */
	__u32 _pad2;
};

/* policy_rule.kind */
enum rule_kind {
	RULE_END = 0,    /* no more rules in this set */
	RULE_ANY = 1,    /* any destination */
	RULE_CIDR = 2,   /* addr/prefix_len of `family` */
	RULE_DOMAIN = 3, /* matches when `domain_rules` says so for the address's name */
};

/* One rule of a compiled rule set; first match wins. */
struct policy_rule {
	__u8 kind;       /* enum rule_kind */
	__u8 family;     /* AF_INET / AF_INET6 (RULE_CIDR) */
	__u8 prefix_len;
	__u8 protocol;   /* IPPROTO_*, 0 = any */
	__u16 port_lo;   /* host order; 0..0 = any port */
	__u16 port_hi;
	__u8 action;     /* VERDICT_ALLOW or VERDICT_DENY */
	__u8 _pad[3];
	__u8 addr[EGRESS_ADDR_LEN];
};

/* policy_mode */
enum policy_mode {
	POLICY_ENFORCE = 0,
	POLICY_AUDIT = 1, /* decide and record, never block */
};

/*
 * `container_policy` value, keyed by the scope cgroup id (0: everything in
 * SCOPE_ALL mode). Rules are policy_rules[rule_set * EGRESS_MAX_RULES + i].
 * A reload writes a fresh rule set and then swaps this value in one update:
 * every decision sees one whole policy.
 */
struct container_policy {
	__u32 rule_set;
	__u8 mode;           /* enum policy_mode */
	__u8 default_action; /* VERDICT_ALLOW or VERDICT_DENY */
	__u8 raw_action;     /* for raw, packet and other non-TCP/UDP sockets */
	__u8 inbound_action; /* connections to its listeners from outside it
			      * (not through its loopback); 0 = ALLOW */
};

/* `bypass` value, keyed by the scope cgroup id: policy off until `until_ns`. */
struct bypass_entry {
	__u64 until_ns;   /* boot time */
	__u64 started_ns; /* boot time */
	__u32 uid;        /* who asked */
	__u32 _pad;
	char user[EGRESS_USER_LEN];
	char reason[EGRESS_BYPASS_REASON_LEN];
};

/*
 * DNS (issue 6, issue 9). Queries are parsed in cgroup_skb egress: each is
 * recorded when it is sent and remembered in `dns_pending`. Answers are
 * parsed in cgroup_skb ingress, before the datagram is queued to the
 * socket: an answer counts only when it answers a query this socket sent
 * (transaction id, question, and the server address/port the query went
 * to); then the kernel knows which name an address came from before the
 * application can read the answer (race-free domain rules).
 */
#define DNS_NAME_LEN 256 /* a dotted name is at most 253 bytes */
#define DNS_MAX_ANSWERS 8
#define DNS_MAX_SUFFIXES 16
#define DNS_MAX_PACKET 512
/* Answer lifetime in the kernel: the TTL, clamped (seconds). */
#define DNS_TTL_FLOOR_S 30
#define DNS_TTL_CEILING_S 3600
/* How long a query waits for its answer (seconds); later answers are
 * unsolicited, and user space deletes the entry. */
#define DNS_PENDING_TIMEOUT_S 15
/* At most one record of a rejected answer per socket per this interval:
 * anyone can send datagrams from port 53 to a socket that asked once. */
#define DNS_REJECTED_RECORD_NS (10 * 1000 * 1000ULL)
/*
 * Name hashes: h(i) = c[i] + DNS_HASH_PRIME * h(i+1) over the lowercase
 * dotted name, computed from its end; the value at each label start is the
 * hash of that suffix ("www.example.com", "example.com", "com"). The hash
 * is only an index: every match is confirmed on the whole name, byte for
 * byte (lib/policy.h), so a colliding name matches nothing.
 */
#define DNS_HASH_PRIME 1099511628211ULL

/* dns_event.message */
enum dns_message {
	DNS_MSG_QUERY = 1,  /* sent by a socket in scope */
	DNS_MSG_ANSWER = 2, /* received by a socket in scope */
};


struct dns_answer {
	__u8 family; /* AF_INET / AF_INET6 */
	__u8 _pad[3];
	__u32 ttl;   /* seconds, as answered */
	__u8 addr[EGRESS_ADDR_LEN];
};

/* EVENT_KIND_DNS: one query sent or one answer received. */
struct dns_event {
	struct event_header hdr;
	__u64 cgroup_id;
	__u64 scope_cgroup_id;
	__u64 sock_cookie;
	__u32 pid;           /* the socket owner's process */
	__u16 qtype;
	__u8 rcode;
	__u8 answer_count;   /* entries used in answers[] */
	__u8 resolver_ip[EGRESS_ADDR_LEN]; /* the server (as the socket sees it) */
	__u16 resolver_port;
	__u16 local_port;
	__u8 family;
	__u8 protocol;       /* IPPROTO_UDP / IPPROTO_TCP */
	__u8 message;        /* enum dns_message */
	__u8 rejected;       /* enum dns_reject */
	__u16 txid;          /* the DNS transaction id */
	__u16 name_len;      /* 0: the name could not be parsed */
	__u32 _pad;
	char qname[DNS_NAME_LEN]; /* lowercase, dotted, not NUL-terminated */
	char comm[EGRESS_COMM_LEN];
	struct dns_answer answers[DNS_MAX_ANSWERS];
	struct proc_ident process;
};

/*
 * `dns_pending`: queries waiting for their answer (from any of the
 * servers the same query went to). A plain hash with a
 * per-container quota (max_dns_pending_per_scope): the answer deletes its
 * entry, user space deletes those older than DNS_PENDING_TIMEOUT_S.
 */
#define EGRESS_MAX_DNS_PENDING 65536
struct dns_pending_key {
	__u64 sock_cookie;
	__u16 txid;
	__u16 qtype;
	__u32 _pad;
};

/* A server a pending query went to. */
struct dns_server {
	__u8 ip[EGRESS_ADDR_LEN];
	__u16 port; /* host order */
	__u8 family;
	__u8 _pad;
};

/* Servers one query may be sent to at once (musl asks every nameserver of
 * resolv.conf in parallel with the same id; MAXNS is 3). */
#define DNS_PENDING_SERVERS 3

struct dns_pending_value {
	__u64 sent_ns;  /* boot time of the last send */
	__u64 scope_cgroup_id;
	__u64 qhash;    /* hash of the whole question name */
	struct dns_server servers[DNS_PENDING_SERVERS];
	__u8 n_servers;
	__u8 protocol;
	__u16 name_len;
	__u32 _pad;
};

/*
 * `dns_cache`: which name a scope cgroup learned an address from. A plain
 * hash, not an LRU: user space deletes expired entries, and an answer that
 * finds the cache full is counted (MAP_FULL_DNS_CACHE), never evicts.
 * Names are stored right-aligned (name[DNS_NAME_LEN - len ..]), so every
 * suffix of the name ends at the same byte as a rule's name does.
 */
#define EGRESS_MAX_DNS_ENTRIES 65536
struct dns_key {
	__u64 scope_cgroup_id;
	__u8 addr[EGRESS_ADDR_LEN];
	__u8 family;
	__u8 _pad[7];
};

struct dns_value {
	__u64 expires_ns; /* boot time */
	__u64 suffix[DNS_MAX_SUFFIXES]; /* suffix hashes: whole name, then shortest first */
	__u16 suffix_len[DNS_MAX_SUFFIXES]; /* their lengths in bytes */
	__u32 n_suffix;
	__u16 name_len;
	__u16 _pad;
	char name[DNS_NAME_LEN]; /* right-aligned */
};

/* `domain_rules`: which rules of a rule set a name (suffix) matches. */
struct domain_key {
	__u32 rule_set;
	__u32 wildcard; /* 1: matches the suffix and names under it; 0: exact */
	__u64 hash;
};

struct domain_value {
	__u64 mask;     /* bit i: rule i of the set */
	__u16 name_len;
	__u8 _pad[6];
	char name[DNS_NAME_LEN]; /* the rule's name, right-aligned, zeros before */
};

/*
 * Process context (exec.bpf.c, issue 15): one record per exec, per new
 * process (fork, not threads: user space's process cache only) and per
 * process end, for tasks in scope, charged to the container's record
 * budget like every other record.
 */
#define EXEC_PATH_LEN 256  /* the path execve() was given (bprm->filename) */
#define EXEC_ARGS_LEN 1024 /* first bytes of argv (NUL-separated) */
/* The executed file's path, walked from its dentry up to the root of the
 * task's mount namespace: its last EXEC_EXE_DEPTH components, each cut to
 * EXEC_EXE_PART - 1 bytes (execve's own path may be a symlink, or
 * /proc/self/exe: busybox runs its applets that way). */
#define EXEC_EXE_DEPTH 8
#define EXEC_EXE_PART 48

/* exec_event.flags */
#define EXEC_F_ARGS_TRUNCATED 0x1 /* argv is longer than EXEC_ARGS_LEN */
#define EXEC_F_ARGS_UNREAD 0x2    /* argv could not be read */
#define EXEC_F_EXE_TRUNCATED 0x4  /* the path is deeper than EXEC_EXE_DEPTH */
#define EXEC_F_CWD_TRUNCATED 0x8  /* the working directory is deeper than that */
#define EXEC_F_CWD_KNOWN 0x10     /* the walk of the working directory reached the
				   * namespace's root (cwd_depth 0: "/") */

/* EVENT_KIND_EXEC: a process in scope ran execve() successfully. */
struct exec_event {
	struct event_header hdr;
	__u64 cgroup_id;
	__u64 scope_cgroup_id;
	struct proc_ident process;   /* start time and parent of this process */
	__u64 parent_start_ns;    /* the parent's start: its process key */
	__u32 tgid;
	__u32 tid;                /* the exec'ing thread (becomes the leader) */
	__u32 uid;                /* real uid/gid, as the host sees them */
	__u32 gid;
	__u32 euid;
	__u32 args_size;          /* arg_end - arg_start: the whole argv's size */
	__u16 args_len;           /* bytes of args[] read */
	__u16 filename_len;       /* bytes of filename[], without the NUL */
	__u8 flags;               /* EXEC_F_* */
	__u8 exe_depth;           /* components in exe_parts (0: unknown) */
	__u8 cwd_depth;           /* components in cwd_parts */
	__u8 _pad;
	char comm[EGRESS_COMM_LEN];        /* the new comm */
	char parent_comm[EGRESS_COMM_LEN];
	char filename[EXEC_PATH_LEN];
	char args[EXEC_ARGS_LEN];
	/* The executed file, leaf first: "/" + reversed parts joined by "/". */
	char exe_parts[EXEC_EXE_DEPTH][EXEC_EXE_PART];
	/* The working directory (task->fs->pwd), walked the same way. */
	char cwd_parts[EXEC_EXE_DEPTH][EXEC_EXE_PART];
};

/* EVENT_KIND_FORK: a new process (not a thread) of a process in scope. */
struct fork_event {
	struct event_header hdr;
	__u64 scope_cgroup_id;
	struct proc_ident process; /* the child's start time and parent (ppid) */
	__u64 parent_start_ns;
	__u32 tgid;             /* the child */
	__u32 _pad;
};

/* EVENT_KIND_EXIT: the last thread of a process in scope ended. */
struct exit_event {
	struct event_header hdr;
	__u64 cgroup_id;
	__u64 scope_cgroup_id;
	struct proc_ident process;
	__u32 tgid;
	__s32 exit_code;        /* task->exit_code: wait(2) status */
	char comm[EGRESS_COMM_LEN];
};

#endif /* CLAWKER_EGRESS_H */
