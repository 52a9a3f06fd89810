//! Issue 9, items 6 and 7: no silent limits, and a policy decided once is
//! not enough. Each test is the attack from the issue against a real daemon
//! on the real kernel (loopback only); each fails on the code before the fix.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{by_pid, write_atomic, Daemon, DaemonOptions, TestCgroup};

const WAIT: Duration = Duration::from_secs(30);

const DENY_LOOPBACK: &str =
    "default:\n  default_action: allow\n  rules:\n    - {dst: 127.0.0.0/8, action: deny}\n";

/// A loopback sink that counts every byte it receives.
struct Sink {
    port: u16,
    received: Arc<AtomicU64>,
}

impl Sink {
    /// A TCP listener.
    fn spawn(ip: &str) -> Sink {
        let listener = TcpListener::bind((ip, 0)).expect("bind sink");
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(AtomicU64::new(0));
        let r = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        r.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        Sink { port, received }
    }

    /// A UDP socket.
    fn spawn_udp(ip: &str) -> Sink {
        let sock = std::net::UdpSocket::bind((ip, 0)).expect("bind sink");
        let port = sock.local_addr().unwrap().port();
        let received = Arc::new(AtomicU64::new(0));
        let r = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok(n) = sock.recv(&mut buf) {
                r.fetch_add(n as u64, Ordering::SeqCst);
            }
        });
        Sink { port, received }
    }

    fn bytes(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    fn wait_for_bytes(&self, at_least: u64) {
        let deadline = Instant::now() + WAIT;
        while self.bytes() < at_least {
            assert!(Instant::now() < deadline, "the sender never got going");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A client in the cgroup that connects once (`l4`: tcp, or udp on a
/// connected datagram socket) and then keeps sending (1000 bytes, or a 100
/// byte datagram) every 10 ms until the socket fails; it prints its pid
/// first and the error it ended with last.
fn streamer(cg: &TestCgroup, l4: &str, ip: &str, port: u16) -> (Child, u32) {
    let (open, send) = match l4 {
        "tcp" => (
            format!("s = socket.create_connection(('{ip}', {port}))"),
            "s.sendall(b'x' * 1000)",
        ),
        "udp" => (
            format!(
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('{ip}', {port}))"
            ),
            "s.send(b'u' * 100)",
        ),
        _ => panic!("streamer: {l4}?"),
    };
    let mut child = cg
        .command(
            "python3",
            &[
                "-u",
                "-c",
                &format!(
                    "import os, socket, time\nprint(os.getpid(), flush=True)\n\
                     {open}\n\
                     end = time.time() + 60\n\
                     try:\n\
                     \x20   while time.time() < end:\n\
                     \x20       {send}; time.sleep(0.01)\n\
                     \x20   print('still open', flush=True)\n\
                     except OSError as e:\n\
                     \x20   print('ended', e.errno, flush=True)\n"
                ),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let out = child.stdout.as_mut().unwrap();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first.push(byte[0] as char);
    }
    (child, first.trim().parse().expect("pid line"))
}

fn overseer(recs: &[Value], event: &str) -> Vec<Value> {
    recs.iter()
        .filter(|r| r["clawker.source"] == "overseer" && r["event"] == event)
        .cloned()
        .collect()
}

/// Wait until the daemon says it decided the open sockets again (or that
/// it could not). The code before the fix never did: it fails here.
fn settle(daemon: &Daemon) {
    // The sweep visits every network namespace on the host: on a loaded
    // host with many containers it took more than 30 s.
    let recs = daemon.wait_for(
        "the open sockets decided again",
        Duration::from_secs(120),
        |r| {
            !overseer(r, "policy_reapplied").is_empty()
                || !overseer(r, "policy_reapply_failed").is_empty()
        },
    );
    if let Some(r) = overseer(&recs, "policy_reapplied").first() {
        eprintln!("sweep: {r}");
    }
}

/// Reload the daemon to `text` (SIGHUP) and wait until it has loaded it and
/// decided the open sockets again.
fn reload(daemon: &Daemon, policy: &Path, text: &str) {
    write_atomic(policy, text);
    sighup(daemon);
    daemon.wait_for("the reload", WAIT, |r| {
        !overseer(r, "policy_loaded").is_empty()
    });
    settle(daemon);
}

fn sighup(daemon: &Daemon) {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
}

/// After the policy changed: the `l4` stream stopped, for good, and its
/// one flow record says the policy ended it.
fn assert_ended_by_policy(daemon: &Daemon, sink: &Sink, mut client: Child, pid: u32, l4: &str) {
    // Bytes already in flight may still land (the sink's reader may lag on
    // a loaded host): wait until none came for a second (the stream, while
    // it lasts, lands every 10 ms), then nothing more.
    let deadline = Instant::now() + WAIT;
    let mut last = (sink.bytes(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(1) {
        assert!(
            Instant::now() < deadline,
            "the old connection kept delivering after the policy denied it"
        );
        std::thread::sleep(Duration::from_millis(50));
        let now = sink.bytes();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let after_sweep = sink.bytes();
    std::thread::sleep(Duration::from_millis(1500));
    let later = sink.bytes();
    assert_eq!(
        later - after_sweep,
        0,
        "the old connection kept delivering after the policy denied it"
    );
    let mut rest = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        rest.starts_with("ended"),
        "the sender's socket was ended: {rest:?}"
    );
    let is_end = |x: &Value| x["flow_state"] == "ended" && x["l4_proto"] == l4;
    let recs = daemon.wait_for("the flow's end record", WAIT, |r| {
        by_pid(r, pid).iter().any(is_end)
    });
    let ended: Vec<Value> = by_pid(&recs, pid).into_iter().filter(is_end).collect();
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert_eq!(ended[0]["close_reason"], "policy", "{:#?}", ended[0]);
}

#[test]
fn a_reload_ends_open_connections_the_new_policy_denies() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    write_atomic(&policy, "default:\n  default_action: allow\n");
    let sink = Sink::spawn("127.0.0.3");
    let cg = TestCgroup::new("ce-reload-end");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg).policy(&policy));

    let (client, pid) = streamer(&cg, "tcp", "127.0.0.3", sink.port);
    sink.wait_for_bytes(5_000);
    reload(&daemon, &policy, DENY_LOOPBACK);
    assert_ended_by_policy(&daemon, &sink, client, pid, "tcp");
    assert!(
        daemon.metric("clawker_egress_policy_actions_total{action=\"sockets_ended\"}") >= 1.0,
        "{}",
        daemon.metrics()
    );
}

#[test]
fn a_bypass_end_ends_the_connections_it_let_through() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    write_atomic(&policy, DENY_LOOPBACK);
    let sink = Sink::spawn("127.0.0.4");
    let cg = TestCgroup::new("ce-bypass-end");
    let opts = DaemonOptions::for_cgroup(&cg).policy(&policy);
    let pin_root = opts.pin_root.clone();
    let daemon = Daemon::start(opts);

    cg.bypass(&pin_root, &["--for", "15m", "--reason", "debug session"]);
    let (client, pid) = streamer(&cg, "tcp", "127.0.0.4", sink.port);
    sink.wait_for_bytes(5_000);
    cg.bypass(&pin_root, &["--off"]);
    daemon.wait_for("the bypass end", WAIT, |r| {
        !overseer(r, "bypass_stop").is_empty()
    });
    settle(&daemon);
    assert_ended_by_policy(&daemon, &sink, client, pid, "tcp");
}

/// A default section of `n` rules: `n - 1` that never match loopback, then
/// `last`; anything else is allowed.
fn long_section(n: usize, last: &str) -> String {
    let mut s = String::from("default:\n  default_action: allow\n  rules:\n");
    for i in 0..n - 1 {
        s.push_str(&format!(
            "    - {{dst: 10.{}.{}.0/24, action: allow}}\n",
            i / 256,
            i % 256
        ));
    }
    s.push_str(&format!("    - {last}\n"));
    s
}

fn connect_errno(cg: &TestCgroup, ip: &str, port: u16) -> i64 {
    let out = cg.python(&format!(
        "import socket\ns = socket.socket()\nprint(s.connect_ex(('{ip}', {port})))\ns.close()\n"
    ));
    out.trim().parse().unwrap()
}

#[test]
fn rule_limits_are_never_silent() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::spawn("127.0.0.5");

    // 64 rules fit, and the 64th decides (it was dropped before).
    let policy = dir.path().join("policy.yaml");
    write_atomic(
        &policy,
        &long_section(64, "{dst: 127.0.0.0/8, action: deny}"),
    );
    let check = Command::new(support::bin())
        .args(["policy", "check"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let cg = TestCgroup::new("ce-limits");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg).policy(&policy));
    assert_eq!(
        connect_errno(&cg, "127.0.0.5", sink.port),
        1,
        "EPERM: the 64th rule is enforced"
    );

    // 65 rules: `policy check` refuses the file, naming the 65th rule...
    let over = dir.path().join("over.yaml");
    let text = long_section(65, "{dst: 127.0.0.0/8, action: deny}").replacen(
        "rules:\n",
        "rules:\n    - {dst: 127.0.0.0/8, action: allow}\n",
        1,
    );
    write_atomic(&over, &text);
    let check = Command::new(support::bin())
        .args(["policy", "check"])
        .arg(&over)
        .output()
        .unwrap();
    assert!(!check.status.success(), "policy check accepted 66 rules");
    let err = String::from_utf8_lossy(&check.stderr);
    let line = err.trim().lines().last().unwrap();
    assert!(line.starts_with(&format!("{}:", over.display())), "{line}");
    assert!(line.contains("at most 64"), "{line}");

    // ...and a reload to it is rejected: policy_rejected, the old policy stays.
    write_atomic(&policy, &text);
    sighup(&daemon);
    let recs = daemon.wait_for("the rejection", WAIT, |r| {
        !overseer(r, "policy_rejected").is_empty()
    });
    let rejected = &overseer(&recs, "policy_rejected")[0];
    assert!(
        rejected["error"].as_str().unwrap().contains("at most 64"),
        "{rejected:#?}"
    );
    // The file watch (1 s tick) and the SIGHUP may both pick the new file
    // up, the one before the other is handled (a loaded host): one
    // rejection per trigger, each counted and recorded.
    let metric = || daemon.metric("clawker_egress_policy_actions_total{action=\"rejected\"}");
    let recs = daemon.wait_for("every rejection counted and recorded", WAIT, |r| {
        overseer(r, "policy_rejected").len() as f64 == metric()
    });
    let n = overseer(&recs, "policy_rejected").len();
    assert!(
        (1..=2).contains(&n),
        "one rejection per trigger (file watch, SIGHUP): {n}"
    );
    assert_eq!(
        connect_errno(&cg, "127.0.0.5", sink.port),
        1,
        "the previous policy (deny loopback) stays in force"
    );
}

#[test]
fn raw_sends_are_decided_per_destination() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    write_atomic(
        &policy,
        "raw_sockets: allow\ndefault:\n  default_action: allow\n  rules:\n    - {dst: 127.0.0.6, action: deny}\n",
    );
    let cg = TestCgroup::new("ce-raw-dst");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg).policy(&policy));
    // An ICMP echo on a raw socket: sent (and answered) unless dropped.
    let ping = |ip: &str| {
        cg.python(&format!(
            "import os, socket, struct\nprint(os.getpid())\n\
             def csum(b):\n\
             \x20   s = sum(struct.unpack('!%dH' % (len(b)//2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16\n\
             \x20   return ~s & 0xffff\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
             s.settimeout(1.0)\n\
             hdr = struct.pack('!BBHHH', 8, 0, 0, 0x4242, 1) + b'clawker!'\n\
             pkt = struct.pack('!BBHHH', 8, 0, csum(hdr), 0x4242, 1) + b'clawker!'\n\
             try:\n\
             \x20   s.sendto(pkt, ('{ip}', 0)); print('sent')\n\
             except OSError as e:\n\
             \x20   print('send failed', e.errno)\n\
             try:\n\
             \x20   while True:\n\
             \x20       data, src = s.recvfrom(1500)\n\
             \x20       if src[0] == '{ip}' and data[20] == 0: print('reply'); break\n\
             except OSError:\n\
             \x20   print('no reply')\n"
        ))
    };
    let allowed = ping("127.0.0.7");
    assert!(
        allowed.contains("reply"),
        "an allowed destination answers: {allowed}"
    );
    let denied = ping("127.0.0.6");
    let pid: u32 = denied.lines().next().unwrap().trim().parse().unwrap();
    assert!(
        denied.contains("no reply"),
        "a raw send to a denied destination left the host stack: {denied}"
    );
    let recs = daemon.wait_for("the denied raw send's record", WAIT, |r| {
        by_pid(r, pid)
            .iter()
            .any(|x| x["verdict"] == "DENIED" && x["dst_ip"] == "127.0.0.6")
    });
    let denied_recs: Vec<Value> = by_pid(&recs, pid)
        .into_iter()
        .filter(|x| x["verdict"] == "DENIED")
        .collect();
    assert_eq!(denied_recs[0]["hook"], "skb_egress", "{denied_recs:#?}");
}

/// A container in its own network namespace (`--network none`: loopback
/// only) streams to a listener inside itself; a reload that denies
/// loopback to its project ends that connection too: the sweep enters
/// every network namespace, not only the daemon's.
#[test]
fn a_reload_reaches_connections_inside_a_containers_network_namespace() {
    require_root!();
    let _engine = support::docker::engine();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let project = "ce-reload-netns";
    write_atomic(
        &policy,
        &format!("default:\n  default_action: allow\nprojects:\n  {project}:\n    default_action: allow\n"),
    );
    let daemon = Daemon::start(DaemonOptions::host_root().policy(&policy));
    support::docker::wait_attribution_ready(&daemon);
    // Exit 7 once the stream ends; it would run for 60 s undisturbed.
    let script = "sleep 100 | nc -l -p 9000 > /dev/null & sleep 1; i=0; \
                  while [ $i -lt 60 ]; do echo xxxxxxxxxxxxxxxxxxxxxxxx; sleep 1; i=$((i+1)); done \
                  | nc 127.0.0.1 9000; exit 7";
    let c = support::docker::Spec::new("ce-reload-netns", script)
        .network("none")
        .label("dev.clawker.project", project)
        .run();
    // The stream is open once the container's network namespace holds an
    // established connection to port 9000 (a reload before the connect
    // would deny the connect instead of ending a stream).
    let tcp_table = format!("/proc/{}/net/tcp", c.pid());
    support::wait_until("the container's stream to open", WAIT, || {
        let table = std::fs::read_to_string(&tcp_table).unwrap_or_default();
        table
            .lines()
            .skip(1)
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[2].ends_with(":2328") && f[3] == "01"
            })
            .then_some(())
    });
    // It has carried a line or two.
    std::thread::sleep(Duration::from_secs(1));
    write_atomic(
        &policy,
        &format!(
            "default:\n  default_action: allow\nprojects:\n  {project}:\n    default_action: allow\n    rules:\n      - {{dst: 127.0.0.0/8, action: deny}}\n"
        ),
    );
    let reloaded = Instant::now();
    sighup(&daemon);
    assert_eq!(c.wait(), 7);
    let took = reloaded.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the container's stream went on after the reload ({took:?})"
    );
    let recs = daemon.wait_for("the container's flow end", WAIT, |r| {
        r.iter().any(|x| {
            x["container_id"] == c.id.as_str()
                && x["flow_state"] == "ended"
                && x["dst_port"] == 9000
                && x["direction"].is_null()
        })
    });
    let ended: Vec<&Value> = recs
        .iter()
        .filter(|x| {
            x["container_id"] == c.id.as_str()
                && x["flow_state"] == "ended"
                && x["dst_port"] == 9000
                && x["direction"].is_null()
        })
        .collect();
    assert_eq!(ended[0]["close_reason"], "policy", "{:#?}", ended[0]);
    assert_eq!(ended[0]["project"], project);
}

/// A connected UDP socket keeps its destination without naming it on each
/// send (sendmsg hooks never see those sends): a reload that denies it
/// disconnects the socket, and its flow record says policy.
#[test]
fn a_reload_disconnects_a_connected_udp_socket_the_new_policy_denies() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    write_atomic(&policy, "default:\n  default_action: allow\n");
    let sink = Sink::spawn_udp("127.0.0.8");
    let cg = TestCgroup::new("ce-reload-udp");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg).policy(&policy));
    let (client, pid) = streamer(&cg, "udp", "127.0.0.8", sink.port);
    sink.wait_for_bytes(2_000);
    reload(&daemon, &policy, DENY_LOOPBACK);
    assert_ended_by_policy(&daemon, &sink, client, pid, "udp");
}
