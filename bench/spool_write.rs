//! The OTLP sink's spool write path during a collector outage: records/s
//! and ns/record through `OtlpSink::send` into the disk spool (the memory
//! queue holds 1 record, so everything is spooled), with 100 containers
//! taking turns; then how long a new sink takes to open that spool, after
//! a clean stop (the per-container fair-share counters come from the
//! summary the stop left) and after a crash (rebuilt by reading the spool). Prints
//! figures; asserts only that the records were spooled.
//!
//! `cargo bench --bench spool_write` (no root; writes ~130 MB under the
//! temp directory, removed at the end).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clawker_egress::export::{OtlpOptions, OtlpSink, Sink, Spool, SpoolOptions};
use clawker_egress::metrics::Metrics;
use clawker_egress::record::{key, Record, Source};

const RECORDS: usize = 200_000;
const BATCH: usize = 1_000;
const CONTAINERS: usize = 100;

fn flow(i: usize) -> Record {
    let mut r = Record::new(SystemTime::now(), Source::Egress).with_body(format!(
        "ALLOWED tcp python3 -> 127.0.0.1:{}",
        1024 + i % 50_000
    ));
    r.set(key::VERDICT, "ALLOWED");
    r.set(key::HOOK, "connect4");
    r.set(key::L4_PROTO, "tcp");
    r.set(key::SRC_IP, "172.17.0.2");
    r.set(key::SRC_PORT, (40_000 + i % 20_000) as i64);
    r.set(key::DST_IP, "93.184.216.34");
    r.set(key::DST_PORT, 443i64);
    r.set(key::DST_HOST, "example.com");
    r.set(key::COMM, "python3");
    r.set(key::PID, 4242i64);
    r.set(key::CGROUP_ID, (123_000 + i % CONTAINERS) as i64);
    r.set(
        key::CONTAINER_ID,
        format!("{:064x}", 0x0123_4567_89ab_u64 + (i % CONTAINERS) as u64),
    );
    r.set(key::AGENT, "agent-a");
    r.set(key::PROJECT, "proj-1");
    r.set(key::BYTES_OUT, (i * 7 % 100_000) as i64);
    r.set(key::BYTES_IN, (i * 13 % 1_000_000) as i64);
    r.set(key::FLOW_STATE, "ended");
    r.set(key::COMMUNITY_ID, "1:LQU9qZlK+B5F3KDmev6m5PMibrg=");
    r
}

fn spool_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn sink(dir: &std::path::Path, metrics: Arc<Metrics>) -> OtlpSink {
    // A port nobody listens on: the collector is away.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut opts = OtlpOptions::new(format!("http://{dead}"));
    opts.queue_records = 1;
    opts.shutdown_grace = Duration::from_millis(100);
    let spool = Spool::open(SpoolOptions {
        dir: dir.to_path_buf(),
        // ~130 MB are written: the last quarter above half full, where
        // the fair share is computed for every record.
        max_bytes: 192 << 20,
        segment_bytes: 16 << 20,
    })
    .unwrap();
    OtlpSink::new(opts, metrics).unwrap().with_spool(spool)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<Arc<Vec<Record>>> = (0..RECORDS / BATCH)
            .map(|b| Arc::new((0..BATCH).map(|i| flow(b * BATCH + i)).collect()))
            .collect();
        let metrics = Arc::new(Metrics::new());
        let mut s = sink(dir.path(), metrics.clone());
        let t0 = Instant::now();
        for b in &batches {
            s.send(b.clone()).await;
        }
        let took = t0.elapsed();
        s.flush().await;
        drop(s);
        let bytes = spool_bytes(dir.path());
        assert!(bytes > (RECORDS as u64) * 200, "only {bytes} bytes spooled");
        println!(
            "spool write: {RECORDS} records ({CONTAINERS} containers) in {:.3} s: {:.0} records/s, {:.2} us/record, {:.1} MB/s ({bytes} bytes on disk)",
            took.as_secs_f64(),
            RECORDS as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / RECORDS as f64,
            bytes as f64 / took.as_secs_f64() / 1e6,
        );
        // A restarted daemon: after a clean stop (it takes the counts the
        // stop left) and after a crash (it reads the spool to count).
        for case in ["clean stop: from its summary", "crash: reading the spool"] {
            if case.starts_with("crash") {
                std::fs::remove_file(dir.path().join("summary")).unwrap();
            }
            let t0 = Instant::now();
            let mut s = sink(dir.path(), metrics.clone());
            let open = t0.elapsed();
            println!(
                "spool open (a restarted daemon, {case}): {:.1} ms for {bytes} bytes",
                open.as_secs_f64() * 1e3
            );
            s.flush().await;
        }
    });
}
