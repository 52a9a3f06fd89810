//! The record every sink writes. Field names of the schema live here and
//! nowhere else: stages add fields through [`key`] constants, sinks iterate
//! [`Record::fields`] and never name a field themselves.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::capture::{CloseReason, Counters, DnsAnswer, SockEvent, Verdict};
use crate::flow::{community_id, FlowRecord, FlowState};

/// Schema field names: OTLP log attribute keys and stdout JSON keys alike.
/// No key may be both a leaf and the prefix of another (`a` beside `a.b`
/// breaks the OpenSearch mapping); a unit test enforces it.
pub mod key {
    pub const TIMESTAMP: &str = "@timestamp";
    pub const SOURCE: &str = "clawker.source";
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

    /// Every key, for the prefix-conflict check.
    pub const ALL: &[&str] = &[
        TIMESTAMP,
        SOURCE,
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
    ];
}

/// Which stream a record belongs to (`clawker.source`), one data stream each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Network egress seen by the BPF programs.
    Egress,
    /// Audit events: container lifecycle, policy and bypass changes.
    Overseer,
    /// The daemon's own logs.
    Cp,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Egress => "egress",
            Source::Overseer => "overseer",
            Source::Cp => "cp",
        }
    }
}

/// How severe a record is (OTLP severity). Flows and audit records are
/// `Info`; the daemon's own logs carry their tracing level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Severity {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Trace => "TRACE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
            Severity::Error => "ERROR",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Value::Int(i64::from(n))
    }
}
impl From<u16> for Value {
    fn from(n: u16) -> Self {
        Value::Int(i64::from(n))
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time: SystemTime,
    pub source: Source,
    severity: Severity,
    body: Option<String>,
    fields: Vec<(&'static str, Value)>,
}

impl Record {
    pub fn new(time: SystemTime, source: Source) -> Self {
        Record {
            time,
            source,
            severity: Severity::Info,
            body: None,
            fields: Vec::with_capacity(20),
        }
    }

    /// An attempt that never became a flow: denied (one record, nothing
    /// flowed, P18) or a raw/packet socket's creation.
    pub fn from_sock(ev: &SockEvent) -> Self {
        let mut r = Record::new(ev.time, Source::Egress);
        r.set(key::VERDICT, ev.verdict.name());
        r.set(key::HOOK, ev.hook.name());
        r.set(
            key::L4_PROTO,
            l4_proto(ev.family, ev.sock_type, ev.protocol),
        );
        // BPF alone cannot tell the application protocol (P17).
        r.set(key::L7_PROTO, "unknown");
        if let Some(v) = ip_version(ev.family) {
            r.set(key::IP_VERSION, v);
        }
        // The source is partly known before the kernel binds the socket:
        // a port without an address (unbound UDP) or neither (connect).
        if let Some((ip, port)) = ev.src {
            if !ip.is_unspecified() {
                r.set(key::SRC_IP, ip.to_string());
            }
            if port != 0 {
                r.set(key::SRC_PORT, port);
            }
        }
        if let Some((ip, port)) = ev.dst {
            r.set(key::DST_IP, ip.to_string());
            r.set(key::DST_PORT, port);
        }
        // Empty until DNS attribution names the destination.
        r.set(key::DST_HOST, "");
        r.set(key::CGROUP_ID, ev.cgroup_id);
        r.set(key::PID, ev.tgid);
        r.set(key::COMM, ev.comm.as_str());
        if ev.verdict == Verdict::Denied {
            r.set(key::ENFORCED, !ev.audit);
            r.set_counters(Counters::default());
            r.set(key::DURATION_MS, 0u64);
            r.set(key::FLOW_STATE, FlowState::Ended.name());
            r.set(key::CLOSE_REASON, CloseReason::Denied.name());
        }
        r
    }

    /// One flow: at its end, or an interim report of a long one.
    pub fn from_flow(f: &FlowRecord) -> Self {
        let flow = &f.flow;
        let mut r = Record::new(f.time, Source::Egress);
        r.set(key::VERDICT, flow.verdict.name());
        if flow.verdict == Verdict::Denied {
            // Only audit mode lets a denied flow through.
            r.set(key::ENFORCED, !flow.audit);
        }
        let family = if flow.remote.0.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        r.set(
            key::L4_PROTO,
            l4_proto(family as u16, 0, u16::from(flow.protocol)),
        );
        r.set(key::L7_PROTO, "unknown");
        r.set(
            key::IP_VERSION,
            if flow.remote.0.is_ipv4() { 4u32 } else { 6 },
        );
        if let Some((ip, port)) = flow.local {
            r.set(key::SRC_IP, ip.to_string());
            if port != 0 {
                r.set(key::SRC_PORT, port);
            }
        }
        r.set(key::DST_IP, flow.remote.0.to_string());
        if flow.remote.1 != 0 {
            r.set(key::DST_PORT, flow.remote.1);
        }
        r.set(key::DST_HOST, f.dst_host.clone().unwrap_or_default());
        r.set(key::CGROUP_ID, flow.cgroup_id);
        r.set(key::PID, flow.tgid);
        r.set(key::COMM, flow.comm.as_str());
        r.set_counters(f.delta);
        r.set(
            key::DURATION_MS,
            u64::try_from(f.duration.as_millis()).unwrap_or(u64::MAX),
        );
        r.set(key::FLOW_STATE, f.state.name());
        if let Some(reason) = f.close_reason {
            r.set(key::CLOSE_REASON, reason.name());
        }
        if f.errno != 0 {
            r.set(key::ERRNO, i64::from(f.errno));
        }
        if let Some(id) = community_id(flow) {
            r.set(key::COMMUNITY_ID, id);
        }
        r
    }

    /// One DNS exchange (answer received), so a tunnelling agent is
    /// visible by its query names even when nothing else flows.
    pub fn from_dns(d: &DnsAnswer) -> Self {
        let mut r = Record::new(d.time, Source::Egress);
        r.set(key::VERDICT, Verdict::Allowed.name());
        let tcp = i32::from(d.protocol) == libc::IPPROTO_TCP;
        r.set(key::L4_PROTO, if tcp { "tcp" } else { "udp" });
        r.set(key::L7_PROTO, "dns");
        r.set(
            key::IP_VERSION,
            if d.resolver.0.is_ipv4() { 4u32 } else { 6 },
        );
        r.set(key::SRC_PORT, d.local_port);
        r.set(key::DST_IP, d.resolver.0.to_string());
        r.set(key::DST_PORT, d.resolver.1);
        r.set(key::DST_HOST, "");
        r.set(key::CGROUP_ID, d.cgroup_id);
        r.set(key::PID, d.pid);
        r.set(key::COMM, d.comm.as_str());
        r.set(key::QNAME, d.qname.as_str());
        r.set(key::QTYPE, qtype_name(d.qtype));
        r.set(key::RCODE, rcode_name(d.rcode));
        let answers: Vec<String> = d.answers.iter().map(|(ip, _)| ip.to_string()).collect();
        r.set(key::ANSWERS, answers.join(","));
        if let Some(ttl) = d.answers.iter().map(|(_, t)| *t).min() {
            r.set(key::TTL, ttl);
        }
        r.with_body(format!(
            "DNS {} {} -> {}",
            qtype_name(d.qtype),
            printable(&d.qname),
            answers.join(",")
        ))
    }

    fn set_counters(&mut self, c: Counters) {
        self.set(key::BYTES_OUT, c.bytes_out);
        self.set(key::BYTES_IN, c.bytes_in);
        self.set(key::PACKETS_OUT, c.packets_out);
        self.set(key::PACKETS_IN, c.packets_in);
    }

    /// Set a field, replacing an earlier value of the same key.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn get_int(&self, key: &str) -> Option<i64> {
        match self.get(key) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        }
    }

    /// The schema fields, in insertion order, without `@timestamp` and
    /// `clawker.source` (see [`Record::time`] and [`Record::source`]).
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.fields.iter().map(|(k, v)| (*k, v))
    }

    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    pub fn severity(&self) -> Severity {
        self.severity
    }

    pub fn with_body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// A short human-readable line. It never contains control characters,
    /// whatever a label or comm holds.
    pub fn body(&self) -> String {
        match &self.body {
            Some(b) => printable(b),
            None => self.egress_summary(),
        }
    }

    fn egress_summary(&self) -> String {
        let s = |k| self.get_str(k).unwrap_or("");
        let mut out = format!("{} {} {}", s(key::VERDICT), s(key::L4_PROTO), s(key::COMM));
        if let Some(pid) = self.get_int(key::PID) {
            let _ = write!(out, "[{pid}]");
        }
        if let (Some(ip), Some(port)) = (self.get_str(key::DST_IP), self.get_int(key::DST_PORT)) {
            let ip = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.to_owned()
            };
            let _ = write!(out, " -> {ip}:{port}");
        }
        if let Some(agent) = self.get_str(key::AGENT) {
            let _ = write!(out, " agent={agent}");
        }
        printable(&out)
    }

    pub fn unix_nanos(&self) -> u64 {
        self.time
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// RFC 3339 UTC with nanoseconds.
    pub fn timestamp(&self) -> String {
        time::OffsetDateTime::from(self.time)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }
}

/// `@timestamp`, `clawker.source`, then every field: the stdout JSON line.
impl Serialize for Record {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut map = ser.serialize_map(Some(self.fields.len() + 2))?;
        map.serialize_entry(key::TIMESTAMP, &self.timestamp())?;
        map.serialize_entry(key::SOURCE, self.source.name())?;
        for (k, v) in &self.fields {
            match v {
                Value::Str(s) => map.serialize_entry(k, s)?,
                Value::Int(n) => map.serialize_entry(k, n)?,
                Value::Bool(b) => map.serialize_entry(k, b)?,
            }
        }
        map.end()
    }
}

fn qtype_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        n => format!("TYPE{n}"),
    }
}

fn rcode_name(c: u8) -> String {
    match c {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

/// Replace control characters so one record stays one line in any viewer.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn ip_version(family: u16) -> Option<u32> {
    match i32::from(family) {
        libc::AF_INET => Some(4),
        libc::AF_INET6 => Some(6),
        _ => None,
    }
}

/// tcp | udp | icmp | raw | other:<n>. A raw socket is `raw` (its packets'
/// flows carry the protocol on the wire); `sock_type` 0 means "a flow".
fn l4_proto(family: u16, sock_type: u16, protocol: u16) -> String {
    let raw_socket = i32::from(sock_type) == libc::SOCK_RAW || i32::from(family) == libc::AF_PACKET;
    if raw_socket {
        return "raw".into();
    }
    match i32::from(protocol) {
        libc::IPPROTO_TCP => "tcp".into(),
        libc::IPPROTO_UDP => "udp".into(),
        libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6 => "icmp".into(),
        n => format!("other:{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Hook, Verdict};

    fn sock(hook: Hook, family: i32, sock_type: i32, protocol: i32) -> SockEvent {
        SockEvent {
            hook,
            time: UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789),
            cgroup_id: 7,
            scope_cgroup_id: 0,
            sock_cookie: 1,
            pid: 10,
            tgid: 9,
            family: family as u16,
            sock_type: sock_type as u16,
            protocol: protocol as u16,
            src: None,
            dst: Some(("::1".parse().unwrap(), 443)),
            verdict: Verdict::Allowed,
            audit: false,
            comm: "curl\nx".into(),
        }
    }

    #[test]
    fn no_key_is_both_a_leaf_and_a_prefix() {
        for a in key::ALL {
            for b in key::ALL {
                assert!(!b.starts_with(&format!("{a}.")), "{a} is a prefix of {b}");
            }
        }
    }

    #[test]
    fn json_line_has_the_schema_keys() {
        let ev = sock(
            Hook::Connect6,
            libc::AF_INET6,
            libc::SOCK_STREAM,
            libc::IPPROTO_TCP,
        );
        let json: serde_json::Value = serde_json::to_value(Record::from_sock(&ev)).unwrap();
        assert_eq!(json["@timestamp"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(json["clawker.source"], "egress");
        assert_eq!(json["verdict"], "ALLOWED");
        assert_eq!(json["l4_proto"], "tcp");
        assert_eq!(json["l7_proto"], "unknown");
        assert_eq!(json["ip_version"], 6);
        assert_eq!(json["dst_ip"], "::1");
        assert_eq!(json["dst_port"], 443);
        assert_eq!(json["dst_host"], "");
        assert_eq!(json["pid"], 9);
        assert_eq!(json["cgroup_id"], 7);
        assert!(json.get("src_port").is_none());
    }

    #[test]
    fn l4_proto_names() {
        let p = |t: i32, p: i32| l4_proto(libc::AF_INET as u16, t as u16, p as u16);
        assert_eq!(p(libc::SOCK_DGRAM, libc::IPPROTO_UDP), "udp");
        assert_eq!(p(libc::SOCK_RAW, libc::IPPROTO_ICMP), "raw");
        assert_eq!(p(libc::SOCK_DGRAM, libc::IPPROTO_ICMP), "icmp");
        assert_eq!(p(libc::SOCK_STREAM, 132), "other:132");
        assert_eq!(
            l4_proto(libc::AF_PACKET as u16, libc::SOCK_DGRAM as u16, 0),
            "raw"
        );
    }

    #[test]
    fn body_is_one_printable_line() {
        let ev = sock(
            Hook::Connect6,
            libc::AF_INET6,
            libc::SOCK_STREAM,
            libc::IPPROTO_TCP,
        );
        let body = Record::from_sock(&ev).body();
        assert_eq!(body, "ALLOWED tcp curl\u{fffd}x[9] -> [::1]:443");
    }
}
