//! The local API end to end: a real daemon, real containers or test
//! cgroups, `clawker-egress observe` and `top` as an operator runs them
//! (top inside tmux). Traffic goes to loopback only.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::docker::{engine, wait_attribution_ready, Spec};
use support::{bin, unique, Daemon, DaemonOptions, TcpServer, TestCgroup};

const WAIT: Duration = Duration::from_secs(30);
const AGENT: &str = "dev.clawker.agent";
const PROJECT: &str = "dev.clawker.project";

/// A socket path in a directory of its own, removed with the guard (a
/// daemon killed at the end of a test cannot remove its socket). The
/// directory is world-traversable, so only the socket's mode keeps others out.
fn socket_path() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("ce-api").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("api.sock");
    (dir, path)
}

/// A running `observe`, its output collected as it arrives.
struct Observer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Observer {
    fn start(socket: &Path, args: &[&str]) -> Observer {
        let mut child = Command::new(bin())
            .arg("observe")
            .arg("--socket")
            .arg(socket)
            .arg("--json")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn observe");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                e.lock().unwrap().push(line);
            }
        });
        Observer {
            child,
            lines,
            stderr,
        }
    }

    fn records(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Records reported lost to this client (its in-band `lost` lines).
    fn lost(&self) -> u64 {
        self.stderr()
            .iter()
            .filter_map(|l| {
                l.strip_prefix("clawker-egress observe: ")?
                    .split_once(" records dropped")?
                    .0
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until the daemon has accepted `n` clients on `socket`, then a
/// moment for their request lines: a record made before a client
/// subscribed is not in its live stream. Accepted sockets carry the
/// listener's bound path in /proc/net/unix (state 03, connected); the
/// daemon binds in a private directory beside `socket` and renames the
/// socket into place, so that is the path they carry.
fn wait_subscribed(socket: &Path, n: usize) {
    let dir = socket
        .parent()
        .expect("socket dir")
        .to_str()
        .expect("UTF-8");
    let staged = format!("{dir}/.clawker-api-");
    support::wait_until(&format!("{n} API clients on {dir}"), WAIT, || {
        let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        let accepted = table
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 8 && f[7].starts_with(&staged) && f[5] == "03"
            })
            .count();
        (accepted >= n).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
}

/// `observe --json ARGS` without following: the history it printed.
fn history(socket: &Path, args: &[&str]) -> Vec<Value> {
    let out = Command::new(bin())
        .arg("observe")
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .output()
        .expect("run observe");
    assert!(
        out.status.success(),
        "observe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sorted(recs: impl IntoIterator<Item = Value>) -> Vec<String> {
    let mut v: Vec<String> = recs.into_iter().map(|r| r.to_string()).collect();
    v.sort();
    v
}

/// The same records, or a short account of the difference.
fn assert_same(got: Vec<String>, want: Vec<String>, what: &str) {
    if got == want {
        return;
    }
    let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).take(3).collect();
    let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).take(3).collect();
    panic!(
        "{what}: got {} records, want {}; missing e.g. {missing:#?}; unexpected e.g. {extra:#?}",
        got.len(),
        want.len()
    );
}

fn of(recs: &[Value], ids: &[&str]) -> Vec<Value> {
    recs.iter()
        .filter(|r| {
            r["container_id"]
                .as_str()
                .is_some_and(|id| ids.contains(&id))
        })
        .cloned()
        .collect()
}

type Pred = Box<dyn Fn(&Value) -> bool>;

#[test]
fn each_filter_selects_exactly_its_records_live_and_from_history() {
    require_root!();
    let _engine = engine();
    let _dns = support::DnsServer::dnsmasq(
        "127.0.0.57",
        &[("obs.test".to_string(), "127.0.4.2".parse().unwrap())],
        300,
    );
    let allowed = TcpServer::spawn("0.0.0.0:0", Some(3), 0);
    let second = TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    let denied = TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    let (agent_a, agent_b) = (unique("obs-a"), unique("obs-b"));
    let (proj_a, proj_b) = (unique("obs-pa"), unique("obs-pb"));
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "default:\n  default_action: allow\n\
             projects:\n  {proj_b}:\n    default_action: allow\n    rules:\n\
             \x20     - {{dst: 127.0.0.1, proto: tcp, port: \"{pd}\", action: deny}}\n",
            pd = denied.port
        ),
    )
    .unwrap();
    let (_socket_dir, socket) = socket_path();
    let daemon = Daemon::start(
        DaemonOptions::host_root()
            .policy(&policy)
            .arg("--api-socket")
            .arg(socket.to_str().unwrap()),
    );
    wait_attribution_ready(&daemon);

    // Live observers, one per filter, all at once, before any traffic.
    let port_a = allowed.port.to_string();
    let live: Vec<(&str, Vec<String>, Pred)> = vec![
        ("all", vec![], Box::new(|_| true)),
        (
            "agent",
            vec!["--agent".into(), agent_a.clone()],
            Box::new({
                let a = agent_a.clone();
                move |r| r["agent"] == a.as_str()
            }),
        ),
        (
            "project",
            vec!["--project".into(), proj_b.clone()],
            Box::new({
                let p = proj_b.clone();
                move |r| r["project"] == p.as_str()
            }),
        ),
        (
            "verdict",
            vec!["--verdict".into(), "denied".into()],
            Box::new(|r| r["verdict"] == "DENIED"),
        ),
        (
            "dst glob",
            vec!["--dst".into(), "*.TEST".into()],
            Box::new(|r| {
                ["dst_host", "qname"]
                    .iter()
                    .any(|k| r[k].as_str().is_some_and(|h| h.ends_with(".test")))
            }),
        ),
        (
            "dst cidr",
            vec!["--dst".into(), "127.0.4.0/24".into()],
            Box::new(|r| {
                r["dst_ip"]
                    .as_str()
                    .is_some_and(|ip| ip.starts_with("127.0.4."))
            }),
        ),
        (
            "port",
            vec!["--port".into(), port_a.clone()],
            Box::new({
                let p = allowed.port;
                move |r| r["dst_port"] == p
            }),
        ),
        (
            "proto",
            vec!["--proto".into(), "udp".into()],
            Box::new(|r| r["l4_proto"] == "udp"),
        ),
        (
            "l7",
            vec!["--l7".into(), "dns".into()],
            Box::new(|r| r["l7_proto"] == "dns"),
        ),
        (
            "source",
            vec!["--source".into(), "overseer".into()],
            Box::new(|r| r["clawker.source"] == "overseer"),
        ),
        (
            "project and port",
            vec![
                "--project".into(),
                proj_a.clone(),
                "--port".into(),
                port_a.clone(),
            ],
            Box::new({
                let (p, port) = (proj_a.clone(), allowed.port);
                move |r| r["project"] == p.as_str() && r["dst_port"] == port
            }),
        ),
    ];
    let observers: Vec<Observer> = live
        .iter()
        .map(|(_, args, _)| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Observer::start(&socket, &args)
        })
        .collect();
    wait_subscribed(&socket, observers.len());

    let nc = |ip: &str, port: u16| format!("echo hi | nc -w 2 {ip} {port}");
    let a = Spec::new(
        "ce-obs-a",
        format!(
            "nslookup obs.test 127.0.0.57 >/dev/null; {}",
            nc("127.0.4.2", allowed.port)
        ),
    )
    .gated()
    .label(AGENT, &agent_a)
    .label(PROJECT, &proj_a)
    .run();
    let b = Spec::new(
        "ce-obs-b",
        format!(
            "{}; {}; true",
            nc("127.0.0.1", second.port),
            nc("127.0.0.1", denied.port)
        ),
    )
    .gated()
    .label(AGENT, &agent_b)
    .label(PROJECT, &proj_b)
    .run();
    let c = Spec::new("ce-obs-c", nc("127.0.0.1", allowed.port))
        .gated()
        .run();
    // Each goes on once the daemon knows its labels (b's deny is its
    // project's; before that the kernel decides by the default section).
    for x in [&a, &b, &c] {
        x.release_when_known(&daemon);
    }
    for x in [&a, &b, &c] {
        x.wait();
        x.remove();
    }
    let ids = [a.id.as_str(), b.id.as_str(), c.id.as_str()];
    let recs = daemon.wait_for("the three containers' flows and ends", WAIT, |r| {
        ids.iter().all(|id| {
            r.iter()
                .any(|x| x["container_id"] == *id && x["event"] == "container_destroy")
                && r.iter().any(|x| {
                    x["container_id"] == *id
                        && x["clawker.source"] == "egress"
                        && x["l7_proto"] != "dns"
                })
        }) && r
            .iter()
            .any(|x| x["container_id"] == a.id.as_str() && x["l7_proto"] == "dns")
            && r.iter()
                .any(|x| x["container_id"] == b.id.as_str() && x["verdict"] == "DENIED")
    });
    // Their last records may still be on the way (the lifecycle and the
    // flow records come by different paths): ours once a second passes
    // without one more.
    let mut ours = of(&recs, &ids);
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + WAIT;
    while quiet_since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = of(&daemon.records(), &ids);
        if now.len() != ours.len() {
            ours = now;
            quiet_since = Instant::now();
        }
    }

    for ((name, _, pred), obs) in live.iter().zip(&observers) {
        // Each observer's stream trails stdout: wait until it has as many
        // of ours as it should, then a moment for any extra (which fail).
        let want = ours.iter().filter(|r| pred(r)).count();
        let deadline = Instant::now() + WAIT;
        while of(&obs.records(), &ids).len() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        let got = obs.records();
        for r in &got {
            assert!(pred(r), "filter {name} let through {r}");
        }
        let expected: Vec<Value> = ours.iter().filter(|r| pred(r)).cloned().collect();
        assert!(
            !expected.is_empty(),
            "filter {name}: the test made no record for it"
        );
        if *name != "all" && *name != "source" {
            assert!(
                expected.len() < ours.len(),
                "filter {name} excludes nothing of ours"
            );
        }
        assert_same(
            sorted(of(&got, &ids)),
            sorted(expected),
            &format!("filter {name}: exactly the stdout records it selects"),
        );
        assert!(obs.stderr().is_empty(), "filter {name}: {:?}", obs.stderr());
    }

    // History: the same records, after the fact; --container by name and
    // by id prefix (known only once the containers ran).
    let all = history(&socket, &["--since", "5m"]);
    assert_same(sorted(of(&all, &ids)), sorted(ours.clone()), "--since 5m");
    let by_name = history(&socket, &["--since", "5m", "--container", &a.name]);
    assert_same(
        sorted(by_name),
        sorted(
            ours.iter()
                .filter(|r| r["container_id"] == a.id.as_str())
                .cloned(),
        ),
        "--container NAME",
    );
    let by_id = history(&socket, &["--since", "5m", "--container", &b.id[..12]]);
    assert_same(
        sorted(by_id),
        sorted(
            ours.iter()
                .filter(|r| r["container_id"] == b.id.as_str())
                .cloned(),
        ),
        "--container ID-PREFIX",
    );
    let last = history(&socket, &["--last", "1", "--agent", &agent_b]);
    assert_eq!(last.len(), 1);
    assert_eq!(
        last[0],
        *ours
            .iter()
            .rfind(|r| r["agent"] == agent_b.as_str())
            .unwrap()
    );
    assert_eq!(daemon.metric("clawker_egress_api_dropped_total"), 0.0);
}

#[test]
fn a_stopped_observer_loses_only_its_own_records() {
    require_root!();
    let cg = TestCgroup::new("ce-obs-stop");
    let (_socket_dir, socket) = socket_path();
    let mut opts = DaemonOptions::for_cgroup(&cg)
        .arg("--api-socket")
        .arg(socket.to_str().unwrap())
        .arg("--container-record-rate")
        .arg("0");
    opts.env
        .push(("CLAWKER_EGRESS_API_QUEUE_RECORDS".into(), "5000".into()));
    let daemon = Daemon::start(opts);
    let stopped = Observer::start(&socket, &["--source", "egress"]);
    let running = Observer::start(&socket, &["--source", "egress"]);
    wait_subscribed(&socket, 2);
    stopped.signal(libc::SIGSTOP);

    // 20,000 refused connects to a closed loopback port, one record each,
    // in bursts of 1,000. Between bursts the test waits for the running
    // observer only (a debug build on a shared machine may lag a whole
    // burst): the stopped one's queue fills, the running one's never does.
    let closed = support::free_port();
    let t0 = Instant::now();
    for burst in 1..=20usize {
        cg.python(&format!(
            "import socket\n\
             for _ in range(1000):\n\
             \x20   s = socket.socket()\n\
             \x20   try: s.connect(('127.0.0.1', {closed}))\n\
             \x20   except OSError: pass\n\
             \x20   s.close()\n"
        ));
        let deadline = Instant::now() + WAIT;
        while running.count() < burst * 1000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let sent = t0.elapsed();
    let egress = |r: &[Value]| r.iter().filter(|x| x["clawker.source"] == "egress").count();
    let recs = daemon.wait_for("every refused connect", WAIT, |r| egress(r) >= 20000);
    let total = egress(&recs);
    // A figure, not an assertion: how far stdout trailed the traffic.
    eprintln!(
        "20000 connects (paced by the running observer) in {sent:?}; all their records on stdout {:?} after the last (one observer stopped)",
        t0.elapsed() - sent
    );
    let deadline = Instant::now() + WAIT;
    while running.records().len() < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stdout: Vec<Value> = recs
        .iter()
        .filter(|x| x["clawker.source"] == "egress")
        .cloned()
        .collect();
    assert_same(
        sorted(running.records()),
        sorted(stdout),
        &format!(
            "the running observer gets everything ({:?})",
            running.stderr()
        ),
    );
    assert_eq!(running.lost(), 0);
    assert!(running.stderr().is_empty(), "{:?}", running.stderr());
    let dropped = daemon.metric("clawker_egress_api_dropped_total");
    assert!(dropped > 0.0, "the stopped observer's queue never filled");

    // Resumed, it reads its queue and learns exactly how much it missed.
    stopped.signal(libc::SIGCONT);
    let deadline = Instant::now() + WAIT;
    while (stopped.records().len() as u64 + stopped.lost()) < total as u64
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stopped.lost() as f64, dropped, "{:?}", stopped.stderr());
    assert_eq!(
        stopped.records().len() as u64 + stopped.lost(),
        total as u64
    );
    assert_eq!(
        daemon.metric("clawker_egress_events_dropped_total{reason=\"sink_failure\"}"),
        0.0
    );
}

#[test]
fn observe_ends_quietly_on_a_closed_pipe_and_errors_in_one_line() {
    require_root!();
    // No daemon.
    let (_missing_dir, missing) = socket_path();
    let out = Command::new(bin())
        .args(["observe", "--socket"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not running"), "{err}");
    let out = Command::new(bin())
        .args(["observe", "--dst", "10.0.0.0/99", "--socket"])
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--dst"), "{err}");

    let cg = TestCgroup::new("ce-obs-pipe");
    let (_socket_dir, socket) = socket_path();
    let daemon = Daemon::start(
        DaemonOptions::for_cgroup(&cg)
            .arg("--api-socket")
            .arg(socket.to_str().unwrap()),
    );
    let mode = std::fs::metadata(&socket).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(mode.permissions().mode() & 0o777, 0o660);
    assert_eq!((mode.uid(), mode.gid()), (0, 0));

    // Not root, not in the group: told so in one line.
    // The binary where nobody may run it: a link (or copy) outside /root.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = shared.path().join("clawker-egress");
    if std::fs::hard_link(bin(), &exe).is_err() {
        std::fs::copy(bin(), &exe).unwrap();
    }
    let out = {
        use std::os::unix::process::CommandExt;
        Command::new(&exe)
            .args(["observe", "--socket"])
            .arg(&socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("permission denied"), "{err}");

    // `observe --json | head -1` while records keep coming: exit 0, quiet.
    // Only this test's egress records: every daemon also sees the lifecycle
    // of containers other tests start (overseer records).
    let mut pipe = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} observe --socket {} --json --source egress | head -1",
            bin(),
            socket.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let closed = support::free_port();
    let started = Instant::now();
    let status = loop {
        cg.python(&format!(
            "import socket\n\
             for _ in range(5):\n\
             \x20   s = socket.socket()\n\
             \x20   try: s.connect(('127.0.0.1', {closed}))\n\
             \x20   except OSError: pass\n\
             \x20   s.close()\n"
        ));
        if let Some(status) = pipe.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < WAIT, "observe | head -1 never ended");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = pipe.wait_with_output().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(first["clawker.source"], "egress");
    drop(daemon);
}

/// tmux around `top`, killed on drop.
struct Tmux(String);

impl Tmux {
    fn run(args: &[&str]) -> String {
        let out = Command::new("tmux").args(args).output().expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        Self::run(&["capture-pane", "-p", "-t", &self.0])
    }

    fn keys(&self, k: &str) {
        Self::run(&["send-keys", "-t", &self.0, k]);
    }

    fn wait_screen(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "top never showed {what}:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn display(&self, format: &str) -> String {
        Self::run(&["display-message", "-p", "-t", &self.0, format])
            .trim()
            .to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        Self::run(&["kill-session", "-t", &self.0]);
    }
}

/// CPU seconds (utime + stime) of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn top_shows_the_agents_drills_down_and_quits_cleanly() {
    require_root!();
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux missing: run scripts/deps"
    );
    let _engine = engine();
    let server = TcpServer::spawn("127.0.0.1:0", None, 0);
    let denied = TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    let project = unique("obs-top");
    let (busy, quiet) = ("aa-busy", "bb-quiet");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "default:\n  default_action: allow\n\
             projects:\n  {project}:\n    default_action: allow\n    rules:\n\
             \x20     - {{dst: 127.0.0.1, proto: tcp, port: \"{pd}\", action: deny}}\n",
            pd = denied.port
        ),
    )
    .unwrap();
    let (_socket_dir, socket) = socket_path();
    let daemon = Daemon::start(
        DaemonOptions::host_root()
            .policy(&policy)
            .arg("--api-socket")
            .arg(socket.to_str().unwrap()),
    );
    wait_attribution_ready(&daemon);
    // busy: one flow held open (sending), plus short flows and a denial.
    let busy_c = Spec::new(
        "ce-top-busy",
        format!(
            "sleep 1; (while true; do echo data; sleep 0.1; done | nc 127.0.0.1 {p}) & \
             while true; do echo hi | nc -w 1 127.0.0.1 {p}; echo x | nc -w 1 127.0.0.1 {pd}; sleep 0.5; done",
            p = server.port,
            pd = denied.port
        ),
    )
    .label(AGENT, busy)
    .label(PROJECT, &project)
    .run();
    let quiet_c = Spec::new("ce-top-quiet", "sleep 60")
        .label(AGENT, quiet)
        .label(PROJECT, &project)
        .run();
    daemon.wait_for("busy's denial", WAIT, |r| {
        r.iter()
            .any(|x| x["container_id"] == busy_c.id.as_str() && x["verdict"] == "DENIED")
    });

    let name = unique("ce-top");
    Tmux::run(&["new-session", "-d", "-s", &name, "-x", "80", "-y", "24"]);
    let tmux = Tmux(name);
    Tmux::run(&["set-option", "-t", &tmux.0, "remain-on-exit", "on"]);
    // top's exit status, written by the shell around it: tmux 3.3 can mark
    // the pane dead without recording an exit status (seen in CI).
    let status_dir = tempfile::tempdir().unwrap();
    let status_file = status_dir.path().join("status");
    let cmd = format!(
        "{} top --socket {} --project {project} --sort agent; echo $? > {}",
        bin(),
        socket.display(),
        status_file.display()
    );
    Tmux::run(&["respawn-pane", "-k", "-t", &tmux.0, &cmd]);
    let last_denied = format!("127.0.0.1:{}", denied.port);
    let screen = tmux.wait_screen("both agents, busy's denial", |s| {
        // The key line is drawn last: the frame is complete.
        s.contains("q quit")
            && s.contains(quiet)
            && s.lines()
                .any(|l| l.starts_with(busy) && l.contains(&last_denied))
    });
    eprintln!("{screen}");
    let busy_line = screen.lines().find(|l| l.starts_with(busy)).unwrap();
    let cols: Vec<&str> = busy_line.split_whitespace().collect();
    assert_eq!(cols[1], &project[..8], "{busy_line}");
    // An open flow: a TCP connection shows from its first or second second
    // on (promoted from its socket's storage into the flow table).
    tmux.wait_screen("busy's open flow", |s| {
        s.lines()
            .find(|l| l.starts_with(busy))
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
            .is_some_and(|n| n >= 1)
    });
    assert!(cols[7].parse::<u64>().unwrap() >= 1, "denials: {busy_line}");
    let quiet_line = screen.lines().find(|l| l.starts_with(quiet)).unwrap();
    let cols: Vec<&str> = quiet_line.split_whitespace().collect();
    assert_eq!(
        (cols[3], cols[4], cols[7]),
        ("0", "0B", "0"),
        "{quiet_line}"
    );
    assert!(screen.contains("q quit"), "keys on screen");
    assert!(screen.contains("denials"));
    assert!(screen
        .lines()
        .any(|l| l.contains("DENIED") && l.contains(busy)));
    // figures move: out/s of busy is not zero within a few readings
    tmux.wait_screen("busy's traffic rate", |s| {
        s.lines()
            .find(|l| l.starts_with(busy))
            .and_then(|l| l.split_whitespace().nth(4).map(|v| v != "0B"))
            .unwrap_or(false)
    });

    let pid: u32 = tmux.display("#{pane_pid}").parse().unwrap();
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(10));
    let used = cpu_seconds(pid) - before;
    eprintln!(
        "top CPU over 10 s: {used:.3} s = {:.2}% of a core",
        used * 10.0
    );

    // Drill-down: the first row (sorted by agent) is busy.
    tmux.keys("Enter");
    let detail = tmux.wait_screen("busy's open flows and records", |s| {
        s.contains("open flows")
            && s.contains("last records")
            && s.contains("nc[")
            && s.contains("esc back")
    });
    eprintln!("{detail}");
    assert!(detail.contains(&format!("127.0.0.1:{}", server.port)));
    // The container's cgroup (read every 10 s): memory in use and its tasks.
    let detail = tmux.wait_screen("busy's cgroup usage", |s| {
        s.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"cpu")
                && w.get(3).is_some_and(|m| m.ends_with('B') && *m != "0B")
                && w.get(5)
                    .and_then(|p| p.parse::<u64>().ok())
                    .is_some_and(|p| p >= 2)
        })
    });
    eprintln!("{detail}");
    assert!(detail.contains("esc back"));
    tmux.keys("Escape");
    tmux.wait_screen("the agents again", |s| {
        s.contains("LAST DENIED") && s.contains("drill-down")
    });
    tmux.keys("q");
    let deadline = Instant::now() + WAIT;
    while tmux.display("#{pane_dead}") != "1" {
        assert!(
            Instant::now() < deadline,
            "q did not end top; screen:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(&status_file)
            .unwrap_or_default()
            .trim(),
        "0",
        "top's exit status; screen:\n{}",
        tmux.screen()
    );
    assert_eq!(tmux.display("#{alternate_on}"), "0", "terminal restored");
    assert!(!tmux.screen().contains("LAST DENIED"), "{}", tmux.screen());
    drop(quiet_c);
    drop(busy_c);
}

/// A process names itself with a right-to-left override (U+202E) and an
/// SGR "conceal": in a terminal that does bidi (VTE, Konsole), the rest of
/// the operator's line would show reversed. `observe` shows neither.
#[test]
fn a_process_name_cannot_reorder_or_hide_the_operators_line() {
    require_root!();
    let cg = TestCgroup::new("obs-bidi");
    let (_socket_dir, socket) = socket_path();
    let daemon = Daemon::start(
        DaemonOptions::for_cgroup(&cg)
            .arg("--api-socket")
            .arg(socket.to_str().unwrap()),
    );
    let server = TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    cg.python(&format!(
        "import socket\n\
         open('/proc/self/comm', 'wb').write(b'\\xe2\\x80\\xaeevil\\x1b[8m')\n\
         s = socket.create_connection(('127.0.0.1', {}))\n\
         s.sendall(b'abc')\n\
         s.close()\n",
        server.port
    ));
    daemon.collect(1, WAIT, |r| {
        support::is_egress(r) && r["dst_port"] == server.port && r["bytes_out"] == 3
    });
    let out = Command::new(bin())
        .args(["observe", "--socket"])
        .arg(&socket)
        .args(["--since", "5m"])
        .output()
        .expect("run observe");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!(":{}", server.port)) && l.contains("evil"))
        .unwrap_or_else(|| panic!("the flow's line: {text}"));
    assert!(
        !line.contains(['\u{202e}', '\u{1b}']),
        "no bidi override or escape reaches the terminal: {line:?}"
    );
}
