//! The OTLP sink's disk spool with the real daemon (real BPF on a test
//! cgroup) and a collector that is down, then up: the test's OTLP receiver
//! (tests/support/otlp.rs) is simply not listening during the outage.
//!
//! Proofs: (1) an outage longer than the memory queue spills to disk, the
//! spool survives a daemon restart, and the records come out in the order
//! they were made, none lost; (2) a full spool loses records COUNTED
//! (`events_dropped_total{reason="spool_full"}`), exactly: delivered +
//! counted == emitted.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use support::otlp::Receiver;
use support::{Daemon, DaemonOptions, TcpServer, TestCgroup};

fn daemon(cg: &TestCgroup, otlp_port: u16, spool: &std::path::Path, spool_bytes: u64) -> Daemon {
    Daemon::start(options(cg, otlp_port, spool, spool_bytes))
}

fn options(
    cg: &TestCgroup,
    otlp_port: u16,
    spool: &std::path::Path,
    spool_bytes: u64,
) -> DaemonOptions {
    let mut opts = DaemonOptions::for_cgroup(cg)
        .arg("--output")
        .arg("stdout,otlp")
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{otlp_port}"));
    for (k, v) in [
        (
            "CLAWKER_EGRESS_SPOOL_DIR",
            spool.to_string_lossy().into_owned(),
        ),
        ("CLAWKER_EGRESS_SPOOL_BYTES", spool_bytes.to_string()),
        ("CLAWKER_EGRESS_OTLP_QUEUE_RECORDS", "200".into()),
    ] {
        opts.env.push((k.into(), v));
    }
    opts
}

fn connects(cg: &TestCgroup, port: u16, n: usize) {
    cg.python(&format!(
        "import socket\n\
         for _ in range({n}):\n\
         \x20   s = socket.create_connection(('127.0.0.1', {port})); s.close()\n"
    ));
}

/// record_ids of the cgroup's records on stdout, in the order they came out.
fn emitted(d: &Daemon, cgid: u64, n: usize) -> Vec<String> {
    let recs = d.wait_for("the flows on stdout", Duration::from_secs(60), |r| {
        r.iter()
            .filter(|r| r["cgroup_id"].as_u64() == Some(cgid))
            .count()
            >= n
    });
    recs.iter()
        .filter(|r| r["cgroup_id"].as_u64() == Some(cgid))
        .map(|r| r["record_id"].as_str().expect("record_id").to_string())
        .collect()
}

/// record_ids the receiver got, in arrival order.
fn received(rx: &Receiver) -> Vec<String> {
    rx.records()
        .iter()
        .filter_map(|(lr, _)| str_attr(lr, "record_id"))
        .collect()
}

fn attr<'a>(lr: &'a LogRecord, key: &str) -> Option<&'a any_value::Value> {
    lr.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn str_attr(lr: &LogRecord, key: &str) -> Option<String> {
    match attr(lr, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(lr: &LogRecord, key: &str) -> Option<i64> {
    match attr(lr, key)? {
        any_value::Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

fn spool_files(dir: &std::path::Path) -> u64 {
    walk(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn collector_outage_spills_to_disk_and_replays_in_order_after_a_restart() {
    require_root!();
    let cg = TestCgroup::new("ce-spool");
    let spool = tempfile::tempdir().unwrap();
    let otlp_port = support::free_port(); // nothing listens: the collector is down
    let server = TcpServer::spawn("127.0.0.1:0", Some(0), 0);

    // Run 1: 1,500 flows while the collector is down (memory queue: 200).
    let d1 = daemon(&cg, otlp_port, spool.path(), 64 << 20);
    connects(&cg, server.port, 1500);
    let run1 = emitted(&d1, cg.id(), 1500);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while d1.metric("clawker_egress_spool_bytes{sink=\"otlp\"}") <= 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing spooled: {}",
            d1.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        d1.metric("clawker_egress_events_dropped_total{reason=\"sink_failure\"}"),
        0.0
    );
    let (status, _) = d1.stop();
    assert!(status.success(), "{status}");
    let on_disk = spool_files(spool.path());
    // Every record (≥ 100 bytes encoded) is on disk, the memory queue included.
    assert!(on_disk > 1500 * 100, "{on_disk} bytes spooled");

    // Run 2 (a new daemon on the same spool): more flows, still no collector.
    let d2 = daemon(&cg, otlp_port, spool.path(), 64 << 20);
    connects(&cg, server.port, 100);
    let run2 = emitted(&d2, cg.id(), 100);

    // The collector comes up: everything arrives, run 1 first and in order.
    let t0 = std::time::Instant::now();
    let rx = Receiver::serve(format!("127.0.0.1:{otlp_port}").parse().unwrap());
    let want: BTreeSet<String> = run1.iter().chain(&run2).cloned().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = received(&rx);
        let have: HashSet<&String> = got.iter().collect();
        if want.iter().all(|w| have.contains(w)) || std::time::Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let replay = t0.elapsed();
    let have: HashSet<&String> = got.iter().collect();
    let missing: Vec<&String> = want.iter().filter(|w| !have.contains(w)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records never arrived, e.g. {:?}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(5)]
    );
    // In order: run 1's ids in the order they were made, then run 2's.
    let mut seen = HashSet::new();
    let order: Vec<&String> = got
        .iter()
        .filter(|id| want.contains(*id) && seen.insert(*id))
        .collect();
    let expected: Vec<&String> = run1.iter().chain(&run2).collect();
    assert_eq!(order, expected, "replayed out of order");
    eprintln!(
        "spool: {} records spooled ({on_disk} bytes on disk) across a restart, replayed in {replay:?}",
        want.len()
    );
    assert_eq!(
        d2.metric("clawker_egress_events_dropped_total{reason=\"sink_failure\"}"),
        0.0
    );
    d2.wait_for("the spool to empty", Duration::from_secs(20), |_| {
        d2.metric("clawker_egress_spool_bytes{sink=\"otlp\"}") < 1.0
            || spool_files(spool.path()) < 64 << 10
    });
}

#[test]
fn a_full_spool_counts_every_record_it_loses() {
    require_root!();
    let cg = TestCgroup::new("ce-spoolfull");
    let spool = tempfile::tempdir().unwrap();
    let otlp_port = support::free_port();
    let server = TcpServer::spawn("127.0.0.1:0", Some(0), 0);
    // 1 MiB (the smallest spool) holds ~2,000 flow records: 5,000 overflow it.
    let d = daemon(&cg, otlp_port, spool.path(), 1 << 20);
    connects(&cg, server.port, 5000);
    emitted(&d, cg.id(), 5000);
    // Every record the OTLP sink was given is on stdout too (same batches).
    let ids: Vec<String> = d
        .records()
        .iter()
        .map(|r| r["record_id"].as_str().expect("record_id").to_string())
        .collect();
    let spool_full = || d.metric("clawker_egress_events_dropped_total{reason=\"spool_full\"}");
    support::wait_until(
        "records refused as spool_full",
        Duration::from_secs(30),
        || (spool_full() > 0.0).then_some(()),
    );
    assert!(spool_files(spool.path()) <= 1 << 20);

    let rx = Receiver::serve(format!("127.0.0.1:{otlp_port}").parse().unwrap());
    let want: HashSet<&String> = ids.iter().collect();
    // Delivered + counted as lost == emitted, exactly (the OTLP sink may
    // still be taking the last batches: both are read again each time).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (delivered, full) = loop {
        let got: HashSet<String> = received(&rx)
            .into_iter()
            .filter(|id| want.contains(id))
            .collect();
        let full = spool_full();
        if got.len() as f64 + full >= ids.len() as f64 || std::time::Instant::now() > deadline {
            break (got.len(), full);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        d.metric("clawker_egress_sink_failures_total{sink=\"otlp\",cause=\"spool_full\"}"),
        full
    );
    eprintln!(
        "spool_full: {} emitted, {delivered} delivered, {full} counted spool_full",
        ids.len()
    );
    assert_eq!(delivered as f64 + full, ids.len() as f64);
}

/// Issue 11, hostile agent: while the collector is away, a cgroup floods
/// (as many connects as it can make) and fills the buffer; a quiet cgroup
/// then makes a few flows. Before per-container fairness the spool was one
/// FIFO: the flooder filled it and every quiet record was refused as
/// `spool_full`. Now the flooder is held to its fair share of a filling
/// spool: every quiet record arrives once the collector is back, and the
/// flooder's refused records are counted for the flooder (in-band
/// `records_lost` with `lost_spool_full`, and the per-container metric),
/// exactly: its delivered + refused == emitted.
#[test]
fn a_flooding_cgroup_cannot_starve_a_quiet_one_out_of_the_spool() {
    require_root!();
    // 1 MiB (the smallest spool): ~1,700 flow records.
    flooder_cannot_starve_a_quiet_cgroup("ce-spoolfair", 1 << 20, 200, "spool_full");
}

/// The same attack with the spool turned off (`spool_bytes = 0`): the
/// memory queue (2,000 records here) is the whole buffer and is shared the
/// same way. On a first-come queue the flooder took all of it and every
/// record of the quiet cgroup was refused.
#[test]
fn without_a_spool_a_flooding_cgroup_cannot_starve_a_quiet_one_out_of_the_memory_queue() {
    require_root!();
    flooder_cannot_starve_a_quiet_cgroup("ce-queuefair", 0, 2000, "queue_full");
}

/// A flooding cgroup fills the OTLP sink's buffer while the collector is
/// away; a quiet one speaks afterwards. Every quiet record arrives; what
/// the flooder lost is reported for it (in-band `records_lost` with
/// `lost_spool_full`, and the per-container metric), exactly: delivered +
/// refused == emitted. `cause`: the `sink_failures_total` cause it counts
/// under (`spool_full`, or `queue_full` without a spool).
fn flooder_cannot_starve_a_quiet_cgroup(name: &str, spool_bytes: u64, queue: usize, cause: &str) {
    let parent = TestCgroup::new(name);
    let flood = TestCgroup::under(&parent.path, "flood");
    let quiet = TestCgroup::under(&parent.path, "quiet");
    let spool = tempfile::tempdir().unwrap();
    let otlp_port = support::free_port(); // the collector is down
    let server = TcpServer::spawn("127.0.0.1:0", Some(0), 0);
    let mut opts = options(&parent, otlp_port, spool.path(), spool_bytes);
    // (the last value of a variable wins)
    opts.env.push((
        "CLAWKER_EGRESS_OTLP_QUEUE_RECORDS".into(),
        queue.to_string(),
    ));
    let d = Daemon::start(opts.arg("--loss-report-interval").arg("1s"));
    let failures = format!("clawker_egress_sink_failures_total{{sink=\"otlp\",cause=\"{cause}\"}}");

    // The flood: far more than the memory queue and the spool hold.
    const FLOOD: usize = 4000;
    connects(&flood, server.port, FLOOD);
    emitted(&d, flood.id(), FLOOD);
    support::wait_until(
        "the flooder's records refused",
        Duration::from_secs(30),
        || (d.metric(&failures) > 0.0).then_some(()),
    );
    // Then the quiet cgroup speaks, the collector still away.
    const QUIET: usize = 150;
    connects(&quiet, server.port, QUIET);
    let quiet_ids: HashSet<String> = emitted(&d, quiet.id(), QUIET).into_iter().collect();
    let flood_ids: HashSet<String> = emitted(&d, flood.id(), FLOOD).into_iter().collect();

    // The collector comes back.
    let rx = Receiver::serve(format!("127.0.0.1:{otlp_port}").parse().unwrap());
    let arrived = |ids: &HashSet<String>| {
        let got: HashSet<String> = received(&rx).into_iter().collect();
        ids.iter().filter(|id| got.contains(*id)).count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while arrived(&quiet_ids) < quiet_ids.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let quiet_arrived = arrived(&quiet_ids);
    assert_eq!(
        quiet_arrived,
        quiet_ids.len(),
        "{} of the quiet cgroup's {} records never arrived: the flooder starved it \
         ({cause}: {})",
        quiet_ids.len() - quiet_arrived,
        quiet_ids.len(),
        d.metric(&failures)
    );

    // What the flooder lost is reported for the flooder, in-band, and adds
    // up: delivered + refused == emitted; the quiet cgroup lost nothing.
    let lost_reported = |cgid: u64| -> i64 {
        rx.records()
            .iter()
            .filter(|(lr, _)| {
                str_attr(lr, "event").as_deref() == Some("records_lost")
                    && int_attr(lr, "cgroup_id") == Some(cgid as i64)
            })
            .map(|(lr, _)| int_attr(lr, "lost_spool_full").unwrap_or(0))
            .sum()
    };
    let (delivered, refused) = support::wait_until(
        "the flooder's delivered + reported-lost records to add up to what it emitted",
        Duration::from_secs(30),
        || {
            let (delivered, refused) = (arrived(&flood_ids), lost_reported(flood.id()));
            (delivered as i64 + refused == flood_ids.len() as i64).then_some((delivered, refused))
        },
    );
    assert!(
        refused > 0,
        "the flooder lost nothing: the spool was never full"
    );
    assert_eq!(
        lost_reported(quiet.id()),
        0,
        "the quiet cgroup was reported as losing records"
    );
    let full = d.metric(&failures);
    assert_eq!(full, refused as f64, "every {cause} loss is the flooder's");
    assert_eq!(
        d.metric(
            "clawker_egress_container_records_lost_total{agent=\"_other\",project=\"_other\",reason=\"spool_full\"}"
        ),
        full,
        "{}",
        d.metrics()
    );
    eprintln!(
        "buffer fairness: flooder emitted {}, delivered {delivered}, refused {refused} ({cause}); \
         quiet emitted {} and delivered {quiet_arrived}",
        flood_ids.len(),
        quiet_ids.len()
    );
}
