//! The record every sink writes. Field names of the schema live in
//! [`key`] and nowhere else: stages add fields through those constants,
//! sinks iterate [`Record::fields`] and never name a field themselves. The
//! egress shapes (flows, attempts, DNS) are built in `egress.rs`.

mod egress;
mod exec;
pub mod id;
pub mod key;
mod loss;

pub use egress::l4_proto;
pub use loss::{LOSS_FIELDS, RECORDS_LOST};

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use compact_str::CompactString;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// Which stream a record belongs to (`clawker.source`), one data stream each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Network egress seen by the BPF programs.
    Egress,
    /// Audit events: container lifecycle, policy and bypass changes.
    Overseer,
    /// The daemon's own logs (control plane; wire name `cp`).
    ControlPlane,
    /// Process context: exec and exit of processes in containers.
    Exec,
}

impl Source {
    pub const ALL: &'static [Source] = &[
        Source::Egress,
        Source::Overseer,
        Source::ControlPlane,
        Source::Exec,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Source::Egress => "egress",
            Source::Overseer => "overseer",
            Source::ControlPlane => "cp",
            Source::Exec => "exec",
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

/// A field's value. Strings up to 24 bytes (ids, addresses, names, the
/// schema's words) are held inline: a record costs few allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(CompactString),
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
        Value::Str(CompactString::new(s))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(CompactString::from(s))
    }
}
impl From<CompactString> for Value {
    fn from(s: CompactString) -> Self {
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
    /// A new record gets its `record_id` here, once (see [`id`]): every
    /// copy, retry and replay of it carries the same id.
    pub fn new(time: SystemTime, source: Source) -> Self {
        // A flow record has ~22 fields and attribution adds up to ~10.
        let mut fields = Vec::with_capacity(32);
        fields.push((key::RECORD_ID, Value::Str(id::next())));
        Record {
            time,
            source,
            severity: Severity::Info,
            body: None,
            fields,
        }
    }

    /// Set a field, replacing an earlier value of the same key.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        let value = value.into();
        // Keys are the constants of `key`: the same address is the same
        // key; text is compared only when addresses differ.
        let same = |k: &str| std::ptr::eq(k, key) || k == key;
        match self.fields.iter_mut().find(|(k, _)| same(k)) {
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
        let mut out = String::new();
        self.write_body(&mut out);
        out
    }

    /// [`Record::body`], appended to `out` (a buffer the caller reuses).
    pub fn write_body(&self, out: &mut String) {
        let start = out.len();
        match &self.body {
            Some(b) => out.push_str(b),
            None => self.egress_summary(out),
        }
        if out[start..].chars().any(char::is_control) {
            let clean = printable(&out[start..]);
            out.truncate(start);
            out.push_str(&clean);
        }
    }

    fn egress_summary(&self, out: &mut String) {
        let s = |k| self.get_str(k).unwrap_or("");
        let _ = write!(
            out,
            "{} {} {}",
            s(key::VERDICT),
            s(key::L4_PROTO),
            s(key::COMM)
        );
        if let Some(pid) = self.get_int(key::PID) {
            let _ = write!(out, "[{pid}]");
        }
        if let (Some(ip), Some(port)) = (self.get_str(key::DST_IP), self.get_int(key::DST_PORT)) {
            if ip.contains(':') {
                let _ = write!(out, " -> [{ip}]:{port}");
            } else {
                let _ = write!(out, " -> {ip}:{port}");
            }
        }
        if let Some(agent) = self.get_str(key::AGENT) {
            let _ = write!(out, " agent={agent}");
        }
    }

    pub fn unix_nanos(&self) -> u64 {
        self.time
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// RFC 3339 UTC with nanoseconds.
    pub fn timestamp(&self) -> String {
        let mut buf = [0u8; 40];
        self.timestamp_in(&mut buf).to_owned()
    }

    /// [`Record::timestamp`] written into `buf` (no allocation); empty if
    /// the time cannot be written (a year past 9999).
    fn timestamp_in<'b>(&self, buf: &'b mut [u8; 40]) -> &'b str {
        let mut out: &mut [u8] = &mut buf[..];
        let ok = time::OffsetDateTime::from(self.time)
            .format_into(&mut out, &time::format_description::well_known::Rfc3339)
            .is_ok();
        // What was written, by what is left (format_into's count leaves
        // out the fraction of a second in time 0.3.55).
        let n = if ok { 40 - out.len() } else { 0 };
        std::str::from_utf8(&buf[..n]).unwrap_or_default()
    }
}

/// `@timestamp`, `clawker.source`, then every field: the stdout JSON line.
impl Serialize for Record {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut map = ser.serialize_map(Some(self.fields.len() + 2))?;
        let mut buf = [0u8; 40];
        map.serialize_entry(key::TIMESTAMP, self.timestamp_in(&mut buf))?;
        map.serialize_entry(key::SOURCE, self.source.name())?;
        for (k, v) in &self.fields {
            match v {
                Value::Str(s) => map.serialize_entry(k, s.as_str())?,
                Value::Int(n) => map.serialize_entry(k, n)?,
                Value::Bool(b) => map.serialize_entry(k, b)?,
            }
        }
        map.end()
    }
}

/// Replace control characters so one record stays one line in any viewer.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_stays_small() {
        // The history ring and every batch hold ~30 of these per record.
        assert!(std::mem::size_of::<Value>() <= 24);
        assert!(std::mem::size_of::<(&'static str, Value)>() <= 40);
    }

    #[test]
    fn timestamp_is_rfc3339_utc_as_the_time_crate_writes_it() {
        use std::time::Duration;
        for ns in [
            0u64,
            1,
            1_700_000_000_000_000_000,
            1_700_000_000_120_000_000,
            18_000_000_000_999_999_999,
        ] {
            let r = Record::new(UNIX_EPOCH + Duration::from_nanos(ns), Source::Egress);
            let want = time::OffsetDateTime::from(r.time)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            assert_eq!(r.timestamp(), want);
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
    fn every_key_has_its_own_name() {
        let mut names = key::ALL.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), key::ALL.len(), "two keys share a name");
    }
}
