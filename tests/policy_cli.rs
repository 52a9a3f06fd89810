//! `clawker-egress policy check|explain` as a user runs them: the built
//! binary, fixture files, no root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_clawker-egress");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policy")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run clawker-egress")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn explain(extra: &[&str]) -> String {
    let file = fixture("policy.yaml");
    let mut args = vec!["policy", "explain", "--file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

#[test]
fn check_good_file_prints_summary_and_warnings() {
    let o = run(&["policy", "check", fixture("policy.yaml").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("ok (mode enforce, raw_sockets deny, 2 project(s))"),
        "{out}"
    );
    assert!(
        out.contains("project web: 9 rule(s), default_action deny"),
        "{out}"
    );
    assert!(
        out.contains("  agent claude: 2 rule(s), default_action inherited"),
        "{out}"
    );
    assert!(
        out.contains("warning: ") && out.contains("clawker.yaml:40:9: path_rules is L7-only"),
        "{out}"
    );
}

#[test]
fn check_bad_file_prints_one_located_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "mode: enforce\nprojects:\n  web:\n    rules:\n      - dst: github.com\n        port: \"9100-9000\"\n").unwrap();
    let o = run(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(
        err,
        format!(
            "{}:6:15: port range \"9100-9000\": start is above end\n",
            bad.display()
        )
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn check_missing_file_fails() {
    let o = run(&["policy", "check", "/nonexistent/policy.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("/nonexistent/policy.yaml: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn explain_agent_rule_refines_project() {
    let out = explain(&[
        "--project",
        "web",
        "--agent",
        "claude",
        "--dst",
        "github.com:22",
    ]);
    assert!(out.contains("decision: deny"), "{out}");
    assert!(
        out.contains("policy.yaml:26:13 (project web, agent claude, rule 2)"),
        "{out}"
    );
    let out = explain(&[
        "--project",
        "web",
        "--agent",
        "claude",
        "--dst",
        "github.com:443",
    ]);
    assert!(out.contains("decision: allow"), "{out}");
    assert!(
        out.contains("(project web, clawker add_domains 1)"),
        "{out}"
    );
}

#[test]
fn explain_default_action_and_fallback() {
    let out = explain(&["--project", "web", "--dst", "example.org:443"]);
    assert!(out.contains("decision: deny"), "{out}");
    assert!(
        out.contains("rule:     none (default_action of project web)"),
        "{out}"
    );
    let out = explain(&[
        "--project",
        "unknown",
        "--dst",
        "9.9.9.9:53",
        "--proto",
        "udp",
    ]);
    assert!(out.contains("scope:    default section"), "{out}");
    assert!(out.contains("decision: allow"), "{out}");
}

#[test]
fn explain_cidr_v6_and_resolved_ip() {
    let out = explain(&["--project", "web", "--dst", "[2001:db8::7]:443"]);
    assert!(
        out.contains("decision: allow") && out.contains("2001:db8::/32"),
        "{out}"
    );
    let out = explain(&[
        "--project",
        "web",
        "--dst",
        "build.internal:9050",
        "--ip",
        "10.20.3.4",
    ]);
    assert!(
        out.contains("decision: allow") && out.contains("10.20.0.0/16"),
        "{out}"
    );
}

#[test]
fn explain_rejects_a_bad_dst() {
    let file = fixture("policy.yaml");
    let o = run(&[
        "policy",
        "explain",
        "--file",
        file.to_str().unwrap(),
        "--dst",
        "github.com",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing :port"), "{}", stderr(&o));
}

#[test]
fn check_warns_about_domain_rules_the_kernel_cannot_tell_apart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    // The second name has the first one's 64-bit name hash.
    std::fs::write(
        &file,
        "default:\n  rules:\n\
         \x20   - {dst: github.com, proto: tcp, action: allow}\n\
         \x20   - {dst: aftkdtesaxvlafewbcokawpmanhicsfx.collide.test, proto: tcp, action: allow}\n",
    )
    .unwrap();
    let out = run(&["policy", "check", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "warning: default: domain aftkdtesaxvlafewbcokawpmanhicsfx.collide.test has the same kernel hash"
        ),
        "{}",
        stdout(&out)
    );
}
