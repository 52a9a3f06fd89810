//! Schema field names: OTLP log attribute keys and stdout JSON keys alike.
//! No key may be both a leaf and the prefix of another (`a` beside `a.b`
//! breaks the OpenSearch mapping); a unit test enforces it.

pub const TIMESTAMP: &str = "@timestamp";
pub const SOURCE: &str = "clawker.source";
/// Stable per record (`record::id`); the OpenSearch document `_id`.
pub const RECORD_ID: &str = "record_id";
pub const VERDICT: &str = "verdict";
pub const HOOK: &str = "hook";
pub const L4_PROTO: &str = "l4_proto";
pub const L7_PROTO: &str = "l7_proto";
pub const IP_VERSION: &str = "ip_version";
pub const SRC_IP: &str = "src_ip";
pub const SRC_PORT: &str = "src_port";
pub const DST_IP: &str = "dst_ip";
pub const DST_PORT: &str = "dst_port";
pub const DST_HOST: &str = "dst_host";
pub const CGROUP_ID: &str = "cgroup_id";
pub const PID: &str = "pid";
pub const COMM: &str = "comm";
pub const CONTAINER_ID: &str = "container_id";
pub const CONTAINER_NAME: &str = "container_name";
pub const CONTAINER_IMAGE: &str = "container_image";
pub const AGENT: &str = "agent";
pub const PROJECT: &str = "project";
pub const EVENT: &str = "event";
pub const EXIT_CODE: &str = "exit_code";
pub const BYTES_OUT: &str = "bytes_out";
pub const BYTES_IN: &str = "bytes_in";
pub const PACKETS_OUT: &str = "packets_out";
pub const PACKETS_IN: &str = "packets_in";
pub const DURATION_MS: &str = "duration_ms";
pub const FLOW_STATE: &str = "flow_state";
pub const CLOSE_REASON: &str = "close_reason";
pub const ERRNO: &str = "errno";
pub const COMMUNITY_ID: &str = "community_id";
pub const ENFORCED: &str = "enforced";
pub const BYPASS_UID: &str = "bypass_uid";
pub const BYPASS_USER: &str = "bypass_user";
pub const BYPASS_REASON: &str = "bypass_reason";
pub const BYPASS_UNTIL: &str = "bypass_until";
pub const POLICY_FILE: &str = "policy_file";
pub const ERROR: &str = "error";
pub const QNAME: &str = "qname";
pub const QTYPE: &str = "qtype";
pub const RCODE: &str = "rcode";
pub const ANSWERS: &str = "answers";
pub const TTL: &str = "ttl";
pub const DNS_ANSWERED: &str = "dns_answered";
pub const DNS_REJECTED: &str = "dns_rejected";
pub const LOST_TOTAL: &str = "lost_total";
pub const LOST_RATE_LIMITED: &str = "lost_rate_limited";
pub const LOST_RINGBUF_FULL: &str = "lost_ringbuf_full";
pub const LOST_FLOW_NOT_TRACKED: &str = "lost_flow_not_tracked";
pub const LOST_DNS_NOT_CACHED: &str = "lost_dns_not_cached";
pub const INTERVAL_MS: &str = "interval_ms";
/// `policy_reapplied`: open sockets decided again after a policy change.
pub const SOCKETS_DECIDED: &str = "sockets_decided";
pub const SOCKETS_ENDED: &str = "sockets_ended";
pub const SOCKETS_AUDIT: &str = "sockets_audit";
pub const SOCKETS_END_FAILED: &str = "sockets_end_failed";
pub const LOST_BYTES_OUT: &str = "lost_bytes_out";
pub const LOST_BYTES_IN: &str = "lost_bytes_in";
/// Process context (issue 15): on exec/exit records, and `exe`, `ppid`,
/// `process_key` on every egress record too.
pub const EXE: &str = "exe";
/// The path execve() was given, when it is not `exe` (a symlink, ...).
pub const EXEC_FILENAME: &str = "exec_filename";
pub const PPID: &str = "ppid";
pub const PROCESS_KEY: &str = "process_key";
pub const PARENT_PROCESS_KEY: &str = "parent_process_key";
pub const PARENT_EXE: &str = "parent_exe";
pub const PARENT_COMM: &str = "parent_comm";
pub const PROCESS_START: &str = "process_start";
pub const ARGS: &str = "args";
pub const ARGS_TRUNCATED: &str = "args_truncated";
pub const UID: &str = "uid";
pub const GID: &str = "gid";
pub const EUID: &str = "euid";
pub const EXIT_SIGNAL: &str = "exit_signal";

/// Every key, for the prefix-conflict check.
pub const ALL: &[&str] = &[
    TIMESTAMP,
    SOURCE,
    RECORD_ID,
    VERDICT,
    HOOK,
    L4_PROTO,
    L7_PROTO,
    IP_VERSION,
    SRC_IP,
    SRC_PORT,
    DST_IP,
    DST_PORT,
    DST_HOST,
    CGROUP_ID,
    PID,
    COMM,
    CONTAINER_ID,
    CONTAINER_NAME,
    CONTAINER_IMAGE,
    AGENT,
    PROJECT,
    EVENT,
    EXIT_CODE,
    BYTES_OUT,
    BYTES_IN,
    PACKETS_OUT,
    PACKETS_IN,
    DURATION_MS,
    FLOW_STATE,
    CLOSE_REASON,
    ERRNO,
    COMMUNITY_ID,
    ENFORCED,
    BYPASS_UID,
    BYPASS_USER,
    BYPASS_REASON,
    BYPASS_UNTIL,
    POLICY_FILE,
    ERROR,
    QNAME,
    QTYPE,
    RCODE,
    ANSWERS,
    TTL,
    DNS_ANSWERED,
    DNS_REJECTED,
    LOST_TOTAL,
    LOST_RATE_LIMITED,
    LOST_RINGBUF_FULL,
    LOST_FLOW_NOT_TRACKED,
    LOST_DNS_NOT_CACHED,
    INTERVAL_MS,
    SOCKETS_DECIDED,
    SOCKETS_ENDED,
    SOCKETS_AUDIT,
    SOCKETS_END_FAILED,
    LOST_BYTES_OUT,
    LOST_BYTES_IN,
    EXE,
    EXEC_FILENAME,
    PPID,
    PROCESS_KEY,
    PARENT_PROCESS_KEY,
    PARENT_EXE,
    PARENT_COMM,
    PROCESS_START,
    ARGS,
    ARGS_TRUNCATED,
    UID,
    GID,
    EUID,
    EXIT_SIGNAL,
];
