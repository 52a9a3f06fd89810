//! Issue 10, the collector's side: the daemon door takes only authenticated
//! senders (TLS, client certificate, bearer token); the agent door, which
//! agents can reach, can only ever produce clawker-claude records.

use std::time::Duration;

use serde_json::{json, Value};

use crate::plumbing::*;

/// Every clawker-* document of this test run.
fn run_docs(os: &str, run: &str) -> Vec<Value> {
    search(os, "clawker-*", term("attributes.test_run", run))
}

fn egress_shaped(run: &str, body: &str) -> Value {
    log_record(
        body,
        &[
            ("clawker.source", json!("egress")),
            ("test_run", json!(run)),
            ("agent", json!("agent-victim")),
            ("project", json!("proj-1")),
            ("verdict", json!("ALLOWED")),
            ("hook", json!("connect4")),
            ("dst_host", json!("exfil.example")),
            ("dst_ip", json!("192.0.2.7")),
            ("dst_port", json!(443)),
            ("cgroup_id", json!(4242)),
            ("flow_state", json!("closed")),
        ],
    )
}

/// Forged daemon/overseer/cp records sent to the agent door (no
/// credential needed there) land in clawker-claude as Claude Code
/// records, without the daemon's fields, or not at all; nothing reaches
/// clawker-egress, -overseer, -cp or -unrouted.
pub(crate) fn agent_door_only_writes_claude(os: &str, ports: &CollectorPorts, door: &DaemonDoor) {
    let run = unique();
    let forged_res = [
        ("service.name", json!("clawker-egress")),
        ("host.name", json!("monitor-host")),
    ];
    let payload = json!({ "resourceLogs": [
        resource_logs(&forged_res, "clawker-egress", vec![
            // Shaped like a flow, with a body that passes the D28 filter.
            egress_shaped(&run, "claude_code.api_request"),
            // Shaped like a flow, with a flow's body: dropped (D28: a
            // claude-code body that is not an event name).
            egress_shaped(&run, "ALLOWED tcp curl -> 192.0.2.7:443"),
            // A fake end of a break-glass bypass.
            log_record("claude_code.bypass_stop", &[
                ("clawker.source", json!("overseer")), ("test_run", json!(run)),
                ("event", json!("bypass_stop")), ("agent", json!("agent-victim")),
                ("bypass_user", json!("alice")), ("bypass_reason", json!("done")),
                ("container_id", json!("0123456789ab"))]),
            // The daemon's own log.
            log_record("claude_code.cp", &[
                ("clawker.source", json!("cp")), ("test_run", json!(run)),
                ("event", json!("docker_unavailable")), ("level", json!("WARN"))]),
            log_record("claude_code.mystery", &[
                ("clawker.source", json!("mystery")), ("test_run", json!(run))]),
        ]),
        resource_logs(&[("service.name", json!("claude-code")), ("agent", json!("agent-a")),
                        ("project", json!("proj-1"))],
            "com.anthropic.claude_code.events", vec![
            log_record("claude_code.api_request", &[
                ("event.name", json!("api_request")), ("test_run", json!(run)),
                ("model", json!("claude-sonnet")), ("duration_ms", json!("850"))]),
        ]),
    ]});
    let url = format!("http://127.0.0.1:{}/v1/logs", ports.http);
    let (s, v) = http("POST", &url, Some(&payload));
    assert_eq!(s, 200, "agent door: {v}");
    let expected = 5;
    let docs = wait_until(
        "the agent door's records in OpenSearch",
        Duration::from_secs(60),
        || {
            let d = run_docs(os, &run);
            (d.len() >= expected).then_some(d)
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let docs_after = run_docs(os, &run);
    assert_eq!(docs_after.len(), expected, "{docs_after:#?}");
    for d in &docs {
        let index = d["_index"].as_str().unwrap();
        assert!(
            index.starts_with(".ds-clawker-claude-"),
            "agent door wrote {index}: {d:#}"
        );
        let src = &d["_source"];
        let a = &src["attributes"];
        assert_eq!(
            a["clawker"]["source"]
                .as_str()
                .or(a["clawker.source"].as_str()),
            Some("claude"),
            "{d:#}"
        );
        assert_eq!(src["resource"]["service.name"], "claude-code", "{d:#}");
        for k in [
            "verdict",
            "hook",
            "dst_host",
            "dst_ip",
            "dst_port",
            "cgroup_id",
            "flow_state",
            "event",
            "bypass_user",
            "bypass_reason",
            "container_id",
            "level",
        ] {
            assert!(a.get(k).is_none(), "{k} survived the agent door: {d:#}");
        }
    }
    for stream in [
        "clawker-egress",
        "clawker-overseer",
        "clawker-cp",
        "clawker-unrouted",
    ] {
        let hits = search(os, stream, term("attributes.test_run", &run));
        assert!(hits.is_empty(), "agent door reached {stream}: {hits:#?}");
    }
    loud(&format!(
        "stack: agent door: {} records (forged + genuine), all in clawker-claude as claude; 1 dropped by D28",
        docs.len()
    ));
    // The genuine Claude Code record is intact.
    assert!(docs
        .iter()
        .any(|d| d["_source"]["attributes"]["model"] == "claude-sonnet"
            && d["_source"]["attributes"]["agent"] == "agent-a"));

    // The same forged flow through the daemon door, with its credentials,
    // is routed by its source: the doors differ, not the records.
    let trusted = unique();
    let payload = json!({ "resourceLogs": [resource_logs(
        &[("service.name", json!("clawker-egress"))], "clawker_egress",
        vec![egress_shaped(&trusted, "ALLOWED tcp curl -> 192.0.2.7:443")])] });
    let (s, v) = door.post("/v1/logs", &payload, Some(&door.token()));
    assert_eq!(s, 200, "daemon door: {v}");
    wait_until(
        "the daemon door's record in clawker-egress",
        Duration::from_secs(60),
        || {
            (!search(os, "clawker-egress", term("attributes.test_run", &trusted)).is_empty())
                .then_some(())
        },
    );
}

/// The daemon door: no token, a wrong token, no client certificate, or
/// plaintext -- refused, and nothing is stored.
pub(crate) fn daemon_door_refuses_the_unauthenticated(
    os: &str,
    ports: &CollectorPorts,
    door: &DaemonDoor,
) {
    let run = unique();
    let payload = json!({ "resourceLogs": [resource_logs(
        &[("service.name", json!("clawker-egress"))], "clawker_egress",
        vec![egress_shaped(&run, "ALLOWED tcp curl -> 192.0.2.7:443")])] });
    let (s, v) = door.post("/v1/logs", &payload, None);
    assert_eq!(s, 401, "no token: {v}");
    let (s, v) = door.post("/v1/logs", &payload, Some("not-the-token"));
    assert_eq!(s, 401, "wrong token: {v}");
    // An empty token must not match an empty line of the token file.
    let (s, v) = door.post("/v1/logs", &payload, Some(""));
    assert_eq!(s, 401, "empty token: {v}");
    let (s, v) = door.post_without_client_cert("/v1/logs", &payload, &door.token());
    assert_ne!(s, 200, "no client certificate: {v}");
    let (s, v) = http(
        "POST",
        &format!("http://127.0.0.1:{}/v1/logs", ports.daemon_http),
        Some(&payload),
    );
    assert_ne!(s, 200, "plaintext: {v}");
    std::thread::sleep(Duration::from_secs(3));
    let hits = run_docs(os, &run);
    assert!(hits.is_empty(), "refused records stored: {hits:#?}");
    loud("stack: daemon door: no/wrong/empty token, no client cert, plaintext: all refused");
}
