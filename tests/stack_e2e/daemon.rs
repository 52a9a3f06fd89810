//! The real daemon (real BPF, test cgroups, labelled containers) exporting
//! to the stack, and what must then be searchable.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::plumbing::*;
use crate::support;

// ---------------------------------------------------------------- the real daemon

/// `clawker-egress run` exporting OTLP/gRPC to the test's collector, through
/// the daemon door: TLS with the stack's CA, its client certificate, the
/// bearer token from its file, gzip.
pub(crate) fn otlp_daemon(opts: support::DaemonOptions, door: &DaemonDoor) -> support::Daemon {
    support::Daemon::start(
        door.daemon_flags(opts.arg("--output").arg("otlp"))
            .arg("--otlp-compression")
            .arg("gzip"),
    )
}

/// A search with `@timestamp` and `observedTimestamp` as epoch
/// nanoseconds parsed from `_source` (RFC 3339, nanosecond precision).
pub(crate) fn search_sorted(os: &str, index: &str, query: Value) -> Vec<Value> {
    let (s, v) = http(
        "POST",
        &format!("{os}/{index}/_search?size=100&ignore_unavailable=true"),
        Some(&json!({ "query": query, "sort": [{ "@timestamp": "asc" }] })),
    );
    assert_eq!(s, 200, "search {index}: {v}");
    v["hits"]["hits"].as_array().cloned().unwrap_or_default()
}

/// RFC 3339 UTC (`2026-01-02T03:04:05.123456789Z`) as nanoseconds since the epoch.
pub(crate) fn rfc3339_nanos(s: &str) -> u128 {
    let what = format!("not an RFC 3339 UTC timestamp: {s}");
    let s = s.strip_suffix('Z').expect(&what);
    let (date, time) = s.split_once('T').expect(&what);
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from the civil date (H. Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    let nanos: u128 = format!("{frac:0<9}")[..9].parse().unwrap();
    u128::try_from(secs).unwrap() * 1_000_000_000 + nanos
}

pub(crate) fn nanos_of(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// Proof (1): known flows from a test cgroup, through the real daemon and
/// the real collector, searchable in `clawker-egress` with exact values and
/// types; the daemon's `event=attached` log (through the OpenTelemetry
/// SDK's tracing appender) searchable in `clawker-cp`; its self-metrics
/// pushed over OTLP (the SDK's metric exporter) at the collector.
pub(crate) fn real_daemon_flows_reach_opensearch(os: &str, door: &DaemonDoor, exporter_port: u16) {
    let t0 = Instant::now();
    let cg = support::TestCgroup::new("ce-stack");
    let daemon = otlp_daemon(
        support::DaemonOptions::for_cgroup(&cg)
            .arg("--otlp-metrics-interval")
            .arg("1s"),
        door,
    );
    // (bytes the client sends, bytes the server answers) per TCP flow.
    let tcp: [(usize, usize); 3] = [(1_000, 3_000), (70_000, 10), (5, 200_000)];
    let servers: Vec<support::TcpServer> = tcp
        .iter()
        .map(|&(up, down)| support::TcpServer::spawn("127.0.0.1:0", Some(up), down))
        .collect();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let (udp_n, udp_len) = (3u64, 700u64);
    let mut script = String::from("import os, socket\nprint(os.getpid(), flush=True)\n");
    for (s, &(up, down)) in servers.iter().zip(&tcp) {
        script.push_str(&format!(
            "s = socket.create_connection(('127.0.0.1', {port}))\n\
             s.sendall(b'x' * {up})\n\
             n = 0\n\
             while True:\n    d = s.recv(65536)\n    if not d: break\n    n += len(d)\n\
             assert n == {down}, n\n\
             s.close()\n",
            port = s.port
        ));
    }
    script.push_str(&format!(
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for _ in range({udp_n}): u.sendto(b'u' * {udp_len}, ('127.0.0.1', {udp_port}))\n\
         u.close()\n"
    ));
    let started = SystemTime::now();
    let out = cg.python(&script);
    let done = SystemTime::now();
    let pid: u64 = out.lines().next().unwrap().trim().parse().unwrap();

    let q = json!({ "bool": { "filter": [
        term("attributes.pid", &pid.to_string()),
        term("attributes.cgroup_id", &cg.id().to_string()) ] } });
    let (docs, searchable_at) = wait_until(
        "the daemon's 4 flows in clawker-egress",
        Duration::from_secs(60),
        || {
            let hits = search_sorted(os, "clawker-egress", q.clone());
            (hits.len() >= 4).then(|| (hits, SystemTime::now()))
        },
    );
    std::thread::sleep(Duration::from_secs(2)); // a duplicate would be here by now
    let again = search_sorted(os, "clawker-egress", q.clone());
    assert_eq!(again.len(), 4, "exactly the 4 flows: {again:#?}");

    let mut tcp_times = Vec::new();
    let mut latencies = Vec::new();
    for d in &docs {
        assert!(d.get("_ignored").is_none(), "malformed fields: {d}");
        let src = &d["_source"];
        let a = &src["attributes"];
        assert_eq!(a["clawker.source"], "egress", "{src}");
        assert_eq!(a["data_stream"]["dataset"], "egress");
        assert_eq!(src["resource"]["service.name"], "clawker-egress", "{src}");
        assert_eq!(a["pid"], pid, "{src}");
        assert_eq!(a["cgroup_id"], cg.id(), "{src}");
        assert_eq!(a["comm"], "python3", "{src}");
        assert_eq!(a["verdict"], "ALLOWED", "{src}");
        assert_eq!(a["dst_ip"], "127.0.0.1", "{src}");
        assert_eq!(a["src_ip"], "127.0.0.1", "{src}");
        assert_eq!(a["ip_version"], 4, "{src}");
        assert_eq!(a["flow_state"], "ended", "{src}");
        assert!(
            a["community_id"].as_str().unwrap().starts_with("1:"),
            "{src}"
        );
        assert!(a["src_port"].as_u64().unwrap() > 0, "{src}");
        // @timestamp is the record's event time: within the traffic, before
        // the daemon exported it (observedTimestamp), never 1970 or ingest time.
        let at = rfc3339_nanos(src["@timestamp"].as_str().unwrap());
        let observed = rfc3339_nanos(src["observedTimestamp"].as_str().unwrap());
        assert!(
            at >= nanos_of(started) && at <= nanos_of(done) + 1_000_000_000,
            "@timestamp {} outside the traffic window",
            src["@timestamp"]
        );
        assert!(at < observed, "@timestamp is not the export time: {src}");
        latencies.push(Duration::from_nanos(
            (nanos_of(searchable_at).saturating_sub(at)) as u64,
        ));
        let port = a["dst_port"].as_u64().unwrap() as u16;
        if port == udp_port {
            assert_eq!(a["l4_proto"], "udp", "{src}");
            assert_eq!(a["bytes_out"], udp_n * udp_len, "{src}");
            assert_eq!(a["packets_out"], udp_n, "{src}");
            assert_eq!(a["close_reason"], "socket_closed", "{src}");
            continue;
        }
        let i = servers
            .iter()
            .position(|s| s.port == port)
            .unwrap_or_else(|| panic!("a flow to an unknown port: {src}"));
        assert_eq!(a["l4_proto"], "tcp", "{src}");
        assert_eq!(a["bytes_out"], tcp[i].0 as u64, "{src}");
        assert_eq!(a["bytes_in"], tcp[i].1 as u64, "{src}");
        assert_eq!(a["close_reason"], "fin", "{src}");
        tcp_times.push((i, at));
    }
    // Sequential connections: event times in connection order.
    tcp_times.sort_by_key(|&(_, at)| at);
    let order: Vec<usize> = tcp_times.iter().map(|&(i, _)| i).collect();
    assert_eq!(order, [0, 1, 2], "event times follow the connections");
    // Types from the templates, and queries that only work with them.
    let types = field_types(os, "clawker-egress");
    for (f, t) in [
        ("src_ip", "ip"),
        ("dst_ip", "ip"),
        ("bytes_out", "long"),
        ("bytes_in", "long"),
        ("src_port", "long"),
        ("dst_port", "long"),
        ("pid", "long"),
        ("verdict", "keyword"),
        ("comm", "keyword"),
        ("close_reason", "keyword"),
        ("flow_state", "keyword"),
        ("community_id", "keyword"),
    ] {
        assert_eq!(
            types.get(&format!("attributes.{f}")).map(String::as_str),
            Some(t),
            "{f}"
        );
    }
    let typed = search(
        os,
        "clawker-egress",
        json!({ "bool": { "filter": [ q.clone(),
            term("attributes.dst_ip", "127.0.0.0/8"),
            { "range": { "attributes.bytes_out": { "gte": 60_000 } } } ] } }),
    );
    assert_eq!(typed.len(), 1, "CIDR on ip, range on long: {typed:#?}");
    assert_eq!(typed[0]["_source"]["attributes"]["bytes_out"], 70_000);
    let worst = latencies.iter().max().unwrap();
    loud(&format!(
        "stack: real daemon: 4 flows searchable {:?} after the python script ended; \
         record (@timestamp) -> searchable: max {worst:?} (poll 250 ms)",
        searchable_at.duration_since(done).unwrap_or_default()
    ));

    // The daemon's own logs (clawker.source=cp): `event=attached`, this daemon's.
    let cgroup = cg.path.display().to_string();
    let cp = wait_until(
        "event=attached in clawker-cp",
        Duration::from_secs(30),
        || {
            let hits = search(
                os,
                "clawker-cp",
                json!({ "bool": { "filter": [
                term("attributes.event", "attached"), term("attributes.cgroup", &cgroup) ] } }),
            );
            (!hits.is_empty()).then_some(hits)
        },
    );
    assert_eq!(cp.len(), 1, "{cp:#?}");
    let src = &cp[0]["_source"];
    assert!(cp[0].get("_ignored").is_none(), "{}", cp[0]);
    assert_eq!(src["body"], "BPF programs attached", "{src}");
    assert_eq!(src["severity"]["text"], "INFO", "{src}");
    assert_eq!(src["severity"]["number"], 9, "{src}");
    assert_eq!(src["attributes"]["clawker.source"], "cp", "{src}");
    assert_eq!(src["attributes"]["cgroup_id"], cg.id(), "{src}");
    assert!(
        src["attributes"]["target"]
            .as_str()
            .unwrap()
            .starts_with("clawker_egress"),
        "{src}"
    );
    assert_eq!(src["resource"]["service.name"], "clawker-egress", "{src}");
    let at = rfc3339_nanos(src["@timestamp"].as_str().unwrap());
    assert!(at < nanos_of(started), "attached before the traffic: {src}");
    assert_eq!(
        field_types(os, "clawker-cp")
            .get("attributes.event")
            .map(String::as_str),
        Some("keyword")
    );
    // Nothing lost on the way out of the daemon.
    assert!(daemon.metric("clawker_egress_records_exported_total{sink=\"otlp\"}") >= 4.0);
    assert!(daemon.metric("clawker_egress_records_exported_total{sink=\"cp_logs\"}") >= 1.0);
    assert_eq!(
        daemon.metric("clawker_egress_events_dropped_total{reason=\"sink_failure\"}"),
        0.0
    );
    // Self-metrics over OTLP, through the daemon door to the collector's
    // Prometheus exporter: the same counter as /metrics, under this host.
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let pushed = wait_until(
        "records_exported_total{sink=otlp} >= 4 pushed over OTLP",
        Duration::from_secs(30),
        || {
            let text = support::http_get(&format!("http://127.0.0.1:{exporter_port}/metrics"))?;
            text.lines()
                .filter(|l| l.starts_with("clawker_egress_records_exported_total{"))
                .filter(|l| {
                    l.contains("sink=\"otlp\"") && l.contains(&format!("host_name=\"{host}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .find(|v| *v >= 4.0)
        },
    );
    let scraped = daemon.metric("clawker_egress_records_exported_total{sink=\"otlp\"}");
    assert!(pushed <= scraped, "pushed {pushed} > scraped {scraped}");
    assert_eq!(
        daemon.metric("clawker_egress_metrics_push_failures_total"),
        0.0
    );
    let (status, _) = daemon.stop();
    assert!(status.success(), "daemon exit: {status}");
    loud(&format!("stack: real-daemon phase took {:?}", t0.elapsed()));
}

pub(crate) const AGENT_LABEL: &str = "dev.clawker.agent";
pub(crate) const PROJECT_LABEL: &str = "dev.clawker.project";

/// Proof (2): two labelled containers (different agent/project) make known
/// connections; a search of `clawker-egress` by agent+project returns
/// exactly that container's flows; lifecycle records land in
/// `clawker-overseer`.
///
/// The engine is shared by the whole machine: when another process stops
/// dockerd mid-attempt (the daemon logs `docker_unavailable`; lifecycle
/// events of that window are gone), the attempt is repeated once.
pub(crate) fn labelled_containers_drill_down(os: &str, door: &DaemonDoor) {
    let t0 = Instant::now();
    let _engine = support::docker::engine();
    for attempt in 1..=2 {
        let daemon = otlp_daemon(support::DaemonOptions::host_root(), door);
        support::docker::wait_attribution_ready(&daemon);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            labelled_containers_attempt(os)
        }));
        let outage = daemon
            .stderr_lines()
            .iter()
            .any(|l| l.contains("docker_unavailable"));
        match result {
            Ok(()) => {
                let (status, _) = daemon.stop();
                assert!(status.success(), "daemon exit: {status}");
                loud(&format!(
                    "stack: labelled-containers phase took {:?}",
                    t0.elapsed()
                ));
                return;
            }
            Err(_) if outage && attempt == 1 => loud(
                "stack: dockerd went away during the containers phase (another process \
                 restarted it); repeating the attempt once",
            ),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

/// One attempt, with a daemon following Docker already running.
pub(crate) fn labelled_containers_attempt(os: &str) {
    use support::docker::{Spec, IMAGE};
    // Takes "hi\n" and closes: one flow of 3 bytes out per connection.
    let server = support::TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    let connect = format!("echo hi | nc -w 2 127.0.0.1 {}", server.port);
    let run = unique();
    let (agent_a, project_a) = (format!("agent-a-{run}"), format!("proj-a-{run}"));
    let (agent_b, project_b) = (format!("agent-b-{run}"), format!("proj-b-{run}"));
    // The short sleep lets the daemon enrol the new cgroup first (scope: containers).
    let a = Spec::new(
        "ce-stack-a",
        format!("sleep 0.3; {connect}; {connect}; exit 7"),
    )
    .label(AGENT_LABEL, &agent_a)
    .label(PROJECT_LABEL, &project_a)
    .run();
    let b = Spec::new("ce-stack-b", format!("sleep 0.3; {connect}"))
        .label(AGENT_LABEL, &agent_b)
        .label(PROJECT_LABEL, &project_b)
        .run();
    assert_eq!(a.wait(), 7);
    assert_eq!(b.wait(), 0);
    a.remove();
    b.remove();

    let by = |agent: &str, project: &str| {
        json!({ "bool": { "filter": [
            term("attributes.agent", agent), term("attributes.project", project) ] } })
    };
    let flows_a = wait_until(
        "container a's 2 flows in clawker-egress",
        Duration::from_secs(60),
        || {
            let hits = search(os, "clawker-egress", by(&agent_a, &project_a));
            let b_seen = !search(os, "clawker-egress", by(&agent_b, &project_b)).is_empty();
            (hits.len() >= 2 && b_seen).then_some(hits)
        },
    );
    let overseer = wait_until(
        "both containers' lifecycle in clawker-overseer",
        Duration::from_secs(60),
        || {
            let hits = search(
                os,
                "clawker-overseer",
                json!({ "terms": { "attributes.container_id": [a.id.as_str(), b.id.as_str()] } }),
            );
            let n = |id: &str| {
                hits.iter()
                    .filter(|h| h["_source"]["attributes"]["container_id"] == id)
                    .count()
            };
            (n(&a.id) >= 3 && n(&b.id) >= 3).then_some(hits)
        },
    );
    std::thread::sleep(Duration::from_secs(2)); // stragglers, if any
    let flows_a_after = search(os, "clawker-egress", by(&agent_a, &project_a));
    assert_eq!(
        flows_a_after.len(),
        2,
        "exactly a's flows: {flows_a_after:#?}"
    );
    for d in &flows_a {
        let s = &d["_source"];
        let at = &s["attributes"];
        assert!(d.get("_ignored").is_none(), "{d}");
        assert_eq!(at["container_id"], a.id.as_str(), "{s}");
        assert_eq!(at["container_name"], a.name.as_str(), "{s}");
        assert_eq!(at["container_image"], IMAGE, "{s}");
        assert_eq!(at["dst_port"], server.port, "{s}");
        assert_eq!(at["dst_ip"], "127.0.0.1", "{s}");
        assert_eq!(at["bytes_out"], 3, "{s}");
        assert_eq!(at["l4_proto"], "tcp", "{s}");
        assert!(!at["comm"].as_str().unwrap().is_empty(), "{s}");
        assert_eq!(s["resource"]["service.name"], "clawker-egress", "{s}");
    }
    let flows_b = search(os, "clawker-egress", by(&agent_b, &project_b));
    assert_eq!(flows_b.len(), 1, "{flows_b:#?}");
    assert_eq!(
        flows_b[0]["_source"]["attributes"]["container_id"],
        b.id.as_str()
    );
    // Nothing of b under a's agent, nor across the pairs.
    assert!(search(os, "clawker-egress", by(&agent_a, &project_b)).is_empty());
    assert!(search(os, "clawker-egress", by(&agent_b, &project_a)).is_empty());
    let of_b_in_a = search(
        os,
        "clawker-egress",
        json!({ "bool": { "filter": [ term("attributes.container_id", &b.id),
            term("attributes.agent", &agent_a) ] } }),
    );
    assert!(of_b_in_a.is_empty(), "{of_b_in_a:#?}");
    // Lifecycle: start, die (with the exit code), destroy, same identity.
    for (c, agent, project, code) in [(&a, &agent_a, &project_a, 7), (&b, &agent_b, &project_b, 0)]
    {
        let mine: Vec<&Value> = overseer
            .iter()
            .map(|h| &h["_source"])
            .filter(|s| s["attributes"]["container_id"] == c.id.as_str())
            .collect();
        for event in ["container_start", "container_die", "container_destroy"] {
            let r = mine
                .iter()
                .find(|s| s["attributes"]["event"] == event)
                .unwrap_or_else(|| panic!("no {event} for {}: {mine:#?}", c.name));
            assert_eq!(r["attributes"]["agent"], agent.as_str(), "{r}");
            assert_eq!(r["attributes"]["project"], project.as_str(), "{r}");
            assert_eq!(r["attributes"]["clawker.source"], "overseer", "{r}");
            if event == "container_die" {
                assert_eq!(r["attributes"]["exit_code"], code, "{r}");
            }
        }
    }
}
