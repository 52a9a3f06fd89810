//! Daemon memory after a flood. Prints figures; asserts nothing.
//!
//! The real daemon (real BPF) attached to a test cgroup exports OTLP; a
//! Python loop in the cgroup makes FLOOD connect()+close() pairs to a
//! loopback server (one flow record each). Reported: the daemon's VmRSS and
//! VmHWM (peak) from /proc, after the flood has gone through, for
//! (a) collector up (the test receiver), (b) collector down with the disk
//! spool (default), (c) collector down without a spool (memory queue only).
//!
//! Run as root: `cargo bench --bench memory` (FLOOD=200000 by default;
//! `CLAWKER_BENCH_FLOOD=N` to change).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Daemon, DaemonOptions, TcpServer, TestCgroup};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("memory bench: run it with `cargo bench --bench memory`");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED memory bench: needs root (BPF attach, cgroups)");
        return;
    }
    let flood: u64 = std::env::var("CLAWKER_BENCH_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    println!("clawker-egress memory bench: {flood} flows per scenario");
    let (addr, _rx) = support::otlp::Receiver::serve_any();
    scenario("collector up", flood, addr.port(), None);
    let down = support::free_port();
    scenario("collector down, disk spool", flood, down, None);
    scenario("collector down, no spool", flood, down, Some(0));
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn scenario(name: &str, flood: u64, otlp_port: u16, spool_bytes: Option<u64>) {
    let cg = TestCgroup::new("ce-membench");
    let spool = tempfile::tempdir().unwrap();
    let mut opts = DaemonOptions::for_cgroup(&cg)
        .arg("--output")
        .arg("otlp")
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{otlp_port}"));
    opts.env.push((
        "CLAWKER_EGRESS_SPOOL_DIR".into(),
        spool.path().to_string_lossy().into_owned(),
    ));
    if let Some(b) = spool_bytes {
        opts.env
            .push(("CLAWKER_EGRESS_SPOOL_BYTES".into(), b.to_string()));
    }
    let d = Daemon::start(opts);
    let pid = d.child.id();
    let rss0 = status_kib(pid, "VmRSS:");
    let server = TcpServer::spawn("127.0.0.1:0", Some(0), 0);
    let t0 = Instant::now();
    cg.python(&format!(
        "import socket\n\
         for _ in range({flood}):\n\
         \x20   s = socket.create_connection(('127.0.0.1', {port})); s.close()\n",
        port = server.port
    ));
    let flood_time = t0.elapsed();
    // Until every flow went through the pipeline (or 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut flows = 0.0;
    while Instant::now() < deadline {
        flows = d.metric("clawker_egress_flows_total{state=\"ended\"}");
        if flows >= flood as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss = status_kib(pid, "VmRSS:");
    let hwm = status_kib(pid, "VmHWM:");
    let m = d.metrics();
    let exported =
        support::metric_value(&m, "clawker_egress_records_exported_total{sink=\"otlp\"}");
    let spooled = support::metric_value(&m, "clawker_egress_spool_bytes{sink=\"otlp\"}");
    let lost = support::metric_value(
        &m,
        "clawker_egress_sink_failures_total{sink=\"otlp\",cause=\"queue_full\"}",
    );
    println!(
        "  {name:<28} flood {:>6.1} s ({:>6.0} flows/s), flows {flows:.0}, exported {exported:.0}, \
         spool {:.1} MiB, queue_full {lost:.0}: VmRSS {:.1} MiB (at start {:.1}), VmHWM {:.1} MiB",
        flood_time.as_secs_f64(),
        flood as f64 / flood_time.as_secs_f64(),
        spooled / (1 << 20) as f64,
        rss as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    drop(d);
}
