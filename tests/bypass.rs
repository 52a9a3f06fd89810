//! Issue 6 (bypass): audited break-glass on the real kernel. During a
//! bypass every flow is still recorded, as BYPASSED; start, early stop and
//! expiry are overseer records saying who, when, why and until when.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{by_pid, Daemon, DaemonOptions, TcpServer, TestCgroup};

const WAIT: Duration = Duration::from_secs(30);

/// Connect from the cgroup: (pid, errno or 0).
fn connect(cg: &TestCgroup, port: u16) -> (u32, i64) {
    let out = cg.python(&format!(
        "import os, socket\nprint(os.getpid(), flush=True)\n\
         s = socket.socket()\nprint(s.connect_ex(('127.0.0.1', {port})))\ns.close()\n"
    ));
    let mut lines = out.lines();
    (
        lines.next().unwrap().trim().parse().unwrap(),
        lines.next().unwrap().trim().parse().unwrap(),
    )
}

fn overseer(recs: &[Value], event: &str) -> Vec<Value> {
    recs.iter()
        .filter(|r| r["clawker.source"] == "overseer" && r["event"] == event)
        .cloned()
        .collect()
}

#[test]
fn a_bypass_is_recorded_enforced_as_bypassed_and_audited() {
    require_root!();
    let cg = TestCgroup::new("ce-bypass");
    // The policy denies everything: only the bypass lets traffic through.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("deny-all.yaml");
    std::fs::write(&policy, "default:\n  default_action: deny\n").unwrap();
    let opts = DaemonOptions::for_cgroup(&cg).policy(&policy);
    let pin_root = opts.pin_root.clone();
    let daemon = Daemon::start(opts);
    let server = TcpServer::spawn("127.0.0.1:0", None, 0);

    let out = cg.bypass(
        &pin_root,
        &["--for", "15m", "--reason", "incident 42: debug proxy"],
    );
    assert!(out.contains("bypass on"), "{out}");
    let (during, err) = connect(&cg, server.port);
    assert_eq!(err, 0, "a denied destination connects during the bypass");
    let recs = daemon.wait_for("bypassed flow and start record", WAIT, |r| {
        !by_pid(r, during).is_empty() && !overseer(r, "bypass_start").is_empty()
    });
    assert_eq!(
        by_pid(&recs, during)[0]["verdict"],
        "BYPASSED",
        "still recorded during bypass"
    );
    let start = &overseer(&recs, "bypass_start")[0];
    assert_eq!(start["bypass_reason"], "incident 42: debug proxy");
    assert_eq!(start["bypass_uid"], 0);
    assert_eq!(start["bypass_user"], "root");
    assert!(start["bypass_until"].as_str().unwrap().ends_with('Z'));

    let out = cg.bypass(&pin_root, &["--off"]);
    assert!(out.contains("bypass ended"), "{out}");
    daemon.wait_for("stop record", WAIT, |r| {
        !overseer(r, "bypass_stop").is_empty()
    });
    let (after, err) = connect(&cg, server.port);
    assert_eq!(err, 1, "EPERM again once the bypass is off");
    let recs = daemon.wait_for("flow after the bypass", WAIT, |r| {
        !by_pid(r, after).is_empty()
    });
    assert_eq!(by_pid(&recs, after)[0]["verdict"], "DENIED");

    // A short bypass expires by itself, and says so.
    cg.bypass(&pin_root, &["--for", "1s", "--reason", "short"]);
    let recs = daemon.wait_for("expiry record", WAIT, |r| {
        !overseer(r, "bypass_expired").is_empty()
    });
    assert_eq!(
        overseer(&recs, "bypass_expired")[0]["bypass_reason"],
        "short"
    );
    let (late, err) = connect(&cg, server.port);
    assert_eq!(err, 1, "DENIED again after expiry");
    let recs = daemon.wait_for("flow after expiry", WAIT, |r| !by_pid(r, late).is_empty());
    assert_eq!(by_pid(&recs, late)[0]["verdict"], "DENIED");
}

#[test]
fn a_bypass_needs_a_reason_and_a_bound() {
    let run = |args: &[&str]| {
        Command::new(support::bin())
            .arg("bypass")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--cgroup", "/tmp", "--for", "5m"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reason is required"));
    let out = run(&["--cgroup", "/tmp", "--for", "48h", "--reason", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 24h"));
}
