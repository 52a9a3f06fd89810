//! The stdout (and `file:`) JSON line of a record, written directly: the
//! same bytes as serde_json's compact output of [`Record`]'s `Serialize`
//! (a unit test compares them, escapes included), without serde's
//! per-entry machinery. Keys and values that need no escaping (no `"`,
//! `\` or control character: nearly all) are copied as they are; the
//! others go through serde_json's own string escaping.

use super::{key, Record, Value};

/// Whether any byte of `s` is one JSON escapes: a control character
/// (< 0x20), `"` or `\`. Eight bytes at a time (the classic "has a byte
/// less than / equal to" word tricks), the tail one by one.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Bytes < 0x20: subtracting 0x20 borrows into the high bit of a
        // byte that was below it (and was not itself >= 0x80).
        let low = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        if low | has_zero(w ^ (ONES * u64::from(b'"'))) | has_zero(w ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// One string, quoted, escaped as serde_json escapes it.
fn put_str(s: &str, out: &mut Vec<u8>) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// `,"key":` of a field. Keys are the schema's (and the daemon's own log
/// field names): they need no escaping, but that is checked, not assumed.
fn put_key(k: &str, out: &mut Vec<u8>) {
    if needs_escape(k.as_bytes()) {
        out.push(b',');
        put_str(k, out);
        out.push(b':');
        return;
    }
    out.reserve(k.len() + 4);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

impl Record {
    /// Append the record as one compact JSON object (no newline): the
    /// bytes `serde_json::to_writer(out, self)` writes.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut ts = [0u8; 40];
        out.push(b'{');
        put_str(key::TIMESTAMP, out);
        out.push(b':');
        put_str(self.timestamp_in(&mut ts), out);
        out.push(b',');
        put_str(key::SOURCE, out);
        out.push(b':');
        put_str(self.source.name(), out);
        let mut num = itoa::Buffer::new();
        for (k, v) in &self.fields {
            put_key(k, out);
            match v {
                Value::Str(s) => put_str(s, out),
                Value::Int(n) => out.extend_from_slice(num.format(*n).as_bytes()),
                Value::Bool(true) => out.extend_from_slice(b"true"),
                Value::Bool(false) => out.extend_from_slice(b"false"),
            }
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Source;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_word_scan_finds_exactly_the_bytes_json_escapes() {
        let slow = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        // Every byte value at every position of a 17-byte string (two
        // words and a tail), among neighbours that need nothing.
        for b in 0..=255u8 {
            for at in 0..17 {
                let mut s = [b'a'; 17];
                s[at] = b;
                assert_eq!(needs_escape(&s), slow(&s), "byte {b:#x} at {at}");
                // Next to bytes with the high bit set (UTF-8), which must
                // not look like a borrow.
                let mut t = [0xc3u8; 17];
                t[at] = b;
                assert_eq!(needs_escape(&t), slow(&t), "byte {b:#x} at {at} among 0xc3");
            }
        }
        assert!(!needs_escape(b""));
    }

    #[test]
    fn the_line_is_byte_for_byte_what_serde_json_writes() {
        let mut r = Record::new(
            UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            Source::Egress,
        );
        r.set(key::VERDICT, "ALLOWED");
        r.set(key::COMM, "cu\"rl\\\u{7}\u{1f}\t\n\r\u{8}\u{c}\u{7f}é☃");
        r.set(key::DST_PORT, 443u16);
        r.set(key::ERRNO, i64::MIN);
        r.set(key::BYTES_OUT, u64::MAX);
        r.set(key::PID, 0u32);
        r.set(key::DST_HOST, "");
        r.set(key::ENFORCED, false);
        r.set(key::DNS_ANSWERED, true);
        r.set(key::AGENT, "a".repeat(300));
        // A key that needs escaping (keys are ours; the writer does not
        // rely on that).
        r.set("we\"ird\n", "v");
        for rec in [
            r.clone(),
            Record::new(UNIX_EPOCH, Source::ControlPlane),
            Record::new(UNIX_EPOCH + Duration::from_secs(1), Source::Exec),
        ] {
            let mut ours = Vec::new();
            rec.write_json(&mut ours);
            let theirs = serde_json::to_vec(&rec).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
            assert_eq!(ours, theirs);
        }
    }
}
