//! Several sinks at once (issue 11), with the real daemon (real BPF on a
//! test cgroup): `--output stdout,otlp,file:<path>`. Each sink has its own
//! queue and its own loss accounting: with the collector down and no disk
//! spool, the OTLP sink loses (counted, `sink="otlp"`) while stdout and the
//! file still get every record; the file rotates by size, whole lines only.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{Daemon, DaemonOptions, TcpServer, TestCgroup};

#[test]
fn stdout_otlp_and_a_rotated_file_each_get_every_record_and_count_their_own_losses() {
    require_root!();
    let cg = TestCgroup::new("ce-sinks");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("egress.jsonl");
    let down = support::free_port(); // no collector
    let mut opts = DaemonOptions::for_cgroup(&cg)
        .arg("--output")
        .arg(format!("stdout,otlp,file:{}", file.display()))
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{down}"));
    for (k, v) in [
        ("CLAWKER_EGRESS_SPOOL_BYTES", "0"),
        ("CLAWKER_EGRESS_OTLP_QUEUE_RECORDS", "100"),
        ("CLAWKER_EGRESS_FILE_ROTATE_BYTES", "65536"),
        ("CLAWKER_EGRESS_FILE_ROTATE_KEEP", "50"),
    ] {
        opts.env.push((k.into(), v.into()));
    }
    let d = Daemon::start(opts);
    let server = TcpServer::spawn("127.0.0.1:0", Some(0), 0);
    let n = 1000;
    cg.python(&format!(
        "import socket\n\
         for _ in range({n}):\n\
         \x20   s = socket.create_connection(('127.0.0.1', {port})); s.close()\n",
        port = server.port
    ));
    let cgid = cg.id();
    d.wait_for("the flows on stdout", Duration::from_secs(60), |r| {
        r.iter()
            .filter(|r| r["cgroup_id"].as_u64() == Some(cgid))
            .count()
            >= n
    });
    // The file sink and the metrics trail stdout (each sink has its own
    // queue): read all three until they agree, then assert on that.
    let file_label = format!("file:{}", file.display());
    let read_all = || {
        let stdout: Vec<String> = d
            .records()
            .iter()
            .map(|r| r["record_id"].as_str().unwrap().to_string())
            .collect();
        // The file (current + rotated parts, oldest first).
        let mut parts: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("egress.jsonl.")
            })
            .collect();
        parts.sort_by_key(|p| {
            std::cmp::Reverse(
                p.extension()
                    .and_then(|e| e.to_str()?.parse::<u32>().ok())
                    .unwrap_or(0),
            )
        });
        parts.push(file.clone());
        let texts: Vec<(std::path::PathBuf, String)> = parts
            .into_iter()
            .map(|p| {
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                (p, t)
            })
            .collect();
        (stdout, texts, d.metrics())
    };
    let exported = |m: &str, sink: &str| {
        support::metric_value(
            m,
            &format!("clawker_egress_records_exported_total{{sink=\"{sink}\"}}"),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (stdout, texts, m) = loop {
        let (stdout, texts, m) = read_all();
        let lines: usize = texts.iter().map(|(_, t)| t.matches('\n').count()).sum();
        let whole = texts.iter().all(|(_, t)| t.is_empty() || t.ends_with('\n'));
        let caught_up = whole
            && lines == stdout.len()
            && exported(&m, "stdout") == stdout.len() as f64
            && exported(&m, &file_label) == stdout.len() as f64;
        if caught_up || std::time::Instant::now() > deadline {
            break (stdout, texts, m);
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    // The file holds the same records in the same order, each line whole.
    let parts: Vec<&std::path::PathBuf> = texts.iter().map(|(p, _)| p).collect();
    assert!(parts.len() > 1, "no rotation at 64 KiB for {n} records");
    let mut in_file = Vec::new();
    for (p, text) in &texts {
        assert!(text.is_empty() || text.ends_with('\n'), "{}", p.display());
        if p != &file {
            assert!(text.len() >= 65536, "{} rotated early", p.display());
        }
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a whole JSON line");
            in_file.push(v["record_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(in_file, stdout, "file and stdout differ");
    let unique: BTreeSet<&String> = stdout.iter().collect();
    assert_eq!(unique.len(), stdout.len(), "record_ids are unique");

    // Accounting per sink: stdout and file lost nothing; OTLP (down, no
    // spool, 100-record queue) counted its own losses.
    assert_eq!(exported(&m, "stdout"), stdout.len() as f64, "{m}");
    assert_eq!(exported(&m, &file_label), stdout.len() as f64, "{m}");
    let otlp_lost = support::metric_value(
        &m,
        "clawker_egress_sink_failures_total{sink=\"otlp\",cause=\"queue_full\"}",
    );
    assert!(otlp_lost >= (n - 300) as f64, "{m}");
    for sink in ["stdout", file_label.as_str()] {
        assert!(
            !m.lines()
                .any(|l| l.starts_with("clawker_egress_sink_failures_total")
                    && l.contains(&format!("sink=\"{sink}\""))
                    && !l.ends_with(" 0")),
            "{sink} lost records: {m}"
        );
    }
}
