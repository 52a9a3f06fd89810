//! `clawker-egress report` against the real chain: labelled containers ->
//! the real daemon (BPF at the host root) -> the shipped collector config ->
//! a real OpenSearch node with the shipped templates; the report's figures
//! are the containers' flows.

use super::*;

const UPLOAD: u64 = 64 * 1024;

fn report(os: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_clawker-egress"))
        .args(["report", "--opensearch", os, "--last", "1h"])
        .args(args)
        .output()
        .expect("run clawker-egress report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn stack_report_summarises_each_agent_from_opensearch() {
    let test = "stack_report_summarises_each_agent_from_opensearch";
    if !preconditions(test, true, &["go", "java", "python3", "curl", "docker"]) {
        return;
    }
    let _engine = support::docker::engine();
    // Not Stack::new (see alerts.rs): other test processes reap its prefix.
    let mut stack = Stack::unreaped("report");
    let os = start_opensearch(
        &mut stack,
        port("CLAWKER_STACK_REPORT_OPENSEARCH_PORT", 19210),
    );
    let (ok, lines, err) = bootstrap(&os);
    assert!(ok, "bootstrap: {lines:?} {err}");
    let ports = CollectorPorts {
        grpc: port("CLAWKER_STACK_REPORT_OTLP_GRPC_PORT", 14337),
        http: port("CLAWKER_STACK_REPORT_OTLP_HTTP_PORT", 14338),
        telemetry: port("CLAWKER_STACK_REPORT_TELEMETRY_PORT", 18908),
        exporter: port("CLAWKER_STACK_REPORT_EXPORTER_PORT", 18909),
        health: port("CLAWKER_STACK_REPORT_HEALTH_PORT", 13153),
        daemon_http: port("CLAWKER_STACK_REPORT_OTLP_DAEMON_HTTP_PORT", 14339),
    };
    start_collector(&mut stack, "collector-r", &ports, &os, &[], &[]);
    let door = DaemonDoor::new(&stack, &ports);
    let daemon = otlp_daemon(support::DaemonOptions::host_root(), &door);
    support::docker::wait_attribution_ready(&daemon);

    let run = unique();
    let (agent_a, agent_b, project) = (
        format!("rep-a-{run}"),
        format!("rep-b-{run}"),
        format!("rep-p-{run}"),
    );
    let small = TcpServerPair::new();
    let a = support::docker::Spec::new(
        "ce-report-a",
        format!(
            "sleep 0.3; echo hi | nc -w 2 127.0.0.1 {p}; echo hi | nc -w 2 127.0.0.1 {p}; \
             head -c {UPLOAD} /dev/zero | nc -w 2 127.0.0.1 {q}",
            p = small.three.port,
            q = small.upload.port
        ),
    )
    .label(AGENT_LABEL, &agent_a)
    .label(PROJECT_LABEL, &project)
    .run();
    let b = support::docker::Spec::new(
        "ce-report-b",
        format!(
            "sleep 0.3; echo hi | nc -w 2 127.0.0.1 {}",
            small.three.port
        ),
    )
    .label(AGENT_LABEL, &agent_b)
    .label(PROJECT_LABEL, &project)
    .run();
    assert_eq!(a.wait(), 0);
    assert_eq!(b.wait(), 0);
    a.remove();
    b.remove();
    wait_until(
        "both agents' flows in clawker-egress",
        Duration::from_secs(90),
        || {
            let n =
                |agent: &str| search(&os, "clawker-egress", term("attributes.agent", agent)).len();
            (n(&agent_a) >= 3 && n(&agent_b) >= 1).then_some(())
        },
    );

    let json: Value =
        serde_json::from_str(&report(&os, &["--project", &project, "--json"])).unwrap();
    let agents = json["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{json:#}");
    let ra = agents
        .iter()
        .find(|r| r["agent"] == agent_a.as_str())
        .unwrap();
    assert_eq!(ra["project"], project.as_str(), "{ra}");
    assert_eq!(ra["flows"], 3, "{ra}");
    assert_eq!(ra["bytes_out"], 3 + 3 + UPLOAD, "{ra}");
    assert_eq!(ra["denials"], 0, "{ra}");
    let dests = ra["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), 1, "one address, no name: {ra}");
    assert_eq!(dests[0]["destination"], "127.0.0.1", "{ra}");
    assert_eq!(dests[0]["flows"], 3, "{ra}");
    let rb = agents
        .iter()
        .find(|r| r["agent"] == agent_b.as_str())
        .unwrap();
    assert_eq!(rb["bytes_out"], 3, "{rb}");
    // One agent; the table and the CSV carry the same figures.
    let only_a: Value =
        serde_json::from_str(&report(&os, &["--agent", &agent_a, "--json"])).unwrap();
    assert_eq!(only_a["agents"].as_array().unwrap().len(), 1, "{only_a:#}");
    let table = report(&os, &["--agent", &agent_a]);
    assert!(
        table.contains(&agent_a) && table.contains("127.0.0.1"),
        "{table}"
    );
    let csv = report(&os, &["--agent", &agent_a, "--csv"]);
    let row = csv.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with(&format!("{agent_a},{project},3,{},", 6 + UPLOAD)),
        "{csv}"
    );
    let (status, _) = daemon.stop();
    assert!(status.success(), "daemon exit: {status}");
}

/// A server that takes "hi\n" and one that takes the upload.
struct TcpServerPair {
    three: support::TcpServer,
    upload: support::TcpServer,
}

impl TcpServerPair {
    fn new() -> Self {
        TcpServerPair {
            three: support::TcpServer::spawn("127.0.0.1:0", Some(3), 0),
            upload: support::TcpServer::spawn("127.0.0.1:0", Some(UPLOAD as usize), 0),
        }
    }
}
