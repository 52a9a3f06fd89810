//! One compact human line per record (`observe` without --json, `top`'s
//! panes): time agent project verdict proto comm → host:port bytes
//! duration. Colour only when asked (a TTY). Control characters a label or
//! a comm may hold never reach the terminal.

use std::fmt::Write as _;

use serde_json::Value;

use crate::record::key;

const RESET: &str = "\x1b[0m";

fn s<'a>(r: &'a Value, k: &str) -> &'a str {
    r.get(k).and_then(Value::as_str).unwrap_or("")
}

fn n(r: &Value, k: &str) -> Option<i64> {
    r.get(k).and_then(Value::as_i64)
}

fn or_dash(v: &str) -> &str {
    if v.is_empty() {
        "-"
    } else {
        v
    }
}

/// `HH:MM:SS.mmm` of the record's RFC 3339 `@timestamp`.
pub fn clock(r: &Value) -> &str {
    let t = s(r, key::TIMESTAMP);
    t.split_once('T')
        .map(|(_, rest)| rest.get(..12).unwrap_or(rest))
        .unwrap_or(t)
}

/// Bytes as B, KiB, MiB, GiB with one decimal from 1 KiB: at most 8
/// characters below 1000 TiB.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 999.95 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// Bytes in at most 6 characters: 999B, 1.5K, 999.9K, 12.3M, 4.0G.
pub fn bytes_short(b: u64) -> String {
    let long = bytes(b);
    match long.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) if long[i..].len() > 1 => format!("{}{}", &long[..i], &long[i..i + 1]),
        _ => long,
    }
}

/// `host:port` (`ip:port` without a name) of the record's destination.
pub fn destination(r: &Value) -> String {
    let host = match s(r, key::DST_HOST) {
        "" => s(r, key::DST_IP),
        h => h,
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    match n(r, key::DST_PORT) {
        Some(p) => format!("{host}:{p}"),
        None => or_dash(&host).to_owned(),
    }
}

fn verdict_colour(v: &str) -> &'static str {
    match v {
        "ALLOWED" => "\x1b[32m",
        "DENIED" => "\x1b[1;31m",
        "BYPASSED" => "\x1b[33m",
        _ => "",
    }
}

/// The line, without a trailing newline.
pub fn line(r: &Value, colour: bool) -> String {
    // Fields first lose their control characters, then get our colours:
    // a comm of "\x1b[8m" (conceal) must not hide what follows it.
    let cleaned = clean_strings(r);
    let r = &cleaned;
    let mut out = String::with_capacity(160);
    let paint = |out: &mut String, code: &str, text: &str| {
        if colour && !code.is_empty() {
            let _ = write!(out, "{code}{text}{RESET}");
        } else {
            out.push_str(text);
        }
    };
    let _ = write!(out, "{} ", clock(r));
    paint(&mut out, "\x1b[36m", or_dash(s(r, key::AGENT)));
    let _ = write!(out, " {} ", or_dash(s(r, key::PROJECT)));
    match s(r, key::SOURCE) {
        "egress" => {
            let verdict = s(r, key::VERDICT);
            paint(&mut out, verdict_colour(verdict), or_dash(verdict));
            let proto = s(r, key::L4_PROTO);
            let l7 = s(r, key::L7_PROTO);
            let _ = write!(out, " {}", or_dash(proto));
            if !l7.is_empty() && l7 != "unknown" {
                let _ = write!(out, "/{l7}");
            }
            let _ = write!(out, " {}", or_dash(s(r, key::COMM)));
            if let Some(pid) = n(r, key::PID) {
                let _ = write!(out, "[{pid}]");
            }
            program(&mut out, r);
            if s(r, key::DIRECTION) == crate::record::INBOUND {
                match s(r, key::HOOK) {
                    "listen" => out.push_str(" listens on"),
                    _ => {
                        let ip = s(r, key::SRC_IP);
                        let ip = if ip.contains(':') {
                            format!("[{ip}]")
                        } else {
                            ip.to_owned()
                        };
                        let port = n(r, key::SRC_PORT).unwrap_or(0);
                        let _ = write!(out, " ← {}:{port} on", or_dash(&ip));
                    }
                }
                let _ = write!(out, " {}", destination(r));
            } else {
                let _ = write!(out, " → {}", destination(r));
            }
            if let Some(q) = r.get(key::QNAME).and_then(Value::as_str) {
                let _ = write!(out, " {} {} {}", q, s(r, key::QTYPE), s(r, key::RCODE));
                let answers = s(r, key::ANSWERS);
                if !answers.is_empty() {
                    let _ = write!(out, " = {answers}");
                }
            }
            if let (Some(o), Some(i)) = (n(r, key::BYTES_OUT), n(r, key::BYTES_IN)) {
                let _ = write!(
                    out,
                    " ↑{} ↓{}",
                    bytes(o.unsigned_abs()),
                    bytes(i.unsigned_abs())
                );
            }
            if let Some(ms) = n(r, key::DURATION_MS) {
                let _ = write!(out, " {ms}ms");
            }
            match (s(r, key::FLOW_STATE), s(r, key::CLOSE_REASON)) {
                ("active", _) => out.push_str(" (open)"),
                (_, "") => {}
                (_, reason) => {
                    let _ = write!(out, " {reason}");
                }
            }
            if let Some(lost) = n(r, key::LOST_TOTAL) {
                let _ = write!(out, " records_lost={lost}");
            }
        }
        "exec" => {
            let _ = write!(
                out,
                "exec {} {}",
                or_dash(s(r, key::EVENT)),
                or_dash(s(r, key::EXE))
            );
            if let Some(pid) = n(r, key::PID) {
                let _ = write!(out, "[{pid}]");
            }
            if let Some(ppid) = n(r, key::PPID) {
                let _ = write!(out, " ppid={ppid}");
            }
            let args = s(r, key::ARGS);
            if !args.is_empty() {
                let _ = write!(out, " {args}");
            }
            if let Some(code) = n(r, key::EXIT_CODE) {
                let _ = write!(out, " exit_code={code}");
            }
            if let Some(sig) = n(r, key::EXIT_SIGNAL) {
                let _ = write!(out, " signal={sig}");
            }
        }
        source => {
            let _ = write!(out, "{} {}", source, or_dash(s(r, key::EVENT)));
            let name = s(r, key::CONTAINER_NAME);
            if !name.is_empty() {
                let _ = write!(out, " {name}");
            }
            for k in [
                key::EXIT_CODE,
                key::POLICY_FILE,
                key::BYPASS_USER,
                key::BYPASS_REASON,
                key::BYPASS_UNTIL,
                key::ERROR,
            ] {
                match r.get(k) {
                    Some(Value::String(v)) if !v.is_empty() => {
                        let _ = write!(out, " {k}={v}");
                    }
                    Some(Value::Number(v)) => {
                        let _ = write!(out, " {k}={v}");
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// ` (exe)` after `comm[pid]`: the program's path (comm is only its name).
fn program(out: &mut String, r: &Value) {
    let exe = s(r, key::EXE);
    let comm = s(r, key::COMM);
    if !exe.is_empty() && exe != comm {
        let _ = write!(out, " ({exe})");
    }
}

fn clean_strings(r: &Value) -> Value {
    match r {
        Value::String(s) => Value::String(clean(s)),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (clean(k), clean_strings(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean_strings).collect()),
        v => v.clone(),
    }
}

/// Every control character (ESC, BEL, CR, ...) and every bidirectional
/// formatting character (U+202E and kin, which a bidi terminal obeys to
/// show the rest of the line reversed) as U+FFFD: for text from a record
/// (a comm, a label, a DNS name) that a terminal UI shows as is.
pub fn clean(s: &str) -> String {
    if !s.chars().any(unsafe_char) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| if unsafe_char(c) { '\u{fffd}' } else { c })
        .collect()
}

fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow() -> Value {
        json!({
            "@timestamp": "2026-11-30T12:01:02.123456789Z",
            "clawker.source": "egress",
            "verdict": "DENIED",
            "l4_proto": "tcp",
            "l7_proto": "unknown",
            "dst_ip": "10.0.0.1",
            "dst_port": 443,
            "dst_host": "evil.test",
            "pid": 42,
            "comm": "curl",
            "agent": "dev",
            "project": "web",
            "bytes_out": 2048,
            "bytes_in": 10,
            "duration_ms": 0,
            "flow_state": "ended",
            "close_reason": "denied"
        })
    }

    #[test]
    fn compact_line() {
        assert_eq!(
            line(&flow(), false),
            "12:01:02.123 dev web DENIED tcp curl[42] → evil.test:443 ↑2.0KiB ↓10B 0ms denied"
        );
    }

    #[test]
    fn colour_only_when_asked_and_no_foreign_escapes() {
        let mut r = flow();
        r["comm"] = json!("x\x1b]0;pwned\x07");
        r["agent"] = json!("a\x1b[8m");
        let plain = line(&r, false);
        assert!(!plain.contains('\x1b'), "{plain:?}");
        let coloured = line(&r, true);
        assert!(coloured.contains("\x1b[1;31mDENIED\x1b[0m"));
        assert!(!coloured.contains("\x1b]"), "{coloured:?}");
        // No bidi override or isolate from a record.
        r["comm"] = json!("\u{202e}live\u{2066}x\u{200f}");
        let bidi = line(&r, false);
        assert!(
            !bidi.contains(['\u{202e}', '\u{2066}', '\u{200f}']) && bidi.contains("\u{fffd}live"),
            "{bidi:?}"
        );
        // Only our own sequences: a record's SGR (conceal) is replaced.
        assert!(!coloured.contains("\x1b[8m"), "{coloured:?}");
        assert_eq!(coloured.matches('\x1b').count(), 4, "{coloured:?}");
    }

    #[test]
    fn dns_and_overseer_lines() {
        let dns = json!({
            "@timestamp": "2026-11-30T12:01:02.123Z",
            "clawker.source": "egress",
            "verdict": "ALLOWED", "l4_proto": "udp", "l7_proto": "dns",
            "dst_ip": "::1", "dst_port": 53, "comm": "python3",
            "qname": "a.test", "qtype": "A", "rcode": "NOERROR", "answers": "10.0.0.1"
        });
        assert_eq!(
            line(&dns, false),
            "12:01:02.123 - - ALLOWED udp/dns python3 → [::1]:53 a.test A NOERROR = 10.0.0.1"
        );
        let o = json!({
            "@timestamp": "2026-11-30T12:01:02.123Z",
            "clawker.source": "overseer", "event": "container_stop",
            "agent": "dev", "container_name": "clawker.web.dev", "exit_code": 0
        });
        assert_eq!(
            line(&o, false),
            "12:01:02.123 dev - overseer container_stop clawker.web.dev exit_code=0"
        );
    }

    #[test]
    fn inbound_lines_name_the_peer_and_the_listener() {
        let mut r = flow();
        r["direction"] = json!("inbound");
        r["verdict"] = json!("ALLOWED");
        r["src_ip"] = json!("172.18.0.1");
        r["src_port"] = json!(46900);
        r["dst_ip"] = json!("172.18.0.2");
        r["dst_port"] = json!(4444);
        r["dst_host"] = json!("");
        r["close_reason"] = json!("fin");
        assert_eq!(
            line(&r, false),
            "12:01:02.123 dev web ALLOWED tcp curl[42] ← 172.18.0.1:46900 on 172.18.0.2:4444 ↑2.0KiB ↓10B 0ms fin"
        );
        let listen = json!({
            "@timestamp": "2026-11-30T12:01:02.123Z",
            "clawker.source": "egress", "verdict": "ALLOWED", "l4_proto": "tcp",
            "hook": "listen", "direction": "inbound", "comm": "nc", "pid": 7,
            "dst_ip": "::", "dst_port": 4444
        });
        assert_eq!(
            line(&listen, false),
            "12:01:02.123 - - ALLOWED tcp nc[7] listens on [::]:4444"
        );
    }

    #[test]
    fn exe_and_exec_lines() {
        let mut r = flow();
        r["exe"] = json!("/usr/bin/curl");
        assert!(line(&r, false).contains("curl[42] (/usr/bin/curl) → evil.test:443"));
        let x = json!({
            "@timestamp": "2026-11-30T12:01:02.123Z",
            "clawker.source": "exec", "event": "exec", "agent": "dev",
            "exe": "/bin/nc", "pid": 7, "ppid": 6, "args": "nc --token=******** h 1"
        });
        assert_eq!(
            line(&x, false),
            "12:01:02.123 dev - exec exec /bin/nc[7] ppid=6 nc --token=******** h 1"
        );
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0MiB");
        assert_eq!(bytes(1023 * 1024), "1.0MiB");
        assert!(bytes(999 * 1024 + 1000).len() <= 8);
        assert_eq!(bytes_short(999), "999B");
        assert_eq!(bytes_short(1536), "1.5K");
        assert_eq!(bytes_short(999 * 1024), "999.0K");
    }
}
