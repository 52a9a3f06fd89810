//! Daemon cost per record and memory after a flood (issues 11 and 12).
//! Prints figures; asserts nothing. A module of the capture bench:
//! `cargo bench --bench capture -- daemon` runs this part only.
//!
//! (a) CPU per record: the real daemon (real BPF) attached to a test cgroup;
//!     a forked child joins the cgroup and makes FLOOD socket+connect+close
//!     to a closed loopback port in a C-speed loop (the physical connect
//!     rate: one core, no interpreter). Measured: the daemon's utime+stime
//!     from `/proc/<pid>/stat` from just before the flood until its sink
//!     counted every record exported, divided by the records exported; once
//!     to stdout (a pipe this bench reads and discards), once over OTLP to
//!     a blackhole receiver in this process (it counts and drops). Loss:
//!     every drop and sink failure counter the daemon exports.
//! (b) RSS: the daemon's VmRSS and VmHWM after each flood.
//! (c) Scale: SCALE_CGROUPS cgroups under the watched one (the daemon's
//!     "containers"; not Docker containers), SCALE_FLOWS live TCP
//!     connections spread over them (one process that moves from cgroup to
//!     cgroup: a socket belongs to the cgroup it was created in), held open
//!     while the daemon's RSS is read.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};

/// Connections per flood (issue 12: 200,000).
const FLOOD: u64 = 200_000;
const SCALE_CGROUPS: usize = 1_000;
const SCALE_FLOWS: usize = 100_000;

pub fn run() {
    println!(
        "daemon cost per record ({FLOOD} socket+connect+close, C loop, closed loopback port):"
    );
    let flood = env_u64("CLAWKER_BENCH_FLOOD").unwrap_or(FLOOD);
    cost("stdout", flood);
    cost("otlp", flood);
    if std::env::var_os("CLAWKER_BENCH_NO_SCALE").is_none() {
        scale();
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// An OTLP receiver that counts records and keeps nothing.
#[derive(Clone, Default)]
struct Blackhole {
    records: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl LogsService for Blackhole {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.records.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn blackhole() -> (SocketAddr, Blackhole) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("blackhole port");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let b = Blackhole::default();
    let svc = b.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(svc).max_decoding_message_size(64 << 20))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await
                .expect("blackhole serve");
        });
    });
    (addr, b)
}

struct Running {
    child: Child,
    metrics: SocketAddr,
    pins: PathBuf,
    cg: PathBuf,
    spool: PathBuf,
}

impl Running {
    fn start(name: &str, output: &str, otlp: Option<SocketAddr>, env: &[(&str, &str)]) -> Running {
        let root = clawker_egress::kernel::cgroup2_root().expect("cgroup2 mount");
        let me = std::process::id();
        let cg = root.join(format!("clawker-bench-{name}-{me}"));
        std::fs::create_dir_all(&cg).expect("bench cgroup");
        let pins = PathBuf::from(format!("/sys/fs/bpf/clawker-bench-{name}-{me}"));
        let spool = std::env::temp_dir().join(format!("clawker-bench-spool-{name}-{me}"));
        let metrics = {
            let l = TcpListener::bind("127.0.0.1:0").expect("port");
            l.local_addr().expect("addr")
        };
        let mut cmd = Command::new(super::daemon_bin());
        cmd.args([
            "run",
            "--metrics-listen",
            &metrics.to_string(),
            "--cgroup-root",
        ])
        .arg(&cg)
        .arg("--pin-root")
        .arg(&pins)
        .args(["--output", output])
        .env("CLAWKER_EGRESS_SPOOL_DIR", &spool)
        // The flood is one container: lift its record budget (default
        // 10k/s) so that what is measured is the daemon, not the limit.
        .env("CLAWKER_EGRESS_CONTAINER_RECORD_RATE", "1000000")
        .env("CLAWKER_EGRESS_CONTAINER_RECORD_BURST", "1000000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        cmd.envs(env.iter().copied());
        if let Some(a) = otlp {
            cmd.arg("--otlp-endpoint").arg(format!("http://{a}"));
        }
        let mut child = cmd.spawn().expect("start daemon");
        // stdout: a pipe read and discarded, as a log shipper would.
        let mut out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while matches!(out.read(&mut buf), Ok(n) if n > 0) {}
        });
        let r = Running {
            child,
            metrics,
            pins,
            cg,
            spool,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && r.metrics_text().is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(super::SETTLE * 2);
        r
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics_text(&self) -> String {
        let Ok(mut s) = TcpStream::connect(self.metrics) else {
            return String::new();
        };
        let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.metrics);
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }

    /// Sum of every sample whose name (and labels) start with `prefix`.
    fn metric_sum(text: &str, prefix: &str) -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// utime+stime in seconds, all threads (dead ones included).
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (ticks(14) + ticks(15)) as f64 / hz
    }

    fn status_mib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = Command::new(super::daemon_bin())
            .args(["detach", "--cgroup-root"])
            .arg(&self.cg)
            .arg("--pin-root")
            .arg(&self.pins)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.spool);
        remove_cgroup_tree(&self.cg);
    }
}

fn remove_cgroup_tree(cg: &Path) {
    for e in std::fs::read_dir(cg).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(cg);
}

/// Fork a child that joins `cgroup` and makes `n` socket+connect+close to
/// 127.0.0.1:`port` (closed). Only async-signal-safe calls after fork.
fn flood(cgroup: &Path, port: u16, n: u64) -> Duration {
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

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("port");
    l.local_addr().expect("addr").port()
}

/// What the daemon counted as lost, by counter (non-zero ones only).
fn losses(text: &str) -> String {
    let mut out = Vec::new();
    for l in text.lines() {
        let lost = [
            "clawker_egress_events_dropped_total",
            "clawker_egress_sink_failures_total",
            "clawker_egress_kernel_ringbuf_drops_total",
        ]
        .iter()
        .any(|p| l.starts_with(p));
        if lost {
            if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                if v > 0.0 {
                    out.push(l.to_owned());
                }
            }
        }
    }
    if out.is_empty() {
        "0 lost".into()
    } else {
        format!("LOST: {}", out.join(", "))
    }
}

fn cost(sink: &str, flood_n: u64) {
    let hole = (sink == "otlp").then(blackhole);
    let d = Running::start(sink, sink, hole.as_ref().map(|(a, _)| *a), &[]);
    let exported_key = format!("clawker_egress_records_exported_total{{sink=\"{sink}\"}}");
    let exported0 = Running::metric_sum(&d.metrics_text(), &exported_key);
    // The idle rate, to subtract (sweeps, the metrics scrape).
    let idle0 = d.cpu_secs();
    std::thread::sleep(Duration::from_secs(2));
    let idle_rate = (d.cpu_secs() - idle0) / 2.0;
    let cpu0 = d.cpu_secs();
    let t0 = Instant::now();
    let flood_time = flood(&d.cg, closed_port(), flood_n);
    // Until the sink counted every record of the flood (or 60 s quiet).
    let mut exported: f64;
    let mut last = (0.0, Instant::now());
    loop {
        let text = d.metrics_text();
        exported = Running::metric_sum(&text, &exported_key) - exported0;
        if exported >= flood_n as f64 {
            break;
        }
        if exported > last.0 {
            last = (exported, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let busy = t0.elapsed().as_secs_f64();
    let cpu = d.cpu_secs() - cpu0;
    std::thread::sleep(Duration::from_secs(2));
    let text = d.metrics_text();
    let received = hole
        .as_ref()
        .map(|(_, h)| format!(", receiver got {}", h.records.load(Ordering::Relaxed)))
        .unwrap_or_default();
    println!(
        "  {sink:<6} {exported:.0} records in {:.2} s ({:.0} connects/s), drained in {busy:.2} s: \
         daemon CPU {cpu:.2} s = {:.2} us/record (idle before: {:.0} ms CPU/s); {}{received}",
        flood_time.as_secs_f64(),
        flood_n as f64 / flood_time.as_secs_f64(),
        cpu * 1e6 / exported.max(1.0),
        idle_rate * 1e3,
        losses(&text),
    );
    println!(
        "  {sink:<6} daemon VmRSS after the flood {:.1} MiB, VmHWM {:.1} MiB",
        d.status_mib("VmRSS:"),
        d.status_mib("VmHWM:")
    );
}

/// Sockets one helper process holds (the hard RLIMIT_NOFILE here is 20,000
/// and cannot be raised).
const PER_PROCESS: usize = 16_000;

/// SCALE_FLOWS live TCP connections from SCALE_CGROUPS cgroups.
fn scale() {
    let cgroups = env_u64("CLAWKER_BENCH_SCALE_CGROUPS").map_or(SCALE_CGROUPS, |v| v as usize);
    let flows = env_u64("CLAWKER_BENCH_SCALE_FLOWS").map_or(SCALE_FLOWS, |v| v as usize);
    let procs = flows.div_ceil(PER_PROCESS);
    // Loopback servers (outside the watched cgroup) that accept and hold
    // every connection, one process and port per PER_PROCESS connections.
    let server = "import socket\nl = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(4096)\n\
                  print(l.getsockname()[1], flush=True)\nheld = []\nwhile True:\n    held.append(l.accept()[0])\n";
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..procs {
        let mut c = Command::new("python3")
            .args(["-c", server])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 server");
        let mut line = String::new();
        let _ = BufReader::new(c.stdout.take().expect("stdout")).read_line(&mut line);
        ports.push(line.trim().parse::<u16>().expect("server port"));
        servers.push(c);
    }
    let (addr, _hole) = blackhole();
    // Under --cgroup-root the watched cgroup is ONE scope (container) for
    // the kernel's per-container shares: let it use the whole flow table
    // (CLAWKER_EGRESS_FLOW_TABLE_SIZE, inherited by the daemon, or the default).
    let table = env_u64("CLAWKER_EGRESS_FLOW_TABLE_SIZE")
        .unwrap_or(u64::from(clawker_egress::kernel::abi::EGRESS_MAX_FLOWS))
        .to_string();
    let d = Running::start(
        "scale",
        "otlp",
        Some(addr),
        &[("CLAWKER_EGRESS_CONTAINER_MAX_FLOWS", &table)],
    );
    let rss0 = d.status_mib("VmRSS:");
    let mut children = Vec::new();
    for i in 0..cgroups {
        let cg = d.cg.join(format!("c{i}"));
        std::fs::create_dir_all(&cg).expect("scale cgroup");
        children.push(cg);
    }
    // Holder processes: each takes its share of the cgroups; per cgroup it
    // joins it and opens its connections (a socket belongs to the cgroup it
    // was made in), then holds them all until its stdin closes.
    let per = flows / cgroups;
    let holder = format!(
        "import socket, sys\nheld = []\nport = int(sys.argv[1])\nfor cg in sys.argv[2:]:\n    \
         open(cg + '/cgroup.procs', 'w').write('0')\n    for j in range({per}):\n        \
         held.append(socket.create_connection(('127.0.0.1', port)))\nprint(len(held), flush=True)\nsys.stdin.read()\n"
    );
    let t0 = Instant::now();
    let mut holders = Vec::new();
    for (k, share) in children.chunks(cgroups.div_ceil(procs)).enumerate() {
        let h = Command::new("python3")
            .arg("-c")
            .arg(&holder)
            .arg(ports[k % ports.len()].to_string())
            .args(share.iter().map(|c| c.as_os_str()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 holder");
        holders.push(h);
    }
    let mut opened = 0usize;
    for h in &mut holders {
        let mut line = String::new();
        let _ = BufReader::new(h.stdout.take().expect("stdout")).read_line(&mut line);
        opened += line.trim().parse::<usize>().unwrap_or(0);
    }
    let open_time = t0.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    println!(
        "daemon memory at scale: {cgroups} cgroups under the watched one, {opened} live TCP connections \
         from {} processes (opened in {:.1} s), held open:",
        holders.len(),
        open_time.as_secs_f64()
    );
    let cpu0 = d.cpu_secs();
    std::thread::sleep(Duration::from_secs(5));
    let idle = (d.cpu_secs() - cpu0) / 5.0;
    let text = d.metrics_text();
    println!(
        "  VmRSS {:.1} MiB (at start {rss0:.1}), VmHWM {:.1} MiB; daemon CPU while they are open {:.0} ms/s; \
         flows_total {}; {}",
        d.status_mib("VmRSS:"),
        d.status_mib("VmHWM:"),
        idle * 1e3,
        flow_counts(&text),
        losses(&text)
    );
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    std::thread::sleep(Duration::from_secs(5));
    let text = d.metrics_text();
    println!(
        "  after they closed: VmRSS {:.1} MiB, VmHWM {:.1} MiB, records exported {:.0}, flows_total {}; {}",
        d.status_mib("VmRSS:"),
        d.status_mib("VmHWM:"),
        Running::metric_sum(&text, "clawker_egress_records_exported_total"),
        flow_counts(&text),
        losses(&text)
    );
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

fn flow_counts(text: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with("clawker_egress_flows_total"))
        .map(|l| l.trim_start_matches("clawker_egress_flows_total"))
        .collect::<Vec<_>>()
        .join(" ")
}
