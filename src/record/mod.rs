//! The record every sink writes. Field names of the schema live in
//! [`key`] and nowhere else: stages add fields through those constants,
//! sinks iterate [`Record::fields`] and never name a field themselves. The
//! egress shapes (flows, attempts, DNS) are built in `egress.rs`.

mod egress;
mod exec;
pub mod id;
mod json;
pub mod key;
mod loss;

pub use egress::{l4_proto, INBOUND};
pub use loss::{LOSS_FIELDS, RECORDS_LOST};

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
    /// Which [`key_slot`]s the keys of `fields` take: a key whose bit is
    /// clear is absent without a search (most lookups of the stages and
    /// sinks downstream ask for keys a record does not hold).
    present: u128,
    /// Per slot, where in `fields` the one key of that slot is, or
    /// [`SHARED`] when several keys of this record share the slot (then a
    /// search). A lookup is one comparison in nearly every case.
    slots: [u8; 128],
}

/// In [`Record::slots`]: several present keys share the slot.
const SHARED: u8 = u8::MAX;

/// A key's slot (0..128) in [`Record::present`] and [`Record::slots`], from
/// its text (a caller's own copy of a name gets the same slot as the
/// constant). Keys may share a slot.
fn key_slot(key: &str) -> usize {
    let b = key.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return 0;
    };
    let mid = b[b.len() / 2];
    let h = (b.len() as u32)
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(u32::from(first).wrapping_mul(0x85eb_ca6b))
        .wrapping_add(u32::from(mid).wrapping_mul(0xc2b2_ae35))
        .wrapping_add(u32::from(last).wrapping_mul(0x27d4_eb2f));
    (h >> 25) as usize
}

impl Record {
    /// A new record gets its `record_id` here, once (see [`id`]): every
    /// copy, retry and replay of it carries the same id.
    pub fn new(time: SystemTime, source: Source) -> Self {
        // A flow record has ~22 fields and attribution adds up to ~10.
        let mut r = Record {
            time,
            source,
            severity: Severity::Info,
            body: None,
            fields: Vec::with_capacity(32),
            present: 0,
            slots: [0; 128],
        };
        r.push(key::RECORD_ID, Value::Str(id::next()));
        r
    }

    /// Append a field whose key the record does not hold.
    #[inline]
    fn append(&mut self, key: &'static str, value: Value) {
        let slot = key_slot(key);
        let bit = 1u128 << slot;
        let at = self.fields.len();
        self.slots[slot] = if self.present & bit != 0 || at >= usize::from(SHARED) {
            SHARED
        } else {
            at as u8
        };
        self.present |= bit;
        self.fields.push((key, value));
    }

    /// Set a field, replacing an earlier value of the same key.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        let value = value.into();
        match self.position(key) {
            Some(i) => self.fields[i].1 = value,
            None => self.append(key, value),
        }
    }

    /// Add a field the record does not hold yet (the record shapes, which
    /// add each of their fields once): no search. Debug builds check it.
    fn push(&mut self, key: &'static str, value: impl Into<Value>) {
        debug_assert!(self.position(key).is_none(), "{key} pushed twice");
        self.append(key, value.into());
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.position(key).map(|i| &self.fields[i].1)
    }

    /// Where `key` is among the fields: its slot names the one field that
    /// can be it, checked by address (keys are the statics of `key`)
    /// or, for a caller's own copy of a name, by text. Only when several
    /// of this record's keys share the slot is there a search: by address
    /// first, then by text, inline (not through a `memcmp` call per field).
    #[inline]
    fn position(&self, key: &str) -> Option<usize> {
        let slot = key_slot(key);
        if self.present & (1u128 << slot) == 0 {
            return None;
        }
        let same_address = |k: &str| k.as_ptr() == key.as_ptr() && k.len() == key.len();
        let same_text =
            |k: &str| k.len() == key.len() && k.bytes().zip(key.bytes()).all(|(a, b)| a == b);
        let at = self.slots[slot];
        if at != SHARED {
            let k = self.fields[usize::from(at)].0;
            return (same_address(k) || same_text(k)).then_some(usize::from(at));
        }
        if let Some(i) = self.fields.iter().position(|(k, _)| same_address(k)) {
            return Some(i);
        }
        self.fields.iter().position(|(k, _)| same_text(k))
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

    /// `<verdict> <l4_proto> <comm>[<pid>] -> <ip>:<port> agent=<agent>`,
    /// written piece by piece (no formatter per record).
    fn egress_summary(&self, out: &mut String) {
        let s = |k| self.get_str(k).unwrap_or("");
        let mut num = itoa::Buffer::new();
        out.push_str(s(key::VERDICT));
        out.push(' ');
        out.push_str(s(key::L4_PROTO));
        out.push(' ');
        out.push_str(s(key::COMM));
        if let Some(pid) = self.get_int(key::PID) {
            out.push('[');
            out.push_str(num.format(pid));
            out.push(']');
        }
        let inbound = self.get_str(key::DIRECTION) == Some(INBOUND);
        if inbound {
            match (self.get_str(key::HOOK), self.get_str(key::SRC_IP)) {
                (Some("listen"), _) => out.push_str(" listens"),
                (_, Some(ip)) => {
                    let v6 = ip.contains(':');
                    out.push_str(if v6 { " <- [" } else { " <- " });
                    out.push_str(ip);
                    out.push_str(if v6 { "]:" } else { ":" });
                    out.push_str(num.format(self.get_int(key::SRC_PORT).unwrap_or(0)));
                }
                _ => out.push_str(" <-"),
            }
        }
        if let (Some(ip), Some(port)) = (self.get_str(key::DST_IP), self.get_int(key::DST_PORT)) {
            let v6 = ip.contains(':');
            out.push_str(match (inbound, v6) {
                (true, true) => " on [",
                (true, false) => " on ",
                (false, true) => " -> [",
                (false, false) => " -> ",
            });
            out.push_str(ip);
            out.push_str(if v6 { "]:" } else { ":" });
            out.push_str(num.format(port));
        }
        if let Some(agent) = self.get_str(key::AGENT) {
            out.push_str(" agent=");
            out.push_str(agent);
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
        timestamp(self.time)
    }

    /// [`Record::timestamp`] written into `buf` (no allocation); empty if
    /// the time cannot be written (a year past 9999).
    fn timestamp_in<'b>(&self, buf: &'b mut [u8; 40]) -> &'b str {
        timestamp_in(self.time, buf)
    }
}

/// [`Record::timestamp`] of any time.
pub fn timestamp(time: SystemTime) -> String {
    let mut buf = [0u8; 40];
    timestamp_in(time, &mut buf).to_owned()
}

fn timestamp_in(time: SystemTime, buf: &mut [u8; 40]) -> &str {
    // 1970-01-01 up to 9999-12-31: written by hand (once per record, the
    // time crate's formatter cost ~0.3 us); before 1970 by the time crate.
    const LAST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if let Ok(d) = time.duration_since(UNIX_EPOCH) {
        if d.as_secs() > LAST {
            // Not RFC 3339 (and the time crate's conversion would panic).
            return "";
        }
        let n = rfc3339_utc(d.as_secs(), d.subsec_nanos(), buf);
        return std::str::from_utf8(&buf[..n]).unwrap_or_default();
    }
    let mut out: &mut [u8] = &mut buf[..];
    let ok = time::OffsetDateTime::from(time)
        .format_into(&mut out, &time::format_description::well_known::Rfc3339)
        .is_ok();
    // What was written, by what is left (format_into's count leaves
    // out the fraction of a second in time 0.3.55).
    let n = if ok { 40 - out.len() } else { 0 };
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

/// `YYYY-MM-DDThh:mm:ss[.fraction]Z` of `secs` since the epoch (year at
/// most 9999) into `buf`, as the time crate writes RFC 3339: the fraction
/// only when not zero, without its trailing zeros. Returns the length.
fn rfc3339_utc(secs: u64, nanos: u32, buf: &mut [u8; 40]) -> usize {
    // Civil date from days since 1970-01-01 (H. Hinnant, "chrono-compatible
    // low-level date algorithms"), for days >= 0.
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut put = |at: usize, n: u64, width: usize| {
        let mut n = n;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, sod / 3600, 2);
    put(14, sod / 60 % 60, 2);
    put(17, sod % 60, 2);
    buf[4] = b'-';
    buf[7] = b'-';
    buf[10] = b'T';
    buf[13] = b':';
    buf[16] = b':';
    let mut n = 19;
    if nanos != 0 {
        let mut digits = 9;
        let mut frac = nanos;
        while frac.is_multiple_of(10) {
            frac /= 10;
            digits -= 1;
        }
        buf[n] = b'.';
        let mut f = u64::from(frac);
        for i in (0..digits).rev() {
            buf[n + 1 + i] = b'0' + (f % 10) as u8;
            f /= 10;
        }
        n += 1 + digits;
    }
    buf[n] = b'Z';
    n + 1
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
    fn the_egress_summary_reads_as_before() {
        let mut r = Record::new(UNIX_EPOCH, Source::Egress);
        assert_eq!(r.body(), "  ");
        r.set(key::VERDICT, "ALLOWED");
        r.set(key::L4_PROTO, "tcp");
        r.set(key::COMM, "curl");
        r.set(key::PID, -7i64);
        r.set(key::DST_IP, "10.0.0.1");
        r.set(key::DST_PORT, 443u16);
        assert_eq!(r.body(), "ALLOWED tcp curl[-7] -> 10.0.0.1:443");
        r.set(key::DST_IP, "2001:db8::1");
        r.set(key::AGENT, "a\u{7}");
        assert_eq!(
            r.body(),
            "ALLOWED tcp curl[-7] -> [2001:db8::1]:443 agent=a\u{fffd}"
        );
    }

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

    /// The hand-written date and time against the time crate: every day
    /// boundary around leap years and centuries, the last second it
    /// writes, and a spread of times with every fraction length.
    #[test]
    fn the_hand_written_timestamp_is_the_time_crates() {
        use std::time::Duration;
        let reference = |t: SystemTime| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let mut secs: Vec<u64> = (0..3_000_000u64).step_by(86_400).collect(); // 1970..
        for year_start in [
            951_782_400u64,
            4_107_542_400,
            253_402_300_800 - 86_400 * 800,
        ] {
            secs.extend((0..800).map(|d| year_start + d * 86_400 - 1));
            secs.extend((0..800).map(|d| year_start + d * 86_400));
        }
        secs.push(253_402_300_799);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            secs.push(x % 253_402_300_800);
        }
        let nanos = [
            0u32,
            1,
            10,
            120_000_000,
            999_999_999,
            500_000_000,
            123_456_780,
        ];
        for (i, s) in secs.iter().enumerate() {
            let t = UNIX_EPOCH + Duration::new(*s, nanos[i % nanos.len()]);
            assert_eq!(timestamp(t), reference(t), "{s}");
        }
        // Past 9999: empty (the time crate's conversion panics there).
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
            ""
        );
    }

    #[test]
    fn a_key_is_found_by_any_copy_of_its_name_and_an_absent_one_is_not() {
        let mut r = Record::new(UNIX_EPOCH, Source::Egress);
        for (i, k) in key::ALL.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            // A copy at another address: found by its text.
            let copy: &'static str = Box::leak(k.to_string().into_boxed_str());
            r.set(copy, i as i64);
        }
        for (i, k) in key::ALL.iter().enumerate() {
            let want = (i % 2 == 0).then_some(i as i64);
            assert_eq!(r.get_int(k), want, "{k}");
            let copy = k.to_string();
            assert_eq!(r.get_int(&copy), want, "{k}");
        }
        assert_eq!(r.get(""), None);
        // Every key: slots shared by several present keys are searched.
        for (i, k) in key::ALL.iter().enumerate() {
            r.set(k, -(i as i64));
        }
        for (i, k) in key::ALL.iter().enumerate() {
            assert_eq!(r.get_int(k), Some(-(i as i64)), "{k}");
            let copy = k.to_string();
            assert_eq!(r.get_int(&copy), Some(-(i as i64)), "{k}");
        }
        assert_eq!(r.fields().count(), key::ALL.len());
        // The slots spread the schema's keys (a shared slot only costs a search).
        let slots: std::collections::HashSet<usize> =
            key::ALL.iter().map(|k| key_slot(k)).collect();
        assert!(slots.len() * 2 > key::ALL.len(), "{} slots", slots.len());
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
