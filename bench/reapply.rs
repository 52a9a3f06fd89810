//! Re-decision bench (issue 9, item 7). Prints figures; asserts nothing.
//!
//! How long one re-decision of open sockets takes after a reload, with N
//! open in-scope TCP connections (loopback): a reload that keeps them all
//! (every socket decided, none ended) and one that ends them all. The time
//! is the daemon's own `elapsed_ms` of each `policy_reapplied` (iterator
//! runs in every network namespace, records read back), median of rounds.
//!
//! Run as root: `cargo bench --bench reapply`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUNDS: usize = 7;
const SIZES: [usize; 3] = [0, 1_000, 4_000];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("reapply bench: run it with `cargo bench --bench reapply`");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED reapply bench: needs root (BPF attach, cgroups)");
        return;
    }
    println!("clawker-egress reapply bench ({ROUNDS} rounds, median)");
    let root = clawker_egress::kernel::cgroup2_root().expect("cgroup2 mount");
    for n in SIZES {
        one_size(&root, n);
    }
}

fn one_size(root: &Path, n: usize) {
    let id = format!("{}-{n}", std::process::id());
    let cg = root.join(format!("clawker-bench-reapply-{id}"));
    std::fs::create_dir_all(&cg).expect("bench cgroup");
    let pins = PathBuf::from(format!("/sys/fs/bpf/clawker-bench-reapply-{id}"));
    let dir = std::env::temp_dir().join(format!("clawker-bench-reapply-{id}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let policy = dir.join("policy.yaml");
    let allow = |i: usize| format!("# {i}\ndefault:\n  default_action: allow\n");
    write(&policy, &allow(0));

    let listener = TcpListener::bind("127.0.0.9:0").expect("sink");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let (mut daemon, log) = start_daemon(root, &cg, &pins, &policy);
    // N connections from the cgroup, held open.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            cg.display()
        ))
        .arg("sh")
        .args([
            "python3",
            "-u",
            "-c",
            &format!(
                "import resource, socket, sys, time\n\
                 resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))\n\
                 socks = [socket.create_connection(('127.0.0.9', {port})) for _ in range({n})]\n\
                 print('ready', flush=True)\ntime.sleep(3600)\n"
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("holder");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("holder ready");

    let mut keep = Vec::new();
    for i in 1..=ROUNDS {
        write(&policy, &allow(i));
        keep.push(reload(&daemon, &log));
    }
    write(
        &policy,
        "default:\n  default_action: allow\n  rules:\n    - {dst: 127.0.0.9, action: deny}\n",
    );
    let end = reload(&daemon, &log);
    println!(
        "{n:>5} open connections: re-decide all, keep all: {:>8.2} ms (decided {}); \
         end all: {:>8.2} ms (decided {}, ended {}, failed {})",
        median(keep.iter().map(|r| r.0).collect()),
        keep.last().map_or(0, |r| r.1),
        end.0,
        end.1,
        end.2,
        end.3
    );
    let _ = holder.kill();
    let _ = holder.wait();
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let _ = Command::new(env!("CARGO_BIN_EXE_clawker-egress"))
        .args(["detach", "--cgroup-root"])
        .arg(&cg)
        .arg("--pin-root")
        .arg(&pins)
        .stdout(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir(&cg);
    let _ = std::fs::remove_dir_all(&dir);
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).expect("write policy");
    f.write_all(text.as_bytes()).expect("write policy");
    std::fs::rename(&tmp, path).expect("rename policy");
}

type Log = Arc<Mutex<Vec<String>>>;

fn start_daemon(root: &Path, cg: &Path, pins: &Path, policy: &Path) -> (Child, Log) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            root.display()
        ))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_clawker-egress"))
        .args(["run", "--metrics-listen", "127.0.0.1:0", "--cgroup-root"])
        .arg(cg)
        .arg("--pin-root")
        .arg(pins)
        .arg("--policy")
        .arg(policy)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start daemon");
    let log: Log = Arc::default();
    let l = log.clone();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l.lock().expect("log").push(line);
        }
    });
    // Ready once the socket iterators are loaded (one reload's worth).
    wait_line(&log, "policy in force", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    (child, log)
}

fn wait_line(log: &Log, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = log.lock().expect("log").iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        assert!(Instant::now() < deadline, "daemon never logged {needle:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGHUP, then the next `policy_reapplied`: (elapsed ms, decided, ended,
/// could not be ended).
fn reload(daemon: &Child, log: &Log) -> (f64, u64, u64, u64) {
    let seen = log.lock().expect("log").len();
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = log.lock().expect("log")[seen..]
            .iter()
            .find(|l| l.contains("event=\"policy_reapplied\""))
            .cloned();
        if let Some(l) = line {
            return (
                field(&l, "elapsed_ms"),
                field(&l, "decided") as u64,
                field(&l, "ended") as u64,
                field(&l, "failed") as u64,
            );
        }
        assert!(
            Instant::now() < deadline,
            "no policy_reapplied after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn field(line: &str, name: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
