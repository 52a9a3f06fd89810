//! Capture benchmarks. Prints figures; asserts nothing.
//!
//! (a) connect()+close() rate on loopback from one cgroup, with the daemon
//!     (decisions + per-flow byte accounting) attached vs detached,
//!     interleaved rounds in one run -> a ratio;
//! (b) bytes/s over one long loopback TCP flow, attached vs detached -> a ratio;
//! (c) records/s user space decodes and serializes as stdout JSON lines;
//! (d) kernel ns per connection per program (bpf_stats), in and out of scope;
//! (e) records/s the daemon drains to stdout from a connect flood at the
//!     physical limit, with every loss it counted.
//!
//! Run as root: `cargo bench --bench capture` (the connect and throughput
//! parts attach BPF programs).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawker_egress::capture::{decode, BootClock, Event};
use clawker_egress::kernel::abi;
use clawker_egress::record::Record;

mod daemon_cost; // daemon CPU per record, RSS (`-- daemon`: that part only)
mod exec_cost; // kernel ns per exec (`-- exec`: that part only)
mod udp_cost; // kernel ns per UDP datagram (`-- udp`: that part only)

const ROUNDS: usize = 9;
const CONNECTS_PER_ROUND: usize = 10_000;
const RECORDS: usize = 1_000_000;
const BULK_BYTES: usize = 1 << 30;
/// Time the daemon gets to finish starting before a measurement.
const SETTLE: Duration = Duration::from_millis(1500);

fn main() {
    // `cargo test --all-targets` runs harness-less benches too: only
    // `cargo bench` (which passes --bench) measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("capture bench: run it with `cargo bench --bench capture`");
        return;
    }
    println!("clawker-egress capture bench");
    if std::env::args().any(|a| a == "exec") {
        return exec_cost::run();
    }
    if std::env::args().any(|a| a == "udp") {
        return udp_cost::run();
    }
    // `cargo bench --bench capture -- kernel`: the kernel-cost part only.
    let only_kernel = std::env::args().any(|a| a == "kernel");
    if !only_kernel {
        decode_and_serialize();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED connect-rate bench: needs root (BPF attach, cgroups)");
        return;
    }
    if std::env::args().any(|a| a == "daemon") {
        return daemon_cost::run();
    }
    kernel_cost();
    if !only_kernel {
        connect_rate();
        drain_flood();
        daemon_cost::run();
        exec_cost::run();
    }
}

/// Connections of the drain flood: one flow record each.
const FLOOD_PER_PROCESS: usize = 100_000;
const FLOOD_PROCESSES: usize = 2;

/// (e) FLOOD_PROCESSES loops of socket+connect+close to a closed port (the
/// physical limit of this machine: no budget, one record per connection),
/// drained by the daemon to stdout: records/s from the first connect to
/// the last record, and every loss the daemon counted.
fn drain_flood() {
    use std::io::BufRead;
    let root = clawker_egress::kernel::cgroup2_root().expect("cgroup2 mount");
    let me = std::process::id();
    let cg = root.join(format!("clawker-bench-flood-{me}"));
    std::fs::create_dir_all(&cg).expect("bench cgroup");
    let pins = PathBuf::from(format!("/sys/fs/bpf/clawker-bench-flood-{me}"));
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let metrics = {
        let l = TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr")
    };
    let mut daemon = Command::new(daemon_bin())
        .args(["run", "--output", "stdout", "--container-record-rate", "0"])
        .arg("--metrics-listen")
        .arg(metrics.to_string())
        .arg("--cgroup-root")
        .arg(&cg)
        .arg("--pin-root")
        .arg(&pins)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start daemon");
    let needle = format!("\"dst_port\":{closed}");
    let ours = move |line: &str| {
        line.match_indices(&needle)
            .any(|(i, m)| !line[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
    };
    let out = daemon.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut n = 0usize;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if ours(&line) {
                n += 1;
                if tx.send((n, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && bpftool_attachments(&cg) < 10 {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(SETTLE);
    let expected = FLOOD_PER_PROCESS * FLOOD_PROCESSES;
    let start = Instant::now();
    let loops: Vec<_> = (0..FLOOD_PROCESSES)
        .map(|_| {
            let cg = cg.clone();
            std::thread::spawn(move || connect_loop_n(&cg, closed, FLOOD_PER_PROCESS))
        })
        .collect();
    for l in loops {
        let _ = l.join();
    }
    let flood_secs = start.elapsed().as_secs_f64();
    // Every record, or 10 s of silence.
    let (mut got, mut last) = (0, start);
    while got < expected {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((n, t)) => (got, last) = (n, t),
            Err(_) => break,
        }
    }
    let dropped = dropped_total(metrics);
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let _ = Command::new(daemon_bin())
        .args(["detach", "--cgroup-root"])
        .arg(&cg)
        .arg("--pin-root")
        .arg(&pins)
        .stdout(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir(&cg);
    let secs = last.duration_since(start).as_secs_f64();
    println!(
        "drain flood: {expected} connections from {FLOOD_PROCESSES} processes in {flood_secs:.2} s ({:.0}/s offered)",
        expected as f64 / flood_secs
    );
    println!(
        "drain flood: {got} records drained to stdout in {secs:.2} s = {:.0} records/s; dropped (counted) {dropped}, missing {}",
        got as f64 / secs,
        expected.saturating_sub(got)
    );
}

/// Sum of clawker_egress_events_dropped_total over every reason.
fn dropped_total(metrics: std::net::SocketAddr) -> f64 {
    use std::io::Read;
    let Ok(mut conn) = TcpStream::connect(metrics) else {
        return f64::NAN;
    };
    let _ = conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with("clawker_egress_events_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Connections per kernel-cost run: socket+connect+close to a closed port.
const COST_CONNECTS: usize = 100_000;

/// (d) Kernel ns per connection, from the kernel's own per-program
/// statistics (`kernel.bpf_stats_enabled`): in scope (a watched cgroup) and
/// out of scope (a host process while the daemon watches containers; this
/// build attaches at the containers' parent cgroup, so the loop itself runs
/// nothing and what is counted comes from the host's other processes,
/// shown again for an idle window of the same length). Only this daemon's programs count (by the ids of its pinned
/// links), so other BPF users on the host do not blur the figure.
fn kernel_cost() {
    let root = clawker_egress::kernel::cgroup2_root().expect("cgroup2 mount");
    let me = std::process::id();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    // In scope: the loop runs in the watched cgroup.
    let cg = root.join(format!("clawker-bench-cost-{me}"));
    std::fs::create_dir_all(&cg).expect("bench cgroup");
    let pins = PathBuf::from(format!("/sys/fs/bpf/clawker-bench-cost-{me}"));
    let daemon = start_daemon(&root, &cg, &pins);
    let before = prog_stats(&pins);
    connect_loop(&cg, closed);
    let after = prog_stats(&pins);
    stop_daemon(daemon, &cg, &pins);
    print_connect_cost("in scope (watched cgroup)", &before, &after);
    // In scope with a policy: an address rule allows the loop's
    // connections, a domain rule follows (as an allowlist has them).
    let dir = std::env::temp_dir().join(format!("clawker-bench-cost-{me}"));
    std::fs::create_dir_all(&dir).expect("policy dir");
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "default:\n  default_action: deny\n  rules:\n    - {dst: 127.0.0.0/8, proto: tcp, action: allow}\n    - {dst: api.example.test, proto: tcp, port: \"443\", action: allow}\n",
    )
    .expect("policy file");
    let daemon = start_daemon_with(&root, &cg, &pins, Some(&policy));
    let before = prog_stats(&pins);
    connect_loop(&cg, closed);
    let after = prog_stats(&pins);
    stop_daemon(daemon, &cg, &pins);
    print_connect_cost(
        "in scope with a policy (address rule, then a domain rule)",
        &before,
        &after,
    );
    // In scope, accepted too: the listener is the container's, so each
    // connection is an outbound flow and an inbound one (issue 15).
    let daemon = start_daemon_with(&root, &cg, &pins, Some(&policy));
    let before = prog_stats(&pins);
    accept_loop(&cg);
    let after = prog_stats(&pins);
    stop_daemon(daemon, &cg, &pins);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir(&cg);
    print_connect_cost(
        "in scope, accepted by the container's own listener (two flows each)",
        &before,
        &after,
    );
    // Out of scope: the daemon watches containers at the host root; the
    // loop is a host process.
    let pins = PathBuf::from(format!("/sys/fs/bpf/clawker-bench-host-{me}"));
    let daemon = start_host_daemon(&root, &pins);
    let before = prog_stats(&pins);
    let start = Instant::now();
    connect_loop(&root, closed);
    let took = start.elapsed();
    let after = prog_stats(&pins);
    // What the host's other processes (containers included) ran meanwhile:
    // the same time again without the loop.
    std::thread::sleep(took);
    let idle = prog_stats(&pins);
    stop_host_daemon(daemon, &pins);
    print_connect_cost("out of scope (host process)", &before, &after);
    print_connect_cost(
        "out of scope, background only (the same time without the loop)",
        &after,
        &idle,
    );
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
}

/// COST_CONNECTS socket+connect+close from a child in `cgroup`, as fast as
/// a C-speed Python loop goes (the cost is read per program, not timed).
fn connect_loop(cgroup: &Path, port: u16) {
    connect_loop_n(cgroup, port, COST_CONNECTS)
}

/// COST_CONNECTS connect+accept+close to a listener of the same child.
fn accept_loop(cgroup: &Path) {
    let script = format!(
        "import socket\nl = socket.socket()\nl.bind(('127.0.0.1', 0))\nl.listen(128)\na = l.getsockname()\nfor _ in range({COST_CONNECTS}):\n    s = socket.socket()\n    s.connect(a)\n    c, _ = l.accept()\n    c.close()\n    s.close()\n"
    );
    run_in(cgroup, &script);
}

fn connect_loop_n(cgroup: &Path, port: u16, n: usize) {
    let script = format!(
        "import socket\nfor _ in range({n}):\n    s = socket.socket()\n    try: s.connect(('127.0.0.1', {port}))\n    except OSError: pass\n    s.close()\n"
    );
    run_in(cgroup, &script);
}

/// A python3 script in a child moved into `cgroup` first.
fn run_in(cgroup: &Path, script: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec python3 -c \"$0\"",
            cgroup.display()
        ))
        .arg(script)
        .status()
        .expect("python3");
    assert!(status.success(), "connect loop failed");
}

/// run_time_ns / run_cnt per program of the daemon pinned at `pins`.
fn prog_stats(pins: &Path) -> Vec<(String, u64, u64)> {
    // <pins>/v<ABI>/cg-<id>/links, whichever ABI the measured daemon has.
    let links = pins
        .read_dir()
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .and_then(|v| v.path().read_dir().ok())
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("links"));
    let Some(links) = links else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(links).into_iter().flatten().flatten() {
        let out = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(entry.path())
            .output();
        if let Ok(out) = out {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(id) = v["prog_id"].as_u64() {
                ids.push(id);
            }
        }
    }
    let mut stats = Vec::new();
    for id in ids {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output();
        if let Ok(out) = out {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            stats.push((
                v["name"].as_str().unwrap_or("?").to_owned(),
                v["run_time_ns"].as_u64().unwrap_or(0),
                v["run_cnt"].as_u64().unwrap_or(0),
            ));
        }
    }
    stats.sort();
    stats
}

fn print_connect_cost(what: &str, before: &[(String, u64, u64)], after: &[(String, u64, u64)]) {
    print_cost(
        &format!("kernel ns per connection, {what} ({COST_CONNECTS} socket+connect+close)"),
        ("connection", COST_CONNECTS),
        &[],
        before,
        after,
    );
}

/// Per-program cost between two `prog_stats` readings, per `unit` (`n` of
/// them were made): ns per run, runs per unit, ns per unit, and the total,
/// under the heading `what`. `only`: the programs to show (empty: every
/// one that ran).
fn print_cost(
    what: &str,
    (unit, n): (&str, usize),
    only: &[&str],
    before: &[(String, u64, u64)],
    after: &[(String, u64, u64)],
) {
    println!("{what}:");
    let mut total = 0.0;
    for (name, ns, cnt) in after
        .iter()
        .filter(|(name, _, _)| only.is_empty() || only.contains(&name.as_str()))
    {
        let (ns0, cnt0) = before
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, a, b)| (*a, *b))
            .unwrap_or((0, 0));
        let (dns, dcnt) = (ns.saturating_sub(ns0), cnt.saturating_sub(cnt0));
        if dcnt == 0 {
            continue;
        }
        let per_unit = dns as f64 / n as f64;
        total += per_unit;
        println!(
            "  {name:<20} {:>7.0} ns/run x {:>5.2} runs/{unit} = {per_unit:>7.1} ns",
            dns as f64 / dcnt as f64,
            dcnt as f64 / n as f64
        );
    }
    println!("  {:<20} {total:>52.1} ns per {unit}", "total");
}

fn start_host_daemon(root: &Path, pins: &Path) -> Child {
    let bin = daemon_bin();
    let child = Command::new(bin)
        .args([
            "run",
            "--metrics-listen",
            "127.0.0.1:0",
            "--scope",
            "containers",
            "--pin-root",
        ])
        .arg(pins)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && prog_stats(pins).len() < 10 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = root;
    std::thread::sleep(SETTLE);
    child
}

/// `detach` without `--cgroup-root` finds the attachment wherever this
/// build (the containers' parent) or an older one (the v2 root) made it.
fn stop_host_daemon(mut child: Child, pins: &Path) {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = Command::new(daemon_bin())
        .args(["detach", "--pin-root"])
        .arg(pins)
        .stdout(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(pins);
}

fn sample_bytes() -> Vec<u8> {
    let mut ev = abi::sock_event::default();
    ev.hdr.kind = abi::event_kind::EVENT_KIND_SOCK as u16;
    ev.hdr.size = std::mem::size_of::<abi::sock_event>() as u16;
    ev.hdr.version = abi::EGRESS_ABI_VERSION as u8;
    ev.hdr.hook = abi::egress_hook::HOOK_CONNECT4 as u8;
    ev.hdr.ts_ns = BootClock::now_boot_ns();
    ev.family = libc::AF_INET as u16;
    ev.sock_type = libc::SOCK_STREAM as u16;
    ev.protocol = libc::IPPROTO_TCP as u16;
    ev.dst_ip[..4].copy_from_slice(&[127, 0, 0, 1]);
    ev.dst_port = 443;
    ev.pid = 4242;
    ev.tgid = 4242;
    ev.cgroup_id = 12345;
    for (d, s) in ev.comm.iter_mut().zip(b"python3\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: reading the bytes of a plain repr(C) value.
    unsafe {
        std::slice::from_raw_parts(
            (&ev as *const abi::sock_event).cast::<u8>(),
            std::mem::size_of_val(&ev),
        )
    }
    .to_vec()
}

fn decode_and_serialize() {
    let bytes = sample_bytes();
    let clock = BootClock::calibrate();
    let mut out = std::io::BufWriter::new(std::io::sink());
    let mut line = Vec::with_capacity(512);
    let start = Instant::now();
    for _ in 0..RECORDS {
        let Ok(Event::Sock(ev)) = decode(&bytes, clock) else {
            panic!("sample must decode");
        };
        let record = Record::from_sock(&ev);
        line.clear();
        serde_json::to_writer(&mut line, &record).expect("serialize");
        line.push(b'\n');
        out.write_all(&line).expect("write");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "decode+serialize: {RECORDS} records in {secs:.2} s = {:.0} records/s ({} bytes/line)",
        RECORDS as f64 / secs,
        line.len()
    );
}

fn connect_rate() {
    let root = clawker_egress::kernel::cgroup2_root().expect("cgroup2 mount");
    let cg = root.join(format!("clawker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&cg).expect("bench cgroup");
    let pins = PathBuf::from(format!("/sys/fs/bpf/clawker-bench-{}", std::process::id()));
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let sink = bulk_sink();
    // The bench process itself moves into the cgroup: its connects are the
    // measured traffic.
    std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string()).expect("join cgroup");

    // Paired rounds: each round measures detached and attached back to back
    // (the order alternating), so drift on a shared machine cancels out in
    // the per-round ratio; the median ratio is the figure.
    let _warm_up = (rate(addr), throughput(sink));
    let mut rounds = Vec::new();
    for r in 0..ROUNDS {
        let attached_first = r % 2 == 1;
        let mut m = Measured::default();
        if attached_first {
            m.on = measure_attached(&root, &cg, &pins, addr, sink);
            m.off = (rate(addr), throughput(sink));
        } else {
            m.off = (rate(addr), throughput(sink));
            m.on = measure_attached(&root, &cg, &pins, addr, sink);
        }
        rounds.push(m);
    }
    std::fs::write(root.join("cgroup.procs"), std::process::id().to_string())
        .expect("leave cgroup");
    let _ = std::fs::remove_dir(&cg);
    report("connect+close", "/s", 1.0, &rounds, |m| (m.off.0, m.on.0));
    report("one TCP flow", " MB/s", 1e6, &rounds, |m| (m.off.1, m.on.1));
}

#[derive(Default)]
struct Measured {
    /// (connects/s, bytes/s) detached and attached.
    off: (f64, f64),
    on: (f64, f64),
}

fn measure_attached(
    root: &Path,
    cg: &Path,
    pins: &Path,
    addr: std::net::SocketAddr,
    sink: std::net::SocketAddr,
) -> (f64, f64) {
    let daemon = start_daemon(root, cg, pins);
    let m = (rate(addr), throughput(sink));
    stop_daemon(daemon, cg, pins);
    m
}

fn report(
    what: &str,
    unit: &str,
    scale: f64,
    rounds: &[Measured],
    pick: impl Fn(&Measured) -> (f64, f64),
) {
    let mut off: Vec<f64> = rounds.iter().map(|m| pick(m).0).collect();
    let mut on: Vec<f64> = rounds.iter().map(|m| pick(m).1).collect();
    let mut ratios: Vec<f64> = rounds.iter().map(|m| pick(m).1 / pick(m).0).collect();
    let (lo, hi) = (
        ratios.iter().cloned().fold(f64::MAX, f64::min),
        ratios.iter().cloned().fold(f64::MIN, f64::max),
    );
    let ratio = median(&mut ratios);
    println!(
        "{what}: detached median {:.0}{unit}, attached median {:.0}{unit}",
        median(&mut off) / scale,
        median(&mut on) / scale
    );
    println!(
        "{what}: attached/detached ratio {ratio:.3} (median of {} paired rounds, range {lo:.3}..{hi:.3}) -> cost {:.1} %",
        rounds.len(),
        (1.0 - ratio) * 100.0
    );
}

/// Successful connect() + server close + close() per second (failures are
/// not counted).
fn rate(addr: std::net::SocketAddr) -> f64 {
    let start = Instant::now();
    let mut ok = 0usize;
    for _ in 0..CONNECTS_PER_ROUND {
        if let Ok(mut s) = TcpStream::connect(addr) {
            // Wait for the server's close: one connection at a time, so the
            // accept backlog never overflows (an overflow means SYN retries
            // and one-second stalls that swamp what is measured).
            let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
            ok += 1;
        }
    }
    if ok < CONNECTS_PER_ROUND {
        println!(
            "  note: {} connects failed in this round",
            CONNECTS_PER_ROUND - ok
        );
    }
    ok as f64 / start.elapsed().as_secs_f64()
}

/// A loopback server that reads and discards everything.
fn bulk_sink() -> std::net::SocketAddr {
    use std::io::Read;
    let listener = TcpListener::bind("127.0.0.1:0").expect("sink");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// Bytes/s of one TCP flow carrying BULK_BYTES.
fn throughput(addr: std::net::SocketAddr) -> f64 {
    let chunk = vec![0u8; 256 * 1024];
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return 0.0;
    };
    let start = Instant::now();
    let mut sent = 0;
    while sent < BULK_BYTES {
        if conn.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    drop(conn);
    sent as f64 / start.elapsed().as_secs_f64()
}

/// The daemon measured: this build, or `CLAWKER_BENCH_BIN` (e.g. an older
/// release, for a before/after table on the same machine and load).
fn daemon_bin() -> String {
    std::env::var("CLAWKER_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_clawker-egress").into())
}

fn start_daemon(root: &Path, cg: &Path, pins: &Path) -> Child {
    start_daemon_with(root, cg, pins, None)
}

fn start_daemon_with(root: &Path, cg: &Path, pins: &Path, policy: Option<&Path>) -> Child {
    // The daemon runs in the root cgroup, outside the measured one.
    let bin = daemon_bin();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            root.display()
        ))
        .arg("sh")
        .arg(&bin)
        .args(["run", "--metrics-listen", "127.0.0.1:0", "--cgroup-root"])
        .arg(cg)
        .arg("--pin-root")
        .arg(pins);
    if let Some(policy) = policy {
        cmd.arg("--policy").arg(policy);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start daemon");
    // Attached once the links are pinned.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let links = std::fs::read_dir(pins)
            .ok()
            .and_then(|mut d| d.next())
            .is_some();
        if links && bpftool_attachments(cg) >= 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Measure the steady state, not the daemon's start-up (Docker resync,
    // first sweeps): attached is what an operator runs all day.
    std::thread::sleep(SETTLE);
    child
}

fn stop_daemon(mut child: Child, cg: &Path, pins: &Path) {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = Command::new(daemon_bin())
        .args(["detach", "--cgroup-root"])
        .arg(cg)
        .arg("--pin-root")
        .arg(pins)
        .stdout(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(pins);
}

fn bpftool_attachments(cg: &Path) -> usize {
    Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cg)
        .output()
        .map(|o| {
            let out = String::from_utf8_lossy(&o.stdout);
            ["egress_", "flow_", "dns_"]
                .iter()
                .map(|p| out.matches(p).count())
                .sum()
        })
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
