//! The local API's messages (docs/API.md): JSON lines on a unix socket.
//! The client writes one request line; the daemon answers with lines that
//! are either records (exactly the stdout schema: they carry
//! `clawker.source`) or control messages (they carry `api`).

use serde::{Deserialize, Serialize};

use super::filter::FilterSpec;

/// Longest request line the daemon reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The key that marks a control line.
pub const CONTROL_KEY: &str = "api";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Records: first from the history ring (`since_ms`, `last`), then,
    /// with `follow`, every new one that passes the filter.
    Subscribe {
        #[serde(default)]
        filter: Box<FilterSpec>,
        /// History: records of the last this-many milliseconds.
        #[serde(default)]
        since_ms: Option<u64>,
        /// History: at most the last N matching records.
        #[serde(default)]
        last: Option<usize>,
        #[serde(default = "yes")]
        follow: bool,
    },
    /// One [`State`] line, then the daemon closes. `detail`: the key of
    /// one agent whose last records come along (`recent`).
    State {
        #[serde(default)]
        detail: Option<String>,
    },
}

fn yes() -> bool {
    true
}

/// A control line from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "api", rename_all = "snake_case")]
pub enum Control {
    /// History is done; live records follow (if following).
    HistoryEnd {
        records: u64,
    },
    /// This client's queue was full: `lost` matching records were dropped
    /// for it alone (Hubble's LostEvent).
    Lost {
        lost: u64,
    },
    /// The request was refused; the daemon closes the connection.
    Error {
        error: String,
    },
    State(State),
}

/// Per-agent aggregates and the flows open now, for `top`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// RFC 3339 time of this reading.
    pub time: String,
    pub agents: Vec<AgentState>,
    pub open_flows: Vec<OpenFlow>,
    /// The most recent denied records, newest last (stdout schema).
    pub denials: Vec<serde_json::Value>,
    /// The last records of the agent named by the request's `detail`,
    /// newest last (stdout schema).
    pub recent: Vec<serde_json::Value>,
}

/// Totals since the daemon started (or since the agent was first seen);
/// `top` turns successive readings into rates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// Stable key: the container id, else `agent/project`, else
    /// `cgroup:<id>` for a record no identity was found for.
    pub key: String,
    pub agent: String,
    pub project: String,
    pub container_name: String,
    pub container_id: String,
    /// Flows open in the kernel's flow table now.
    pub open_flows: u64,
    /// Bytes of ended flows and interim reports, plus what open flows
    /// carried so far beyond their interim reports.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Flow records that ended.
    pub flows: u64,
    /// Records with verdict DENIED.
    pub denials: u64,
    /// `host:port` (or `ip:port`) of the last denial.
    pub last_denied: String,
    /// Names the agent resolved (most recent last, at most a few).
    pub dns_names: Vec<String>,
    pub records: u64,
    pub last_seen: String,
    /// The container's cgroup now (read every few seconds; 0 until then):
    /// CPU time used so far, memory in use, tasks.
    #[serde(default)]
    pub cpu_usec: u64,
    /// CPU over the last two readings, in thousandths of a core.
    #[serde(default)]
    pub cpu_millicores: u64,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub pids: u64,
}

/// One flow open in the kernel now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFlow {
    /// The [`AgentState::key`] it belongs to (empty: not seen in a record yet).
    pub key: String,
    pub agent: String,
    pub project: String,
    pub container_name: String,
    pub l4_proto: String,
    pub dst_ip: String,
    pub dst_port: u16,
    pub comm: String,
    pub pid: u32,
    /// The process's program, from the records that named it (empty: no
    /// record of that process seen yet).
    #[serde(default)]
    pub exe: String,
    /// Accepted by a listener of the container: `dst_*` is the peer.
    #[serde(default)]
    pub inbound: bool,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub age_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_defaults() {
        let r: Request = serde_json::from_str(r#"{"op":"subscribe"}"#).unwrap();
        assert_eq!(
            r,
            Request::Subscribe {
                filter: Box::default(),
                since_ms: None,
                last: None,
                follow: true
            }
        );
        let r: Request = serde_json::from_str(r#"{"op":"state"}"#).unwrap();
        assert_eq!(r, Request::State { detail: None });
        assert!(serde_json::from_str::<Request>(r#"{"op":"drop_all"}"#).is_err());
    }

    #[test]
    fn control_lines_carry_the_api_key() {
        let line = serde_json::to_value(Control::Lost { lost: 7 }).unwrap();
        assert_eq!(line, serde_json::json!({"api": "lost", "lost": 7}));
        let back: Control = serde_json::from_value(line).unwrap();
        assert_eq!(back, Control::Lost { lost: 7 });
    }
}
