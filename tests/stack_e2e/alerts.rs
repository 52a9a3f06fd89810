//! The shipped alert rules on real data: the real daemon (BPF at the host
//! root, following Docker) counts a labelled container's upload into its
//! per-agent series, the real Prometheus scrapes it and evaluates the
//! shipped prometheus/rules.yml, and ClawkerAgentExfiltration goes firing
//! for that agent. Only the threshold is lowered (to 4 MiB, through the
//! documented override file) and the evaluation made fast (1 s), so the
//! test takes seconds.

use super::*;

const UPLOAD: usize = 8 << 20;
const THRESHOLD: usize = 4 << 20;

#[test]
fn stack_exfiltration_alert_fires_for_a_real_upload() {
    let test = "stack_exfiltration_alert_fires_for_a_real_upload";
    if !preconditions(test, true, &["prometheus", "promtool", "curl", "docker"]) {
        return;
    }
    let _engine = support::docker::engine();
    // Not Stack::new: its reaping stops the servers of every other test
    // process (it takes them for stale), and its "clawker-stack-" prefix
    // would make this Prometheus theirs to stop.
    let mut stack = Stack::unreaped("alerts");
    let daemon_port = port("CLAWKER_STACK_ALERTS_DAEMON_PORT", 19474);
    let daemon = support::Daemon::start_on_port(support::DaemonOptions::host_root(), daemon_port);
    support::docker::wait_attribution_ready(&daemon);

    let thresholds = stack.path("thresholds.yml");
    std::fs::write(
        &thresholds,
        format!(
            "groups:\n  - name: clawker-thresholds\n    rules:\n      \
             - record: clawker_egress_alert_threshold\n        expr: vector({THRESHOLD})\n        \
             labels: {{ name: bytes_out_1h }}\n"
        ),
    )
    .unwrap();
    let data = stack.path("prometheus");
    let mut stop = script("stack-prometheus");
    stop.arg("stop").arg("--data").arg(&data);
    stack.stops.push(("prometheus".into(), stop));
    let mut start = script("stack-prometheus");
    let prom_port = port("CLAWKER_STACK_ALERTS_PROMETHEUS_PORT", 19091);
    start
        .args(["start", "--port", &prom_port.to_string()])
        .args(["--scrape-interval", "1s"])
        .args(["--daemon", &format!("127.0.0.1:{daemon_port}")])
        .arg("--thresholds")
        .arg(&thresholds)
        .arg("--data")
        .arg(&data);
    let prom = run_ok(start, "scripts/stack-prometheus start");

    // Prometheus scrapes its first targets a few seconds after it is ready
    // (target discovery is throttled): what happened before is not in it.
    wait_until(
        "Prometheus scraping the daemon",
        Duration::from_secs(60),
        || (!prom_query(&prom, "up{job=\"clawker-egress\"} == 1").is_empty()).then_some(()),
    );
    let run = unique();
    let (agent, project) = (format!("exfil-{run}"), format!("proj-{run}"));
    let (quiet, _) = (format!("quiet-{run}"), ());
    let sink = support::TcpServer::spawn("127.0.0.1:0", Some(UPLOAD), 0);
    // The sleep: the new agent's zeroed series are scraped before its
    // upload (docs/ALERTS.md "First burst"); 3 scrape intervals.
    let upload = support::docker::Spec::new(
        "ce-alert-exfil",
        format!(
            "sleep 3; head -c {UPLOAD} /dev/zero | nc -w 5 127.0.0.1 {}",
            sink.port
        ),
    )
    .label(AGENT_LABEL, &agent)
    .label(PROJECT_LABEL, &project)
    .run();
    // An agent sending a little: no alert for it.
    let small = support::docker::Spec::new(
        "ce-alert-quiet",
        format!("sleep 3; echo hi | nc -w 2 127.0.0.1 {}", sink.port),
    )
    .label(AGENT_LABEL, &quiet)
    .label(PROJECT_LABEL, &project)
    .run();
    assert_eq!(upload.wait(), 0, "upload container failed");
    assert_eq!(small.wait(), 0, "quiet container failed");

    let started = Instant::now();
    let alert = wait_until(
        "ClawkerAgentExfiltration firing for the uploading agent",
        Duration::from_secs(90),
        || {
            let alerts = get_json(&format!("{prom}/api/v1/alerts"));
            alerts["data"]["alerts"]
                .as_array()?
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == "ClawkerAgentExfiltration"
                        && a["labels"]["agent"] == agent.as_str()
                        && a["state"] == "firing"
                })
                .cloned()
        },
    );
    loud(&format!(
        "alerts: ClawkerAgentExfiltration firing {:?} after both containers exited: {alert}",
        started.elapsed()
    ));
    assert_eq!(alert["labels"]["project"], project.as_str(), "{alert}");
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    let value: f64 = alert["value"].as_str().unwrap().parse().unwrap();
    assert!(value > THRESHOLD as f64, "{alert}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains(&agent),
        "{alert}"
    );
    // The series it fired on: the upload, counted for that agent over TCP.
    let sent = prom_query(
        &prom,
        &format!(
            "clawker_egress_agent_bytes_out_total{{agent=\"{agent}\",project=\"{project}\",l4_proto=\"tcp\"}}"
        ),
    );
    assert_eq!(sent.len(), 1, "{sent:?}");
    let bytes: f64 = sent[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(bytes >= UPLOAD as f64, "{sent:?}");
    // The small sender has its series and no alert.
    let alerts = get_json(&format!("{prom}/api/v1/alerts"));
    assert!(
        !alerts
            .to_string()
            .contains(&format!("\"agent\":\"{quiet}\"")),
        "{alerts}"
    );
    let quiet_sent = prom_query(
        &prom,
        &format!("clawker_egress_agent_bytes_out_total{{agent=\"{quiet}\",l4_proto=\"tcp\"}}"),
    );
    assert_eq!(quiet_sent.len(), 1, "{quiet_sent:?}");
    upload.remove();
    small.remove();
    let (status, _) = daemon.stop();
    assert!(status.success(), "daemon exit: {status}");
}
