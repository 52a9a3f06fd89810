//! Which records a subscriber wants. Every flag kind narrows (AND); values
//! repeated for one kind widen (OR). The same spec travels in the request
//! and is compiled on both ends: the client to reject a bad flag early, the
//! daemon to filter before anything is queued for that client.

use std::net::IpAddr;

use glob::{MatchOptions, Pattern};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::record::{key, Record, Source};
use crate::vocab::Verdict;

/// The filter as the client states it (the request's `filter` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterSpec {
    pub agent: Vec<String>,
    pub project: Vec<String>,
    /// A container name, or a prefix of its id.
    pub container: Vec<String>,
    /// ALLOWED, DENIED, BYPASSED (any case).
    pub verdict: Vec<String>,
    /// A host glob (`*.github.com`, matched against `dst_host` and a DNS
    /// record's `qname`), an IP address or a CIDR (matched against `dst_ip`).
    pub dst: Vec<String>,
    pub port: Vec<u16>,
    /// `l4_proto`: tcp, udp, icmp, raw, packet, ...
    pub proto: Vec<String>,
    /// `l7_proto`: dns, unknown, ...
    pub l7: Vec<String>,
    /// `clawker.source`: egress, overseer, exec, cp.
    pub source: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("--dst {0:?}: not a host glob, an IP address or a CIDR ({1})")]
    Dst(String, String),
    #[error("--verdict {0:?}: expected ALLOWED, DENIED or BYPASSED")]
    Verdict(String),
    #[error("--source {0:?}: expected egress, overseer, exec or cp")]
    Source(String),
    #[error("--{0} given an empty value")]
    Empty(&'static str),
}

#[derive(Debug, Clone)]
enum Dst {
    Net(IpNet),
    Host(Pattern),
}

/// A compiled [`FilterSpec`].
#[derive(Debug, Clone, Default)]
pub struct Filter {
    spec: FilterSpec,
    dst: Vec<Dst>,
}

const GLOB: MatchOptions = MatchOptions {
    case_sensitive: false,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

impl Filter {
    pub fn compile(spec: FilterSpec) -> Result<Filter, FilterError> {
        let lists: [(&'static str, &[String]); 8] = [
            ("agent", &spec.agent),
            ("project", &spec.project),
            ("container", &spec.container),
            ("verdict", &spec.verdict),
            ("dst", &spec.dst),
            ("proto", &spec.proto),
            ("l7", &spec.l7),
            ("source", &spec.source),
        ];
        for (name, values) in lists {
            if values.iter().any(|v| v.is_empty()) {
                return Err(FilterError::Empty(name));
            }
        }
        for v in &spec.verdict {
            if !Verdict::ALL
                .iter()
                .any(|x| x.name().eq_ignore_ascii_case(v))
            {
                return Err(FilterError::Verdict(v.clone()));
            }
        }
        for s in &spec.source {
            if !Source::ALL.iter().any(|x| x.name() == s) {
                return Err(FilterError::Source(s.clone()));
            }
        }
        let dst = spec
            .dst
            .iter()
            .map(|d| compile_dst(d))
            .collect::<Result<_, _>>()?;
        Ok(Filter { spec, dst })
    }

    pub fn spec(&self) -> &FilterSpec {
        &self.spec
    }

    pub fn matches(&self, r: &Record) -> bool {
        let s = &self.spec;
        let field = |k: &str| r.get_str(k).unwrap_or("");
        any_or_empty(&s.agent, |a| r.get_str(key::AGENT) == Some(a))
            && any_or_empty(&s.project, |p| r.get_str(key::PROJECT) == Some(p))
            && any_or_empty(&s.container, |c| {
                r.get_str(key::CONTAINER_NAME) == Some(c)
                    || r.get_str(key::CONTAINER_ID)
                        .is_some_and(|id| id.starts_with(c.as_str()))
            })
            && any_or_empty(&s.verdict, |v| field(key::VERDICT).eq_ignore_ascii_case(v))
            && any_or_empty(&s.port, |p| r.get_int(key::DST_PORT) == Some(i64::from(*p)))
            && any_or_empty(&s.proto, |p| field(key::L4_PROTO).eq_ignore_ascii_case(p))
            && any_or_empty(&s.l7, |p| field(key::L7_PROTO).eq_ignore_ascii_case(p))
            && any_or_empty(&s.source, |src| r.source.name() == src)
            && any_or_empty(&self.dst, |d| dst_matches(d, r))
    }
}

fn any_or_empty<T>(wanted: &[T], pred: impl Fn(&T) -> bool) -> bool {
    wanted.is_empty() || wanted.iter().any(pred)
}

fn compile_dst(d: &str) -> Result<Dst, FilterError> {
    if let Ok(net) = d.parse::<IpNet>() {
        return Ok(Dst::Net(net));
    }
    if let Ok(ip) = d.parse::<IpAddr>() {
        return Ok(Dst::Net(IpNet::from(ip)));
    }
    // Something with a slash or a colon that did not parse as an address
    // is a mistyped CIDR, not a host name.
    if d.contains('/') || d.contains(':') {
        return Err(FilterError::Dst(d.into(), "invalid address".into()));
    }
    Pattern::new(d)
        .map(Dst::Host)
        .map_err(|e| FilterError::Dst(d.into(), e.to_string()))
}

fn dst_matches(d: &Dst, r: &Record) -> bool {
    match d {
        Dst::Net(net) => r
            .get_str(key::DST_IP)
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .is_some_and(|ip| net.contains(&ip)),
        Dst::Host(glob) => [key::DST_HOST, key::QNAME]
            .iter()
            .filter_map(|k| r.get_str(k))
            .filter(|h| !h.is_empty())
            .any(|h| glob.matches_with(h.trim_end_matches('.'), GLOB)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Source;
    use std::time::SystemTime;

    fn rec(fields: &[(&'static str, &str)]) -> Record {
        let mut r = Record::new(SystemTime::now(), Source::Egress);
        for (k, v) in fields {
            if *k == key::DST_PORT {
                r.set(k, v.parse::<i64>().unwrap());
            } else {
                r.set(k, *v);
            }
        }
        r
    }

    fn filter(f: impl FnOnce(&mut FilterSpec)) -> Filter {
        let mut spec = FilterSpec::default();
        f(&mut spec);
        Filter::compile(spec).unwrap()
    }

    fn sample() -> Vec<Record> {
        vec![
            rec(&[
                (key::AGENT, "dev"),
                (key::PROJECT, "web"),
                (key::CONTAINER_NAME, "clawker.web.dev"),
                (key::CONTAINER_ID, "abc123def"),
                (key::VERDICT, "ALLOWED"),
                (key::L4_PROTO, "tcp"),
                (key::L7_PROTO, "unknown"),
                (key::DST_IP, "10.1.2.3"),
                (key::DST_PORT, "443"),
                (key::DST_HOST, "api.github.com"),
            ]),
            rec(&[
                (key::AGENT, "ops"),
                (key::PROJECT, "web"),
                (key::CONTAINER_NAME, "clawker.web.ops"),
                (key::CONTAINER_ID, "fff000"),
                (key::VERDICT, "DENIED"),
                (key::L4_PROTO, "udp"),
                (key::L7_PROTO, "dns"),
                (key::DST_IP, "fd00::53"),
                (key::DST_PORT, "53"),
                (key::QNAME, "Evil.Example."),
            ]),
        ]
    }

    fn selected(f: &Filter) -> Vec<usize> {
        sample()
            .iter()
            .enumerate()
            .filter(|(_, r)| f.matches(r))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert_eq!(selected(&Filter::default()), vec![0, 1]);
    }

    #[test]
    fn each_kind_selects() {
        assert_eq!(selected(&filter(|s| s.agent = vec!["ops".into()])), [1]);
        assert_eq!(
            selected(&filter(|s| s.project = vec!["web".into()])),
            [0, 1]
        );
        assert_eq!(
            selected(&filter(|s| s.project = vec!["api".into()])),
            [] as [usize; 0]
        );
        assert_eq!(selected(&filter(|s| s.container = vec!["abc".into()])), [0]);
        assert_eq!(
            selected(&filter(|s| s.container = vec!["clawker.web.ops".into()])),
            [1]
        );
        // A name is matched whole, not as a prefix.
        assert_eq!(
            selected(&filter(|s| s.container = vec!["clawker.web".into()])),
            [] as [usize; 0]
        );
        assert_eq!(
            selected(&filter(|s| s.verdict = vec!["denied".into()])),
            [1]
        );
        assert_eq!(selected(&filter(|s| s.port = vec![443])), [0]);
        assert_eq!(selected(&filter(|s| s.proto = vec!["UDP".into()])), [1]);
        assert_eq!(selected(&filter(|s| s.l7 = vec!["dns".into()])), [1]);
        assert_eq!(
            selected(&filter(|s| s.source = vec!["egress".into()])),
            [0, 1]
        );
        assert_eq!(
            selected(&filter(|s| s.source = vec!["overseer".into()])),
            [] as [usize; 0]
        );
    }

    #[test]
    fn dst_globs_addresses_and_cidrs() {
        assert_eq!(
            selected(&filter(|s| s.dst = vec!["*.github.com".into()])),
            [0]
        );
        assert_eq!(selected(&filter(|s| s.dst = vec!["*.example".into()])), [1]);
        assert_eq!(
            selected(&filter(|s| s.dst = vec!["10.0.0.0/8".into()])),
            [0]
        );
        assert_eq!(selected(&filter(|s| s.dst = vec!["10.1.2.3".into()])), [0]);
        assert_eq!(selected(&filter(|s| s.dst = vec!["fd00::/8".into()])), [1]);
        assert_eq!(
            selected(&filter(|s| s.dst = vec!["11.0.0.0/8".into()])),
            [] as [usize; 0]
        );
    }

    #[test]
    fn kinds_combine_and_values_widen() {
        let f = filter(|s| {
            s.project = vec!["web".into()];
            s.verdict = vec!["ALLOWED".into()];
        });
        assert_eq!(selected(&f), [0]);
        let f = filter(|s| s.agent = vec!["dev".into(), "ops".into()]);
        assert_eq!(selected(&f), [0, 1]);
        let f = filter(|s| {
            s.agent = vec!["dev".into()];
            s.port = vec![53];
        });
        assert_eq!(selected(&f), [] as [usize; 0]);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let bad = |f: fn(&mut FilterSpec)| {
            let mut s = FilterSpec::default();
            f(&mut s);
            Filter::compile(s).unwrap_err().to_string()
        };
        assert!(bad(|s| s.dst = vec!["10.0.0.0/33".into()]).contains("--dst"));
        assert!(bad(|s| s.dst = vec!["[a".into()]).contains("--dst"));
        assert!(bad(|s| s.verdict = vec!["maybe".into()]).contains("--verdict"));
        assert!(bad(|s| s.source = vec!["kernel".into()]).contains("--source"));
        assert!(bad(|s| s.agent = vec![String::new()]).contains("--agent"));
    }

    #[test]
    fn spec_round_trips_as_json() {
        let spec = FilterSpec {
            agent: vec!["a".into()],
            port: vec![1, 2],
            ..Default::default()
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<FilterSpec>(&text).unwrap(), spec);
        assert!(serde_json::from_str::<FilterSpec>(r#"{"agnt":["x"]}"#).is_err());
    }
}
