//! Issue 15: inbound connections and listening sockets. Real dockerd,
//! busybox containers on a test-made bridge network, the daemon at the
//! containers' cgroup parent; the test connects only to the containers it
//! made.
//!  - a bind shell (`nc -ll -p PORT -e sh`) is recorded: its listen, and
//!    each accepted connection as an inbound flow with bytes both ways,
//!    attributed to the agent and the program that listened;
//!  - `inbound: deny` for one agent: a connection from outside never
//!    reaches its listener (DENIED records), the container can still talk
//!    to itself through its loopback, and another agent of the same
//!    project is not affected.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use support::docker::{docker_ok, engine, ip_on, wait_attribution_ready, Network, Spec};
use support::{Daemon, DaemonOptions};

const WAIT: Duration = Duration::from_secs(30);
const PORT: u16 = 4444;

/// Tests with a daemon at the host root run one at a time.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn of<'a>(recs: &'a [Value], container: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["clawker.source"] == "egress" && r["container_id"] == container)
        .collect()
}

fn is_listen(r: &Value) -> bool {
    r["hook"] == "listen" && r["direction"] == "inbound" && r["dst_port"] == PORT
}

/// Connect to the bind shell, run one command, read what it printed.
fn shell(addr: SocketAddr, command: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    // The shell behind it is forked per connection: slow on a loaded host.
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(format!("{command}; exit\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A container running a persistent bind shell on PORT.
fn bind_shell(
    prefix: &str,
    net: &Network,
    agent: &str,
    project: &str,
) -> support::docker::Container {
    Spec::new(
        prefix,
        format!(
            // Reach itself once the listener is up (a loaded host may take
            // longer than any fixed sleep to start it).
            "nc -ll -p {PORT} -e sh & i=0; \
             until echo 'echo self-ok; exit' | nc -w 2 127.0.0.1 {PORT} | grep self-ok \
             || [ $i -ge 100 ]; do i=$((i+1)); sleep 0.2; done; sleep 300"
        ),
    )
    .network(&net.name)
    .label("dev.clawker.agent", agent)
    .label("dev.clawker.project", project)
    .run()
}

#[test]
fn a_bind_shell_is_recorded_listen_and_accepted_connection() {
    require_root!();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let daemon = Daemon::start(DaemonOptions::host_root());
    wait_attribution_ready(&daemon);
    let net = Network::create("ib-net");
    let c = bind_shell("ib-shell", &net, "ib-agent", "ib-proj");
    let ip = ip_on(&c, &net.name);
    let listens = daemon.collect(1, WAIT, |r| {
        r["container_id"] == c.id.as_str() && is_listen(r)
    });
    let [listen] = listens.as_slice() else {
        panic!("one listen record: {listens:#?}");
    };
    assert_eq!(listen["verdict"], "ALLOWED", "{listen:#}");
    assert_eq!(listen["l4_proto"], "tcp", "{listen:#}");
    assert_eq!(listen["exe"], "/bin/busybox", "{listen:#}");
    assert_eq!(listen["agent"], "ib-agent", "{listen:#}");
    assert!(listen["process_key"].as_str().is_some(), "{listen:#}");

    let addr: SocketAddr = format!("{ip}:{PORT}").parse().unwrap();
    let out = shell(addr, "echo bound-shell-answer").expect("the bind shell answers");
    assert_eq!(out.trim(), "bound-shell-answer");

    let flow = ended_inbound_flow(&daemon, &c.id, &ip);
    assert_eq!(flow["verdict"], "ALLOWED", "{flow:#}");
    assert_eq!(flow["dst_port"], PORT, "{flow:#}");
    assert!(
        flow["src_port"].as_u64().is_some_and(|p| p != 0),
        "{flow:#}"
    );
    // bytes from the container's side: what it was sent, what it answered
    let sent = "echo bound-shell-answer; exit\n".len() as u64;
    let answered = "bound-shell-answer\n".len() as u64;
    assert_eq!(flow["bytes_in"], sent, "{flow:#}");
    assert_eq!(flow["bytes_out"], answered, "{flow:#}");
    assert!(flow["duration_ms"].as_u64().is_some(), "{flow:#}");
    assert!(flow["close_reason"].as_str().is_some(), "{flow:#}");
    assert!(flow["community_id"].as_str().is_some(), "{flow:#}");
    assert_eq!(flow["l4_proto"], "tcp");
    assert_eq!(
        flow["exe"], "/bin/busybox",
        "the program that listened: {flow:#}"
    );
    assert_eq!(flow["pid"], listen["pid"], "{flow:#}");
    assert_eq!(flow["process_key"], listen["process_key"], "{flow:#}");
    assert_eq!(flow["agent"], "ib-agent");
    assert_eq!(flow["project"], "ib-proj");

    // Its own loopback connection is an inbound flow too; outbound records
    // carry no direction.
    daemon.collect(1, WAIT, |r| {
        r["container_id"] == c.id.as_str()
            && r["direction"] == "inbound"
            && r["src_ip"] == "127.0.0.1"
            && r["dst_port"] == PORT
    });
    let recs = daemon.records();
    let mine = of(&recs, &c.id);
    assert!(
        mine.iter().any(|r| r["direction"] == "inbound"
            && r["src_ip"] == "127.0.0.1"
            && r["dst_port"] == PORT),
        "the container's own connection to itself: {mine:#?}"
    );
    assert!(
        mine.iter()
            .any(|r| r["direction"].is_null() && r["dst_port"] == PORT),
        "its outbound side (nc to 127.0.0.1) is an ordinary record: {mine:#?}"
    );
}

#[test]
fn inbound_deny_keeps_connections_from_outside_away_from_that_agents_listeners() {
    require_root!();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "default:\n  default_action: allow\n\
         projects:\n  ib-deny-proj:\n    default_action: allow\n\
         \x20   agents:\n      locked:\n        inbound: deny\n",
    )
    .unwrap();
    let daemon = Daemon::start(DaemonOptions::host_root().policy(&policy));
    wait_attribution_ready(&daemon);
    let net = Network::create("ib-deny-net");
    let locked = bind_shell("ib-locked", &net, "locked", "ib-deny-proj");
    let open = bind_shell("ib-open", &net, "open", "ib-deny-proj");
    for c in [&locked, &open] {
        daemon.collect(1, WAIT, |r| {
            r["container_id"] == c.id.as_str() && is_listen(r)
        });
    }
    let locked_addr: SocketAddr = format!("{}:{PORT}", ip_on(&locked, &net.name))
        .parse()
        .unwrap();
    let open_addr: SocketAddr = format!("{}:{PORT}", ip_on(&open, &net.name))
        .parse()
        .unwrap();

    let denied = shell(locked_addr, "echo should-not-run");
    assert!(
        denied.is_err(),
        "a connection from outside reached the locked agent's bind shell: {denied:?}"
    );
    assert_eq!(
        shell(open_addr, "echo open-ok")
            .expect("the open agent's listener")
            .trim(),
        "open-ok",
        "inbound is denied per agent"
    );
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let logs = docker_ok(&["logs", &locked.id]);
        if logs.contains("self-ok") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the locked container still reaches itself on loopback: {logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let denials = daemon.collect(1, WAIT, |r| {
        r["container_id"] == locked.id.as_str()
            && r["direction"] == "inbound"
            && r["verdict"] == "DENIED"
            && r["hook"] == "skb_ingress"
    });
    let d = denials
        .first()
        .unwrap_or_else(|| panic!("a DENIED inbound record"));
    assert_eq!(d["dst_ip"], locked_addr.ip().to_string(), "{d:#}");
    assert_eq!(d["dst_port"], PORT, "{d:#}");
    assert_eq!(d["enforced"], true, "{d:#}");
    assert_eq!(d["agent"], "locked", "{d:#}");
    assert_eq!(d["exe"], "/bin/busybox", "the listener's program: {d:#}");
    let recs = daemon.records();
    let listen = of(&recs, &locked.id)
        .into_iter()
        .find(|r| is_listen(r))
        .expect("the locked listener's record");
    assert_eq!(listen["verdict"], "DENIED", "{listen:#}");
    let accepted: Vec<&Value> = of(&recs, &locked.id)
        .into_iter()
        .filter(|r| {
            r["direction"] == "inbound"
                && r["verdict"] != "DENIED"
                && r["dst_ip"] == locked_addr.ip().to_string()
        })
        .collect();
    assert!(
        accepted.is_empty(),
        "no connection from outside was accepted: {accepted:#?}"
    );
    let open_listen = of(&recs, &open.id)
        .into_iter()
        .find(|r| is_listen(r))
        .expect("the open listener's record");
    assert_eq!(open_listen["verdict"], "ALLOWED");
}

/// A reload that denies inbound ends the connections already in (decided
/// again by `inbound`, not by the egress rules): the bind shell's session
/// is reset and its record says policy; the container's outbound rules
/// (allow everything) would have kept it.
#[test]
fn a_reload_to_inbound_deny_ends_the_connections_already_in() {
    require_root!();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let allow = "default:\n  default_action: allow\n";
    support::write_atomic(&policy, allow);
    let daemon = Daemon::start(DaemonOptions::host_root().policy(&policy));
    wait_attribution_ready(&daemon);
    let net = Network::create("ib-reload-net");
    let c = bind_shell("ib-reload", &net, "reloaded", "ib-reload-proj");
    daemon.collect(1, WAIT, |r| {
        r["container_id"] == c.id.as_str() && is_listen(r)
    });
    let addr: SocketAddr = format!("{}:{PORT}", ip_on(&c, &net.name)).parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("inbound allowed");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"echo first\n").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"first\n");

    support::write_atomic(
        &policy,
        "default:\n  default_action: allow\n\
         projects:\n  ib-reload-proj:\n    inbound: deny\n",
    );
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let ended = s.read(&mut buf);
    assert!(
        matches!(ended, Ok(0) | Err(_))
            && !matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the session went on after the reload: {ended:?}"
    );
    let flows = daemon.collect(1, WAIT, |r| {
        r["container_id"] == c.id.as_str()
            && r["direction"] == "inbound"
            && r["flow_state"] == "ended"
            && r["dst_ip"] == addr.ip().to_string()
            && r["verdict"] == "ALLOWED"
    });
    let [flow] = flows.as_slice() else {
        panic!("the session's flow record: {flows:#?}");
    };
    assert_eq!(flow["close_reason"], "policy", "{flow:#}");
    assert_eq!(flow["bytes_in"], "echo first\n".len() as u64, "{flow:#}");
    assert!(
        shell(addr, "echo again").is_err(),
        "a new connection after the reload"
    );
}

/// A listener opened before the daemon enrolled its container carries no
/// storage of ours (no listen was seen): `inbound: deny` holds for it all
/// the same (found by its state and its socket's cgroup), and the attempt
/// is recorded.
#[test]
fn inbound_deny_holds_for_a_listener_opened_before_the_daemon() {
    require_root!();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let net = Network::create("ib-early-net");
    let c = bind_shell("ib-early", &net, "early", "ib-early-proj");
    let addr: SocketAddr = format!("{}:{PORT}", ip_on(&c, &net.name)).parse().unwrap();
    // Listening before any daemon of this test runs.
    let deadline = std::time::Instant::now() + WAIT;
    while shell(addr, "echo up")
        .map(|o| o.trim() != "up")
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the bind shell never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "default:\n  default_action: allow\n\
         projects:\n  ib-early-proj:\n    inbound: deny\n",
    )
    .unwrap();
    let daemon = Daemon::start(DaemonOptions::host_root().policy(&policy));
    wait_attribution_ready(&daemon);
    let denied = shell(addr, "echo should-not-run");
    assert!(
        denied.is_err(),
        "a listener older than the daemon let a connection from outside in: {denied:?}"
    );
    let denials = daemon.collect(1, WAIT, |r| {
        r["container_id"] == c.id.as_str()
            && r["direction"] == "inbound"
            && r["verdict"] == "DENIED"
            && r["dst_port"] == PORT
    });
    let d = denials
        .first()
        .unwrap_or_else(|| panic!("a DENIED inbound record"));
    assert_eq!(d["agent"], "early", "{d:#}");
    assert!(d["src_ip"].as_str().is_some(), "{d:#}");
}

/// Audit mode decides the same and blocks nothing: the connection from
/// outside opens, and its flow (and the listen) say DENIED, enforced=false.
#[test]
fn audit_mode_records_inbound_denials_without_blocking() {
    require_root!();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "mode: audit\ndefault:\n  default_action: allow\n\
         projects:\n  ib-audit-proj:\n    inbound: deny\n",
    )
    .unwrap();
    let daemon = Daemon::start(DaemonOptions::host_root().policy(&policy));
    wait_attribution_ready(&daemon);
    let net = Network::create("ib-audit-net");
    let c = bind_shell("ib-audit", &net, "audited", "ib-audit-proj");
    let listens = daemon.collect(1, WAIT, |r| {
        r["container_id"] == c.id.as_str() && is_listen(r)
    });
    let listen = listens.first().expect("the listen record");
    assert_eq!(listen["verdict"], "DENIED", "{listen:#}");
    assert_eq!(listen["enforced"], false, "{listen:#}");
    let ip = ip_on(&c, &net.name);
    let addr: SocketAddr = format!("{ip}:{PORT}").parse().unwrap();
    assert_eq!(
        shell(addr, "echo audited-ok")
            .expect("audit blocks nothing")
            .trim(),
        "audited-ok"
    );
    let flow = ended_inbound_flow(&daemon, &c.id, &ip);
    assert_eq!(flow["verdict"], "DENIED", "{flow:#}");
    assert_eq!(flow["enforced"], false, "{flow:#}");
    assert!(
        flow["bytes_out"].as_u64().is_some_and(|b| b > 0),
        "{flow:#}"
    );
}

/// The one ended inbound flow of container `id` to its address `ip`.
fn ended_inbound_flow(daemon: &Daemon, id: &str, ip: &str) -> Value {
    let flows = daemon.collect(1, WAIT, |r| {
        r["container_id"] == id
            && r["direction"] == "inbound"
            && r["flow_state"] == "ended"
            && r["dst_ip"] == ip
    });
    let [flow] = flows.as_slice() else {
        panic!("one ended inbound flow to {ip}: {flows:#?}");
    };
    flow.clone()
}

// ---- UDP inbound: a datagram that is no reply (docs/SECURITY.md) ----

const UDP_PORT: u16 = 5555;

/// A UDP "bind shell": runs each datagram as a shell command and sends the
/// output back to whoever sent it; `quit` closes the socket.
const UDP_SHELL: &str = r#"
import socket, subprocess
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", PORT))
print("bound", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    print("got", data, flush=True)
    if data == b"quit":
        break
    s.sendto(subprocess.run(["sh", "-c", data.decode()], capture_output=True).stdout, peer)
s.close()
print("closed", flush=True)
"#;

/// A container of the test image running `script` with the host's python
/// (read-only mounts: the image is a static busybox, whose nc has no UDP).
fn python_container(
    prefix: &str,
    net: &Network,
    agent: &str,
    project: &str,
    script: &str,
) -> support::docker::Container {
    let name = support::unique(prefix);
    let run = format!("/usr/bin/python3 -u -c '{script}'; sleep 300");
    let id = docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &net.name,
        "--label",
        &format!("dev.clawker.agent={agent}"),
        "--label",
        &format!("dev.clawker.project={project}"),
        "-v",
        "/usr:/usr:ro",
        "-v",
        "/usr/lib:/lib:ro",
        "-v",
        "/usr/lib64:/lib64:ro",
        support::docker::IMAGE,
        "sh",
        "-c",
        &run,
    ]);
    support::docker::Container { id, name }
}

fn udp_shell(
    prefix: &str,
    net: &Network,
    agent: &str,
    project: &str,
) -> support::docker::Container {
    python_container(
        prefix,
        net,
        agent,
        project,
        &UDP_SHELL.replace("PORT", &UDP_PORT.to_string()),
    )
}

/// The container's script has its socket bound (it says so).
fn wait_bound(c: &support::docker::Container) {
    support::wait_until("the socket is bound", WAIT, || {
        docker_ok(&["logs", &c.id]).contains("bound").then_some(())
    });
}

fn is_udp_bind(r: &Value, container: &str) -> bool {
    r["container_id"] == container
        && r["hook"] == "listen"
        && r["l4_proto"] == "udp"
        && r["direction"] == "inbound"
        && r["dst_port"] == UDP_PORT
}

fn udp_denial(r: &Value, container: &str) -> bool {
    r["container_id"] == container
        && r["direction"] == "inbound"
        && r["verdict"] == "DENIED"
        && r["l4_proto"] == "udp"
        && r["hook"] == "skb_ingress"
}

/// Send `command` to a UDP shell and wait (briefly) for its answer.
fn udp_ask(sock: &std::net::UdpSocket, to: SocketAddr, command: &str) -> Option<String> {
    sock.send_to(command.as_bytes(), to).expect("send_to");
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) if from == to => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

#[test]
fn a_udp_bind_shell_under_inbound_deny_receives_nothing_and_the_attempt_is_recorded() {
    require_root!();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "default:\n  default_action: allow\n\
         projects:\n  ib-udp-proj:\n    default_action: allow\n\
         \x20   agents:\n      locked:\n        inbound: deny\n",
    )
    .unwrap();
    let daemon = Daemon::start(DaemonOptions::host_root().policy(&policy));
    wait_attribution_ready(&daemon);
    let net = Network::create("ib-udp-net");
    let locked = udp_shell("ib-udp-locked", &net, "locked", "ib-udp-proj");
    let open = udp_shell("ib-udp-open", &net, "open", "ib-udp-proj");
    for c in [&locked, &open] {
        wait_bound(c);
    }
    let locked_addr: SocketAddr = format!("{}:{UDP_PORT}", ip_on(&locked, &net.name))
        .parse()
        .unwrap();
    let open_addr: SocketAddr = format!("{}:{UDP_PORT}", ip_on(&open, &net.name))
        .parse()
        .unwrap();
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();

    // The open agent's shell answers (the datagrams do reach containers).
    let answer = support::wait_until("the open agent's UDP shell answers", WAIT, || {
        udp_ask(&sock, open_addr, "echo open-ok")
    });
    assert_eq!(answer.trim(), "open-ok");
    // The locked one never does; each try is one more chance to answer.
    support::wait_until("a DENIED inbound UDP record", WAIT, || {
        let answered = udp_ask(&sock, locked_addr, "echo should-not-run");
        assert_eq!(answered, None, "the locked agent's UDP shell answered");
        daemon
            .records()
            .iter()
            .any(|r| udp_denial(r, &locked.id))
            .then_some(())
    });
    let recs = daemon.records();
    let d = recs.iter().find(|r| udp_denial(r, &locked.id)).unwrap();
    assert_eq!(d["dst_ip"], locked_addr.ip().to_string(), "{d:#}");
    assert_eq!(d["dst_port"], UDP_PORT, "{d:#}");
    assert_eq!(
        d["src_port"],
        sock.local_addr().unwrap().port(),
        "the peer: {d:#}"
    );
    assert_eq!(d["enforced"], true, "{d:#}");
    assert_eq!(d["agent"], "locked", "{d:#}");
    assert!(
        d["exe"].as_str().is_some_and(|e| e.contains("python")),
        "the program that bound the socket: {d:#}"
    );
    let logs = docker_ok(&["logs", &locked.id]);
    assert!(
        !logs.contains("got"),
        "a datagram reached the locked shell: {logs}"
    );
    let bind = daemon
        .collect(1, WAIT, |r| is_udp_bind(r, &locked.id))
        .pop()
        .expect("the locked shell's bind is recorded");
    assert_eq!(bind["verdict"], "DENIED", "{bind:#}");
    assert!(
        bind["exe"].as_str().is_some_and(|e| e.contains("python")),
        "{bind:#}"
    );

    // A flood from outside spends at most one record per 10 ms.
    let before = recs.iter().filter(|r| udp_denial(r, &locked.id)).count();
    let t0 = std::time::Instant::now();
    for _ in 0..500 {
        let _ = sock.send_to(b"flood", locked_addr);
    }
    let slots = t0.elapsed().as_millis() as usize / 10 + 2;
    // wait for the records of the burst to drain (at least its first)
    daemon.collect(before + 1, WAIT, |r| udp_denial(r, &locked.id));
    let after = daemon
        .records()
        .iter()
        .filter(|r| udp_denial(r, &locked.id))
        .count();
    assert!(
        after - before <= slots.min(100),
        "{} DENIED records for 500 datagrams in {:?}",
        after - before,
        t0.elapsed()
    );
    let logs = docker_ok(&["logs", &locked.id]);
    assert!(
        !logs.contains("got"),
        "the flood reached the locked shell: {logs}"
    );
}

#[test]
fn an_allowed_udp_bind_shell_is_recorded_as_an_inbound_flow_with_bytes() {
    require_root!();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let daemon = Daemon::start(DaemonOptions::host_root());
    wait_attribution_ready(&daemon);
    let net = Network::create("ib-udpok-net");
    let c = udp_shell("ib-udpok", &net, "udp-agent", "ib-udpok-proj");
    wait_bound(&c);
    let ip = ip_on(&c, &net.name);
    let addr: SocketAddr = format!("{ip}:{UDP_PORT}").parse().unwrap();
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let answer = support::wait_until("the UDP shell answers", WAIT, || {
        udp_ask(&sock, addr, "echo udp-answer")
    });
    assert_eq!(answer, "udp-answer\n");
    sock.send_to(b"quit", addr).unwrap();
    let flows = daemon.collect(1, WAIT, |r| {
        r["container_id"] == c.id.as_str()
            && r["direction"] == "inbound"
            && r["l4_proto"] == "udp"
            && r["flow_state"] == "ended"
    });
    let [flow] = flows.as_slice() else {
        panic!("one ended inbound UDP flow: {flows:#?}");
    };
    assert_eq!(flow["verdict"], "ALLOWED", "{flow:#}");
    assert_eq!(flow["dst_ip"], ip, "{flow:#}");
    assert_eq!(flow["dst_port"], UDP_PORT, "{flow:#}");
    assert_eq!(
        flow["src_port"],
        sock.local_addr().unwrap().port(),
        "the peer that sent: {flow:#}"
    );
    // Every command the shell got (a slow answer makes the test ask
    // again) is answered, then `quit`.
    let logs = support::wait_until("the shell's log up to its close", WAIT, || {
        let logs = docker_ok(&["logs", &c.id]);
        logs.contains("closed").then_some(logs)
    });
    let got = logs.matches("got ").count() as u64;
    assert!(got >= 2, "{logs}");
    assert_eq!(flow["packets_out"], got - 1, "{flow:#}");
    assert_eq!(
        flow["bytes_out"],
        (got - 1) * "udp-answer\n".len() as u64,
        "{flow:#}"
    );
    assert_eq!(flow["packets_in"], got, "{flow:#}");
    assert_eq!(
        flow["bytes_in"],
        (got - 1) * "echo udp-answer".len() as u64 + "quit".len() as u64,
        "{flow:#}"
    );
    assert_eq!(flow["close_reason"], "socket_closed", "{flow:#}");
    assert!(
        flow["exe"].as_str().is_some_and(|e| e.contains("python")),
        "{flow:#}"
    );
    assert_eq!(flow["agent"], "udp-agent", "{flow:#}");
    assert!(flow["community_id"].as_str().is_some(), "{flow:#}");
    let binds = daemon.collect(1, WAIT, |r| is_udp_bind(r, &c.id));
    let [bind] = binds.as_slice() else {
        panic!("one UDP bind record: {binds:#?}");
    };
    assert_eq!(bind["verdict"], "ALLOWED", "{bind:#}");
    assert_eq!(bind["pid"], flow["pid"], "{bind:#}");
}

/// A DNS-style exchange under `inbound: deny`: the answer to the query the
/// locked container sent arrives (and counts in its outbound flow); a
/// datagram from the same server's other port is no reply: dropped and
/// recorded.
#[test]
fn under_inbound_deny_a_reply_arrives_and_a_datagram_from_elsewhere_does_not() {
    require_root!();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "default:\n  default_action: allow\n\
         projects:\n  ib-reply-proj:\n    default_action: allow\n\
         \x20   agents:\n      client:\n        inbound: deny\n",
    )
    .unwrap();
    let daemon = Daemon::start(DaemonOptions::host_root().policy(&policy));
    wait_attribution_ready(&daemon);
    let net = Network::create("ib-reply-net");
    // The server answers from port 53, then writes from port 5353.
    let server = python_container(
        "ib-reply-srv",
        &net,
        "server",
        "ib-reply-proj",
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t.bind(("0.0.0.0", 5353))
print("bound", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"answer", peer)
    t.sendto(b"stray", peer)
"#,
    );
    wait_bound(&server);
    let srv = ip_on(&server, &net.name);
    // An unconnected socket (sendto/recvfrom, as a stub resolver): asks
    // until answered, then listens 3 s more for anything else.
    let client = python_container(
        "ib-reply-cli",
        &net,
        "client",
        "ib-reply-proj",
        &format!(
            r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
end = time.time() + 30
answered = False
while time.time() < end:
    if not answered:
        s.sendto(b"query", ("{srv}", 53))
    try:
        data, peer = s.recvfrom(2048)
        print("recv", data.decode(), peer[1], flush=True)
        if not answered:
            answered = True
            end = time.time() + 3
    except socket.timeout:
        pass
print("done", flush=True)
"#
        ),
    );
    let logs = support::wait_until("the client's exchange", WAIT * 2, || {
        let logs = docker_ok(&["logs", &client.id]);
        logs.contains("done").then_some(logs)
    });
    assert!(
        logs.contains("recv answer 53"),
        "the reply reached the locked client: {logs}"
    );
    assert!(
        !logs.contains("stray"),
        "a datagram that is no reply reached the locked client: {logs}"
    );
    let denials = daemon.collect(1, WAIT, |r| udp_denial(r, &client.id));
    let d = denials.first().expect("the stray datagram's DENIED record");
    assert_eq!(d["src_ip"], srv, "{d:#}");
    assert_eq!(d["src_port"], 5353, "{d:#}");
    // The answer counts in the client's outbound flow to the server (it
    // ends as the client's socket closes).
    let flows = daemon.collect(1, WAIT, |r| {
        r["container_id"] == client.id.as_str()
            && r["direction"].is_null()
            && r["dst_port"] == 53
            && r["flow_state"] == "ended"
    });
    let flow = flows.first().expect("the client's flow to the server");
    assert!(
        flow["bytes_in"]
            .as_u64()
            .is_some_and(|b| b >= "answer".len() as u64),
        "{flow:#}"
    );
    let recs = daemon.records();
    assert!(
        !of(&recs, &client.id)
            .iter()
            .any(|r| r["direction"] == "inbound" && r["verdict"] != "DENIED"),
        "the answer is no inbound flow: {:#?}",
        of(&recs, &client.id)
    );
}

/// A reload that denies inbound ends the inbound UDP flows already open:
/// the shell's next datagram is dropped, its flow ends with
/// `close_reason=policy`, and what comes after is a DENIED attempt.
#[test]
fn a_reload_to_inbound_deny_ends_an_inbound_udp_flow() {
    require_root!();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    support::write_atomic(&policy, "default:\n  default_action: allow\n");
    let daemon = Daemon::start(DaemonOptions::host_root().policy(&policy));
    wait_attribution_ready(&daemon);
    let net = Network::create("ib-udprl-net");
    let c = udp_shell("ib-udprl", &net, "udp-reloaded", "ib-udprl-proj");
    wait_bound(&c);
    let ip = ip_on(&c, &net.name);
    let addr: SocketAddr = format!("{ip}:{UDP_PORT}").parse().unwrap();
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let answer = support::wait_until("the UDP shell answers", WAIT, || {
        udp_ask(&sock, addr, "echo first")
    });
    assert_eq!(answer, "first\n");

    support::write_atomic(
        &policy,
        "default:\n  default_action: allow\n\
         projects:\n  ib-udprl-proj:\n    inbound: deny\n",
    );
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    // Until the reload is in, the shell may still answer; after it, never.
    // A reload on a loaded host (every namespace decided again) takes a
    // while: a generous deadline, the condition ends the wait.
    support::wait_until("the inbound UDP flow ended by the reload", WAIT * 4, || {
        let _ = udp_ask(&sock, addr, "echo again");
        daemon
            .records()
            .iter()
            .any(|r| {
                r["container_id"] == c.id.as_str()
                    && r["direction"] == "inbound"
                    && r["l4_proto"] == "udp"
                    && r["flow_state"] == "ended"
                    && r["close_reason"] == "policy"
            })
            .then_some(())
    });
    support::wait_until("a DENIED datagram after the flow ended", WAIT, || {
        let answered = udp_ask(&sock, addr, "echo after-end");
        assert_eq!(answered, None, "the shell answered after the flow ended");
        daemon
            .records()
            .iter()
            .any(|r| udp_denial(r, &c.id))
            .then_some(())
    });
    let logs = docker_ok(&["logs", &c.id]);
    assert!(
        !logs.contains("after-end"),
        "a datagram reached the shell after its flow ended: {logs}"
    );
}
