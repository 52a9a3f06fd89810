//! The monitoring stack, end to end, with the real components (no mocks):
//! an OpenTelemetry Collector built by scripts/stack-collector running the
//! SHIPPED otel-collector/config.yaml (rendered only through its address
//! environment variables), a real OpenSearch node (scripts/stack-opensearch),
//! scripts/stack-bootstrap, and Debian's Prometheus (scripts/stack-prometheus).
//!
//! Two kinds of sender: synthetic OTLP/HTTP JSON records (every source,
//! including those the daemon does not make: Claude Code, Envoy, CoreDNS),
//! and the REAL daemon (real BPF, a test cgroup, labelled Docker
//! containers) exporting OTLP/gRPC to the same collector, whose flows,
//! lifecycle records and own logs (`cp`) are then searched in OpenSearch.
//!
//! Root tests (they start servers and build/cache heavy artifacts under
//! ~/.cache/clawker-egress): outside root they skip loudly; under CI (env CI
//! set) nothing skips, a missing component fails the test.
//!
//! Ports (all on 127.0.0.1) can be moved with environment variables:
//! CLAWKER_STACK_OPENSEARCH_PORT (19200), CLAWKER_STACK_OTLP_GRPC_PORT (14317, the
//! daemon door), CLAWKER_STACK_OTLP_DAEMON_HTTP_PORT (14319, daemon door),
//! CLAWKER_STACK_OTLP_HTTP_PORT (14318, agent door), CLAWKER_STACK_PROMETHEUS_PORT (19090),
//! and CLAWKER_STACK_PORT_OFFSET (0), added to every port including the
//! collectors' internal ones.
//!
//! Layout: `plumbing.rs` starts and stops the stack pieces and talks HTTP to
//! them; `daemon.rs` drives the real daemon against them; this file holds
//! the tests; `doors.rs` attacks the collector's daemon and agent doors (issue 10).

#![allow(unused_imports)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

#[path = "../support/mod.rs"]
mod support;

mod alerts;
mod daemon;
mod dashboards;
mod doors;
mod plumbing;
mod report;

use daemon::*;
use doors::*;
use plumbing::*;

// ---------------------------------------------------------------- tests

/// (a) OTLP records -> collector (shipped config) -> routed data streams in a
/// real OpenSearch; templates from an idempotent bootstrap; D28 filter.
/// Then the same stack fed by the real daemon: flows from a test cgroup,
/// its own `cp` logs, and labelled containers' flows and lifecycle
/// (drill-down by agent + project). Run as named phases on one stack: a
/// failure says which phase (`phase \`routing\` failed: ...`).
#[test]
fn stack_routes_records_into_data_streams() {
    let test = "stack_routes_records_into_data_streams";
    if !preconditions(
        test,
        true,
        &["go", "java", "javac", "mvn", "python3", "curl"],
    ) {
        return;
    }
    let mut stack = Stack::new("stack-a");
    let ports = CollectorPorts {
        grpc: port("CLAWKER_STACK_OTLP_GRPC_PORT", 14317),
        daemon_http: port("CLAWKER_STACK_OTLP_DAEMON_HTTP_PORT", 14319),
        http: port("CLAWKER_STACK_OTLP_HTTP_PORT", 14318),
        telemetry: port("CLAWKER_STACK_A_TELEMETRY_PORT", 18888),
        exporter: port("CLAWKER_STACK_A_EXPORTER_PORT", 18889),
        health: port("CLAWKER_STACK_A_HEALTH_PORT", 13133),
    };

    let os = phase("opensearch", || {
        let t0 = Instant::now();
        let os = start_opensearch(&mut stack, port("CLAWKER_STACK_OPENSEARCH_PORT", 19200));
        loud(&format!(
            "stack: OpenSearch healthy at {os} after {:?}",
            t0.elapsed()
        ));
        os
    });

    phase("bootstrap", || {
        // Bootstrap twice: the second run changes nothing and says so.
        let (ok, first, err) = bootstrap(&os);
        assert!(ok, "bootstrap failed:\n{}\n{err}", first.join("\n"));
        let outcome = regex_free_outcome;
        for l in &first {
            assert!(outcome(l).is_some(), "malformed bootstrap line: {l}");
        }
        for s in SOURCES {
            let stream = format!("data-stream clawker-{s}: ");
            assert!(
                first.iter().any(|l| l.starts_with(&stream)),
                "no line for {stream}\n{first:?}"
            );
            let tmpl = format!("index-template clawker-{s}: ");
            assert!(
                first.iter().any(|l| l.starts_with(&tmpl)),
                "no line for {tmpl}\n{first:?}"
            );
        }
        let (ok, second, err) = bootstrap(&os);
        assert!(ok, "second bootstrap failed:\n{}\n{err}", second.join("\n"));
        assert_eq!(first.len(), second.len(), "{first:?}\n{second:?}");
        for l in &second {
            let o = outcome(l).unwrap_or_default();
            assert!(
                o == "unchanged" || o.starts_with("skipped("),
                "second run changed something: {l}"
            );
        }
        // ISM: installed where the plugin exists, otherwise reported as skipped, never silent.
        let plugins = get_json(&format!("{os}/_cat/plugins?format=json"));
        let has_ism = plugins.as_array().unwrap().iter().any(|p| {
            p["component"]
                .as_str()
                .unwrap_or("")
                .contains("index-management")
        });
        let ism_line = second
            .iter()
            .find(|l| l.starts_with("ism-policy clawker-retention: "))
            .expect("an ism-policy line");
        if has_ism {
            assert!(ism_line.ends_with(": unchanged"), "{ism_line}");
        } else {
            assert!(
                ism_line.contains("skipped(ISM plugin not installed"),
                "{ism_line}"
            );
        }
        // Data streams exist before the first write, made from the shipped templates.
        let ds = get_json(&format!("{os}/_data_stream/clawker-*"));
        let mut names: Vec<String> = ds["data_streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let name = d["name"].as_str().unwrap().to_string();
                assert_eq!(d["template"].as_str(), Some(name.as_str()), "{d}");
                assert_eq!(d["timestamp_field"]["name"], "@timestamp", "{d}");
                for i in d["indices"].as_array().unwrap() {
                    let idx = i["index_name"].as_str().unwrap();
                    assert!(idx.starts_with(&format!(".ds-{name}-")), "{idx}");
                }
                name
            })
            .collect();
        names.sort();
        let want: Vec<String> = SOURCES.iter().map(|s| format!("clawker-{s}")).collect();
        assert_eq!(names, want);
        for s in SOURCES {
            let t = get_json(&format!("{os}/_index_template/clawker-{s}"));
            let it = &t["index_templates"][0]["index_template"];
            assert!(it["data_stream"].is_object(), "clawker-{s}: {it}");
            assert_eq!(it["index_patterns"], json!([format!("clawker-{s}*")]));
        }
    });

    let (dns_log, run, old_qname) = phase("collector", || {
        // The collector, with the CoreDNS overlay, pointed at this node.
        let dns_dir = stack.path("coredns");
        std::fs::create_dir_all(&dns_dir).unwrap();
        let dns_log = dns_dir.join("coredns-json.log");
        // A line already in the file when the collector starts is history: with
        // start_at end it is not ingested (offsets then persist in file_storage).
        let run = unique();
        let old_qname = format!("old{run}.example.test.");
        std::fs::write(
        &dns_log,
        format!("[INFO] 172.18.0.9:1000 - 1 \"A IN {old_qname} udp 41 false 1232\" NOERROR qr 57 0.0001s\n"),
    )
    .unwrap();
        let build = start_collector(
            &mut stack,
            "collector-a",
            &ports,
            &os,
            &["coredns.yaml"],
            &[("COREDNS_LOG_PATH", dns_log.display().to_string())],
        );
        loud(&format!(
            "stack: collector binary ready after {build:?} (cached after the first build)"
        ));
        (dns_log, run, old_qname)
    });

    let (secret, door, docs, dns) = phase("ingest", || {
        let secret = format!("secret-prompt-{run}");
        let egress_pairs = |agent: &str, dst: &str| -> Vec<(&'static str, Value)> {
            vec![
                ("clawker.source", json!("egress")),
                ("test_run", json!(run)),
                ("agent", json!(agent)),
                ("project", json!("proj-1")),
                ("verdict", json!("DENIED")),
                ("hook", json!("connect6")),
                ("dst_host", json!(dst)),
                ("comm", json!("curl")),
                (
                    "container_id",
                    json!("0123456789ab0123456789ab0123456789ab0123456789ab0123456789abcdef"),
                ),
                ("container_name", json!(format!("clawker.proj-1.{agent}"))),
                ("container_image", json!("clawker/agent:latest")),
                ("l4_proto", json!("tcp")),
                ("l7_proto", json!("tls")),
                ("close_reason", json!("denied")),
                ("flow_state", json!("closed")),
                ("community_id", json!("1:LQU9qZlK+B5F3KDmev6m5PMibrg=")),
                ("src_ip", json!("172.17.0.2")),
                ("src_port", json!(40123)),
                ("dst_ip", json!("2001:db8::1")),
                ("dst_port", json!(443)),
                ("bytes_in", json!(0)),
                ("bytes_out", json!(0)),
                ("packets_in", json!(0)),
                ("packets_out", json!(1)),
                ("duration_ms", json!(0)),
                ("cgroup_id", json!(12345)),
                ("pid", json!(4242)),
                ("ip_version", json!(6)),
            ]
        };
        let daemon = [("service.name", json!("clawker-egress"))];
        let claude_res = [
            ("service.name", json!("claude-code")),
            ("agent", json!("agent-a")),
            ("project", json!("proj-1")),
        ];
        let payload = json!({ "resourceLogs": [
            resource_logs(&daemon, "clawker_egress", vec![
                log_record("DENIED tcp curl -> [2001:db8::1]:443", &egress_pairs("agent-a", "evil.example")),
                log_record("DENIED tcp curl -> [2001:db8::1]:443", &egress_pairs("agent-b", "other.example")),
                log_record("container started", &[
                    ("clawker.source", json!("overseer")), ("test_run", json!(run)),
                    ("event", json!("container_start")), ("agent", json!("agent-a")),
                    ("project", json!("proj-1")), ("container_id", json!("0123456789ab")),
                    ("exit_code", json!(0))]),
                log_record("docker unavailable, attributing by cgroup only", &[
                    ("clawker.source", json!("cp")), ("test_run", json!(run)),
                    ("event", json!("docker_unavailable")), ("level", json!("WARN"))]),
                log_record("no such source", &[
                    ("clawker.source", json!("mystery")), ("test_run", json!(run)),
                    ("event", json!("x"))]),
                log_record("no source at all", &[("test_run", json!(run)), ("event.name", json!("y"))]),
            ]),
            resource_logs(&claude_res, "com.anthropic.claude_code.events", vec![
                // D28: dropped (the event, a prompt attribute, a free-text body).
                log_record("claude_code.user_prompt", &[
                    ("event.name", json!("user_prompt")), ("test_run", json!(run)),
                    ("prompt", json!(secret)), ("prompt_length", json!("21"))]),
                log_record("claude_code.tool_result", &[
                    ("event.name", json!("tool_result")), ("test_run", json!(run)),
                    ("prompt", json!(secret))]),
                log_record(&format!("please do {secret} now"), &[
                    ("event.name", json!("api_request")), ("test_run", json!(run))]),
                log_record("claude_code.api_request_body", &[
                    ("event.name", json!("api_request_body")), ("test_run", json!(run)),
                    ("body", json!(secret))]),
                // Kept: structural events without prompt text.
                log_record("claude_code.api_request", &[
                    ("event.name", json!("api_request")), ("test_run", json!(run)),
                    ("model", json!("claude-sonnet")), ("cost_usd", json!("0.0123")),
                    ("input_tokens", json!("100")), ("duration_ms", json!("850"))]),
            ]),
            resource_logs(&[("service.name", json!("envoy"))], "envoy", vec![
                // Envoy's OpenTelemetry access logger sends every value as a string.
                log_record("GET /v1/models 403", &[
                    ("clawker.source", json!("envoy")), ("test_run", json!(run)),
                    ("agent", json!("agent-a")), ("project", json!("proj-1")),
                    ("method", json!("GET")), ("path", json!("/v1/models")),
                    ("response_code", json!("403")), ("src_ip", json!("172.17.0.2")),
                    ("src_port", json!("40123")), ("dst_ip", json!("-")),
                    ("dst_port", json!("443")), ("sni", json!("evil.example"))]),
            ]),
        ]});
        // Trusted senders' records (every source) through the daemon door.
        let door = DaemonDoor::new(&stack, &ports);
        let sent = Instant::now();
        let (s, v) = door.post("/v1/logs", &payload, Some(&door.token()));
        assert_eq!(s, 200, "OTLP/HTTP export: {v}");
        assert!(
            !matches!(v.get("partialSuccess"), Some(p) if p.get("rejectedLogRecords").is_some()),
            "{v}"
        );
        // CoreDNS: one Docker json-file line and one raw line, appended after start.
        let qname = format!("q{run}.example.test.");
        // The filelog receiver takes its start_at position at its first poll;
        // append only once it watches the file.
        let collector_log = stack.path("collector-a.log");
        wait_until(
            "filelog to watch the CoreDNS log",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&collector_log).unwrap_or_default();
                text.lines()
                    .any(|l| l.contains("Started watching file") && l.contains("coredns-json.log"))
                    .then_some(())
            },
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&dns_log)
            .unwrap();
        writeln!(
        f,
        "{}",
        json!({ "log": format!("[INFO] 172.18.0.5:43211 - 52104 \"A IN {qname} udp 41 false 1232\" NOERROR qr,rd,ra 57 0.000114s\n"),
                "stream": "stdout", "time": "2026-01-02T03:04:05.123456789Z" })
    )
    .unwrap();
        writeln!(f, "[INFO] [::1]:50759 - 29008 \"AAAA IN {qname} udp 41 false 4096\" NOERROR qr,rd,ra,ad 68 0.037990251s").unwrap();
        drop(f);

        // Kept: egress 2, overseer 1, cp 1, unrouted 2, claude 1, envoy 1.
        let expected = 8;
        let docs = wait_until(
            "all kept records to be searchable",
            Duration::from_secs(90),
            || {
                let hits = search(&os, "clawker-*", term("attributes.test_run", &run));
                (hits.len() >= expected).then_some(hits)
            },
        );
        let latency = sent.elapsed();
        loud(&format!(
            "stack: {expected} records searchable {latency:?} after the OTLP export"
        ));
        let dns = wait_until("CoreDNS records", Duration::from_secs(60), || {
            let hits = search(&os, "clawker-dns", term("attributes.qname", &qname));
            (hits.len() >= 2).then_some(hits)
        });
        // Let stragglers (records that should have been dropped) arrive if they would.
        std::thread::sleep(Duration::from_secs(3));
        let docs_after = search(&os, "clawker-*", term("attributes.test_run", &run));
        assert_eq!(docs_after.len(), expected, "{docs_after:#?}");
        (secret, door, docs, dns)
    });

    let by_stream = |stream: &str| -> Vec<&Value> {
        docs.iter()
            .filter(|d| {
                d["_index"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!(".ds-{stream}-"))
            })
            .collect()
    };
    phase("routing", || {
        assert_eq!(by_stream("clawker-egress").len(), 2);
        assert_eq!(by_stream("clawker-overseer").len(), 1);
        assert_eq!(by_stream("clawker-cp").len(), 1);
        assert_eq!(by_stream("clawker-claude").len(), 1);
        assert_eq!(by_stream("clawker-envoy").len(), 1);
        assert_eq!(by_stream("clawker-unrouted").len(), 2);

        // Drill-down: agent + project returns exactly that agent's flow, right values.
        let q = json!({ "bool": { "filter": [
        term("attributes.test_run", &run), term("attributes.agent", "agent-a"),
        term("attributes.project", "proj-1") ] } });
        let hits = search(&os, "clawker-egress", q);
        assert_eq!(hits.len(), 1, "{hits:#?}");
        let d = &hits[0];
        assert!(d.get("_ignored").is_none(), "malformed fields: {d}");
        let src = &d["_source"];
        let a = &src["attributes"];
        assert_eq!(a["dst_host"], "evil.example");
        assert_eq!(a["dst_ip"], "2001:db8::1");
        assert_eq!(a["dst_port"], 443);
        assert_eq!(a["verdict"], "DENIED");
        assert_eq!(a["clawker.source"], "egress");
        assert_eq!(a["data_stream"]["dataset"], "egress");
        assert_eq!(src["resource"]["service.name"], "clawker-egress");
        assert!(
            src["@timestamp"].as_str().unwrap().starts_with("20"),
            "{src}"
        );
        // Field types come from the shipped templates (ip, long, keyword, date).
        let types = field_types(&os, "clawker-egress");
        for f in ["src_ip", "dst_ip"] {
            assert_eq!(
                types.get(&format!("attributes.{f}")).map(String::as_str),
                Some("ip"),
                "{f}"
            );
        }
        for f in [
            "src_port",
            "dst_port",
            "bytes_in",
            "bytes_out",
            "packets_in",
            "packets_out",
            "duration_ms",
            "cgroup_id",
            "pid",
            "ip_version",
        ] {
            assert_eq!(
                types.get(&format!("attributes.{f}")).map(String::as_str),
                Some("long"),
                "{f}"
            );
        }
        for f in [
            "agent",
            "project",
            "verdict",
            "dst_host",
            "comm",
            "container_id",
            "container_name",
            "container_image",
            "l4_proto",
            "l7_proto",
            "close_reason",
            "flow_state",
            "community_id",
            "clawker.source",
        ] {
            assert_eq!(
                types.get(&format!("attributes.{f}")).map(String::as_str),
                Some("keyword"),
                "{f}"
            );
        }
        assert_eq!(types.get("@timestamp").map(String::as_str), Some("date"));
        // The same agent filter reaches every stream that carries agent/project (D14).
        let everywhere = search(
            &os,
            "clawker-*",
            json!({ "bool": { "filter": [
        term("attributes.test_run", &run), term("attributes.agent", "agent-a") ] } }),
        );
        let mut streams: Vec<&str> = everywhere
            .iter()
            .map(|d| {
                d["_source"]["attributes"]["clawker.source"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        streams.sort();
        assert_eq!(
            streams,
            ["claude", "egress", "envoy", "overseer"],
            "{everywhere:#?}"
        );
    });

    phase("claude, envoy and unrouted", || {
        // Claude Code: the structural event is kept, agent/project copied from the
        // resource; nothing carrying prompt text survived anywhere.
        let claude = &by_stream("clawker-claude")[0]["_source"];
        assert_eq!(claude["body"], "claude_code.api_request");
        assert_eq!(claude["attributes"]["agent"], "agent-a");
        assert_eq!(claude["attributes"]["clawker.source"], "claude");
        let costly = search(
            &os,
            "clawker-claude",
            json!({ "bool": { "filter": [
        term("attributes.test_run", &run), { "range": { "attributes.cost_usd": { "gt": 0.01 } } } ] } }),
        );
        assert_eq!(costly.len(), 1, "cost_usd must be numeric");
        let leaked = search(
            &os,
            "*",
            json!({ "query_string": { "query": format!("\"{secret}\""), "lenient": true } }),
        );
        assert!(leaked.is_empty(), "prompt text stored: {leaked:#?}");
        for d in &docs {
            assert!(!d.to_string().contains(&secret), "prompt text stored: {d}");
        }
        // Envoy: strings coerced into the stream's types; "-" is ignored, not fatal.
        let envoy = search(
            &os,
            "clawker-envoy",
            json!({ "bool": { "filter": [
        term("attributes.test_run", &run), { "range": { "attributes.response_code": { "gte": 400 } } } ] } }),
        );
        assert_eq!(envoy.len(), 1);
        assert_eq!(
            field_types(&os, "clawker-envoy")
                .get("attributes.response_code")
                .map(String::as_str),
            Some("long")
        );
        // Unrouted: visible, whatever the shape.
        let unrouted = search(
            &os,
            "clawker-unrouted",
            term("attributes.clawker.source", "mystery"),
        );
        assert!(unrouted
            .iter()
            .any(|d| d["_source"]["attributes"]["test_run"] == json!(run)));
    });

    phase("coredns", || {
        // CoreDNS lines parsed into fields.
        let mut clients: Vec<String> = dns
            .iter()
            .map(|d| {
                d["_source"]["attributes"]["src_ip"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        clients.sort();
        assert_eq!(clients, ["172.18.0.5", "::1"]);
        assert!(
            search(&os, "clawker-dns", term("attributes.qname", &old_qname)).is_empty(),
            "history re-ingested"
        );
        let docker_line = dns
            .iter()
            .find(|d| d["_source"]["attributes"]["qtype"] == "A")
            .unwrap();
        assert_eq!(
            docker_line["_source"]["@timestamp"],
            "2026-01-02T03:04:05.123456789Z"
        );
        assert_eq!(docker_line["_source"]["attributes"]["rcode"], "NOERROR");
        assert_eq!(
            field_types(&os, "clawker-dns")
                .get("attributes.src_ip")
                .map(String::as_str),
            Some("ip")
        );
    });

    phase("filter metrics", || {
        // The D28 drops are counted where Prometheus can see them.
        let metrics = agent()
            .get(&format!("http://127.0.0.1:{}/metrics", ports.telemetry))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let filtered: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("otelcol_processor_filter_logs_filtered_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(filtered >= 4.0, "filter counted {filtered}:\n{metrics}");
    });

    // Issue 10: the doors. An agent's forgeries stay Claude Code records;
    // unauthenticated senders are refused at the daemon door ...
    phase("agent door", || {
        agent_door_only_writes_claude(&os, &ports, &door)
    });
    phase("daemon door", || {
        daemon_door_refuses_the_unauthenticated(&os, &ports, &door)
    });
    // ... while the real daemon's records, through the daemon door, land.
    phase("real daemon", || {
        real_daemon_flows_reach_opensearch(&os, &door, ports.exporter)
    });
    if preconditions(&format!("{test} (labelled containers)"), true, &["docker"]) {
        phase("labelled containers", || {
            labelled_containers_drill_down(&os, &door)
        });
    }
}

/// A failing phase is named in the test's failure; a passing one hands its
/// value on. (No stack needed.)
#[test]
fn a_failing_phase_names_itself() {
    assert_eq!(phase("passes", || 7), 7);
    let failed = std::panic::catch_unwind(|| {
        phase("routing", || assert_eq!(1 + 1, 3, "two streams"));
    })
    .unwrap_err();
    let msg = failed
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(msg.starts_with("phase `routing` failed: "), "{msg}");
    assert!(msg.contains("two streams"), "{msg}");
}

/// "<kind> <name>: <outcome>" -> outcome, when well-formed.
fn regex_free_outcome(line: &str) -> Option<String> {
    let (_, outcome) = line.split_once(": ")?;
    let known = ["created", "updated", "unchanged", "skipped("];
    known
        .iter()
        .any(|k| outcome.starts_with(k))
        .then(|| outcome.to_string())
}

/// (b) Prometheus scrapes the collector (its own metrics and the prometheus
/// exporter carrying OTLP metrics, D23) and the real daemon, and answers
/// /api/v1/query.
#[test]
fn stack_prometheus_scrapes_the_collector_and_the_daemon() {
    let test = "stack_prometheus_scrapes_the_collector_and_the_daemon";
    if !preconditions(
        test,
        true,
        &["go", "prometheus", "promtool", "curl", "python3"],
    ) {
        return;
    }
    let mut stack = Stack::new("stack-b");
    let ports = CollectorPorts {
        grpc: port("CLAWKER_STACK_B_OTLP_GRPC_PORT", 14327),
        daemon_http: port("CLAWKER_STACK_B_OTLP_DAEMON_HTTP_PORT", 14329),
        http: port("CLAWKER_STACK_B_OTLP_HTTP_PORT", 14328),
        telemetry: port("CLAWKER_STACK_B_TELEMETRY_PORT", 18898),
        exporter: port("CLAWKER_STACK_B_EXPORTER_PORT", 18899),
        health: port("CLAWKER_STACK_B_HEALTH_PORT", 13143),
    };
    // The daemon, on the metrics port the scrape config names.
    let daemon_port = port("CLAWKER_STACK_DAEMON_METRICS_PORT", 19464);
    let cg = support::TestCgroup::new("ce-stack-prom");
    let daemon =
        support::Daemon::start_on_port(support::DaemonOptions::for_cgroup(&cg), daemon_port);
    // No OpenSearch needed: no logs are sent.
    start_collector(
        &mut stack,
        "collector-b",
        &ports,
        "http://127.0.0.1:9",
        &[],
        &[],
    );

    let prom_port = port("CLAWKER_STACK_PROMETHEUS_PORT", 19090);
    let data = stack.path("prometheus");
    let mut stop = script("stack-prometheus");
    stop.arg("stop").arg("--data").arg(&data);
    stack.stops.push(("prometheus".into(), stop));
    let mut start = script("stack-prometheus");
    start
        .args([
            "start",
            "--port",
            &prom_port.to_string(),
            "--scrape-interval",
            "1s",
        ])
        .args(["--collector", &format!("127.0.0.1:{}", ports.exporter)])
        .args([
            "--collector-telemetry",
            &format!("127.0.0.1:{}", ports.telemetry),
        ])
        .args(["--daemon", &format!("127.0.0.1:{daemon_port}")])
        .arg("--data")
        .arg(&data);
    let prom = run_ok(start, "scripts/stack-prometheus start");

    // Claude Code's token counter, with agent/project as resource attributes.
    let run = unique();
    let agent_name = format!("agent-{run}");
    let t = now_ns();
    let metrics = json!({ "resourceMetrics": [{
        "resource": { "attributes": attrs(&[("service.name", json!("claude-code")),
            ("agent", json!(agent_name)), ("project", json!("proj-1"))]) },
        "scopeMetrics": [{ "scope": { "name": "com.anthropic.claude_code" }, "metrics": [{
            "name": "claude_code.token.usage", "unit": "tokens", "description": "tokens used",
            "sum": { "aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [{
                "attributes": attrs(&[("type", json!("input")), ("model", json!("claude-sonnet"))]),
                "startTimeUnixNano": t, "timeUnixNano": t, "asDouble": 42.0 }] } }] }] },
        // Issue 10: what an agent sends to its door never becomes a
        // daemon metric (only claude_code.* names pass).
        { "resource": { "attributes": attrs(&[("service.name", json!("clawker-egress"))]) },
          "scopeMetrics": [{ "scope": { "name": "clawker-egress" }, "metrics": [{
            "name": "clawker_egress_events_dropped", "unit": "", "description": "forged",
            "sum": { "aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [{
                "attributes": attrs(&[("reason", json!("ringbuf_full"))]),
                "startTimeUnixNano": t, "timeUnixNano": t, "asDouble": 1000.0 }] } }] }] }] });
    let (s, v) = http(
        "POST",
        &format!("http://127.0.0.1:{}/v1/metrics", ports.http),
        Some(&metrics),
    );
    assert_eq!(s, 200, "{v}");

    let series = wait_until(
        "Claude Code metric in Prometheus",
        Duration::from_secs(60),
        || {
            let r = prom_query(
                &prom,
                &format!("{{__name__=~\"claude_code_token_usage.*\",agent=\"{agent_name}\"}}"),
            );
            (!r.is_empty()).then_some(r)
        },
    );
    let forged = prom_query(
        &prom,
        "{__name__=~\"clawker_egress.*\",job=\"otel-collector-exporter\"}",
    );
    assert!(
        forged.is_empty(),
        "agent-door metric became a daemon metric: {forged:?}"
    );
    let m = &series[0]["metric"];
    assert_eq!(m["project"], "proj-1", "{m}");
    assert_eq!(m["type"], "input", "{m}");
    assert_eq!(series[0]["value"][1], "42", "{series:?}");

    let up = wait_until("all scrape targets", Duration::from_secs(30), || {
        let r = prom_query(&prom, "up");
        (r.len() >= 4).then_some(r)
    });
    let job = |j: &str| {
        up.iter()
            .find(|s| s["metric"]["job"] == j)
            .map(|s| s["value"][1].clone())
    };
    assert_eq!(job("otel-collector"), Some(json!("1")), "{up:?}");
    assert_eq!(job("otel-collector-exporter"), Some(json!("1")), "{up:?}");
    // The real daemon is scraped: its drop and map-full counters are
    // queryable (every reason and map, from the first scrape) and a flow it
    // made is counted.
    assert_eq!(job("clawker-egress"), Some(json!("1")), "{up:?}");
    let server = support::TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    cg.python(&format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {}))\n\
         s.sendall(b'hi!')\nwhile s.recv(65536): pass\ns.close()\n",
        server.port
    ));
    let dropped = prom_query(&prom, "clawker_egress_events_dropped_total");
    let mut reasons: Vec<&str> = dropped
        .iter()
        .map(|s| {
            assert_eq!(s["metric"]["job"], "clawker-egress", "{s}");
            s["metric"]["reason"].as_str().unwrap()
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "flow_table_full",
            "parse_failure",
            "rate_limited",
            "ringbuf_full",
            "sink_failure",
            "spool_full"
        ],
        "{dropped:?}"
    );
    let full = prom_query(&prom, "clawker_egress_kernel_map_full_total");
    let mut maps: Vec<&str> = full
        .iter()
        .map(|s| s["metric"]["map"].as_str().unwrap())
        .collect();
    maps.sort();
    assert_eq!(maps, ["dns_cache", "dns_pending", "flows"], "{full:?}");
    let flows = wait_until(
        "the daemon's flow counter in Prometheus",
        Duration::from_secs(30),
        || {
            let r = prom_query(
                &prom,
                "clawker_egress_flows_total{job=\"clawker-egress\",state=\"ended\"} >= 1",
            );
            (!r.is_empty()).then_some(r)
        },
    );
    assert_eq!(flows.len(), 1, "{flows:?}");
    drop(daemon);
    let accepted = prom_query(&prom, "sum(otelcol_receiver_accepted_metric_points_total)");
    assert!(!accepted.is_empty(), "collector self-metrics not scraped");
    let rules = get_json(&format!("{prom}/api/v1/rules"));
    assert!(
        rules.to_string().contains("ClawkerCollectorExportFailing"),
        "{rules}"
    );
}

/// The collector accepts the shipped config alone (what docker-compose runs),
/// with the CoreDNS overlay and with the fleet gateway overlay.
#[test]
fn shipped_collector_config_validates() {
    let test = "shipped_collector_config_validates";
    if !preconditions(test, false, &["go"]) {
        return;
    }
    let bin = run_ok(script("stack-collector"), "scripts/stack-collector");
    let dir = repo().join("otel-collector");
    let tmp = tempfile::tempdir().unwrap();
    let mut c = script("stack-credentials");
    c.arg(tmp.path());
    run_ok(c, "scripts/stack-credentials");
    let creds = [
        ("DAEMON_DOOR_CERT_FILE", tmp.path().join("collector.pem")),
        ("DAEMON_DOOR_KEY_FILE", tmp.path().join("collector.key")),
        ("DAEMON_DOOR_TOKEN_FILE", tmp.path().join("daemon.token")),
    ];
    // Fail closed: without its certificate or its token the daemon door,
    // and so the collector, does not start.
    for missing in ["DAEMON_DOOR_CERT_FILE", "DAEMON_DOOR_TOKEN_FILE"] {
        let mut c = Command::new(&bin);
        c.arg("validate")
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .env("OPENSEARCH_PASSWORD", "x");
        for (k, v) in &creds {
            if *k != missing {
                c.env(k, v);
            }
        }
        let out = c.output().unwrap();
        assert!(
            !out.status.success(),
            "the collector accepted a config without {missing}"
        );
    }
    for overlays in [vec![], vec!["coredns.yaml"], vec!["gateway.yaml"]] {
        let mut c = Command::new(&bin);
        c.arg("validate")
            .arg("--config")
            .arg(dir.join("config.yaml"));
        for o in &overlays {
            c.arg("--config").arg(dir.join(o));
        }
        c.env("OPENSEARCH_PASSWORD", "x")
            .env("COREDNS_LOG_PATH", "/nonexistent/coredns.log")
            .envs(creds.iter().map(|(k, v)| (k, v)));
        run_ok(c, &format!("otelcol validate {overlays:?}"));
    }
}

/// docker-compose.yml is valid for docker compose v2 (compose-go loader) and
/// refuses to start without an admin password.
#[test]
fn compose_file_is_valid_and_requires_a_password() {
    let test = "compose_file_is_valid_and_requires_a_password";
    let has_plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_plugin && !preconditions(test, false, &["go"]) {
        return;
    }
    let mut ok = script("stack-compose-check");
    ok.env("OPENSEARCH_INITIAL_ADMIN_PASSWORD", "Correct-Horse-9!");
    run_ok(ok, "scripts/stack-compose-check");
    let out = script("stack-compose-check")
        .env_remove("OPENSEARCH_INITIAL_ADMIN_PASSWORD")
        .output()
        .unwrap();
    assert!(!out.status.success(), "compose accepted a missing password");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OPENSEARCH_INITIAL_ADMIN_PASSWORD"), "{err}");
}

/// The Dashboards saved objects are well-formed and consistent: every
/// reference resolves, embedded JSON parses, the controls and searches use
/// fields the templates map as keyword.
#[test]
fn dashboards_saved_objects_are_consistent() {
    let text =
        std::fs::read_to_string(repo().join("opensearch/dashboards/clawker.ndjson")).unwrap();
    let objs: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("ndjson line"))
        .collect();
    let ids: Vec<(String, String)> = objs
        .iter()
        .map(|o| {
            (
                o["type"].as_str().unwrap().into(),
                o["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    for o in &objs {
        for r in o["references"].as_array().unwrap() {
            let key = (
                r["type"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
            );
            assert!(ids.contains(&key), "{} references missing {key:?}", o["id"]);
        }
        let a = &o["attributes"];
        for k in ["visState", "panelsJSON", "optionsJSON", "uiStateJSON"] {
            if let Some(s) = a[k].as_str() {
                serde_json::from_str::<Value>(s).unwrap_or_else(|e| panic!("{} {k}: {e}", o["id"]));
            }
        }
        if let Some(s) = a["kibanaSavedObjectMeta"]["searchSourceJSON"].as_str() {
            let ss: Value = serde_json::from_str(s).unwrap();
            if let Some(name) = ss["indexRefName"].as_str() {
                assert!(o["references"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["name"] == name));
            }
        }
    }
    let find = |t: &str, id: &str| {
        objs.iter()
            .find(|o| o["type"] == t && o["id"] == id)
            .unwrap()
    };
    assert_eq!(
        find("index-pattern", "clawker-all")["attributes"]["title"],
        "clawker-*"
    );
    for id in [
        "clawker-denied-flows",
        "clawker-bypassed-flows",
        "clawker-agent-activity",
    ] {
        find("search", id);
    }
    // The dashboard's controls: agent and project, on keyword fields.
    let vis: Value = serde_json::from_str(
        find("visualization", "clawker-controls")["attributes"]["visState"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let fields: Vec<&str> = vis["params"]["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["fieldName"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"attributes.agent") && fields.contains(&"attributes.project"),
        "{fields:?}"
    );
    let dash = find("dashboard", "clawker-overview");
    let refs: Vec<&str> = dash["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(refs.contains(&"clawker-controls"), "{refs:?}");
    // Verdict values the saved searches filter on are the daemon's spelling.
    let denied = find("search", "clawker-denied-flows")["attributes"]["kibanaSavedObjectMeta"]
        ["searchSourceJSON"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(denied.contains("attributes.verdict:DENIED"), "{denied}");
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("opensearch/component-templates/clawker-base.json"))
            .unwrap(),
    )
    .unwrap();
    let props = &base["template"]["mappings"]["properties"]["attributes"]["properties"];
    for f in ["agent", "project"] {
        assert_eq!(props[f]["type"], "keyword", "{f}");
    }
    assert_eq!(props["clawker"]["properties"]["source"]["type"], "keyword");
}

/// deploy/config.example.toml is accepted by the daemon's own config loader,
/// and the systemd unit parses.
#[test]
fn deploy_files_are_accepted() {
    let out = Command::new(env!("CARGO_BIN_EXE_clawker-egress"))
        .args(["check", "--config"])
        .arg(repo().join("deploy/config.example.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("configuration"),
        "example config rejected: {err}"
    );
    if !on_path("systemd-analyze") {
        if std::env::var_os("CI").is_some() {
            panic!("deploy_files_are_accepted: needs `systemd-analyze`");
        }
        loud("SKIPPED deploy_files_are_accepted (unit part): needs `systemd-analyze`");
        return;
    }
    // verify needs ExecStart to exist: point a copy at the test's binary.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo().join("deploy/clawker-egress.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/clawker-egress",
            env!("CARGO_BIN_EXE_clawker-egress"),
        );
    let path = dir.path().join("clawker-egress.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let relevant: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("clawker-egress.service") && !l.contains("is not executable"))
        .collect();
    assert!(relevant.is_empty(), "systemd-analyze verify:\n{text}");
}
