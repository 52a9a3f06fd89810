//! `policy suggest` as a user runs it: records in, a `.clawker.yaml` out,
//! and `policy explain` (the built binary) allows every observed flow with
//! it and nothing else that was asked. Real records from the real daemon
//! (root: a test cgroup making TCP and UDP flows to loopback servers the
//! test owns), and a records file with host names (no root).

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::{by_pid, pid_of, Daemon, DaemonOptions, TcpServer, TestCgroup};

const BIN: &str = env!("CARGO_BIN_EXE_clawker-egress");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run clawker-egress")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `policy explain` of one record's destination against `file`.
fn explain(file: &Path, project: &str, r: &Value) -> String {
    let proto = r["l4_proto"].as_str().unwrap();
    let ip = r["dst_ip"].as_str().unwrap();
    let host = r["dst_host"].as_str().unwrap_or("");
    let port = r["dst_port"].as_u64().unwrap_or(0);
    let dst = match (host, ip.contains(':')) {
        ("", true) => format!("[{ip}]:{port}"),
        ("", false) => format!("{ip}:{port}"),
        (h, _) => format!("{h}:{port}"),
    };
    let mut args = vec![
        "policy".to_string(),
        "explain".into(),
        "--file".into(),
        file.to_str().unwrap().into(),
        "--project".into(),
        project.into(),
        "--dst".into(),
        dst,
        "--proto".into(),
        proto.into(),
    ];
    if !host.is_empty() {
        args.extend(["--ip".into(), ip.into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(run(&args))
}

fn suggest(records: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "policy",
        "suggest",
        "--records",
        records.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(run(&args));
}

#[test]
fn suggest_from_real_daemon_records_and_explain_agrees() {
    require_root!();
    let cg = TestCgroup::new("ce-suggest");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg));
    let a = TcpServer::spawn("127.0.0.1:0", Some(2), 0);
    let b = TcpServer::spawn("[::1]:0", Some(2), 0);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let out = cg.python(&format!(
        "import os, socket\nprint(os.getpid(), flush=True)\n\
         for host, port in (('127.0.0.1', {a}), ('::1', {b}), ('127.0.0.1', {a})):\n    \
         s = socket.create_connection((host, port)); s.sendall(b'hi'); s.recv(10); s.close()\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         u.sendto(b'x', ('127.0.0.1', {udp_port})); u.close()\n",
        a = a.port,
        b = b.port,
    ));
    let pid = pid_of(&out);
    let recs = daemon.wait_for("3 TCP flows and a UDP one", Duration::from_secs(60), |r| {
        let mine = by_pid(r, pid);
        mine.iter().filter(|r| r["l4_proto"] == "tcp").count() >= 3
            && mine.iter().any(|r| r["l4_proto"] == "udp")
    });
    let (status, _) = daemon.stop();
    assert!(status.success());
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.jsonl");
    let lines: Vec<String> = recs.iter().map(Value::to_string).collect();
    std::fs::write(&records, lines.join("\n")).unwrap();
    let file = dir.path().join(".clawker.yaml");
    suggest(&records, &file, &[]);
    let yaml = std::fs::read_to_string(&file).unwrap();
    // Exactly the three destinations, addresses only (no names were known).
    assert_eq!(yaml.matches("action: allow").count(), 3, "{yaml}");
    for r in by_pid(&recs, pid) {
        let out = explain(&file, "suggested", &r);
        assert!(out.contains("decision: allow"), "{r}\n{out}\n{yaml}");
    }
    // A port next to an observed one stays denied.
    let mut other = by_pid(&recs, pid)[0].clone();
    other["dst_port"] = (a.port.wrapping_add(1)).max(1).into();
    let out = explain(&file, "suggested", &other);
    assert!(out.contains("decision: deny"), "{out}\n{yaml}");
}

#[test]
fn suggest_uses_names_selects_and_explain_agrees() {
    let line =
        |agent: &str, t: &str, verdict: &str, proto: &str, ip: &str, port: u16, host: &str| {
            serde_json::json!({ "@timestamp": t, "clawker.source": "egress", "agent": agent,
            "project": "web", "verdict": verdict, "l4_proto": proto, "dst_ip": ip,
            "dst_port": port, "dst_host": host, "flow_state": "ended" })
            .to_string()
        };
    let t = "2026-11-30T10:00:00.250Z";
    let recs = [
        line(
            "claude",
            t,
            "ALLOWED",
            "tcp",
            "140.82.112.3",
            443,
            "github.com",
        ),
        line(
            "claude",
            t,
            "ALLOWED",
            "tcp",
            "104.16.1.1",
            443,
            "registry.npmjs.org",
        ),
        line("claude", t, "ALLOWED", "tcp", "10.20.0.7", 9000, ""),
        line("claude", t, "ALLOWED", "tcp", "10.20.0.7", 9001, ""),
        line("claude", t, "ALLOWED", "udp", "10.20.0.53", 53, ""),
        line(
            "claude",
            t,
            "ALLOWED",
            "tcp",
            "1.2.3.4",
            22,
            "gitlab.example.com",
        ),
        // Audit mode: it flowed, so it is allowed.
        line(
            "claude",
            t,
            "DENIED",
            "tcp",
            "5.5.5.5",
            8443,
            "audit.example.com",
        )
        .replace("\"flow_state\"", "\"enforced\":false,\"flow_state\""),
        // Enforced denial, another agent, outside the window: left out.
        line("claude", t, "DENIED", "tcp", "6.6.6.6", 443, "evil.example"),
        line(
            "codex",
            t,
            "ALLOWED",
            "tcp",
            "7.7.7.7",
            443,
            "other.example",
        ),
        line(
            "claude",
            "2026-11-29T10:00:00Z",
            "ALLOWED",
            "tcp",
            "8.8.4.4",
            443,
            "old.example",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.jsonl");
    std::fs::write(&records, recs.join("\n")).unwrap();
    let file = dir.path().join(".clawker.yaml");
    suggest(
        &records,
        &file,
        &[
            "--agent",
            "claude",
            "--project",
            "web",
            "--since",
            "2026-11-30T00:00:00Z",
        ],
    );
    let yaml = std::fs::read_to_string(&file).unwrap();
    // The result is a .clawker.yaml policy check accepts as the project's.
    let check = ok(run(&[
        "policy",
        "check",
        file.to_str().unwrap(),
        "--project",
        "web",
    ]));
    // 7 destinations, two ports of one merged into a range: 6 rules.
    assert!(check.contains("project web: 6 rule(s)"), "{check}\n{yaml}");
    for r in &recs[..7] {
        let v: Value = serde_json::from_str(r).unwrap();
        let out = explain(&file, "web", &v);
        assert!(out.contains("decision: allow"), "{v}\n{out}\n{yaml}");
    }
    for r in &recs[7..] {
        let v: Value = serde_json::from_str(r).unwrap();
        let out = explain(&file, "web", &v);
        assert!(out.contains("decision: deny"), "{v}\n{out}\n{yaml}");
    }
    assert!(yaml.contains("port: \"9000-9001\""), "{yaml}");
}
