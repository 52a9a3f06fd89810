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

const WAIT: Duration = Duration::from_secs(15);

/// A loopback sink that counts every byte it receives.
struct Sink {
    port: u16,
    received: Arc<AtomicU64>,
}

impl Sink {
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

/// A client in the cgroup that connects once and then keeps sending 1000
/// bytes every 10 ms until the socket fails; it prints its pid first and
/// the error it ended with last.
fn streamer(cg: &TestCgroup, ip: &str, port: u16) -> (Child, u32) {
    let mut child = cg
        .command(
            "python3",
            &[
                "-u",
                "-c",
                &format!(
                    "import os, socket, time\nprint(os.getpid(), flush=True)\n\
                     s = socket.create_connection(('{ip}', {port}))\n\
                     end = time.time() + 60\n\
                     try:\n\
                     \x20   while time.time() < end:\n\
                     \x20       s.sendall(b'x' * 1000); time.sleep(0.01)\n\
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

/// Give the daemon time to act on a change: until it says it decided the
/// open sockets again, at most 5 s (the code before the fix never did; its
/// failure is the stream that goes on, asserted next).
fn settle(daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(r) = overseer(&daemon.records(), "policy_reapplied").first() {
            eprintln!("sweep: {r}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After the policy changed: the stream stopped, for good, and its flow
/// record says the policy ended it.
fn assert_ended_by_policy(daemon: &Daemon, sink: &Sink, mut client: Child, pid: u32) {
    // Bytes already in flight may still land; then nothing more.
    std::thread::sleep(Duration::from_millis(300));
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
    let recs = daemon.wait_for("the flow's end record", WAIT, |r| {
        by_pid(r, pid).iter().any(|x| x["flow_state"] == "ended")
    });
    let ended: Vec<Value> = by_pid(&recs, pid)
        .into_iter()
        .filter(|x| x["flow_state"] == "ended")
        .collect();
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

    let (client, pid) = streamer(&cg, "127.0.0.3", sink.port);
    sink.wait_for_bytes(5_000);
    write_atomic(
        &policy,
        "default:\n  default_action: allow\n  rules:\n    - {dst: 127.0.0.0/8, action: deny}\n",
    );
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    daemon.wait_for("the reload", WAIT, |r| {
        !overseer(r, "policy_loaded").is_empty()
    });
    settle(&daemon);
    assert_ended_by_policy(&daemon, &sink, client, pid);
    assert!(
        daemon.metric("clawker_egress_policy_actions_total{action=\"sockets_ended\"}") >= 1.0,
        "{}",
        daemon.metrics()
    );
}

fn bypass(pin_root: &Path, cg: &TestCgroup, extra: &[&str]) {
    let out = Command::new(support::bin())
        .arg("bypass")
        .arg("--cgroup-root")
        .arg(&cg.path)
        .arg("--pin-root")
        .arg(pin_root)
        .arg("--cgroup")
        .arg(&cg.path)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bypass {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bypass_end_ends_the_connections_it_let_through() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    write_atomic(
        &policy,
        "default:\n  default_action: allow\n  rules:\n    - {dst: 127.0.0.0/8, action: deny}\n",
    );
    let sink = Sink::spawn("127.0.0.4");
    let cg = TestCgroup::new("ce-bypass-end");
    let opts = DaemonOptions::for_cgroup(&cg).policy(&policy);
    let pin_root = opts.pin_root.clone();
    let daemon = Daemon::start(opts);

    bypass(
        &pin_root,
        &cg,
        &["--for", "15m", "--reason", "debug session"],
    );
    let (client, pid) = streamer(&cg, "127.0.0.4", sink.port);
    sink.wait_for_bytes(5_000);
    bypass(&pin_root, &cg, &["--off"]);
    daemon.wait_for("the bypass end", WAIT, |r| {
        !overseer(r, "bypass_stop").is_empty()
    });
    settle(&daemon);
    assert_ended_by_policy(&daemon, &sink, client, pid);
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
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let recs = daemon.wait_for("the rejection", WAIT, |r| {
        !overseer(r, "policy_rejected").is_empty()
    });
    let rejected = &overseer(&recs, "policy_rejected")[0];
    assert!(
        rejected["error"].as_str().unwrap().contains("at most 64"),
        "{rejected:#?}"
    );
    assert_eq!(
        daemon.metric("clawker_egress_policy_actions_total{action=\"rejected\"}"),
        1.0
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
    // The stream is open once its flow has been reported as active or the
    // connect was recorded; give it a moment either way.
    std::thread::sleep(Duration::from_secs(3));
    write_atomic(
        &policy,
        &format!(
            "default:\n  default_action: allow\nprojects:\n  {project}:\n    default_action: allow\n    rules:\n      - {{dst: 127.0.0.0/8, action: deny}}\n"
        ),
    );
    let reloaded = Instant::now();
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
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
        })
    });
    let ended: Vec<&Value> = recs
        .iter()
        .filter(|x| {
            x["container_id"] == c.id.as_str()
                && x["flow_state"] == "ended"
                && x["dst_port"] == 9000
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
    let sink = std::net::UdpSocket::bind("127.0.0.8:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    let received = Arc::new(AtomicU64::new(0));
    {
        let r = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok(n) = sink.recv(&mut buf) {
                r.fetch_add(n as u64, Ordering::SeqCst);
            }
        });
    }
    let cg = TestCgroup::new("ce-reload-udp");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg).policy(&policy));
    let mut client = cg
        .command(
            "python3",
            &[
                "-u",
                "-c",
                &format!(
                    "import os, socket, time\nprint(os.getpid(), flush=True)\n\
                     s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                     s.connect(('127.0.0.8', {port}))\n\
                     end = time.time() + 60\n\
                     try:\n\
                     \x20   while time.time() < end:\n\
                     \x20       s.send(b'u' * 100); time.sleep(0.01)\n\
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
    {
        let out = client.stdout.as_mut().unwrap();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            first.push(byte[0] as char);
        }
    }
    let pid: u32 = first.trim().parse().unwrap();
    let deadline = Instant::now() + WAIT;
    while received.load(Ordering::SeqCst) < 2_000 {
        assert!(Instant::now() < deadline, "the sender never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    write_atomic(
        &policy,
        "default:\n  default_action: allow\n  rules:\n    - {dst: 127.0.0.0/8, action: deny}\n",
    );
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    daemon.wait_for("the reload", WAIT, |r| {
        !overseer(r, "policy_loaded").is_empty()
    });
    settle(&daemon);
    std::thread::sleep(Duration::from_millis(300));
    let after = received.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        received.load(Ordering::SeqCst) - after,
        0,
        "the connected UDP socket kept delivering after the policy denied it"
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
    let recs = daemon.wait_for("the UDP flow's end", WAIT, |r| {
        by_pid(r, pid)
            .iter()
            .any(|x| x["flow_state"] == "ended" && x["l4_proto"] == "udp")
    });
    let ended: Vec<Value> = by_pid(&recs, pid)
        .into_iter()
        .filter(|x| x["flow_state"] == "ended" && x["l4_proto"] == "udp")
        .collect();
    assert_eq!(ended[0]["close_reason"], "policy", "{:#?}", ended[0]);
}
