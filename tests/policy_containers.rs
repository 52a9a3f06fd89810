//! Issue 6 (policy per container): real dockerd, real labels, the daemon at
//! the host cgroup root. Each container's rules are chosen by its own
//! `dev.clawker.project` / `dev.clawker.agent` labels (agent rules refine
//! project rules); unlabelled containers get the default section.
//!
//! The policy only constrains this test's project: containers of other
//! tests running at the same time fall under the default section (allow).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::docker::{engine, wait_attribution_ready, Spec};
use support::{require_root, Daemon, DaemonOptions, TcpServer};

const WAIT: Duration = Duration::from_secs(20);

fn egress_of<'a>(recs: &'a [Value], container_id: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["clawker.source"] == "egress" && r["container_id"] == container_id)
        .collect()
}

fn verdict_to(recs: &[&Value], port: u16) -> String {
    let to: Vec<&&Value> = recs.iter().filter(|r| r["dst_port"] == port).collect();
    assert_eq!(to.len(), 1, "one record to {port}: {recs:#?}");
    to[0]["verdict"].as_str().unwrap().to_owned()
}

#[test]
fn each_container_is_decided_by_its_own_labels() {
    if !require_root("each_container_is_decided_by_its_own_labels") {
        return;
    }
    let _engine = engine();
    let a = TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    let b = TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "default:\n  default_action: allow\n\
             projects:\n  ce-policy-proj:\n    default_action: deny\n    rules:\n\
             \x20     - {{dst: 127.0.0.1, proto: tcp, port: \"{pa}\", action: allow}}\n\
             \x20   agents:\n      strict:\n        rules:\n\
             \x20         - {{dst: 127.0.0.1, port: \"{pa}\", action: deny}}\n",
            pa = a.port
        ),
    )
    .unwrap();
    let daemon = Daemon::start(
        DaemonOptions::host_root()
            .arg("--policy")
            .arg(policy.to_str().unwrap()),
    );
    wait_attribution_ready(&daemon);

    // exit code = 10 * (port a failed) + (port b failed)
    let script = format!(
        "sleep 1; echo hi | nc -w 2 127.0.0.1 {pa} && A=0 || A=1; \
         echo hi | nc -w 2 127.0.0.1 {pb} && B=0 || B=1; exit $((A * 10 + B))",
        pa = a.port,
        pb = b.port
    );
    let loose = Spec::new("ce-pol-loose", script.as_str())
        .label("dev.clawker.project", "ce-policy-proj")
        .label("dev.clawker.agent", "loose")
        .run();
    let strict = Spec::new("ce-pol-strict", script.as_str())
        .label("dev.clawker.project", "ce-policy-proj")
        .label("dev.clawker.agent", "strict")
        .run();
    let plain = Spec::new("ce-pol-plain", script.as_str()).run();
    assert_eq!(
        loose.wait(),
        1,
        "project rule allows a, project default denies b"
    );
    assert_eq!(
        strict.wait(),
        11,
        "the agent's deny refines the project's allow"
    );
    assert_eq!(plain.wait(), 0, "unlabelled: the default section allows");

    let recs = daemon.wait_for("every container's decisions", WAIT, |r| {
        [&loose, &strict, &plain]
            .iter()
            .all(|c| egress_of(r, &c.id).len() >= 2)
    });
    let l = egress_of(&recs, &loose.id);
    assert_eq!(verdict_to(&l, a.port), "ALLOWED");
    assert_eq!(verdict_to(&l, b.port), "DENIED");
    assert!(l
        .iter()
        .all(|r| r["agent"] == "loose" && r["project"] == "ce-policy-proj"));
    let s = egress_of(&recs, &strict.id);
    assert_eq!(verdict_to(&s, a.port), "DENIED");
    assert_eq!(verdict_to(&s, b.port), "DENIED");
    let p = egress_of(&recs, &plain.id);
    assert_eq!(verdict_to(&p, a.port), "ALLOWED");
    assert_eq!(verdict_to(&p, b.port), "ALLOWED");
}
