//! `policy suggest --from-opensearch`: the records of the window, read back
//! from the `clawker-egress` data stream as the distinct combinations of the
//! fields `suggest` decides on (a composite aggregation, paged, with each
//! combination's document count), turned into the daemon's flat record shape
//! so the very selection of the records-file path decides on them.

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use super::opensearch::{field, OpenSearch};
use crate::record::key;

/// The record keys `suggest` decides on (each an `attributes.*` field).
const FIELDS: &[&str] = &[
    key::SOURCE,
    key::AGENT,
    key::PROJECT,
    key::L7_PROTO,
    key::VERDICT,
    key::ENFORCED,
    key::L4_PROTO,
    key::DST_HOST,
    key::DST_IP,
    key::DST_PORT,
    // inbound records (listens, accepted connections) are no egress to allow
    key::DIRECTION,
];

/// Combinations per page.
const PAGE: usize = 1000;
/// Pages before giving up (10 million combinations).
const MAX_PAGES: usize = 10_000;

/// The query of one page: the window and labels as filters, the fields as
/// composite sources (a record without one is its own bucket).
pub fn query(
    since: &str,
    until: &str,
    agent: Option<&str>,
    project: Option<&str>,
    after: Option<&Value>,
) -> Value {
    let mut filter = vec![json!({ "range": { (key::TIMESTAMP): { "gte": since, "lte": until } } })];
    if let Some(a) = agent {
        filter.push(json!({ "term": { (field(key::AGENT)): a } }));
    }
    if let Some(p) = project {
        filter.push(json!({ "term": { (field(key::PROJECT)): p } }));
    }
    let sources: Vec<Value> = FIELDS
        .iter()
        .map(|k| json!({ *k: { "terms": { "field": field(k), "missing_bucket": true } } }))
        .collect();
    let mut composite = json!({ "size": PAGE, "sources": sources });
    if let Some(after) = after {
        composite["after"] = after.clone();
    }
    json!({ "size": 0, "track_total_hits": false,
        "query": { "bool": { "filter": filter } },
        "aggs": { "flows": { "composite": composite } } })
}

/// One bucket as a flat record (absent fields left out) and its count.
pub fn record(bucket: &Value) -> (Value, usize) {
    let mut r = Map::new();
    for k in FIELDS {
        let v = &bucket["key"][*k];
        let v = match (*k, v) {
            (_, Value::Null) => continue,
            // A boolean's terms key may come back as 1/0.
            (k, Value::Number(n)) if k == key::ENFORCED => Value::Bool(n.as_i64() != Some(0)),
            _ => v.clone(),
        };
        r.insert((*k).to_owned(), v);
    }
    let n = bucket["doc_count"].as_u64().unwrap_or(0);
    (Value::Object(r), usize::try_from(n).unwrap_or(usize::MAX))
}

/// Every combination in the window, paged.
pub fn fetch(
    os: &OpenSearch,
    since: &str,
    until: &str,
    agent: Option<&str>,
    project: Option<&str>,
) -> Result<Vec<(Value, usize)>> {
    let mut out = Vec::new();
    let mut after: Option<Value> = None;
    for _ in 0..MAX_PAGES {
        let resp = os.search(
            "clawker-egress",
            &query(since, until, agent, project, after.as_ref()),
        )?;
        let agg = &resp["aggregations"]["flows"];
        let buckets = agg["buckets"].as_array().cloned().unwrap_or_default();
        out.extend(buckets.iter().map(record));
        match agg.get("after_key") {
            Some(k) if !buckets.is_empty() => after = Some(k.clone()),
            _ => return Ok(out),
        }
    }
    bail!(
        "more than {} combinations in the window: narrow it",
        PAGE * MAX_PAGES
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::suggest::{observe_records, Selection};

    #[test]
    fn buckets_become_the_records_suggest_decides_on() {
        let b = json!({ "key": { "clawker.source": "egress", "agent": "a", "project": "p",
            "l7_proto": null, "verdict": "DENIED", "enforced": 0, "l4_proto": "tcp",
            "dst_host": "x.example", "dst_ip": "10.0.0.1", "dst_port": 8443 }, "doc_count": 7 });
        let (r, n) = record(&b);
        assert_eq!(n, 7);
        assert_eq!(r["enforced"], false);
        assert!(r.get("l7_proto").is_none());
        let dns = json!({ "key": { "clawker.source": "egress", "l7_proto": "dns",
            "l4_proto": "udp", "dst_ip": "10.0.0.53", "dst_port": 53 }, "doc_count": 3 });
        let (seen, tally) = observe_records([record(&b), record(&dns)], &Selection::default());
        // An audit-mode denial flowed: it is allowed; DNS exchanges are not flows.
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].host.as_deref(), Some("x.example"));
        assert_eq!((tally.lines, tally.used, tally.not_a_flow), (10, 7, 3));
        let q = query("a", "b", Some("x"), None, Some(&json!({ "agent": "x" })));
        assert_eq!(q["aggs"]["flows"]["composite"]["after"]["agent"], "x");
        assert_eq!(
            q["aggs"]["flows"]["composite"]["sources"]
                .as_array()
                .unwrap()
                .len(),
            FIELDS.len()
        );
    }
}
