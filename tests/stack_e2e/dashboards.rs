//! The OpenSearch Dashboards saved objects (opensearch/dashboards/
//! clawker.ndjson) checked without Dashboards, which cannot run here:
//!
//! - every field a visualization, saved search or index pattern uses
//!   exists in the indices its index pattern covers, with a type that
//!   does what the object asks of it (terms on an aggregatable field, sums
//!   on numbers, date histograms on dates, no type conflict across the
//!   covered data streams). Unit tests check this against the shipped
//!   templates (and that a deliberately wrong fixture fails); the stack test
//!   against the REAL mapping, read back from OpenSearch after the real
//!   daemon's records arrived (dynamic fields included);
//! - every alert in prometheus/rules.yml has one saved search named after
//!   it, and the stack test runs each saved search's query (DQL or Lucene,
//!   translated to `query_string`, plus its filters) on real data and finds
//!   the records of the situation the alert is about;
//! - `policy suggest --from-opensearch` gives the same policy as
//!   `policy suggest --records` over the same records, and `policy explain`
//!   allows every flow it was made from.

use super::*;

// ------------------------------------------------------------ the objects

pub(crate) fn saved_objects(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("ndjson line"))
        .collect()
}

fn shipped() -> Vec<Value> {
    saved_objects(&repo().join("opensearch/dashboards/clawker.ndjson"))
}

/// index (data stream) name -> dotted field path -> mapping type.
pub(crate) type Mappings = BTreeMap<String, BTreeMap<String, String>>;

fn flatten(props: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (k, v) in props.as_object().into_iter().flatten() {
        let path = format!("{prefix}{k}");
        if let Some(t) = v["type"].as_str() {
            out.insert(path.clone(), t.to_owned());
            for (sub, m) in v["fields"].as_object().into_iter().flatten() {
                if let Some(st) = m["type"].as_str() {
                    out.insert(format!("{path}.{sub}"), st.to_owned());
                }
            }
        }
        if v["properties"].is_object() {
            flatten(&v["properties"], &format!("{path}."), out);
        }
    }
}

/// `GET clawker-*/_mapping`: backing indices `.ds-<stream>-000001` folded
/// into their data stream.
pub(crate) fn real_mappings(os: &str) -> Mappings {
    let v = get_json(&format!("{os}/clawker-*/_mapping?expand_wildcards=all"));
    let mut out = Mappings::new();
    for (index, m) in v.as_object().unwrap() {
        let stream = index
            .strip_prefix(".ds-")
            .and_then(|s| s.rsplit_once('-').map(|(name, _)| name))
            .unwrap_or(index)
            .to_owned();
        flatten(
            &m["mappings"]["properties"],
            "",
            out.entry(stream).or_default(),
        );
    }
    out
}

/// What the shipped templates map explicitly (no dynamic field: a field a
/// dashboard uses must be declared).
pub(crate) fn template_mappings() -> Mappings {
    let read = |p: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(repo().join(p)).unwrap()).unwrap()
    };
    let base = read("opensearch/component-templates/clawker-base.json");
    let mut out = Mappings::new();
    for s in SOURCES {
        let t = read(&format!("opensearch/index-templates/clawker-{s}.json"));
        let fields = out.entry(format!("clawker-{s}")).or_default();
        flatten(&base["template"]["mappings"]["properties"], "", fields);
        flatten(&t["template"]["mappings"]["properties"], "", fields);
    }
    out
}

/// How an object uses a field.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Use {
    /// A bucket or control over its values: keyword, number, date, ip, boolean.
    Terms,
    /// sum / avg: a number.
    Numeric,
    /// min / max: a number or a date.
    Ordered,
    /// date_histogram, the time field: a date.
    Date,
    /// Sorted on: aggregatable.
    Sort,
    /// Named in the query or a filter: must exist, one type.
    Query,
    /// A column shown: must exist.
    Column,
}

const AGGREGATABLE: &[&str] = &[
    "keyword",
    "long",
    "integer",
    "short",
    "byte",
    "double",
    "float",
    "half_float",
    "scaled_float",
    "unsigned_long",
    "date",
    "date_nanos",
    "ip",
    "boolean",
];
const NUMERIC: &[&str] = &[
    "long",
    "integer",
    "short",
    "byte",
    "double",
    "float",
    "half_float",
    "scaled_float",
    "unsigned_long",
];

fn fits(u: Use, t: &str) -> bool {
    match u {
        Use::Terms | Use::Sort => AGGREGATABLE.contains(&t),
        Use::Numeric => NUMERIC.contains(&t),
        Use::Ordered => NUMERIC.contains(&t) || t.starts_with("date"),
        Use::Date => t.starts_with("date"),
        Use::Query | Use::Column => true,
    }
}

/// A DQL/Lucene index-pattern title (`clawker-*`, `a*,b*`) against a
/// data stream name.
fn covers(title: &str, stream: &str) -> bool {
    title.split(',').any(|p| {
        let p = p.trim();
        match p.strip_suffix('*') {
            Some(prefix) => stream.starts_with(prefix),
            None => stream == p,
        }
    })
}

/// Field names a query string refers to (`name:` and DQL `name >`).
fn query_fields(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = q.as_bytes();
    let mut i = 0;
    let mut in_regex = false;
    while i < b.len() {
        let c = b[i] as char;
        if c == '/' && (i == 0 || b[i - 1] != b'\\') {
            in_regex = !in_regex;
        }
        if !in_regex && (c.is_ascii_alphabetic() || c == '@' || c == '_') {
            let start = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b"._@".contains(&b[i]))
            {
                i += 1;
            }
            let word = &q[start..i];
            let rest = q[i..].trim_start();
            let is_field = rest.starts_with(':') || rest.starts_with('<') || rest.starts_with('>');
            let before = q[..start].trim_end();
            let in_value = before.ends_with(':');
            if is_field && !in_value && word.contains('.') || is_field && word == "body" {
                out.push(word.to_owned());
            }
            continue;
        }
        i += 1;
    }
    out
}

fn search_source(o: &Value) -> Value {
    o["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"]
        .as_str()
        .map(|s| serde_json::from_str(s).expect("searchSourceJSON"))
        .unwrap_or(Value::Null)
}

/// The index-pattern object `o`'s reference `name` points at.
fn pattern_of<'a>(objs: &'a [Value], o: &Value, name: &str) -> Option<&'a Value> {
    let r = o["references"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)?;
    objs.iter()
        .find(|p| p["type"] == "index-pattern" && p["id"] == r["id"])
}

/// (object id, index pattern title, field, use) of every field use.
fn field_uses(objs: &[Value]) -> Vec<(String, String, String, Use)> {
    let mut out = Vec::new();
    for o in objs {
        let id = o["id"].as_str().unwrap_or_default().to_owned();
        let a = &o["attributes"];
        let main = pattern_of(objs, o, "kibanaSavedObjectMeta.searchSourceJSON.index")
            .and_then(|p| p["attributes"]["title"].as_str())
            .unwrap_or_default()
            .to_owned();
        let mut add = |title: &str, f: &str, u: Use| {
            out.push((id.clone(), title.to_owned(), f.to_owned(), u));
        };
        let ss = search_source(o);
        if let Some(q) = ss["query"]["query"].as_str() {
            for f in query_fields(q) {
                add(&main, &f, Use::Query);
            }
        }
        for f in ss["filter"].as_array().into_iter().flatten() {
            if let Some(k) = f["meta"]["key"].as_str() {
                add(&main, k, Use::Query);
            }
        }
        match o["type"].as_str() {
            Some("index-pattern") => {
                let title = a["title"].as_str().unwrap_or_default();
                if let Some(t) = a["timeFieldName"].as_str() {
                    add(title, t, Use::Date);
                }
                if let Some(m) = a["fieldFormatMap"].as_str() {
                    let m: Value = serde_json::from_str(m).expect("fieldFormatMap");
                    for (f, fmt) in m.as_object().unwrap() {
                        let u = if fmt["id"] == "bytes" || fmt["id"] == "number" {
                            Use::Numeric
                        } else {
                            Use::Column
                        };
                        add(title, f, u);
                    }
                }
                if let Some(fields) = a["fields"].as_str() {
                    let fields: Value = serde_json::from_str(fields).expect("fields");
                    for f in fields.as_array().unwrap() {
                        let u = if f["aggregatable"] == true {
                            Use::Terms
                        } else {
                            Use::Column
                        };
                        add(title, f["name"].as_str().unwrap_or_default(), u);
                    }
                }
            }
            Some("search") => {
                for c in a["columns"].as_array().into_iter().flatten() {
                    add(&main, c.as_str().unwrap_or_default(), Use::Column);
                }
                for s in a["sort"].as_array().into_iter().flatten() {
                    add(&main, s[0].as_str().unwrap_or_default(), Use::Sort);
                }
            }
            Some("visualization") => {
                let vis: Value =
                    serde_json::from_str(a["visState"].as_str().unwrap_or("{}")).expect("visState");
                for agg in vis["aggs"].as_array().into_iter().flatten() {
                    let Some(f) = agg["params"]["field"].as_str() else {
                        continue;
                    };
                    let u = match agg["type"].as_str().unwrap_or_default() {
                        "terms" | "significant_terms" | "cardinality" | "histogram" => Use::Terms,
                        "sum" | "avg" | "median" | "percentiles" => Use::Numeric,
                        "min" | "max" => Use::Ordered,
                        "date_histogram" | "date_range" => Use::Date,
                        _ => Use::Terms,
                    };
                    add(&main, f, u);
                }
                for (i, c) in vis["params"]["controls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let ref_name = c["indexPatternRefName"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or(format!("control_{i}_index_pattern"));
                    let title = pattern_of(objs, o, &ref_name)
                        .and_then(|p| p["attributes"]["title"].as_str())
                        .unwrap_or_default();
                    add(
                        title,
                        c["fieldName"].as_str().unwrap_or_default(),
                        Use::Terms,
                    );
                }
            }
            _ => {}
        }
    }
    out
}

/// Every problem: a field missing from all indices the pattern covers, a
/// field whose type differs between them, a type that cannot do what the
/// object asks of it. Columns may differ in type (shown, not computed).
pub(crate) fn field_problems(objs: &[Value], mappings: &Mappings) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, title, field, u) in field_uses(objs) {
        if title.is_empty() {
            problems.push(format!("{id}: {field}: no index pattern"));
            continue;
        }
        let types: BTreeMap<&str, &str> = mappings
            .iter()
            .filter(|(s, _)| covers(&title, s))
            .filter_map(|(s, m)| m.get(&field).map(|t| (s.as_str(), t.as_str())))
            .collect();
        if types.is_empty() {
            problems.push(format!("{id}: {field} ({u:?}) is in no index of {title}"));
            continue;
        }
        let distinct: std::collections::BTreeSet<&str> = types.values().copied().collect();
        if distinct.len() > 1 && u != Use::Column {
            problems.push(format!(
                "{id}: {field} ({u:?}) has conflicting types in {title}: {types:?}"
            ));
            continue;
        }
        for t in distinct {
            if !fits(u, t) {
                problems.push(format!(
                    "{id}: {field} is {t}, which a {u:?} use cannot take ({title})"
                ));
            }
        }
    }
    problems
}

/// Alert names in prometheus/rules.yml.
fn alert_names() -> Vec<String> {
    std::fs::read_to_string(repo().join("prometheus/rules.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

// ------------------------------------------------------------ the queries

/// A DQL query as `query_string` syntax: the subset the shipped searches
/// use (`field:value`, `field:(a or b)`, wildcards, `and`/`or`/`not`,
/// parentheses, `field > n`). Anything else is refused, never guessed.
pub(crate) fn dql_to_query_string(q: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match word.to_ascii_lowercase().as_str() {
            "and" => out.push_str("AND"),
            "or" => out.push_str("OR"),
            "not" => out.push_str("NOT"),
            _ => out.push_str(word),
        }
        word.clear();
    };
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                flush(&mut word, &mut out);
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '"' {
                        break;
                    }
                }
            }
            '>' | '<' => {
                // `field > 5` -> `field:>5`
                flush(&mut word, &mut out);
                while out.ends_with(' ') {
                    out.pop();
                }
                out.push(':');
                out.push(c);
                if chars.peek() == Some(&'=') {
                    out.push('=');
                    chars.next();
                }
                while chars.peek() == Some(&' ') {
                    chars.next();
                }
            }
            ' ' | '(' | ')' | ':' => {
                flush(&mut word, &mut out);
                out.push(c);
            }
            '{' | '}' | '[' | ']' | '/' | '~' | '^' | '!' => {
                panic!("DQL {q:?}: {c:?} is outside the subset the test translates")
            }
            _ => word.push(c),
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A saved search as an OpenSearch search body over `[since, now]`.
pub(crate) fn search_body(o: &Value, since: &str) -> Value {
    let ss = search_source(o);
    let q = ss["query"]["query"].as_str().unwrap_or_default();
    let qs = match ss["query"]["language"].as_str() {
        Some("kuery") => dql_to_query_string(q),
        Some("lucene") => q.to_owned(),
        other => panic!("{}: query language {other:?}", o["id"]),
    };
    let mut must = vec![];
    if !qs.trim().is_empty() {
        must.push(json!({ "query_string": { "query": qs, "analyze_wildcard": true } }));
    }
    let mut filter = vec![json!({ "range": { "@timestamp": { "gte": since } } })];
    let mut must_not = vec![];
    for f in ss["filter"].as_array().into_iter().flatten() {
        if f["meta"]["disabled"] == true {
            continue;
        }
        let mut q = f.clone();
        q.as_object_mut().unwrap().remove("meta");
        q.as_object_mut().unwrap().remove("$state");
        if f["meta"]["negate"] == true {
            must_not.push(q);
        } else {
            filter.push(q);
        }
    }
    let sort: Vec<Value> = o["attributes"]["sort"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| json!({ s[0].as_str().unwrap(): { "order": s[1] } }))
        .collect();
    json!({ "size": 500, "query": { "bool": { "must": must, "filter": filter, "must_not": must_not } },
            "sort": sort })
}

/// A visualization's aggregations as OpenSearch DSL, the way Dashboards
/// builds them: bucket aggregations nested in their order, every metric
/// at every level (so a terms aggregation can be ordered by one), over the
/// object's query plus `extra` filters (what a dashboard control adds).
pub(crate) fn vis_body(o: &Value, since: &str, extra: &[Value]) -> Value {
    let mut body = search_body(o, since);
    for f in extra {
        body["query"]["bool"]["filter"]
            .as_array_mut()
            .unwrap()
            .push(f.clone());
    }
    let vis: Value = serde_json::from_str(o["attributes"]["visState"].as_str().unwrap()).unwrap();
    let aggs: Vec<&Value> = vis["aggs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["enabled"] != false)
        .collect();
    let metric_type = |id: &str| {
        aggs.iter()
            .find(|a| a["id"] == id)
            .and_then(|a| a["type"].as_str())
            .unwrap_or("count")
            .to_owned()
    };
    let mut metrics = serde_json::Map::new();
    for m in aggs
        .iter()
        .filter(|a| a["schema"] == "metric" && a["type"] != "count")
    {
        let t = m["type"].as_str().unwrap();
        metrics.insert(
            m["id"].as_str().unwrap().to_owned(),
            json!({ t: { "field": m["params"]["field"] } }),
        );
    }
    let mut inner = Value::Object(metrics.clone());
    for b in aggs.iter().rev().filter(|a| a["schema"] != "metric") {
        let p = &b["params"];
        let dsl = match b["type"].as_str().unwrap() {
            "terms" => {
                let by = p["orderBy"].as_str().unwrap_or("_count");
                let key = if metric_type(by) == "count" {
                    "_count"
                } else {
                    by
                };
                let mut t = json!({ "field": p["field"], "size": p["size"],
                    "order": { key: p["order"].as_str().unwrap_or("desc") } });
                if p["missingBucket"] == true {
                    t["missing"] = json!("__missing__");
                }
                json!({ "terms": t })
            }
            "date_histogram" => {
                json!({ "date_histogram": { "field": p["field"], "fixed_interval": "30s",
                    "min_doc_count": p["min_doc_count"] } })
            }
            other => panic!("{}: bucket aggregation {other} not translated", o["id"]),
        };
        let mut level = dsl;
        let mut sub = Value::Object(metrics.clone());
        if let Value::Object(m) = &inner {
            for (k, v) in m {
                sub[k] = v.clone();
            }
        }
        level["aggs"] = sub;
        inner = json!({ b["id"].as_str().unwrap(): level });
    }
    body["size"] = json!(0);
    body["aggs"] = inner;
    body.as_object_mut().unwrap().remove("sort");
    body
}

/// The leaf rows of a visualization's answer: the bucket keys from the
/// top down, and the metrics (`_count` for the document count).
fn vis_rows(resp: &Value, vis_aggs: &[String]) -> Vec<(Vec<String>, BTreeMap<String, f64>)> {
    fn walk(
        node: &Value,
        ids: &[String],
        keys: Vec<String>,
        out: &mut Vec<(Vec<String>, BTreeMap<String, f64>)>,
    ) {
        match ids.split_first() {
            Some((id, rest)) => {
                for b in node[id]["buckets"].as_array().into_iter().flatten() {
                    let k = b["key_as_string"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| match &b["key"] {
                            Value::String(s) => s.clone(),
                            v => v.to_string(),
                        });
                    let mut keys = keys.clone();
                    keys.push(k);
                    walk(b, rest, keys, out);
                }
            }
            None => {
                let mut m = BTreeMap::new();
                m.insert(
                    "_count".to_owned(),
                    node["doc_count"].as_f64().unwrap_or(0.0),
                );
                for (k, v) in node.as_object().into_iter().flatten() {
                    if let Some(x) = v["value"].as_f64() {
                        m.insert(k.clone(), x);
                    }
                }
                out.push((keys, m));
            }
        }
    }
    let mut out = Vec::new();
    walk(&resp["aggregations"], vis_aggs, vec![], &mut out);
    out
}

/// Run a visualization: its rows.
fn run_vis(
    os: &str,
    objs: &[Value],
    o: &Value,
    since: &str,
    extra: &[Value],
) -> Vec<(Vec<String>, BTreeMap<String, f64>)> {
    let title = pattern_of(objs, o, "kibanaSavedObjectMeta.searchSourceJSON.index")
        .and_then(|p| p["attributes"]["title"].as_str())
        .unwrap()
        .to_owned();
    let body = vis_body(o, since, extra);
    let (s, v) = http(
        "POST",
        &format!("{os}/{title}/_search?expand_wildcards=all&ignore_unavailable=true"),
        Some(&body),
    );
    assert_eq!(s, 200, "{}: {body}\n{v}", o["id"]);
    let vis: Value = serde_json::from_str(o["attributes"]["visState"].as_str().unwrap()).unwrap();
    let ids: Vec<String> = vis["aggs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["schema"] != "metric" && a["enabled"] != false)
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    vis_rows(&v, &ids)
}

/// Run a saved search: its hits' `_source`s, in its order.
fn run_search(os: &str, objs: &[Value], o: &Value, since: &str) -> Vec<Value> {
    let title = pattern_of(objs, o, "kibanaSavedObjectMeta.searchSourceJSON.index")
        .and_then(|p| p["attributes"]["title"].as_str())
        .unwrap()
        .to_owned();
    let body = search_body(o, since);
    let (s, v) = http(
        "POST",
        &format!("{os}/{title}/_search?expand_wildcards=all&ignore_unavailable=true"),
        Some(&body),
    );
    assert_eq!(s, 200, "{}: {body}\n{v}", o["id"]);
    v["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["_source"].clone())
        .collect()
}

// ------------------------------------------------------------ unit tests

#[test]
fn dashboards_use_only_fields_the_templates_map_with_the_right_type() {
    let objs = shipped();
    let problems = field_problems(&objs, &template_mappings());
    assert!(problems.is_empty(), "{problems:#?}");
    // The check saw the objects' fields (not an empty walk).
    let uses = field_uses(&objs);
    assert!(uses.len() > 200, "{} uses", uses.len());
    for kind in [
        Use::Terms,
        Use::Numeric,
        Use::Ordered,
        Use::Date,
        Use::Sort,
        Use::Query,
        Use::Column,
    ] {
        assert!(uses.iter().any(|u| u.3 == kind), "no {kind:?} use");
    }
    // Every reference resolves (the shipped file, all objects).
    for o in &objs {
        for r in o["references"].as_array().unwrap() {
            assert!(
                objs.iter()
                    .any(|x| x["type"] == r["type"] && x["id"] == r["id"]),
                "{}: {r}",
                o["id"]
            );
        }
    }
}

#[test]
fn a_panel_on_a_wrong_field_is_refused() {
    let objs = saved_objects(&repo().join("tests/fixtures/dashboards/bad-fields.ndjson"));
    let problems = field_problems(&objs, &template_mappings());
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    // A field no template maps, a sum over a keyword, terms over text, a
    // date histogram over a number, a column that does not exist, a query
    // on a missing field, a control on a missing field.
    assert!(
        has("attributes.dst_hostname (Terms) is in no index"),
        "{problems:#?}"
    );
    assert!(
        has("attributes.dst_host is keyword, which a Numeric"),
        "{problems:#?}"
    );
    assert!(has("body is text, which a Terms"), "{problems:#?}");
    assert!(
        has("attributes.bytes_out is long, which a Date"),
        "{problems:#?}"
    );
    assert!(has("attributes.no_such_column (Column)"), "{problems:#?}");
    assert!(has("attributes.verdicts (Query)"), "{problems:#?}");
    assert!(has("attributes.agent_name (Terms)"), "{problems:#?}");
    // The same objects with the fields right pass: the check is about the
    // fields, not the fixture's shape.
    let good = saved_objects(&repo().join("tests/fixtures/dashboards/good-fields.ndjson"));
    let left = field_problems(&good, &template_mappings());
    assert!(left.is_empty(), "{left:#?}");
}

#[test]
fn every_alert_has_a_saved_search_named_after_it() {
    let objs = shipped();
    let alerts = alert_names();
    assert!(alerts.len() >= 15, "{alerts:?}");
    for a in &alerts {
        let found: Vec<&Value> = objs
            .iter()
            .filter(|o| {
                o["type"] == "search"
                    && o["attributes"]["title"]
                        .as_str()
                        .is_some_and(|t| t.starts_with(&format!("{a}: ")))
            })
            .collect();
        assert_eq!(found.len(), 1, "{a}: {found:?}");
        assert_eq!(found[0]["id"], format!("clawker-alert-{a}"));
        // Its query translates (DQL subset) or is Lucene.
        search_body(found[0], "now-1h");
    }
    // And no saved search names an alert that does not exist.
    for o in objs.iter().filter(|o| {
        o["id"]
            .as_str()
            .is_some_and(|i| i.starts_with("clawker-alert-"))
    }) {
        let name = o["id"]
            .as_str()
            .unwrap()
            .trim_start_matches("clawker-alert-");
        assert!(alerts.iter().any(|a| a == name), "{}", o["id"]);
    }
}

#[test]
fn the_investigation_dashboard_has_its_panels_and_the_agent_project_controls() {
    let objs = shipped();
    let dash = objs
        .iter()
        .find(|o| o["type"] == "dashboard" && o["id"] == "clawker-investigation")
        .expect("clawker-investigation");
    let refs: Vec<&str> = dash["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    for want in [
        "clawker-controls",
        "clawker-inv-bytes-by-host",
        "clawker-inv-denied-attempts",
        "clawker-inv-first-seen",
        "clawker-inv-dns-names",
        "clawker-inv-policy-timeline",
        "clawker-inv-policy-events",
        "clawker-inv-lost-records",
    ] {
        assert!(
            refs.contains(&want),
            "{want} not on the dashboard: {refs:?}"
        );
    }
    let panels: Value =
        serde_json::from_str(dash["attributes"]["panelsJSON"].as_str().unwrap()).unwrap();
    assert_eq!(panels.as_array().unwrap().len(), refs.len());
    // Drill-down: every table's first bucket is the agent.
    for o in objs.iter().filter(|o| {
        o["type"] == "visualization" && o["id"].as_str().unwrap().starts_with("clawker-inv-")
    }) {
        let vis: Value =
            serde_json::from_str(o["attributes"]["visState"].as_str().unwrap()).unwrap();
        let first = vis["aggs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["schema"] == "bucket" || a["schema"] == "group")
            .expect("a bucket");
        if vis["type"] == "table" {
            assert_eq!(first["params"]["field"], "attributes.agent", "{}", o["id"]);
        }
    }
}

#[test]
fn dql_translation_keeps_the_meaning() {
    assert_eq!(
        dql_to_query_string("a.b:x and not c.d:dns or e.f:(A or B)"),
        "a.b:x AND NOT c.d:dns OR e.f:(A OR B)"
    );
    assert_eq!(
        dql_to_query_string("attributes.bytes_out > 0 and x.y:bypass_*"),
        "attributes.bytes_out:>0 AND x.y:bypass_*"
    );
    assert_eq!(
        query_fields("attributes.qname:/(.*\\.)?[^.]{51,}/ AND x.y:a.b OR body:hi"),
        ["attributes.qname", "x.y", "body"]
    );
}

// ------------------------------------------------------------ the stack test

/// `clawker-egress policy suggest` with `args`, writing `out`.
fn suggest(args: &[&str], out: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_clawker-egress"))
        .args(["policy", "suggest", "--out"])
        .arg(out)
        .args(args)
        .output()
        .expect("run policy suggest");
    assert!(
        o.status.success(),
        "policy suggest {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read_to_string(out).unwrap()
}

/// The policy without its header comment.
fn body(yaml: &str) -> String {
    yaml.lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `policy explain` of one OpenSearch egress record's destination.
fn explain(file: &Path, project: &str, a: &Value) -> String {
    let ip = a["dst_ip"].as_str().unwrap();
    let host = a["dst_host"].as_str().unwrap_or("");
    let port = a["dst_port"].as_u64().unwrap_or(0);
    let dst = match (host, ip.contains(':')) {
        ("", true) => format!("[{ip}]:{port}"),
        ("", false) => format!("{ip}:{port}"),
        (h, _) => format!("{h}:{port}"),
    };
    let mut c = Command::new(env!("CARGO_BIN_EXE_clawker-egress"));
    c.args(["policy", "explain", "--file"])
        .arg(file)
        .args(["--project", project, "--dst", &dst, "--proto"])
        .arg(a["l4_proto"].as_str().unwrap());
    if !host.is_empty() {
        c.args(["--ip", ip]);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn bypass(pin_root: &Path, cgroup: &Path, extra: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_clawker-egress"))
        .arg("bypass")
        .arg("--pin-root")
        .arg(pin_root)
        .arg("--cgroup")
        .arg(cgroup)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bypass {extra:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Labelled containers do what each alert is about, through the real daemon
/// (host root, an enforced policy, a small per-container record budget),
/// the shipped collector config and a real OpenSearch: then the saved
/// objects are checked against the mapping OpenSearch made, each alert's
/// saved search finds its situation, and `policy suggest --from-opensearch`
/// matches `policy suggest --records` over the daemon's own output.
#[test]
fn stack_dashboards_and_suggest_on_real_records() {
    let test = "stack_dashboards_and_suggest_on_real_records";
    if !preconditions(
        test,
        true,
        &["go", "java", "python3", "curl", "docker", "dnsmasq"],
    ) {
        return;
    }
    let _engine = support::docker::engine();
    // Not Stack::new (see alerts.rs): other test processes reap its prefix.
    let mut stack = Stack::unreaped("dash");
    let since = humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(5)).to_string();
    let os = start_opensearch(
        &mut stack,
        port("CLAWKER_STACK_DASH_OPENSEARCH_PORT", 19230),
    );
    let (ok, lines, err) = bootstrap(&os);
    assert!(ok, "bootstrap: {lines:?} {err}");
    let ports = CollectorPorts {
        grpc: port("CLAWKER_STACK_DASH_OTLP_GRPC_PORT", 14357),
        http: port("CLAWKER_STACK_DASH_OTLP_HTTP_PORT", 14358),
        telemetry: port("CLAWKER_STACK_DASH_TELEMETRY_PORT", 18928),
        exporter: port("CLAWKER_STACK_DASH_EXPORTER_PORT", 18929),
        health: port("CLAWKER_STACK_DASH_HEALTH_PORT", 13173),
        daemon_http: port("CLAWKER_STACK_DASH_OTLP_DAEMON_HTTP_PORT", 14359),
    };
    start_collector(&mut stack, "collector-d", &ports, &os, &[], &[]);
    let door = DaemonDoor::new(&stack, &ports);

    let run = unique();
    let (agent, bypassed, flooder, project) = (
        format!("dash-a-{run}"),
        format!("dash-b-{run}"),
        format!("dash-c-{run}"),
        format!("dash-p-{run}"),
    );
    let three = support::TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    const UPLOAD: usize = 256 * 1024;
    let upload = support::TcpServer::spawn("127.0.0.1:0", Some(UPLOAD), 0);
    let guarded = support::TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    let closed = support::free_port();
    let policy_file = stack.path("policy.yaml");
    let policy = |mode: &str| {
        format!(
            "mode: {mode}\ndefault:\n  default_action: allow\nprojects:\n  {project}:\n    \
             default_action: allow\n    rules:\n      - {{dst: 127.0.0.1, proto: tcp, port: \"{}\", action: deny}}\n",
            guarded.port
        )
    };
    std::fs::write(&policy_file, policy("enforce")).unwrap();
    let opts = support::DaemonOptions::host_root()
        .policy(&policy_file)
        .arg("--container-record-rate")
        .arg("20")
        .arg("--container-record-burst")
        .arg("300")
        .arg("--loss-report-interval")
        .arg("1s");
    let pin_root = opts.pin_root.clone();
    // Records to the collector and, for `suggest --records`, to stdout.
    let daemon = support::Daemon::start(
        door.daemon_flags(opts.arg("--output").arg("stdout,otlp"))
            .arg("--otlp-compression")
            .arg("gzip"),
    );
    support::docker::wait_attribution_ready(&daemon);

    // A DNS server on a loopback address of this test's own.
    let dns_ip = format!(
        "127.0.{}.53",
        (port("CLAWKER_STACK_DASH_DNS", 0) / 100) % 250 + 1
    );
    let _dns = support::DnsServer::dnsmasq(
        &dns_ip,
        &[("pkg.dash.test".to_string(), "127.0.0.1".parse().unwrap())],
        60,
    );
    let long_label = "x".repeat(55);
    let encoded = "k7f3q9z2m4n8p1r6t5v0w2y4";
    let tunnel_long = format!("{long_label}.t.dash.test");
    let tunnel_encoded = format!("{encoded}.c2.dash.test");

    // Agent a: two small flows, an upload, a denied attempt, DNS.
    let a = support::docker::Spec::new(
        "ce-dash-a",
        format!(
            "sleep 0.3; echo hi | nc -w 2 127.0.0.1 {three}; echo hi | nc -w 2 127.0.0.1 {three}; \
             head -c {UPLOAD} /dev/zero | nc -w 5 127.0.0.1 {up}; \
             echo hi | nc -w 2 127.0.0.1 {deny}; \
             nslookup pkg.dash.test {dns_ip} >/dev/null 2>&1; \
             nslookup {tunnel_long} {dns_ip} >/dev/null 2>&1; \
             nslookup {tunnel_encoded} {dns_ip} >/dev/null 2>&1; true",
            three = three.port,
            up = upload.port,
            deny = guarded.port,
        ),
    )
    .label(AGENT_LABEL, &agent)
    .label(PROJECT_LABEL, &project)
    .run();
    assert_eq!(a.wait(), 0);
    a.remove();

    // Agent b: the guarded port, under a bypass.
    let b = support::docker::Spec::new(
        "ce-dash-b",
        format!("sleep 3; echo hi | nc -w 2 127.0.0.1 {}", guarded.port),
    )
    .label(AGENT_LABEL, &bypassed)
    .label(PROJECT_LABEL, &project)
    .run();
    let b_cgroup = b.cgroup_dir(&support::cgroup2_root());
    bypass(
        &pin_root,
        &b_cgroup,
        &["--for", "10m", "--reason", "dash test"],
    );
    assert_eq!(b.wait(), 0, "the bypassed connect failed");
    // (The container is gone: the stop record names its cgroup.)
    let _ = Command::new(env!("CARGO_BIN_EXE_clawker-egress"))
        .arg("bypass")
        .arg("--pin-root")
        .arg(&pin_root)
        .arg("--cgroup")
        .arg(&b_cgroup)
        .arg("--off")
        .output();
    b.remove();

    // Agent c floods a closed port past its record budget.
    let c = support::docker::Spec::new(
        "ce-dash-c",
        format!(
            "sleep 0.3; for i in $(seq 400); do nc -w 1 127.0.0.1 {closed} </dev/null 2>/dev/null; done; true"
        ),
    )
    .label(AGENT_LABEL, &flooder)
    .label(PROJECT_LABEL, &project)
    .run();
    assert_eq!(c.wait(), 0);
    c.remove();

    // Enforcement off: the policy reloaded in audit mode; agent a again
    // reaches the guarded port (denied, not enforced).
    support::write_atomic(&policy_file, &policy("audit"));
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    wait_until(
        "policy_loaded in the daemon's output",
        Duration::from_secs(20),
        || {
            daemon
                .records()
                .iter()
                .any(|r| r["event"] == "policy_loaded")
                .then_some(())
        },
    );
    let d = support::docker::Spec::new(
        "ce-dash-d",
        format!("sleep 0.3; echo hi | nc -w 2 127.0.0.1 {}", guarded.port),
    )
    .label(AGENT_LABEL, &agent)
    .label(PROJECT_LABEL, &project)
    .run();
    assert_eq!(d.wait(), 0, "audit mode let the connect through");
    d.remove();

    // Everything arrived in OpenSearch.
    let egress_of = |who: &str| search(&os, "clawker-egress", term("attributes.agent", who));
    let overseer = |event: &str| search(&os, "clawker-overseer", term("attributes.event", event));
    wait_until(
        "the scenario's records in OpenSearch",
        Duration::from_secs(120),
        || {
            let a = egress_of(&agent);
            let has = |f: &dyn Fn(&Value) -> bool| a.iter().any(|h| f(&h["_source"]["attributes"]));
            let ok = has(&|x| x["bytes_out"] == UPLOAD as u64)
                && has(&|x| x["verdict"] == "DENIED" && x["enforced"] != false)
                && has(&|x| x["verdict"] == "DENIED" && x["enforced"] == false)
                && has(&|x| x["qname"].as_str().is_some_and(|q| q.contains(encoded)))
                && has(&|x| x["qname"].as_str().is_some_and(|q| q.contains(&long_label)))
                && egress_of(&bypassed)
                    .iter()
                    .any(|h| h["_source"]["attributes"]["verdict"] == "BYPASSED")
                && !overseer("bypass_start").is_empty()
                && !overseer("policy_loaded").is_empty()
                && overseer("records_lost")
                    .iter()
                    .any(|h| h["_source"]["attributes"]["agent"] == flooder.as_str());
            ok.then_some(())
        },
    );

    // (a) The saved objects against the mapping OpenSearch made.
    let objs = shipped();
    let mappings = real_mappings(&os);
    for s in ["clawker-egress", "clawker-overseer", "clawker-cp"] {
        assert!(mappings.contains_key(s), "{s} not in {:?}", mappings.keys());
    }
    let problems = field_problems(&objs, &mappings);
    assert!(
        problems.is_empty(),
        "against the real mapping: {problems:#?}"
    );
    // The deliberately wrong fixture fails against it too.
    let bad = saved_objects(&repo().join("tests/fixtures/dashboards/bad-fields.ndjson"));
    assert!(field_problems(&bad, &mappings).len() >= 7);

    // (b) Each alert's saved search finds its situation.
    let attrs =
        |hits: &[Value]| -> Vec<Value> { hits.iter().map(|h| h["attributes"].clone()).collect() };
    let mine = |x: &Value| {
        [&agent, &bypassed, &flooder]
            .iter()
            .any(|a| x["agent"] == a.as_str())
    };
    for name in alert_names() {
        let o = objs
            .iter()
            .find(|o| o["id"] == format!("clawker-alert-{name}"))
            .unwrap();
        let hits = run_search(&os, &objs, o, &since);
        let found = attrs(&hits);
        let any = |f: &dyn Fn(&Value) -> bool| found.iter().any(f);
        let ok = match name.as_str() {
            "ClawkerAgentDenialSpike" => {
                any(&|x| x["agent"] == agent.as_str() && x["dst_port"] == guarded.port)
                    && found.iter().all(|x| x["verdict"] == "DENIED")
            }
            "ClawkerAgentExfiltration" => {
                // Largest first: the upload heads the scenario's flows.
                found.iter().find(|x| mine(x)).is_some_and(|x| {
                    x["agent"] == agent.as_str() && x["bytes_out"] == UPLOAD as u64
                })
            }
            "ClawkerAgentNewDestinations" => {
                any(&|x| x["agent"] == agent.as_str() && x["dst_port"] == three.port)
                    && any(&|x| x["agent"] == agent.as_str() && x["dst_port"] == upload.port)
                    && !any(&|x| x["l7_proto"] == "dns")
            }
            "ClawkerAgentDnsTunnelling" => {
                let q = |x: &Value| x["qname"].as_str().unwrap_or("").to_owned();
                any(&|x| q(x).contains(&long_label))
                    && any(&|x| q(x).contains(encoded))
                    && !any(&|x| q(x).starts_with("pkg.dash.test"))
            }
            "ClawkerAgentDnsQueryRate" => {
                any(&|x| {
                    x["agent"] == agent.as_str()
                        && x["qname"]
                            .as_str()
                            .is_some_and(|q| q.starts_with("pkg.dash.test"))
                }) && found.iter().all(|x| x["l7_proto"] == "dns")
            }
            "ClawkerAgentRecordsLost" | "ClawkerEgressEventsDropped" => any(&|x| {
                x["event"] == "records_lost"
                    && x["agent"] == flooder.as_str()
                    && x["lost_total"].as_u64().unwrap_or(0) > 0
            }),
            "ClawkerAgentSeriesOverflow" => [&agent, &bypassed, &flooder]
                .iter()
                .all(|a| any(&|x| x["agent"] == a.as_str() && x["event"] == "container_start")),
            "ClawkerEnforcementDisabled" => {
                any(&|x| x["event"] == "policy_loaded")
                    && any(&|x| {
                        x["agent"] == agent.as_str()
                            && x["verdict"] == "DENIED"
                            && x["enforced"] == false
                    })
                    && !any(&|x| x["verdict"] == "DENIED" && x["enforced"] == true)
            }
            "ClawkerBypassTooLong" => {
                any(&|x| x["event"] == "bypass_start" && x["bypass_reason"] == "dash test")
                    && any(&|x| x["agent"] == bypassed.as_str() && x["verdict"] == "BYPASSED")
            }
            "ClawkerEgressDaemonDown" => any(&|x| x["event"] == "attached"),
            // The daemon's own logs, where metrics_push_failed would be.
            "ClawkerEgressMetricsPushFailing" => any(&|x| x["clawker.source"] == "cp"),
            // What OpenSearch can show of a collector problem: the newest
            // records per source, the scenario's among them.
            "ClawkerCollectorDown"
            | "ClawkerCollectorExportFailing"
            | "ClawkerCollectorRefusing"
            | "ClawkerCollectorQueueFilling" => {
                any(&|x| mine(x) && x["clawker.source"] == "egress")
                    && any(&|x| x["clawker.source"] == "overseer")
            }
            other => panic!("{other}: no situation in this test; add one"),
        };
        loud(&format!("dashboards: {name}: {} hit(s)", found.len()));
        assert!(
            ok,
            "{name}: its saved search did not find its situation; {} hit(s): {found:#?}",
            found.len()
        );
    }

    // (c) Each investigation panel, narrowed to the scenario's project the
    // way the Project control does, answers with the scenario's figures.
    let by_project = [term("attributes.project", &project)];
    let mut checked = 0;
    for o in objs.iter().filter(|o| {
        o["type"] == "visualization"
            && o["id"].as_str().is_some_and(|i| {
                i.starts_with("clawker-inv-")
                    || i == "clawker-denied-destinations"
                    || i == "clawker-records-by-source"
            })
    }) {
        let id = o["id"].as_str().unwrap();
        // The policy records name no container: that panel runs unfiltered.
        let extra: &[Value] = if id == "clawker-inv-policy-timeline" {
            &[]
        } else {
            &by_project
        };
        let rows = run_vis(&os, &objs, o, &since, extra);
        loud(&format!("dashboards: panel {id}: {} row(s)", rows.len()));
        assert!(!rows.is_empty(), "{id}: no rows for the scenario");
        let row = |pred: &dyn Fn(&[String]) -> bool| {
            rows.iter().find(|(k, _)| pred(k)).map(|(_, m)| m.clone())
        };
        let has = |k: &[String], v: &str| k.iter().any(|x| x == v);
        match id {
            "clawker-inv-bytes-by-host" => {
                let m = row(&|k| has(k, &agent) && has(k, "127.0.0.1")).expect(id);
                assert!(m["1"] >= (UPLOAD + 6) as f64, "{id}: {m:?}");
            }
            "clawker-inv-denied-attempts" => {
                let port = guarded.port.to_string();
                let enforced = row(&|k| has(k, &agent) && has(k, &port) && has(k, "true"));
                let audit = row(&|k| has(k, &agent) && has(k, &port) && has(k, "false"));
                assert!(enforced.is_some() && audit.is_some(), "{id}: {rows:?}");
            }
            "clawker-inv-first-seen" => {
                let ports: Vec<&String> = rows
                    .iter()
                    .filter(|(k, _)| has(k, &agent))
                    .map(|(k, _)| k.last().unwrap())
                    .collect();
                for p in [three.port, upload.port] {
                    assert!(ports.contains(&&p.to_string()), "{id}: {p} in {rows:?}");
                }
                // Newest first: the destinations are ordered by first sight.
                let firsts: Vec<f64> = rows
                    .iter()
                    .filter(|(k, _)| has(k, &agent))
                    .map(|(_, m)| m["1"])
                    .collect();
                assert!(firsts.iter().all(|t| *t > 0.0), "{id}: {rows:?}");
            }
            "clawker-inv-dns-names" => {
                assert!(
                    row(&|k| has(k, &agent) && k.iter().any(|x| x.contains(&long_label))).is_some(),
                    "{id}: {rows:?}"
                );
            }
            "clawker-inv-policy-timeline" => {
                for e in ["bypass_start", "policy_loaded"] {
                    assert!(rows.iter().any(|(k, _)| has(k, e)), "{id}: {e} in {rows:?}");
                }
            }
            "clawker-inv-lost-records" | "clawker-inv-lost-over-time" => {
                assert!(
                    rows.iter().any(|(k, m)| has(k, &flooder) && m["1"] > 0.0),
                    "{id}: {rows:?}"
                );
            }
            _ => {}
        }
        checked += 1;
    }
    assert!(checked >= 11, "{checked} panels run");

    // (2) policy suggest from OpenSearch = from the daemon's records.
    let (status, recs) = daemon.stop();
    assert!(status.success(), "daemon exit: {status}");
    let dir = stack.path("suggest");
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("records.jsonl");
    let text: Vec<String> = recs.iter().map(Value::to_string).collect();
    std::fs::write(&history, text.join("\n")).unwrap();
    let sel = ["--agent", agent.as_str(), "--project", project.as_str()];
    let from_os = dir.join("from-opensearch.yaml");
    let from_records = dir.join("from-records.yaml");
    let mut args = vec!["--from-opensearch", os.as_str(), "--last", "1h"];
    args.extend(sel);
    let yaml_os = suggest(&args, &from_os);
    let mut args = vec!["--records", history.to_str().unwrap()];
    args.extend(sel);
    let yaml_rec = suggest(&args, &from_records);
    loud(&format!(
        "dashboards: suggested from OpenSearch:\n{yaml_os}"
    ));
    assert_eq!(
        body(&yaml_os),
        body(&yaml_rec),
        "{yaml_os}\n---\n{yaml_rec}"
    );
    // Addresses only (no names were resolved for these flows); the
    // resolver's udp/53 (the sockets' flows, not the DNS exchanges).
    assert!(
        yaml_os.contains("dst: \"127.0.0.1\", proto: tcp"),
        "{yaml_os}"
    );
    assert!(
        yaml_os.contains(&format!("dst: \"{dns_ip}\", proto: udp, port: \"53\"")),
        "{yaml_os}"
    );
    // `policy explain` allows every flow it was made from.
    let flows: Vec<Value> = egress_of(&agent)
        .iter()
        .map(|h| h["_source"]["attributes"].clone())
        // (a listen or an accepted connection is no egress a rule allows:
        // suggest skips them too, e.g. nslookup's bound UDP socket)
        .filter(|x| {
            x["l7_proto"] != "dns"
                && x["direction"] != "inbound"
                && !(x["verdict"] == "DENIED" && x["enforced"] != false)
        })
        .collect();
    assert!(flows.len() >= 4, "{flows:#?}");
    for f in &flows {
        let out = explain(&from_os, &project, f);
        assert!(out.contains("decision: allow"), "{f}\n{out}\n{yaml_os}");
    }
    let mut other = flows[0].clone();
    other["dst_port"] = json!(closed);
    let out = explain(&from_os, &project, &other);
    assert!(out.contains("decision: deny"), "{out}\n{yaml_os}");
    // An agent with no records: an empty allowlist, not an error.
    let none = dir.join("none.yaml");
    let yaml = suggest(
        &[
            "--from-opensearch",
            &os,
            "--agent",
            "nobody-at-all",
            "--last",
            "1h",
        ],
        &none,
    );
    assert!(yaml.contains("add_domains: []"), "{yaml}");
}
