//! `policy suggest`: from observed egress records, the smallest
//! `.clawker.yaml` firewall section that would have allowed them — one
//! exact domain where the record names its destination, one address
//! otherwise, with only the protocols and ports seen (contiguous ports
//! merged into a range). Nothing is generalised to a wildcard or a wider
//! CIDR: widening is the operator's decision.
//!
//! The result is checked before it is returned: parsed by the real
//! `.clawker.yaml` loader and every observed flow decided with it; a flow
//! it would not allow is an error, never a silently short policy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use serde_json::Value;

use super::model::{Action, Proto, Target};
use super::values::normalize_domain;
use super::Policy;
use crate::record::{key, Source};
use crate::vocab::Verdict;

/// Which records count.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub agent: Option<String>,
    pub project: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// Also allow what an enforced policy denied (it never flowed).
    pub include_denied: bool,
}

/// One destination the agent used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub host: Option<String>,
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub proto: Proto,
}

impl Observed {
    pub fn target(&self) -> Target {
        Target {
            host: self.host.clone(),
            ip: self.ip,
            port: self.port,
            proto: self.proto,
        }
    }
}

/// Records read and why some were left out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub lines: usize,
    pub used: usize,
    pub not_json: usize,
    pub not_selected: usize,
    pub not_a_flow: usize,
    pub enforced_denials: usize,
    pub raw_or_packet: usize,
    pub no_destination: usize,
}

/// Pick the flows of `sel` out of JSON-lines records (the daemon's stdout
/// format: flat keys, `clawker.source`, `@timestamp`).
pub fn observe(text: &str, sel: &Selection) -> (Vec<Observed>, Tally) {
    let mut not_json = 0;
    let records: Vec<(Value, usize)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| match serde_json::from_str::<Value>(line) {
            Ok(v) => Some((v, 1)),
            Err(_) => {
                not_json += 1;
                None
            }
        })
        .collect();
    let (seen, mut tally) = observe_records(records, sel);
    tally.lines += not_json;
    tally.not_json = not_json;
    (seen, tally)
}

/// The same selection over records already parsed, each with the number
/// of identical records it stands for (1 for a line; a bucket's document
/// count for an aggregation).
pub fn observe_records(
    records: impl IntoIterator<Item = (Value, usize)>,
    sel: &Selection,
) -> (Vec<Observed>, Tally) {
    let mut tally = Tally::default();
    let mut seen = BTreeMap::new();
    for (v, n) in records {
        tally.lines += n;
        match one(&v, sel) {
            Ok(o) => {
                tally.used += n;
                let key = (o.host.clone(), o.ip, o.port, o.proto as u8);
                seen.insert(key, o);
            }
            Err(Skip::NotSelected) => tally.not_selected += n,
            Err(Skip::NotAFlow) => tally.not_a_flow += n,
            Err(Skip::EnforcedDenial) => tally.enforced_denials += n,
            Err(Skip::RawOrPacket) => tally.raw_or_packet += n,
            Err(Skip::NoDestination) => tally.no_destination += n,
        }
    }
    (seen.into_values().collect(), tally)
}

enum Skip {
    NotSelected,
    NotAFlow,
    EnforcedDenial,
    RawOrPacket,
    NoDestination,
}

fn one(v: &Value, sel: &Selection) -> Result<Observed, Skip> {
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    if s(key::SOURCE) != Some(Source::Egress.name())
        || s(key::L7_PROTO) == Some("dns")
        || s(key::DIRECTION) == Some(crate::record::INBOUND)
    {
        // a listen or an accepted connection is nothing an egress rule allows
        return Err(Skip::NotAFlow);
    }
    let label_ok = |want: &Option<String>, k| want.as_deref().is_none_or(|w| s(k) == Some(w));
    if !label_ok(&sel.agent, key::AGENT) || !label_ok(&sel.project, key::PROJECT) {
        return Err(Skip::NotSelected);
    }
    if sel.since.is_some() || sel.until.is_some() {
        let at = s(key::TIMESTAMP)
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .ok_or(Skip::NotSelected)?;
        if sel.since.is_some_and(|t| at < t) || sel.until.is_some_and(|t| at > t) {
            return Err(Skip::NotSelected);
        }
    }
    let enforced_denial = s(key::VERDICT) == Some(Verdict::Denied.name())
        && v.get(key::ENFORCED).and_then(Value::as_bool) != Some(false);
    if enforced_denial && !sel.include_denied {
        return Err(Skip::EnforcedDenial);
    }
    let proto = match s(key::L4_PROTO) {
        Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        Some("icmp") => Proto::Icmp,
        _ => return Err(Skip::RawOrPacket),
    };
    let ip = s(key::DST_IP).and_then(|ip| ip.parse::<IpAddr>().ok());
    let host = s(key::DST_HOST)
        .filter(|h| !h.is_empty())
        .and_then(|h| normalize_domain(h).ok());
    let port = v
        .get(key::DST_PORT)
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0);
    if (host.is_none() && ip.is_none()) || (port == 0 && proto != Proto::Icmp) {
        return Err(Skip::NoDestination);
    }
    Ok(Observed {
        host,
        ip,
        port: if proto == Proto::Icmp { 0 } else { port },
        proto,
    })
}

/// The `.clawker.yaml` text (a header comment and `security.firewall`).
pub fn render(observed: &[Observed], header: &str) -> String {
    // (dst, proto) -> ports; a named destination by its name only.
    let mut groups: BTreeMap<(String, &'static str), BTreeSet<u16>> = BTreeMap::new();
    for o in observed {
        let dst = match (&o.host, o.ip) {
            (Some(h), _) => h.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => continue,
        };
        let proto = match o.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Any => "any",
        };
        groups.entry((dst, proto)).or_default().insert(o.port);
    }
    let mut domains = Vec::new();
    let mut rules = String::new();
    for ((dst, proto), ports) in &groups {
        let is_name = dst.parse::<IpAddr>().is_err();
        if proto == &"icmp" {
            let _ = writeln!(
                rules,
                "      - {{ dst: \"{dst}\", proto: icmp, action: allow }}"
            );
            continue;
        }
        for (lo, hi) in ranges(ports) {
            if is_name && *proto == "tcp" && lo == 443 && hi == 443 {
                domains.push(dst.clone());
                continue;
            }
            let port = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            let _ = writeln!(
                rules,
                "      - {{ dst: \"{dst}\", proto: {proto}, port: \"{port}\", action: allow }}"
            );
        }
    }
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    out.push_str("security:\n  firewall:\n");
    if rules.is_empty() && domains.is_empty() {
        out.push_str("    add_domains: []\n");
    }
    if !rules.is_empty() {
        out.push_str("    rules:\n");
        out.push_str(&rules);
    }
    if !domains.is_empty() {
        out.push_str("    add_domains:\n");
        for d in domains {
            let _ = writeln!(out, "      - \"{d}\"");
        }
    }
    out
}

/// Contiguous runs of a sorted port set.
fn ranges(ports: &BTreeSet<u16>) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match out.last_mut() {
            Some((_, hi)) if u32::from(*hi) + 1 == u32::from(p) => *hi = p,
            _ => out.push((p, p)),
        }
    }
    out
}

/// Load `text` as project `project` and decide every observed flow: the
/// ones it would not allow (empty: the suggestion is complete).
pub fn verify(
    text: &str,
    project: &str,
    observed: &[Observed],
) -> Result<Vec<Observed>, super::PolicyError> {
    let policy = Policy::from_clawker_str(text, "suggested .clawker.yaml", project)?;
    let resolved = policy.rules_for(None, Some(project));
    Ok(observed
        .iter()
        .filter(|o| resolved.decide(&o.target()).action != Action::Allow)
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(agent: &str, verdict: &str, proto: &str, ip: &str, port: u16, host: &str) -> String {
        serde_json::json!({
            "@timestamp": "2026-11-30T10:00:00.5Z", "clawker.source": "egress",
            "agent": agent, "project": "web", "verdict": verdict, "l4_proto": proto,
            "dst_ip": ip, "dst_port": port, "dst_host": host, "flow_state": "ended",
        })
        .to_string()
    }

    #[test]
    fn smallest_policy_allows_exactly_what_was_seen() {
        let mut text = [
            line("a", "ALLOWED", "tcp", "140.82.112.3", 443, "github.com"),
            line("a", "ALLOWED", "tcp", "140.82.112.4", 443, "GitHub.com."),
            line("a", "ALLOWED", "tcp", "10.0.0.5", 5432, ""),
            line("a", "ALLOWED", "tcp", "10.0.0.5", 5433, ""),
            line("a", "ALLOWED", "tcp", "10.0.0.5", 6000, ""),
            line("a", "ALLOWED", "udp", "2001:db8::1", 123, ""),
            line("a", "ALLOWED", "tcp", "1.2.3.4", 22, "gitlab.example.com"),
            line("a", "ALLOWED", "icmp", "10.0.0.9", 0, ""),
            line("a", "DENIED", "tcp", "6.6.6.6", 443, "evil.example"),
            line("a", "BYPASSED", "raw", "", 0, ""),
            line("b", "ALLOWED", "tcp", "9.9.9.9", 443, "other.example"),
        ]
        .join("\n");
        text.push_str("\nnot json\n");
        // an inbound flow (a peer connected to the agent's listener)
        let mut inbound: Value =
            serde_json::from_str(&line("a", "ALLOWED", "tcp", "172.18.0.2", 4444, "")).unwrap();
        inbound["direction"] = "inbound".into();
        text.push_str(&format!("{inbound}\n"));
        let sel = Selection {
            agent: Some("a".into()),
            ..Selection::default()
        };
        let (seen, tally) = observe(&text, &sel);
        assert_eq!(tally.used, 8, "{tally:?}");
        assert_eq!(tally.not_a_flow, 1, "inbound is no egress to allow");
        assert_eq!(tally.enforced_denials, 1);
        assert_eq!(tally.raw_or_packet, 1);
        assert_eq!(tally.not_selected, 1);
        assert_eq!(tally.not_json, 1);
        let yaml = render(&seen, "test");
        assert!(yaml.contains("      - \"github.com\"\n"), "{yaml}");
        assert!(
            yaml.contains("dst: \"10.0.0.5\", proto: tcp, port: \"5432-5433\""),
            "{yaml}"
        );
        assert!(
            yaml.contains("dst: \"gitlab.example.com\", proto: tcp, port: \"22\""),
            "{yaml}"
        );
        assert!(
            yaml.contains("dst: \"2001:db8::1\", proto: udp, port: \"123\""),
            "{yaml}"
        );
        assert!(yaml.contains("dst: \"10.0.0.9\", proto: icmp"), "{yaml}");
        assert!(
            !yaml.contains("evil") && !yaml.contains("other.example"),
            "{yaml}"
        );
        assert_eq!(verify(&yaml, "web", &seen).unwrap(), vec![]);
        // Smallest: what was not seen stays denied.
        let policy = Policy::from_clawker_str(&yaml, "s", "web").unwrap();
        let r = policy.rules_for(None, Some("web"));
        let deny = |host: Option<&str>, ip: &str, port: u16| {
            let t = Target {
                host: host.map(str::to_owned),
                ip: ip.parse().ok(),
                port,
                proto: Proto::Tcp,
            };
            r.decide(&t).action == Action::Deny
        };
        assert!(deny(Some("api.github.com"), "140.82.112.5", 443));
        assert!(deny(Some("github.com"), "140.82.112.3", 80));
        assert!(deny(None, "10.0.0.5", 5434));
        assert!(deny(None, "10.0.0.6", 5432));
        assert!(deny(Some("evil.example"), "6.6.6.6", 443));
        // With denials included, the denied destination is allowed too.
        let sel = Selection {
            include_denied: true,
            ..sel
        };
        let (seen, _) = observe(&text, &sel);
        let yaml = render(&seen, "test");
        assert!(yaml.contains("\"evil.example\""), "{yaml}");
        assert_eq!(verify(&yaml, "web", &seen).unwrap(), vec![]);
    }

    #[test]
    fn nothing_observed_is_an_empty_allowlist() {
        let yaml = render(&[], "none");
        assert_eq!(verify(&yaml, "web", &[]).unwrap(), vec![]);
        assert!(Policy::from_clawker_str(&yaml, "s", "web").is_ok());
    }
}
