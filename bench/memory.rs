//! Daemon memory after a flood. Prints figures; asserts nothing.
//!
//! The real daemon (real BPF) attached to a test cgroup exports OTLP; a
//! forked child in the cgroup makes FLOOD socket+connect+close to a closed
//! loopback port in a C-speed loop (the physical connect rate; one flow
//! record each). Reported: the daemon's VmHWM (peak) and VmRSS from /proc
//! 5 s after the flood ended and 5 s after every flow went through the
//! flow stage, what the RSS is made of (/proc/<pid>/status), for
//! (a) collector up (the test receiver), (b) collector down with the disk
//! spool (default), (c) collector down without a spool (memory queue only).
//!
//! Run as root: `cargo bench --bench memory` (FLOOD=200000 by default;
//! `CLAWKER_BENCH_FLOOD=N` to change).

#[path = "../tests/support/mod.rs"]
mod support;

use std::ffi::CString;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{Daemon, DaemonOptions, TestCgroup};

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

/// What the RSS is made of (`/proc/<pid>/status`: RssAnon, RssFile, RssShmem).
fn rss_parts(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |field: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    format!(
        "anon {:.1} + file {:.1} + shmem {:.1} MiB",
        mib("RssAnon:"),
        mib("RssFile:"),
        mib("RssShmem:")
    )
}

/// Fork a child that joins `cgroup` and makes `n` socket+connect+close to
/// 127.0.0.1:`port` (closed: refused at once). Only async-signal-safe calls
/// after fork.
fn c_flood(cgroup: &Path, port: u16, n: u64) -> Duration {
    let procs =
        CString::new(cgroup.join("cgroup.procs").to_string_lossy().as_bytes()).expect("path");
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    // SAFETY: the child only makes raw system calls and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: raw syscalls on valid buffers; _exit never returns.
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(2);
            }
            libc::close(fd);
            for _ in 0..n {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                if s < 0 {
                    continue;
                }
                libc::connect(
                    s,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                libc::close(s);
            }
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "flood child failed ({status})"
    );
    start.elapsed()
}

fn scenario(name: &str, flood: u64, otlp_port: u16, spool_bytes: Option<u64>) {
    let cg = TestCgroup::new("ce-membench");
    let spool = tempfile::tempdir().unwrap();
    let mut opts = DaemonOptions::for_cgroup(&cg)
        .arg("--output")
        .arg("otlp")
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{otlp_port}"))
        // Its own local API (with its history of recent records, as deployed).
        .arg("--api-socket")
        .arg(spool.path().join("api.sock").to_string_lossy().into_owned());
    opts.env.push((
        "CLAWKER_EGRESS_SPOOL_DIR".into(),
        spool.path().to_string_lossy().into_owned(),
    ));
    // The flood is one container: lift its record budget (default 10k/s)
    // so that every record reaches the daemon (the worst case for memory).
    for (k, v) in [
        ("CLAWKER_EGRESS_CONTAINER_RECORD_RATE", "1000000"),
        ("CLAWKER_EGRESS_CONTAINER_RECORD_BURST", "1000000"),
    ] {
        opts.env.push((k.into(), v.into()));
    }
    if let Some(b) = spool_bytes {
        opts.env
            .push(("CLAWKER_EGRESS_SPOOL_BYTES".into(), b.to_string()));
    }
    let d = Daemon::start(opts);
    let pid = d.child.id();
    let rss0 = status_kib(pid, "VmRSS:");
    let closed = support::free_port();
    let flood_time = c_flood(&cg.path, closed, flood);
    let t1 = Instant::now();
    let mut at5 = None;
    // Until every flow went through the pipeline (or 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut flows = 0.0;
    while Instant::now() < deadline {
        if at5.is_none() && t1.elapsed() >= Duration::from_secs(5) {
            at5 = Some(status_kib(pid, "VmRSS:"));
        }
        flows = d.metric("clawker_egress_flows_total{state=\"ended\"}");
        if flows >= flood as f64 && at5.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let rss = status_kib(pid, "VmRSS:");
    let hwm = status_kib(pid, "VmHWM:");
    let m = d.metrics();
    let exported =
        support::metric_value(&m, "clawker_egress_records_exported_total{sink=\"otlp\"}");
    let spooled = support::metric_value(&m, "clawker_egress_spool_bytes{sink=\"otlp\"}");
    let ring = support::metric_value(
        &m,
        "clawker_egress_events_dropped_total{reason=\"ringbuf_full\"}",
    );
    let lost = support::metric_value(
        &m,
        "clawker_egress_sink_failures_total{sink=\"otlp\",cause=\"queue_full\"}",
    );
    println!(
        "  {name:<28} flood {:>6.1} s ({:>6.0} flows/s), flows {flows:.0}, exported {exported:.0}, \
         spool {:.1} MiB, queue_full {lost:.0}, ringbuf_full {ring:.0}: VmHWM {:.1} MiB, VmRSS 5 s after the flood \
         {:.1} MiB, 5 s after the last flow {:.1} MiB ({}; at start {:.1})",
        flood_time.as_secs_f64(),
        flood as f64 / flood_time.as_secs_f64(),
        spooled / (1 << 20) as f64,
        hwm as f64 / 1024.0,
        at5.unwrap_or(0) as f64 / 1024.0,
        rss as f64 / 1024.0,
        rss_parts(pid),
        rss0 as f64 / 1024.0,
    );
    drop(d);
}
