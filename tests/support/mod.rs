//! Helpers for the root integration tests: real cgroups, a real daemon, real
//! traffic on loopback. Each test gets its own cgroup and pin directory, so
//! tests run in parallel without seeing each other.
#![allow(dead_code)]

pub mod docker;
pub mod otlp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Is this process root?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root-only tests: skip loudly outside root, fail under CI (which is root).
/// Tests call it through [`require_root!`]; a test with a part that runs
/// without root calls it for that part.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI must run the root tests as root");
    }
    eprintln!("SKIPPED {test}: needs root (BPF, cgroups); run `sudo -E cargo test`");
    false
}

/// First line of a root-only test: returns from it (skipped loudly, named
/// by its path) unless root; under CI it fails instead.
#[macro_export]
macro_rules! require_root {
    () => {{
        fn here() {}
        let name = ::std::any::type_name_of_val(&here);
        if !$crate::support::require_root(name.strip_suffix("::here").unwrap_or(name)) {
            return;
        }
    }};
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup v2 directory owned by one test, removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        Self::under(&cgroup2_root(), name)
    }

    pub fn under(parent: &Path, name: &str) -> Self {
        let path = parent.join(unique(name));
        std::fs::create_dir_all(&path).expect("create test cgroup");
        TestCgroup { path }
    }

    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).unwrap().ino()
    }

    /// A command that runs inside this cgroup: `sh` moves itself in, then
    /// execs the program (so comm is the program's own name).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                self.path.display()
            ))
            .arg("sh")
            .arg(program)
            .args(args);
        cmd
    }

    /// Run a Python snippet inside the cgroup and wait for it; returns stdout.
    /// A loop of TCP connects to 127.0.0.1:`port`, `rate` per second for
    /// `secs` seconds, in this cgroup on a thread of its own; joins to the
    /// number of connects made (one flow record each).
    #[allow(dead_code)] // not every test binary uses it
    pub fn paced_connects(&self, port: u16, rate: u32, secs: u32) -> std::thread::JoinHandle<u64> {
        let py = format!(
            "import socket, time\n\
             t0 = time.time(); n = 0\n\
             while time.time() - t0 < {secs}:\n\
             \x20   s = socket.create_connection(('127.0.0.1', {port})); s.close(); n += 1\n\
             \x20   lag = t0 + n / {rate} - time.time()\n\
             \x20   if lag > 0: time.sleep(lag)\n\
             print(n, flush=True)\n"
        );
        let cg_path = self.path.clone();
        std::thread::spawn(move || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg("echo $$ > \"$1\"/cgroup.procs && exec python3 -c \"$2\"")
                .arg("sh")
                .arg(&cg_path)
                .arg(&py)
                .output()
                .expect("python3");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap()
        })
    }

    /// `clawker-egress bypass` on this cgroup (as its own cgroup root) for
    /// the daemon pinned at `pin_root`: its stdout; a failure fails the test.
    pub fn bypass(&self, pin_root: &Path, extra: &[&str]) -> String {
        let out = Command::new(bin())
            .arg("bypass")
            .arg("--cgroup-root")
            .arg(&self.path)
            .arg("--pin-root")
            .arg(pin_root)
            .arg("--cgroup")
            .arg(&self.path)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bypass {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A script that hangs (a datagram that never comes) is killed after
    /// 10 minutes and fails its test, rather than holding CI.
    pub fn python(&self, script: &str) -> String {
        use std::io::Read;
        let mut child = self
            .command("python3", &["-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3");
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b);
            b
        });
        let err = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = err.read_to_end(&mut b);
            b
        });
        let deadline = Instant::now() + Duration::from_secs(600);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for python3") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = out.join().unwrap_or_default();
        let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
        match status {
            Some(s) if s.success() => String::from_utf8_lossy(&out).into_owned(),
            Some(_) => panic!("python failed: {err}"),
            None => panic!(
                "python ran over 600 s and was killed; stdout: {}; stderr: {err}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        kill_all_in(&self.path);
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn kill_all_in(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_all_in(&e.path());
            }
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_clawker-egress")
}

/// A running daemon whose stdout JSON lines are collected as they arrive.
pub struct Daemon {
    pub child: Child,
    pub metrics_port: u16,
    pub pin_root: PathBuf,
    records: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    own_spool: Option<PathBuf>,
    /// Set by the stdout reader once it reached the end of the stream.
    stdout_done: Arc<std::sync::atomic::AtomicBool>,
    stderr_done: Arc<std::sync::atomic::AtomicBool>,
}

/// Sets its flag when dropped: a reader thread's "I have read it all".
struct Done(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub struct DaemonOptions {
    pub cgroup_root: Option<PathBuf>,
    pub pin_root: PathBuf,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run the daemon itself inside this cgroup (self-traffic tests).
    pub run_inside: Option<PathBuf>,
    /// Run the daemon in its own UTS namespace with this host name: its
    /// `host.name` as another host's daemon would have it (tests/fleet.rs).
    pub hostname: Option<String>,
    /// The spool directory made up for it, removed with the daemon (a
    /// full suite left hundreds in /tmp).
    pub own_spool: Option<PathBuf>,
}

impl DaemonOptions {
    /// Attached to one test cgroup: everything under it is in scope.
    pub fn for_cgroup(cg: &TestCgroup) -> Self {
        DaemonOptions {
            cgroup_root: Some(cg.path.clone()),
            ..Self::host_root()
        }
    }

    /// Scope `containers`, attached at the containers' cgroup parent
    /// (`docker/`): host processes run no program.
    /// Each daemon gets its own OTLP disk spool directory (a spool is
    /// locked by one daemon); a test that restarts a daemon on the same
    /// spool sets `CLAWKER_EGRESS_SPOOL_DIR` itself (the later entry wins).
    pub fn host_root() -> Self {
        let spool = std::env::temp_dir().join(unique("clawker-egress-test-spool"));
        DaemonOptions {
            cgroup_root: None,
            pin_root: PathBuf::from("/sys/fs/bpf").join(unique("clawker-egress-test")),
            extra: Vec::new(),
            env: vec![
                (
                    "CLAWKER_EGRESS_SPOOL_DIR".into(),
                    spool.to_string_lossy().into_owned(),
                ),
                // A host-root test daemon also sees the other suites'
                // containers: its history must reach back past their
                // floods to the test's own records (the default, 4,096, is
                // an operator's memory bound).
                ("CLAWKER_EGRESS_API_HISTORY_RECORDS".into(), "100000".into()),
            ],
            run_inside: None,
            hostname: None,
            own_spool: Some(spool),
        }
    }

    /// Enforce this policy file.
    pub fn policy(self, path: &Path) -> Self {
        self.arg("--policy").arg(path.to_str().expect("UTF-8 path"))
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra.push(a.into());
        self
    }
}

/// A daemon stopped with SIGSTOP (no watcher, no enrolment, no reader),
/// continued when dropped, also when the test fails.
pub struct Paused(i32);

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

impl Daemon {
    /// Stop the daemon until the guard is dropped.
    #[allow(dead_code)] // not every test binary uses it
    pub fn pause(&self) -> Paused {
        let pid = self.child.id() as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Paused(pid)
    }

    /// On a metrics port the daemon picks itself (port 0; read back from
    /// its `metrics_listening` log line). A port picked by the test and
    /// bound later by the daemon raced: two tests' daemons got the same one,
    /// and the loser's /healthz check was answered by the winner.
    pub fn start(opts: DaemonOptions) -> Daemon {
        Self::start_on_port(opts, 0)
    }

    pub fn start_on_port(opts: DaemonOptions, metrics_port: u16) -> Daemon {
        let mut cmd = match (&opts.run_inside, &opts.hostname) {
            (Some(_), Some(_)) => panic!("run_inside and hostname together are not supported"),
            (None, Some(name)) => {
                // unshare execs: the child's pid is the daemon's.
                let mut c = Command::new("unshare");
                c.args(["--uts", "--", "sh", "-c"])
                    .arg("hostname \"$1\" && shift && exec \"$@\"")
                    .arg("sh")
                    .arg(name)
                    .arg(bin());
                c
            }
            (Some(cg), None) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!(
                        "echo $$ > {}/cgroup.procs && exec \"$@\"",
                        cg.display()
                    ))
                    .arg("sh")
                    .arg(bin());
                c
            }
            (None, None) => Command::new(bin()),
        };
        cmd.arg("run")
            .arg("--pin-root")
            .arg(&opts.pin_root)
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"));
        if let Some(root) = &opts.cgroup_root {
            cmd.arg("--cgroup-root").arg(root);
        }
        cmd.args(&opts.extra)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn clawker-egress");
        let records = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let r = records.clone();
        let stdout_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stdout_done.clone();
        std::thread::spawn(move || {
            // Whichever way the loop ends (EOF, a cut line, a panic on a
            // line that is not JSON), stop() must not wait for more.
            let _done = Done(done);
            let mut out = BufReader::new(out);
            let mut line = String::new();
            while out.read_line(&mut line).is_ok_and(|n| n > 0) {
                if !line.ends_with('\n') {
                    // The daemon was killed in the middle of a line (a test
                    // ending with SIGKILL): the rest will never come.
                    eprintln!("[daemon] stdout ended inside a line: {line}");
                    break;
                }
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                r.lock().unwrap().push(v);
                line.clear();
            }
        });
        let e = stderr.clone();
        let stderr_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stderr_done.clone();
        std::thread::spawn(move || {
            let _done = Done(done);
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[daemon] {line}");
                e.lock().unwrap().push(line);
            }
        });
        let mut d = Daemon {
            child,
            metrics_port,
            pin_root: opts.pin_root,
            records,
            stderr,
            // Decided under the lock, copied once: copying every record
            // at every poll starves the reader thread behind a flood.
            own_spool: opts.own_spool,
            stdout_done,
            stderr_done,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        // Loading and verifying the programs is CPU work in the kernel: on
        // a loaded host, with other tests' daemons starting, it took more
        // than 30 s.
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The stderr reader may not have read the last lines yet.
                let until = Instant::now() + Duration::from_secs(10);
                while !self.stderr_done.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                panic!("daemon exited early ({status}): {:?}", self.stderr_lines());
            }
            if self.metrics_port == 0 {
                self.metrics_port = self.listening_port().unwrap_or(0);
            }
            if self.metrics_port != 0
                && http_get(&format!("http://127.0.0.1:{}/readyz", self.metrics_port)).is_some()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon not ready after 120 s: {:?}", self.stderr_lines());
    }

    /// The port of its `event="metrics_listening" addr=127.0.0.1:PORT` line.
    fn listening_port(&self) -> Option<u16> {
        self.stderr_lines().iter().find_map(|l| {
            if !l.contains("metrics_listening") {
                return None;
            }
            let rest = &l[l.find("addr=")? + "addr=".len()..];
            let addr = rest.split_whitespace().next()?.trim_matches('"');
            addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
        })
    }

    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until a stderr line for which `pred` holds has been read (the
    /// reader thread may lag a loaded host by seconds); fails after 30 s or
    /// when the daemon exits first.
    pub fn wait_stderr(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.stderr_lines().iter().any(|l| pred(l)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a log line: {what}; stderr: {:?}",
                self.stderr_lines()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until `pred` holds for the records seen so far.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let timed_out = {
                let recs = self.records.lock().unwrap();
                if pred(&recs) {
                    return recs.clone();
                }
                (Instant::now() > deadline).then(|| {
                    format!(
                        "{} records: {:#?}",
                        recs.len(),
                        &recs[recs.len().saturating_sub(10)..]
                    )
                })
            };
            if let Some(seen) = timed_out {
                panic!(
                    "timed out waiting for {what}; {seen}\n\
                     the daemon's non-zero loss counters: {:#?}",
                    self.loss_counters()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Records for which `pred` holds, waiting up to `timeout` for at
    /// least `min` of them; returns what was there at the end (never
    /// panics: the caller asserts on exactly what arrived).
    #[allow(dead_code)] // not every test binary uses it
    pub fn collect(
        &self,
        min: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            // Only the matching records are copied (see wait_for).
            let found: Vec<Value> = self
                .records
                .lock()
                .unwrap()
                .iter()
                .filter(|r| pred(r))
                .cloned()
                .collect();
            if found.len() >= min || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its non-zero drop, loss and unattributed counters: what a test that
    /// timed out waiting for a record prints, to tell a lost record (a flood
    /// elsewhere on the host, a full ring) from one never made.
    pub fn loss_counters(&self) -> Vec<String> {
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                ["drop", "lost", "unattributed", "full"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .filter(|l| !l.ends_with(" 0"))
            .map(str::to_owned)
            .collect()
    }

    pub fn metrics(&self) -> String {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.metrics_port)).unwrap_or_default()
    }

    /// One sample of a metric with exactly these labels (0 when absent).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        metric_value(&self.metrics(), name_and_labels)
    }

    /// SIGTERM and wait: the daemon drains and exits 0.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<Value>) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        // The reader thread catches up: every line the daemon wrote before
        // it exited, up to the end of its stdout (a fixed sleep here lost
        // the last records on a loaded host).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.stdout_done.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                // Something else holds the pipe open: go on with what came.
                eprintln!("[daemon] exited, but its stdout did not end within 30 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let recs = self.records();
        (status, recs)
    }

    /// SIGTERM, and leave the programs attached for the caller to inspect.
    pub fn stop_keeping_pins(mut self) -> (std::process::ExitStatus, Vec<Value>) {
        self.pin_root = PathBuf::new();
        self.stop()
    }

    /// SIGKILL: no drain, programs stay attached.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.pin_root = PathBuf::new(); // keep the pins for the next daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.pin_root.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.pin_root);
        }
        if let Some(spool) = &self.own_spool {
            let _ = std::fs::remove_dir_all(spool);
        }
    }
}

pub fn metric_value(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

pub fn http_get(url: &str) -> Option<String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();
    let mut resp = agent.get(url).call().ok()?;
    resp.body_mut().read_to_string().ok()
}

/// The pid a test script prints on its first line.
pub fn pid_of(output: &str) -> u32 {
    output
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("script prints its pid first")
}

/// Write-then-rename: a daemon watching `path` never reads half a file.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Egress records made by one process.
/// A flow, socket or DNS record (not a process's exec/exit record, which
/// carries the same pid).
pub fn is_egress(r: &Value) -> bool {
    r["clawker.source"] == "egress"
}

pub fn by_pid(recs: &[Value], pid: u32) -> Vec<Value> {
    // Egress records only: the process's exec/exit records (clawker.source
    // exec) carry its pid too.
    recs.iter()
        .filter(|r| r["pid"] == pid && is_egress(r))
        .cloned()
        .collect()
}

/// A loopback TCP server the test owns. Per connection: read `expect` bytes
/// (or until EOF when `None`), write `reply` bytes, close.
pub struct TcpServer {
    pub port: u16,
}

impl TcpServer {
    pub fn spawn(bind: &str, expect: Option<usize>, reply: usize) -> TcpServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(bind).expect("bind test server");
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen = 0usize;
                    while expect.is_none_or(|n| seen < n) {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => seen += n,
                        }
                    }
                    let chunk = vec![b'r'; 64 * 1024];
                    let mut left = reply;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if conn.write_all(&chunk[..n]).is_err() {
                            break;
                        }
                        left -= n;
                    }
                });
            }
        });
        TcpServer { port }
    }
}

/// Sum an integer field over records.
pub fn sum(recs: &[Value], field: &str) -> u64 {
    recs.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum()
}

/// A real DNS server for the test: Debian's dnsmasq on a loopback address,
/// port 53, authoritative for `hosts` (name, address) with a fixed TTL and
/// nothing else (no upstream). Killed on drop.
pub struct DnsServer {
    pub addr: std::net::SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl DnsServer {
    pub fn dnsmasq(ip: &str, hosts: &[(String, std::net::IpAddr)], ttl: u32) -> DnsServer {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        let text: String = hosts.iter().map(|(n, a)| format!("{a} {n}\n")).collect();
        std::fs::write(&file, text).unwrap();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
            ])
            .arg(format!("--addn-hosts={}", file.display()))
            .arg(format!("--listen-address={ip}"))
            .args([
                "--bind-interfaces",
                "--port=53",
                "--user=root",
                "--log-facility=-",
            ])
            .arg(format!("--local-ttl={ttl}"))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)");
        let addr = std::net::SocketAddr::new(ip.parse().unwrap(), 53);
        let server = DnsServer {
            addr,
            child,
            _dir: dir,
        };
        server.wait_ready(&hosts[0].0);
        server
    }

    /// Until dnsmasq answers for `name` (it reads its hosts file at start).
    fn wait_ready(&self, name: &str) {
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            let _ = sock.send_to(&q, self.addr);
            if sock.recv(&mut buf).is_ok() {
                return;
            }
        }
        panic!("dnsmasq on {} did not answer", self.addr);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python: `resolve(name, qtype)` asks `server` and returns the address.
pub fn py_resolver(server: std::net::SocketAddr) -> String {
    format!(
        "import socket, struct, random\n\
         def resolve(name, qtype=1):\n\
         \x20   q = struct.pack('>HHHHHH', random.randint(0, 65535), 0x0100, 1, 0, 0, 0)\n\
         \x20   q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\\x00'\n\
         \x20   q += struct.pack('>HH', qtype, 1)\n\
         \x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   u.sendto(q, ('{ip}', {port}))\n\
         \x20   r = u.recv(512)\n\
         \x20   u.close()\n\
         \x20   if r[7] == 0: return None\n\
         \x20   n = 4 if qtype == 1 else 16\n\
         \x20   return socket.inet_ntop(socket.AF_INET if n == 4 else socket.AF_INET6, r[-n:])\n\
         def resolve_tcp(name):\n\
         \x20   q = struct.pack('>HHHHHH', random.randint(0, 65535), 0x0100, 1, 0, 0, 0)\n\
         \x20   q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\\x00'\n\
         \x20   q += struct.pack('>HH', 1, 1)\n\
         \x20   t = socket.create_connection(('{ip}', {port}))\n\
         \x20   t.sendall(struct.pack('>H', len(q)) + q)\n\
         \x20   n = struct.unpack('>H', t.recv(2))[0]\n\
         \x20   r = b''\n\
         \x20   while len(r) < n: r += t.recv(n - len(r))\n\
         \x20   t.close()\n\
         \x20   if r[7] == 0: return None\n\
         \x20   return socket.inet_ntoa(r[-4:])\n",
        ip = server.ip(),
        port = server.port()
    )
}

/// Poll `f` (every 250 ms) until it gives a value; fail the test after
/// `timeout`, naming `what` it waited for.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
