//! Schema field names: OTLP log attribute keys and stdout JSON keys alike.
//! No key may be both a leaf and the prefix of another (`a` beside `a.b`
//! breaks the OpenSearch mapping); a unit test enforces it.

/// Each key once: its static and its place in [`ALL`]. Statics, not
/// constants: each key then has one address in the whole program, and a
/// record's lookup recognises it by that address (a `const` string may be
/// one copy per codegen unit, then every lookup compares text).
macro_rules! keys {
    ($($(#[$doc:meta])* $name:ident = $value:literal;)*) => {
        $($(#[$doc])* pub static $name: &str = $value;)*

        /// Every key, for the prefix-conflict check.
        pub static ALL: &[&str] = &[$($name),*];
    };
}

keys! {
    TIMESTAMP = "@timestamp";
    SOURCE = "clawker.source";
    /// Stable per record (`record::id`); the OpenSearch document `_id`.
    RECORD_ID = "record_id";
    VERDICT = "verdict";
    HOOK = "hook";
    L4_PROTO = "l4_proto";
    L7_PROTO = "l7_proto";
    IP_VERSION = "ip_version";
    SRC_IP = "src_ip";
    SRC_PORT = "src_port";
    DST_IP = "dst_ip";
    DST_PORT = "dst_port";
    DST_HOST = "dst_host";
    CGROUP_ID = "cgroup_id";
    PID = "pid";
    COMM = "comm";
    CONTAINER_ID = "container_id";
    CONTAINER_NAME = "container_name";
    CONTAINER_IMAGE = "container_image";
    AGENT = "agent";
    PROJECT = "project";
    EVENT = "event";
    EXIT_CODE = "exit_code";
    BYTES_OUT = "bytes_out";
    BYTES_IN = "bytes_in";
    PACKETS_OUT = "packets_out";
    PACKETS_IN = "packets_in";
    DURATION_MS = "duration_ms";
    FLOW_STATE = "flow_state";
    CLOSE_REASON = "close_reason";
    ERRNO = "errno";
    COMMUNITY_ID = "community_id";
    ENFORCED = "enforced";
    BYPASS_UID = "bypass_uid";
    BYPASS_USER = "bypass_user";
    BYPASS_REASON = "bypass_reason";
    BYPASS_UNTIL = "bypass_until";
    POLICY_FILE = "policy_file";
    ERROR = "error";
    QNAME = "qname";
    QTYPE = "qtype";
    RCODE = "rcode";
    ANSWERS = "answers";
    TTL = "ttl";
    DNS_ANSWERED = "dns_answered";
    DNS_REJECTED = "dns_rejected";
    LOST_TOTAL = "lost_total";
    LOST_RATE_LIMITED = "lost_rate_limited";
    LOST_RINGBUF_FULL = "lost_ringbuf_full";
    LOST_FLOW_NOT_TRACKED = "lost_flow_not_tracked";
    /// Records of the container the OTLP sink's buffer (memory queue +
    /// disk spool) refused during a collector outage: over its fair share
    /// of a filling spool, or the spool full (`spool_full`).
    LOST_SPOOL_FULL = "lost_spool_full";
    MAP_FULL_FLOWS = "map_full_flows";
    MAP_FULL_DNS = "map_full_dns";
    INTERVAL_MS = "interval_ms";
    /// `policy_reapplied`: open sockets decided again after a policy change.
    SOCKETS_DECIDED = "sockets_decided";
    SOCKETS_ENDED = "sockets_ended";
    SOCKETS_AUDIT = "sockets_audit";
    SOCKETS_END_FAILED = "sockets_end_failed";
    LOST_BYTES_OUT = "lost_bytes_out";
    LOST_BYTES_IN = "lost_bytes_in";
    /// Process context (issue 15): on exec/exit records, and `exe`,
    /// `ppid`, `process_key` on every egress record too.
    EXE = "exe";
    /// The path execve() was given, when it is not `exe` (a symlink, ...).
    EXEC_FILENAME = "exec_filename";
    PPID = "ppid";
    /// `inbound` on listens and accepted connections (issue 15): then
    /// `src_*` is the peer that connected and `dst_*` the container's
    /// address. Absent on outbound records (every other egress record).
    DIRECTION = "direction";
    PROCESS_KEY = "process_key";
    PARENT_PROCESS_KEY = "parent_process_key";
    PARENT_EXE = "parent_exe";
    PARENT_COMM = "parent_comm";
    PROCESS_START = "process_start";
    ARGS = "args";
    /// The working directory an exec started in.
    CWD = "cwd";
    ARGS_TRUNCATED = "args_truncated";
    UID = "uid";
    GID = "gid";
    EUID = "euid";
    EXIT_SIGNAL = "exit_signal";
}
