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
    // One record per connection: a doubled record repeats its connection's
    // Community ID and end time. (The Community ID alone can repeat: with
    // tcp_tw_reuse=2, loopback's default, a later connection may reuse a
    // TIME_WAIT 4-tuple.)
    let ids: HashSet<(&str, &str)> = mine
        .iter()
        .map(|r| {
            (
                r["community_id"].as_str().unwrap(),
                r["@timestamp"].as_str().unwrap(),
            )
        })
        .collect();
    if ids.len() != N {
        let mut seen: std::collections::HashMap<&str, Vec<&Value>> = Default::default();
        for r in &mine {
            seen.entry(r["community_id"].as_str().unwrap())
                .or_default()
                .push(r);
        }
        let dups: Vec<_> = seen.values().filter(|v| v.len() > 1).collect();
        panic!("one record per distinct connection; these share one: {dups:#?}");
    }
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

/// A TCP flow lives in its socket's storage until it is a second old; the
/// promoter then gives it its flow-table entry with the counters as they
/// are. A connection that sends everything in its first second and then
/// idles (no packet left to trigger a refresh) is still reported while it
/// is open, with those bytes.
#[test]
fn an_idle_flow_is_reported_while_open_with_its_first_seconds_bytes() {
    require_root!();
    let cg = TestCgroup::new("ce-idle");
    let daemon = Daemon::start(
        DaemonOptions::for_cgroup(&cg)
            .arg("--flow-active-interval")
            .arg("1s"),
    );
    let server = TcpServer::spawn("127.0.0.1:0", None, 0);
    let pid = pid_of(&cg.python(&format!(
        "import os, socket, time\nprint(os.getpid(), flush=True)\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b'a' * {mib})\n\
         time.sleep(4)\n\
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
        active.iter().any(|r| r["bytes_out"] == MIB as u64),
        "the idle flow's interim record carries its first second's bytes: {mine:#?}"
    );
    assert_eq!(ended(&mine).len(), 1);
    assert_eq!(
        sum(&mine, "bytes_out"),
        MIB as u64,
        "deltas add up to the flow's total"
    );
}

/// A full flow table (here the container's share of it) is a degradation
/// for TCP and a loss for datagrams, and the counters say which: a TCP flow
/// it cannot track counts in `kernel_map_full_total{map="flows"}` only (it
/// still ends with one record, exact bytes), a datagram flow's packets go
/// unrecorded and also count in `events_dropped_total{reason="flow_table_full"}`.
#[test]
fn a_full_flow_table_is_a_loss_only_for_datagrams() {
    require_root!();
    const SHARE: usize = 4;
    const TCP: usize = 7;
    const UDP: usize = 3;
    let cg = TestCgroup::new("ce-full");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    support::write_atomic(&config, &format!("container_max_flows = {SHARE}\n"));
    let daemon = Daemon::start(
        DaemonOptions::for_cgroup(&cg)
            .arg("--config")
            .arg(config.to_str().unwrap())
            .arg("--loss-report-interval")
            .arg("1s"),
    );
    // The in-band reports (this daemon's one scope: the test cgroup),
    // summed: `field` over its records_lost records.
    let reported = |d: &Daemon, field: &str| -> u64 {
        d.records()
            .iter()
            .filter(|r| r["event"] == "records_lost")
            .map(|r| r[field].as_u64().unwrap_or(0))
            .sum()
    };
    let server = TcpServer::spawn("127.0.0.1:0", None, 0);
    let sinks: Vec<UdpSocket> = (0..UDP)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let udp_ports: Vec<String> = sinks
        .iter()
        .map(|s| s.local_addr().unwrap().port().to_string())
        .collect();
    let mut child = cg
        .command(
            "python3",
            &[
                "-c",
                &format!(
                    "import os, socket, sys\nprint(os.getpid(), flush=True)\n\
                     t = [socket.create_connection(('127.0.0.1', {port})) for _ in range({TCP})]\n\
                     for s in t: s.sendall(b'x' * 1000)\n\
                     print('tcp', flush=True); sys.stdin.readline()\n\
                     u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                     for p in ({ports},): u.sendto(b'gone', ('127.0.0.1', p))\n\
                     print('udp', flush=True); sys.stdin.readline()\n\
                     for s in t: s.close()\n\
                     u.close()\n",
                    port = server.port,
                    ports = udp_ports.join(", "),
                ),
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || out.next().unwrap().unwrap();
    let pid = pid_of(&next());
    let full = |d: &Daemon| d.metric("clawker_egress_kernel_map_full_total{map=\"flows\"}");
    let dropped =
        |d: &Daemon| d.metric("clawker_egress_events_dropped_total{reason=\"flow_table_full\"}");

    assert_eq!(next(), "tcp");
    // A TCP flow meets the table when it is promoted from its socket's
    // storage, a second or two after connect (bpf/lib/tcp.h).
    support::wait_until("TCP flows past the share", WAIT, || {
        (full(&daemon) >= (TCP - SHARE) as f64).then_some(())
    });
    assert_eq!(
        full(&daemon),
        (TCP - SHARE) as f64,
        "TCP flows past the share"
    );
    assert_eq!(
        dropped(&daemon),
        0.0,
        "an untracked TCP flow loses no record"
    );
    // Logged as well as counted.
    daemon.wait_stderr("kernel_map_full", |l| l.contains("kernel_map_full"));
    // In-band, for the container: a full table, not a lost record.
    support::wait_until("the container's map_full_flows report", WAIT, || {
        (reported(&daemon, "map_full_flows") >= (TCP - SHARE) as u64).then_some(())
    });
    assert_eq!(reported(&daemon, "map_full_flows"), (TCP - SHARE) as u64);
    assert_eq!(reported(&daemon, "lost_total"), 0, "no TCP record lost");

    stdin.write_all(b"\n").unwrap();
    assert_eq!(next(), "udp");
    for s in &sinks {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.recv(&mut buf).unwrap(), 4, "the datagram was sent");
    }
    assert_eq!(full(&daemon), (TCP - SHARE + UDP) as f64);
    assert_eq!(
        dropped(&daemon),
        UDP as f64,
        "one unrecorded datagram per destination past the share"
    );
    support::wait_until("the container's lost datagram flows", WAIT, || {
        (reported(&daemon, "lost_flow_not_tracked") >= UDP as u64).then_some(())
    });
    assert_eq!(reported(&daemon, "lost_flow_not_tracked"), UDP as u64);
    assert_eq!(reported(&daemon, "lost_total"), UDP as u64);
    assert_eq!(
        reported(&daemon, "map_full_flows"),
        (TCP - SHARE) as u64,
        "a lost datagram flow is a loss, not only a full table"
    );

    stdin.write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
    let recs = daemon.wait_for("every TCP flow's end", WAIT, |r| {
        ended(&by_pid(r, pid))
            .iter()
            .filter(|x| x["dst_port"] == server.port)
            .count()
            >= TCP
    });
    let tcp: Vec<Value> = ended(&by_pid(&recs, pid))
        .into_iter()
        .filter(|x| x["dst_port"] == server.port)
        .collect();
    assert_eq!(tcp.len(), TCP, "one record per TCP flow: {tcp:#?}");
    assert!(
        tcp.iter().all(|r| r["bytes_out"] == 1000),
        "exact bytes, tracked or not: {tcp:#?}"
    );
}
