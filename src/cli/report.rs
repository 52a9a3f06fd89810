//! `clawker-egress report`: per-agent summary over a window, from
//! OpenSearch (the `clawker-egress` and `clawker-overseer` data streams):
//! flows, bytes, denials, bypassed flows, DNS queries, records lost, the
//! top destinations by bytes out and the top DNS names. A table, `--json`
//! or `--csv`. Two aggregation queries; no document is fetched.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};

use super::opensearch::{field, OpenSearch, OpenSearchAuth};
use crate::flow::FlowState;
use crate::record::{key, RECORDS_LOST};
use crate::vocab::Verdict;

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// OpenSearch base URL.
    #[arg(long, default_value = "http://127.0.0.1:9200", value_name = "URL")]
    pub opensearch: String,
    #[command(flatten)]
    pub access: OpenSearchAuth,
    /// Start of the window (RFC 3339); default: --last before now.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<SystemTime>,
    /// End of the window (RFC 3339); default: now.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<SystemTime>,
    /// Window length when --since is not given ("24h", "15m").
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub last: Duration,
    /// Only this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Destinations and DNS names listed per agent.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// One JSON document instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV, one row per agent (top destinations joined by `;`).
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct AgentReport {
    pub agent: String,
    pub project: String,
    pub flows: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub denials: u64,
    pub bypassed: u64,
    pub dns_queries: u64,
    pub records_lost: u64,
    pub destinations: Vec<Destination>,
    pub dns_names: Vec<Named>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Destination {
    pub destination: String,
    pub flows: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Named {
    pub name: String,
    pub count: u64,
}

/// The label value of records without an agent or project label.
const NONE: &str = "_none";

pub fn report(a: &ReportArgs) -> Result<()> {
    let until = a.until.unwrap_or_else(SystemTime::now);
    let since = a.since.unwrap_or(until - a.last);
    if since > until {
        bail!("--since is after --until");
    }
    let os = OpenSearch::new(&a.opensearch, &a.access)?;
    let rows = fetch(&os, a, since, until)?;
    let window = format!(
        "{} to {}",
        humantime::format_rfc3339(since),
        humantime::format_rfc3339(until)
    );
    if a.json {
        let doc = json!({ "since": humantime::format_rfc3339(since).to_string(),
            "until": humantime::format_rfc3339(until).to_string(), "agents": rows });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if a.csv {
        print!("{}", csv(&rows));
    } else {
        print!("{}", table(&rows, &window));
    }
    Ok(())
}

fn filters(a: &ReportArgs, since: SystemTime, until: SystemTime) -> Vec<Value> {
    let mut f = vec![json!({ "range": { (key::TIMESTAMP): {
        "gte": humantime::format_rfc3339(since).to_string(),
        "lte": humantime::format_rfc3339(until).to_string() } } })];
    if let Some(agent) = &a.agent {
        f.push(json!({ "term": { (field(key::AGENT)): agent } }));
    }
    if let Some(project) = &a.project {
        f.push(json!({ "term": { (field(key::PROJECT)): project } }));
    }
    f
}

fn by_agent(inner: Value) -> Value {
    json!({ "agent": { "terms": { "field": field(key::AGENT), "size": 1000, "missing": NONE },
        "aggs": { "project": { "terms": { "field": field(key::PROJECT), "size": 100, "missing": NONE },
            "aggs": inner } } } })
}

fn fetch(
    os: &OpenSearch,
    a: &ReportArgs,
    since: SystemTime,
    until: SystemTime,
) -> Result<Vec<AgentReport>> {
    let not_dns = json!({ "term": { (field(key::L7_PROTO)): "dns" } });
    let interim = json!({ "term": { (field(key::FLOW_STATE)): FlowState::Active.name() } });
    let top = a.top.max(1);
    let dest = |by: String| {
        json!({ "terms": { "field": by, "size": top, "order": { "bytes": "desc" } },
            "aggs": { "bytes": { "sum": { "field": field(key::BYTES_OUT) } },
                      "flows": { "filter": { "bool": { "must_not": [interim] } } } } })
    };
    let egress = json!({ "size": 0,
        "query": { "bool": { "filter": filters(a, since, until) } },
        "aggs": by_agent(json!({
            "bytes_out": { "sum": { "field": field(key::BYTES_OUT) } },
            "bytes_in": { "sum": { "field": field(key::BYTES_IN) } },
            "flows": { "filter": { "bool": { "must_not": [not_dns, interim] } } },
            "denials": { "filter": { "bool": { "filter": [{ "term": { (field(key::VERDICT)): Verdict::Denied.name() } }],
                "must_not": [interim] } } },
            "bypassed": { "filter": { "bool": { "filter": [{ "term": { (field(key::VERDICT)): Verdict::Bypassed.name() } }],
                "must_not": [interim] } } },
            "dns": { "filter": not_dns, "aggs": { "names": { "terms": { "field": field(key::QNAME), "size": top } } } },
            "named": { "filter": { "bool": { "must_not": [not_dns, { "term": { (field(key::DST_HOST)): "" } }],
                "filter": [{ "exists": { "field": field(key::DST_HOST) } }] } },
                "aggs": { "dest": dest(field(key::DST_HOST)) } },
            "unnamed": { "filter": { "bool": { "must_not": [not_dns,
                { "bool": { "filter": [{ "exists": { "field": field(key::DST_HOST) } }],
                            "must_not": [{ "term": { (field(key::DST_HOST)): "" } }] } }] } },
                "aggs": { "dest": dest(field(key::DST_IP)) } },
        })),
    });
    let mut lost_filters = filters(a, since, until);
    lost_filters.push(json!({ "term": { (field(key::EVENT)): RECORDS_LOST } }));
    let lost = json!({ "size": 0, "query": { "bool": { "filter": lost_filters } },
        "aggs": by_agent(json!({ "lost": { "sum": { "field": field(key::LOST_TOTAL) } } })) });

    let mut rows: BTreeMap<(String, String), AgentReport> = BTreeMap::new();
    for (agent, project, b) in buckets(&os.search("clawker-egress", &egress)?) {
        let n = |k: &str| b[k]["value"].as_f64().unwrap_or(0.0) as u64;
        let c = |k: &str| b[k]["doc_count"].as_u64().unwrap_or(0);
        let mut destinations: Vec<Destination> = ["named", "unnamed"]
            .iter()
            .flat_map(|k| {
                b[*k]["dest"]["buckets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|d| Destination {
                destination: d["key_as_string"]
                    .as_str()
                    .or(d["key"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
                flows: d["flows"]["doc_count"].as_u64().unwrap_or(0),
                bytes_out: d["bytes"]["value"].as_f64().unwrap_or(0.0) as u64,
            })
            .collect();
        destinations.sort_by(|x, y| {
            y.bytes_out
                .cmp(&x.bytes_out)
                .then(x.destination.cmp(&y.destination))
        });
        destinations.truncate(top);
        let dns_names = b["dns"]["names"]["buckets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|d| Named {
                name: d["key"].as_str().unwrap_or_default().to_owned(),
                count: d["doc_count"].as_u64().unwrap_or(0),
            })
            .collect();
        let row = rows.entry((agent.clone(), project.clone())).or_default();
        *row = AgentReport {
            agent,
            project,
            flows: c("flows"),
            bytes_out: n("bytes_out"),
            bytes_in: n("bytes_in"),
            denials: c("denials"),
            bypassed: c("bypassed"),
            dns_queries: c("dns"),
            destinations,
            dns_names,
            ..AgentReport::default()
        };
    }
    for (agent, project, b) in buckets(&os.search("clawker-overseer", &lost)?) {
        let row = rows
            .entry((agent.clone(), project.clone()))
            .or_insert_with(|| AgentReport {
                agent,
                project,
                ..AgentReport::default()
            });
        row.records_lost = b["lost"]["value"].as_f64().unwrap_or(0.0) as u64;
    }
    Ok(rows.into_values().collect())
}

/// (agent, project, bucket) of the two-level terms aggregation.
fn buckets(resp: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for a in resp["aggregations"]["agent"]["buckets"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let agent = a["key"].as_str().unwrap_or(NONE).to_owned();
        for p in a["project"]["buckets"].as_array().into_iter().flatten() {
            let project = p["key"].as_str().unwrap_or(NONE).to_owned();
            out.push((agent.clone(), project, p.clone()));
        }
    }
    out
}

fn table(rows: &[AgentReport], window: &str) -> String {
    use std::fmt::Write as _;
    let mut out = format!("clawker-egress report, {window}\n");
    let _ = writeln!(
        out,
        "{:<24} {:<20} {:>8} {:>14} {:>14} {:>8} {:>8} {:>8} {:>8}",
        "AGENT", "PROJECT", "FLOWS", "BYTES_OUT", "BYTES_IN", "DENIED", "BYPASS", "DNS", "LOST"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<24} {:<20} {:>8} {:>14} {:>14} {:>8} {:>8} {:>8} {:>8}",
            r.agent,
            r.project,
            r.flows,
            r.bytes_out,
            r.bytes_in,
            r.denials,
            r.bypassed,
            r.dns_queries,
            r.records_lost
        );
        for d in &r.destinations {
            let _ = writeln!(
                out,
                "    -> {:<40} {:>8} flows {:>14} bytes out",
                d.destination, d.flows, d.bytes_out
            );
        }
        for n in &r.dns_names {
            let _ = writeln!(out, "    ?  {:<40} {:>8} queries", n.name, n.count);
        }
    }
    if rows.is_empty() {
        out.push_str("(no records in the window)\n");
    }
    out
}

fn csv(rows: &[AgentReport]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n', ';']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let mut out = String::from(
        "agent,project,flows,bytes_out,bytes_in,denials,bypassed,dns_queries,records_lost,top_destinations,top_dns_names\n",
    );
    for r in rows {
        let dests: Vec<String> = r
            .destinations
            .iter()
            .map(|d| format!("{}={}", d.destination, d.bytes_out))
            .collect();
        let names: Vec<String> = r
            .dns_names
            .iter()
            .map(|n| format!("{}={}", n.name, n.count))
            .collect();
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            field(&r.agent),
            field(&r.project),
            r.flows,
            r.bytes_out,
            r.bytes_in,
            r.denials,
            r.bypassed,
            r.dns_queries,
            r.records_lost,
            field(&dests.join(";")),
            field(&names.join(";")),
        ));
    }
    out
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (RFC 3339, e.g. 2026-11-30T08:00:00Z)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        let r = AgentReport {
            agent: "a,b".into(),
            project: "p\"q".into(),
            flows: 2,
            destinations: vec![Destination {
                destination: "x.example".into(),
                flows: 1,
                bytes_out: 5,
            }],
            ..AgentReport::default()
        };
        let text = csv(&[r]);
        assert!(
            text.ends_with("\"a,b\",\"p\"\"q\",2,0,0,0,0,0,0,x.example=5,\n"),
            "{text}"
        );
    }
}
