//! Daemon memory with real Docker containers (issue 11): CONTAINERS
//! labelled busybox containers (`sleep`, under this run's own cgroup
//! parent), FLOWS_PER live TCP connections made inside each container's
//! cgroup, the daemon in `containers` scope attached at that parent
//! (Docker attribution, enrolment, per-agent series for every container).
//! Prints figures; asserts nothing.
//!
//! Feasible variant: the connections are opened by host processes that
//! join each container's cgroup (a socket belongs to the cgroup it was
//! made in, so the kernel and the daemon see the container's flows), not
//! by FLOWS_PER processes inside each container (1,000 x 100 processes do
//! not fit this machine). Every container is removed at the end.
//!
//! After the connections close at once (100,000 flow ends in about a
//! second): the daemon's VmRSS sampled every 100 ms until every flow's
//! record is written (its peak, and its value 5 s after the close and 5 s
//! after the last record), records written and every loss counter.
//!
//! Run as root with Docker up (scripts/docker-env):
//! `cargo bench --bench containers` (CLAWKER_BENCH_CONTAINERS=1000,
//! CLAWKER_BENCH_FLOWS_PER=100 by default). Paired: with
//! `CLAWKER_BENCH_BIN_BEFORE=<binary>[:<binary>...]` every round measures
//! those daemons and then this one (`CLAWKER_BENCH_BIN`, default the
//! bench's own build) on the same containers; `CLAWKER_BENCH_ROUNDS`
//! rounds (default 1).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "clawker-egress-test/busybox:1";
/// Sockets one holder process keeps (RLIMIT_NOFILE here is 20,000).
const PER_PROCESS: usize = 16_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIPPED containers bench: needs root (BPF attach, Docker)");
        return;
    }
    let containers = env_usize("CLAWKER_BENCH_CONTAINERS", 1_000);
    let per = env_usize("CLAWKER_BENCH_FLOWS_PER", 100);
    let run = format!("b{}", std::process::id());
    let after = std::env::var("CLAWKER_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_clawker-egress").into());
    let mut bins = Vec::new();
    for _ in 0..env_usize("CLAWKER_BENCH_ROUNDS", 1) {
        if let Ok(before) = std::env::var("CLAWKER_BENCH_BIN_BEFORE") {
            for b in before.split(':').filter(|b| !b.is_empty()) {
                bins.push(("before", b.to_owned()));
            }
        }
        bins.push(("after", after.clone()));
    }
    let ids = start_containers(&run, containers);
    let result = std::panic::catch_unwind(|| {
        for (i, (label, bin)) in bins.iter().enumerate() {
            println!("  [{label}: {bin}] load average {}", load_average());
            measure(&format!("{run}r{i}"), &run, bin, &ids, per);
        }
    });
    let t0 = Instant::now();
    remove_containers(&run);
    println!(
        "  removed {} containers in {:.1} s",
        ids.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Ok(v2) = clawker_egress::kernel::cgroup2_root() {
        let _ = std::fs::remove_dir(v2.join(format!("clawker-bench-{run}")));
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

/// `docker run -d` CONTAINERS labelled containers, 8 at a time.
fn start_containers(run: &str, n: usize) -> Vec<String> {
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let children: Vec<Child> = chunk
            .iter()
            .map(|i| {
                Command::new("docker")
                    .args(["run", "-d", "--network", "none", "--name"])
                    .arg(format!("clawker-bench-{run}-{i}"))
                    .args(["--cgroup-parent", &format!("/clawker-bench-{run}")])
                    .args(["--label", &format!("clawker-bench={run}")])
                    .args(["--label", &format!("dev.clawker.agent=agent{}", i % 100)])
                    .args(["--label", &format!("dev.clawker.project=p{}", i / 100)])
                    .args([IMAGE, "sleep", "3600"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("docker run")
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().expect("docker run");
            let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && !id.is_empty() {
                ids.push(id);
            }
        }
    }
    println!(
        "containers bench: {} of {n} busybox containers started in {:.1} s",
        ids.len(),
        t0.elapsed().as_secs_f64()
    );
    ids
}

fn remove_containers(run: &str) {
    let out = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=clawker-bench={run}"),
    ]);
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    for chunk in ids.chunks(100) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk.iter().map(String::as_str));
        let _ = docker(&args);
    }
}

fn cgroup_of(id: &str, v2: &Path) -> Option<PathBuf> {
    let out = docker(&["inspect", "-f", "{{.State.Pid}}", id]);
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(v2.join(rel.trim_start_matches('/')))
}

fn status_mib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// What the RSS is made of (`/proc/<pid>/status`: RssAnon, RssFile, RssShmem): heap and other
/// anonymous memory, file pages (the binary), shared memory.
fn rss_parts(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    format!(
        "anon {:.1} + file {:.1} + shmem {:.1} MiB",
        kib("RssAnon:") / 1024.0,
        kib("RssFile:") / 1024.0,
        kib("RssShmem:") / 1024.0
    )
}

fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime, stime: fields 14 and 15 (1-based), 11 and 12 after the comm.
    (ticks(11) + ticks(12)) / 100.0
}

fn metrics(port: u16) -> String {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();
    agent
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Records lost in the kernel so far (the ring was full).
fn lost_now(text: &str) -> f64 {
    metric_sum(
        text,
        "clawker_egress_events_dropped_total{reason=\"ringbuf_full\"}",
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `run`: this daemon's own names (pins, socket, spool); `parent`: the
/// containers' cgroup parent.
fn measure(run: &str, parent: &str, bin: &str, ids: &[String], per: usize) {
    let v2 = clawker_egress::kernel::cgroup2_root().expect("cgroup2 mount");
    let cgroups: Vec<PathBuf> = ids.iter().filter_map(|id| cgroup_of(id, &v2)).collect();
    let flows = cgroups.len() * per;
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pins = format!("/sys/fs/bpf/clawker-bench-containers-{run}");
    // Scope `containers`, attached at this run's own cgroup parent: the
    // daemon sees these containers only (not the other containers of a
    // shared host), and the daemons attached at docker/ do not see them.
    // stdout discarded.
    let mut daemon = Command::new(bin)
        .args(["run", "--output", "stdout", "--scope", "containers"])
        .args(["--containers-cgroup", &format!("clawker-bench-{parent}")])
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--pin-root", &pins])
        .args(["--api-socket", &format!("/tmp/clawker-bench-{run}.sock")])
        .env(
            "CLAWKER_EGRESS_SPOOL_DIR",
            format!("/tmp/clawker-bench-spool-{run}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let pid = daemon.id();
    // Ready: /metrics answers and every container is enrolled (attributed).
    let t0 = Instant::now();
    while metrics(port).is_empty() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let rss0 = status_mib(pid, "VmRSS:");
    // Loopback servers outside every container, one per PER_PROCESS.
    let procs = flows.div_ceil(PER_PROCESS).max(1);
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
    // Holders: join each container's cgroup in turn, open `per` connections
    // there, hold them all until stdin closes, then leave the cgroups.
    let holder = format!(
        "import socket, sys, os\nheld = []\nport = int(sys.argv[1])\nfor cg in sys.argv[2:]:\n    \
         open(cg + '/cgroup.procs', 'w').write('0')\n    for j in range({per}):\n        \
         held.append(socket.create_connection(('127.0.0.1', port)))\n\
         open('{home}/cgroup.procs', 'w').write('0')\nprint(len(held), flush=True)\nsys.stdin.read()\n",
        home = v2.display()
    );
    let t1 = Instant::now();
    let mut holders = Vec::new();
    for (k, share) in cgroups
        .chunks(cgroups.len().div_ceil(procs).max(1))
        .enumerate()
    {
        holders.push(
            Command::new("python3")
                .arg("-c")
                .arg(&holder)
                .arg(ports[k % ports.len()].to_string())
                .args(share.iter().map(|c| c.as_os_str()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 holder"),
        );
    }
    let mut opened = 0usize;
    for h in &mut holders {
        let mut line = String::new();
        let _ = BufReader::new(h.stdout.take().expect("stdout")).read_line(&mut line);
        opened += line.trim().parse::<usize>().unwrap_or(0);
    }
    let open_time = t1.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let cpu0 = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(5));
    let cpu = (cpu_secs(pid) - cpu0) / 5.0;
    let text = metrics(port);
    println!(
        "  {} real containers, {opened} live TCP connections (opened in {:.1} s), held open: \
         daemon VmRSS {:.1} MiB ({}; before them {rss0:.1}), VmHWM {:.1} MiB, CPU {:.0} ms/s; \
         flows table full {}, agent series {}",
        cgroups.len(),
        open_time.as_secs_f64(),
        status_mib(pid, "VmRSS:"),
        rss_parts(pid),
        status_mib(pid, "VmHWM:"),
        cpu * 1e3,
        metric_sum(&text, "clawker_egress_kernel_map_full_total{map=\"flows\"}"),
        metric_sum(&text, "clawker_egress_agent_series "),
    );
    // Close them all at once; sample the RSS until every flow's record is
    // written (or 120 s).
    let ended0 = metric_sum(&text, "clawker_egress_flows_total{state=\"ended\"}");
    let written0 = metric_sum(
        &text,
        "clawker_egress_records_exported_total{sink=\"stdout\"}",
    );
    for h in &mut holders {
        drop(h.stdin.take());
    }
    let t2 = Instant::now();
    let (mut peak, mut at5, mut written_at) = (0.0f64, None, None);
    while t2.elapsed() < Duration::from_secs(120) {
        peak = peak.max(status_mib(pid, "VmRSS:"));
        if at5.is_none() && t2.elapsed() >= Duration::from_secs(5) {
            at5 = Some(status_mib(pid, "VmRSS:"));
        }
        if written_at.is_none() {
            let text = metrics(port);
            // Ended here, or lost in the kernel and counted there.
            let ended = metric_sum(&text, "clawker_egress_flows_total{state=\"ended\"}") - ended0
                + metric_sum(
                    &text,
                    "clawker_egress_events_dropped_total{reason=\"ringbuf_full\"}",
                );
            let written = metric_sum(
                &text,
                "clawker_egress_records_exported_total{sink=\"stdout\"}",
            ) - written0;
            if ended >= opened as f64 && written >= ended - lost_now(&text) {
                written_at = Some(t2.elapsed());
            }
        }
        if at5.is_some() && written_at.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for mut h in holders {
        let _ = h.wait();
    }
    let settled = written_at.map(|w| {
        std::thread::sleep(Duration::from_secs(5));
        (w, status_mib(pid, "VmRSS:"), rss_parts(pid))
    });
    let text = metrics(port);
    println!(
        "  after they closed at once: VmRSS peak {peak:.1} MiB (VmHWM {:.1}), 5 s after the close {:.1} MiB; {}; \
         records written {:.0}, flows ended {:.0}; lost: events_dropped {:.0}, kernel ringbuf drops {:.0}, \
         sink failures {:.0}",
        status_mib(pid, "VmHWM:"),
        at5.unwrap_or(0.0),
        match settled {
            Some((w, rss, parts)) => format!(
                "every record written {:.1} s after the close, VmRSS 5 s later {rss:.1} MiB ({parts})",
                w.as_secs_f64()
            ),
            None => "NOT every record written within 120 s".to_owned(),
        },
        metric_sum(&text, "clawker_egress_records_exported_total{sink=\"stdout\"}"),
        metric_sum(&text, "clawker_egress_flows_total{state=\"ended\"}"),
        metric_sum(&text, "clawker_egress_events_dropped_total"),
        metric_sum(&text, "clawker_egress_kernel_ringbuf_drops_total"),
        metric_sum(&text, "clawker_egress_sink_failures_total"),
    );
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let _ = Command::new(bin)
        .args(["detach", "--pin-root", &pins])
        .output();
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir_all(format!("/tmp/clawker-bench-spool-{run}"));
}
