//! The shipped Prometheus alert rules, checked and unit-tested by the real
//! promtool (Debian's prometheus package): `promtool check rules` on
//! prometheus/rules.yml and thresholds.yml, `promtool test rules` on every
//! prometheus/tests/*_test.yml, and the coverage promtool does not enforce:
//! every alert has a firing unit test, a summary, a description, and every
//! overridable threshold is documented in docs/ALERTS.md.
//!
//! promtool missing: skipped loudly outside CI, a failure under CI.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() {
        let why = "alert_rules: needs `promtool` (apt-get install prometheus)";
        assert!(std::env::var_os("CI").is_none(), "{why} (CI never skips)");
        eprintln!("\n######## SKIPPED {why}\n");
    }
    found
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.current_dir(repo()).output().expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// `(name, its text up to the next rule)` for every alert in rules.yml.
fn alerts(rules: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert: ") {
            out.push((name.trim().to_owned(), String::new()));
        } else if t.starts_with("- record: ") || t.starts_with("- name: ") {
            out.push((String::new(), String::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    out.retain(|(n, _)| !n.is_empty());
    out
}

fn test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("prometheus/tests"))
        .expect("prometheus/tests")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("_test.yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn promtool_checks_the_shipped_rules() {
    let Some(promtool) = promtool() else { return };
    let out = run(Command::new(&promtool).args([
        "check",
        "rules",
        "prometheus/rules.yml",
        "prometheus/thresholds.yml",
    ]));
    let alerts = alerts(&read(Path::new("prometheus/rules.yml")));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{out}"
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    let files = test_files();
    assert!(files.len() >= 2, "{files:?}");
    let out = run(Command::new(&promtool).args(["test", "rules"]).args(&files));
    assert_eq!(out.matches("SUCCESS").count(), files.len(), "{out}");
}

#[test]
fn every_alert_is_tested_firing_and_explained() {
    let rules = read(Path::new("prometheus/rules.yml"));
    let tests: String = test_files()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let doc = read(Path::new("docs/ALERTS.md"));
    let alerts = alerts(&rules);
    assert!(alerts.len() >= 15, "{alerts:?}");
    for (name, body) in &alerts {
        assert!(body.contains("summary: "), "{name}: no summary");
        assert!(body.contains("description: "), "{name}: no description");
        // A firing expectation: the alert name followed by a non-empty list.
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|t| t.starts_with(&format!("{name}\n")) && !t.contains("exp_alerts: []"));
        assert!(fires, "{name}: no unit test where it fires");
        assert!(doc.contains(name.as_str()), "{name}: not in docs/ALERTS.md");
    }
    // Every overridable threshold is documented with its default.
    let mut thresholds = 0;
    for part in rules
        .split("clawker_egress_alert_threshold{name=\"")
        .skip(1)
    {
        let name = part.split('"').next().unwrap();
        let default = part
            .split("vector(")
            .nth(1)
            .and_then(|d| d.split(')').next())
            .unwrap();
        let row = format!("`{name}` | {default} |");
        assert!(doc.contains(&row), "docs/ALERTS.md lacks the row `{row}`");
        thresholds += 1;
    }
    assert!(thresholds >= 6, "{thresholds}");
}

/// Every daemon metric a shipped rule reads is one the daemon defines (a
/// renamed or misspelt metric would leave its alert silent for ever:
/// promtool cannot know which names exist). Defined: in the registry's
/// text encoding, or, for a labelled family (absent from the text until
/// its first label set), registered under that name by the stages that
/// own the metrics (src/metrics.rs, src/detect/).
#[test]
fn every_daemon_metric_the_rules_read_exists() {
    let rules = read(Path::new("prometheus/rules.yml"));
    let text = clawker_egress::metrics::Metrics::new().encode();
    let mut sources = read(Path::new("src/metrics.rs"));
    for entry in std::fs::read_dir(repo().join("src/detect")).expect("src/detect") {
        sources.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let mut read_names = Vec::new();
    for part in rules.split("clawker_egress_").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // The recorded threshold series (thresholds.yml), not a daemon metric.
        if name == "alert_threshold" {
            continue;
        }
        // Counters are read as `<family>_total`.
        let family = name.strip_suffix("_total").unwrap_or(&name);
        let encoded = text.contains(&format!("# TYPE clawker_egress_{family} "));
        let registered = sources.contains(&format!("\"{family}\","));
        assert!(
            encoded || registered,
            "rules.yml reads clawker_egress_{name}, which the daemon does not define"
        );
        read_names.push(name);
    }
    assert!(
        read_names
            .iter()
            .any(|n| n == "metrics_push_failures_total"),
        "{read_names:?}"
    );
    assert!(read_names.len() >= 10, "{read_names:?}");
}
