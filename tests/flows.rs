//! Issue 4: one record per flow, at its end, with what flowed. Real kernel,
//! real sockets on loopback; the test owns every server.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{by_pid, pid_of, sum, Daemon, DaemonOptions, TcpServer, TestCgroup};

const WAIT: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

fn ended(recs: &[Value]) -> Vec<Value> {
    recs.iter()
        .filter(|r| r["flow_state"] == "ended")
        .cloned()
        .collect()
}

fn bulk_tcp_flow(host: &str, bind: &str, ip_version: u64) {
    let cg = TestCgroup::new("ce-bulk");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg));
    let server = TcpServer::spawn(bind, Some(3 * MIB), 7 * MIB);
    let started = Instant::now();
    let out = cg.python(&format!(
        "import os, socket\nprint(os.getpid(), flush=True)\n\
         s = socket.create_connection(('{host}', {port}))\n\
         s.sendall(b'x' * {up})\n\
         n = 0\n\
         while True:\n    d = s.recv(65536)\n    if not d: break\n    n += len(d)\n\
         assert n == {down}, n\n\
         s.close()\n",
        port = server.port,
        up = 3 * MIB,
        down = 7 * MIB,
    ));
    let wall_ms = started.elapsed().as_millis() as u64;
    let pid = pid_of(&out);
    let recs = daemon.wait_for("the bulk flow", WAIT, |r| !by_pid(r, pid).is_empty());
    let mine = by_pid(&recs, pid);
    assert_eq!(mine.len(), 1, "one record for one connection: {mine:#?}");
    let r = &mine[0];
    // Exact: payload bytes from the kernel's tcp_sock counters.
    assert_eq!(r["bytes_out"], 3 * MIB as u64);
    assert_eq!(r["bytes_in"], 7 * MIB as u64);
    assert_eq!(r["flow_state"], "ended");
    assert_eq!(r["close_reason"], "fin");
    assert_eq!(r["ip_version"], ip_version);
    assert_eq!(r["dst_port"], server.port);
    assert!(r["packets_out"].as_u64().unwrap() > 0 && r["packets_in"].as_u64().unwrap() > 0);
    let duration = r["duration_ms"].as_u64().unwrap();
    assert!(
        duration <= wall_ms,
        "duration {duration} ms within the measured {wall_ms} ms"
    );
    eprintln!(
        "bulk v{ip_version}: duration_ms={duration} wall_ms={wall_ms} packets_out={} packets_in={}",
        r["packets_out"], r["packets_in"]
    );
}

#[test]
fn a_tcp_upload_and_download_is_one_record_with_exact_bytes() {
    require_root!();
    bulk_tcp_flow("127.0.0.1", "127.0.0.1:0", 4);
}

#[test]
fn a_tcp_upload_and_download_over_ipv6_is_exact_too() {
    require_root!();
    bulk_tcp_flow("::1", "[::1]:0", 6);
}

#[test]
fn a_thousand_short_connections_are_a_thousand_records() {
    require_root!();
    const N: usize = 1000;
    const REQUEST: &str = "GET /index.html HTTP/1.0\\r\\nHost: test\\r\\n\\r\\n";
    let request_len = REQUEST.replace("\\r\\n", "..").len() as u64;
    let cg = TestCgroup::new("ce-short");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg));
    let server = TcpServer::spawn("127.0.0.1:0", Some(request_len as usize), 512);
    let pid = pid_of(&cg.python(&format!(
        "import os, socket\nprint(os.getpid(), flush=True)\n\
         for _ in range({N}):\n\
         \x20   s = socket.create_connection(('127.0.0.1', {port}))\n\
         \x20   s.sendall(b'{REQUEST}')\n\
         \x20   while s.recv(65536): pass\n\
         \x20   s.close()\n",
        port = server.port
    )));
    let recs = daemon.wait_for("1000 flows", WAIT, |r| by_pid(r, pid).len() >= N);
    std::thread::sleep(Duration::from_millis(500)); // any duplicate would arrive by now
    let mine = by_pid(&daemon.records(), pid);
    assert_eq!(
        mine.len(),
        N,
        "exactly {N} records, none lost, none doubled"
    );
    let ids: HashSet<&str> = mine
        .iter()
        .map(|r| r["community_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), N, "one record per distinct connection");
    for r in &mine {
        assert_eq!(r["flow_state"], "ended");
        assert_eq!(r["bytes_out"], request_len);
        assert_eq!(r["bytes_in"], 512);
    }
    assert_eq!(
        daemon.metric("clawker_egress_events_dropped_total{reason=\"ringbuf_full\"}"),
        0.0
    );
    drop(recs);
}

fn udp_two_destinations(bind: &str, host: &str, ip_version: u64) {
    let cg = TestCgroup::new("ce-udp2");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg));
    let a = UdpSocket::bind(bind).unwrap();
    let b = UdpSocket::bind(bind).unwrap();
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    let pid = pid_of(&cg.python(&format!(
        "import os, socket\nprint(os.getpid(), flush=True)\n\
         fam = socket.AF_INET6 if ':' in '{host}' else socket.AF_INET\n\
         u = socket.socket(fam, socket.SOCK_DGRAM)\n\
         for _ in range(100): u.sendto(b'd' * 1000, ('{host}', {pa}))\n\
         for _ in range(50): u.sendto(b'd' * 1000, ('{host}', {pb}))\n\
         u.close()\n"
    )));
    let recs = daemon.wait_for("two udp flows", WAIT, |r| by_pid(r, pid).len() >= 2);
    let mine = by_pid(&recs, pid);
    assert_eq!(mine.len(), 2, "{mine:#?}");
    for (port, n) in [(pa, 100u64), (pb, 50)] {
        let r = mine
            .iter()
            .find(|r| r["dst_port"] == port)
            .expect("flow per destination");
        assert_eq!(r["bytes_out"], n * 1000);
        assert_eq!(r["packets_out"], n);
        assert_eq!(r["l4_proto"], "udp");
        assert_eq!(r["ip_version"], ip_version);
        assert_eq!(r["close_reason"], "socket_closed", "ended on socket close");
    }
}

#[test]
fn udp_flows_per_destination_are_exact_and_end_on_close() {
    require_root!();
    udp_two_destinations("127.0.0.1:0", "127.0.0.1", 4);
}

#[test]
fn udp_flows_over_ipv6_are_exact_too() {
    require_root!();
    udp_two_destinations("[::1]:0", "::1", 6);
}

#[test]
fn an_idle_udp_socket_ends_its_flow_and_talking_again_starts_a_new_one() {
    require_root!();
    let cg = TestCgroup::new("ce-idle");
    let daemon = Daemon::start(
        DaemonOptions::for_cgroup(&cg)
            .arg("--flow-idle-timeout")
            .arg("1s"),
    );
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    let mut child = cg
        .command(
            "python3",
            &[
                "-c",
                &format!(
                    "import os, socket, sys, time\nprint(os.getpid(), flush=True)\n\
                     u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                     u.sendto(b'first', ('127.0.0.1', {port}))\n\
                     time.sleep(2.5)\n\
                     u.sendto(b'second!', ('127.0.0.1', {port}))\n\
                     sys.stdin.readline()\n"
                ),
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = pid_of(&line);
    // The socket stays open: both flows must end by the idle timeout.
    let recs = daemon.wait_for("two idle-ended flows", WAIT, |r| by_pid(r, pid).len() >= 2);
    let mine = by_pid(&recs, pid);
    assert_eq!(mine.len(), 2, "{mine:#?}");
    assert!(mine.iter().all(|r| r["close_reason"] == "idle"));
    let mut sizes: Vec<u64> = mine
        .iter()
        .map(|r| r["bytes_out"].as_u64().unwrap())
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![5, 7], "a new flow after the idle gap");
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        by_pid(&daemon.records(), pid).len(),
        2,
        "closing adds nothing: the flows had ended"
    );
}

#[test]
fn a_refused_connect_is_one_record_with_zero_bytes() {
    require_root!();
    let cg = TestCgroup::new("ce-refused6");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg));
    let port = std::net::TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pid = pid_of(&cg.python(&format!(
        "import os, socket\nprint(os.getpid(), flush=True)\n\
         s = socket.socket(socket.AF_INET6)\nassert s.connect_ex(('::1', {port})) == 111\n"
    )));
    let recs = daemon.wait_for("refused v6", WAIT, |r| !by_pid(r, pid).is_empty());
    let mine = by_pid(&recs, pid);
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["close_reason"], "refused");
    assert_eq!(mine[0]["errno"], 111);
    assert_eq!(mine[0]["bytes_out"], 0);
    assert!(mine[0]["duration_ms"].as_u64().unwrap() < 1000);
}

#[test]
fn flows_open_across_a_restart_end_exactly_once() {
    require_root!();
    let cg = TestCgroup::new("ce-restart-flows");
    let opts = DaemonOptions::for_cgroup(&cg);
    let pin_root = opts.pin_root.clone();
    let first = Daemon::start(opts);
    let server = TcpServer::spawn("127.0.0.1:0", None, 0);
    let mut child = cg
        .command(
            "python3",
            &[
                "-c",
                &format!(
                    "import os, socket, sys\nprint(os.getpid(), flush=True)\n\
                     conns = [socket.create_connection(('127.0.0.1', {port})) for _ in range(10)]\n\
                     for c in conns: c.sendall(b'hello')\n\
                     print('open', flush=True)\n\
                     sys.stdin.readline()\n\
                     for c in conns: c.close()\n",
                    port = server.port
                ),
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut l1, mut l2) = (String::new(), String::new());
    out.read_line(&mut l1).unwrap();
    out.read_line(&mut l2).unwrap();
    let pid = pid_of(&l1);
    assert_eq!(l2.trim(), "open");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        by_pid(&first.records(), pid).is_empty(),
        "open flows have no ended record yet"
    );
    first.kill9();

    let mut opts = DaemonOptions::for_cgroup(&cg);
    opts.pin_root = pin_root;
    let second = Daemon::start(opts);
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    child.wait().unwrap();
    let recs = second.wait_for("ten ended flows", WAIT, |r| by_pid(r, pid).len() >= 10);
    std::thread::sleep(Duration::from_millis(500));
    let mine = ended(&by_pid(&second.records(), pid));
    assert_eq!(mine.len(), 10, "exactly ten, no duplicates: {recs:#?}");
    let ids: HashSet<&str> = mine
        .iter()
        .map(|r| r["community_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 10);
    assert!(mine.iter().all(|r| r["bytes_out"] == 5));
}

#[test]
fn a_long_flow_reports_interim_deltas_that_sum_to_the_total() {
    require_root!();
    let cg = TestCgroup::new("ce-active");
    let daemon = Daemon::start(
        DaemonOptions::for_cgroup(&cg)
            .arg("--flow-active-interval")
            .arg("1s"),
    );
    let server = TcpServer::spawn("127.0.0.1:0", None, 0);
    let pid = pid_of(&cg.python(&format!(
        "import os, socket, time\nprint(os.getpid(), flush=True)\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         for _ in range(3):\n\
         \x20   s.sendall(b'a' * {mib})\n\
         \x20   time.sleep(1.5)\n\
         s.close()\n",
        port = server.port,
        mib = MIB
    )));
    let recs = daemon.wait_for("the ended record", WAIT, |r| {
        !ended(&by_pid(r, pid)).is_empty()
    });
    let mine = by_pid(&recs, pid);
    let active: Vec<&Value> = mine
        .iter()
        .filter(|r| r["flow_state"] == "active")
        .collect();
    assert!(
        !active.is_empty(),
        "a flow open for 4.5 s with a 1 s interval is reported while open: {mine:#?}"
    );
    assert!(active.iter().all(|r| r.get("close_reason").is_none()));
    assert_eq!(ended(&mine).len(), 1);
    assert_eq!(
        sum(&mine, "bytes_out"),
        3 * MIB as u64,
        "deltas add up to the flow's total"
    );
    let ids: HashSet<&str> = mine
        .iter()
        .map(|r| r["community_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every record names the same flow");
    eprintln!("active flow: {} interim records + 1 ended", active.len());
}
