//! Issue 6 (domains): DNS answers parsed in the kernel give every record its
//! `dst_host`, make each exchange a record of its own, and let domain rules
//! decide — race-free, because the kernel records the answer before the
//! application can read it. The DNS server is a real dnsmasq on loopback.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{
    by_pid, py_resolver, write_atomic, Daemon, DaemonOptions, DnsServer, TcpServer, TestCgroup,
};

const WAIT: Duration = Duration::from_secs(20);

fn policy(dir: &Path, dns: std::net::SocketAddr, rules: &str) -> std::path::PathBuf {
    let p = dir.join("policy.yaml");
    write_atomic(
        &p,
        &format!(
            "default:\n  default_action: deny\n  rules:\n\
             \x20   - {{dst: {ip}, proto: udp, port: \"53\", action: allow}}\n{rules}",
            ip = dns.ip()
        ),
    );
    p
}

/// The TCP flows a process made (not its DNS exchanges or resolver flows).
fn egress(recs: &[Value], pid: u32) -> Vec<Value> {
    by_pid(recs, pid)
        .into_iter()
        .filter(|r| r["l4_proto"] == "tcp")
        .collect()
}

#[test]
fn domain_rules_decide_and_records_name_the_host() {
    require_root!();
    let hosts: Vec<(String, IpAddr)> = [
        ("allowed.test", "127.0.1.1"),
        ("denied.test", "127.0.1.2"),
        ("api.wild.test", "127.0.1.3"),
        ("wild.test", "127.0.1.4"),
        ("six.test", "::1"),
        ("tcp.test", "127.0.1.5"),
    ]
    .iter()
    .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
    .collect();
    let dns = DnsServer::dnsmasq("127.0.0.53", &hosts, 300);
    let server = TcpServer::spawn("0.0.0.0:0", None, 0);
    let server6 = TcpServer::spawn("[::1]:0", None, 0);
    let dir = tempfile::tempdir().unwrap();
    let policy = policy(
        dir.path(),
        dns.addr,
        "    - {dst: allowed.test, proto: tcp, action: allow}\n\
         \x20   - {dst: .wild.test, proto: tcp, action: allow}\n\
         \x20   - {dst: six.test, proto: tcp, action: allow}\n\
         \x20   - {dst: tcp.test, proto: tcp, action: allow}\n\
         \x20   - {dst: 127.0.0.53, proto: tcp, port: \"53\", action: allow}\n",
    );
    let cg = TestCgroup::new("ce-dns");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg).policy(&policy));
    let out = cg.python(&format!(
        "{resolver}import os\nprint(os.getpid(), flush=True)\n\
         for name, q, fam in [('allowed.test', 1, socket.AF_INET), ('api.wild.test', 1, socket.AF_INET), \
         ('wild.test', 1, socket.AF_INET), ('denied.test', 1, socket.AF_INET), ('six.test', 28, socket.AF_INET6)]:\n\
         \x20   ip = resolve(name, q)\n\
         \x20   s = socket.socket(fam)\n\
         \x20   port = {p6} if fam == socket.AF_INET6 else {p}\n\
         \x20   print(name, ip, s.connect_ex((ip, port)), flush=True)\n\
         \x20   s.close()\n\
         ip = resolve_tcp('tcp.test')\n\
         s = socket.socket()\n\
         print('tcp.test', ip, s.connect_ex((ip, {p})), flush=True)\n",
        resolver = py_resolver(dns.addr),
        p = server.port,
        p6 = server6.port
    ));
    let mut lines = out.lines();
    let pid: u32 = lines.next().unwrap().parse().unwrap();
    let results: Vec<&str> = lines.collect();
    assert_eq!(
        results,
        [
            "allowed.test 127.0.1.1 0",
            "api.wild.test 127.0.1.3 0",
            "wild.test 127.0.1.4 0",
            "denied.test 127.0.1.2 1",
            "six.test ::1 0",
            "tcp.test 127.0.1.5 0"
        ],
        "connect results (errno 1 = EPERM)"
    );
    let hosts = [
        "allowed.test",
        "api.wild.test",
        "wild.test",
        "denied.test",
        "six.test",
        "tcp.test",
    ];
    let recs = daemon.wait_for("a decision and a DNS record per name", WAIT, |r| {
        let mine = egress(r, pid);
        hosts.iter().all(|h| {
            mine.iter().any(|x| x["dst_host"] == *h)
                && r.iter().any(|x| x["l7_proto"] == "dns" && x["qname"] == *h)
        })
    });
    let mine = egress(&recs, pid);
    for (host, verdict) in [
        ("allowed.test", "ALLOWED"),
        ("api.wild.test", "ALLOWED"),
        ("wild.test", "ALLOWED"),
        ("denied.test", "DENIED"),
        ("six.test", "ALLOWED"),
        ("tcp.test", "ALLOWED"),
    ] {
        let r = mine
            .iter()
            .find(|r| r["dst_host"] == host)
            .unwrap_or_else(|| panic!("no record for {host}: {mine:#?}"));
        assert_eq!(r["verdict"], verdict, "{host}");
    }
    let dns_recs: Vec<&Value> = recs
        .iter()
        .filter(|r| r["l7_proto"] == "dns" && r["pid"] == pid)
        .collect();
    let allowed = dns_recs
        .iter()
        .find(|r| r["qname"] == "allowed.test")
        .expect("DNS record");
    assert_eq!(allowed["qtype"], "A");
    assert_eq!(allowed["rcode"], "NOERROR");
    assert_eq!(allowed["answers"], "127.0.1.1");
    assert_eq!(allowed["ttl"], 300);
    assert_eq!(allowed["dst_ip"], "127.0.0.53");
    assert_eq!(allowed["dst_port"], 53);
    let six = dns_recs
        .iter()
        .find(|r| r["qname"] == "six.test")
        .expect("AAAA record");
    assert_eq!(six["qtype"], "AAAA");
    assert_eq!(six["answers"], "::1");
    let over_tcp = dns_recs
        .iter()
        .find(|r| r["qname"] == "tcp.test")
        .expect("DNS over TCP record");
    assert_eq!(over_tcp["l4_proto"], "tcp");
    assert_eq!(over_tcp["answers"], "127.0.1.5");
}

#[test]
fn resolve_then_connect_at_once_is_never_decided_wrong() {
    require_root!();
    const N: u32 = 1000;
    // Every name is new and answers with an address never seen before: a
    // connect decided before the kernel knew the answer would be denied.
    let hosts: Vec<(String, IpAddr)> = (0..N)
        .map(|i| {
            let ip = IpAddr::from([127, 3, (i >> 8) as u8, (i & 255) as u8]);
            (format!("n{i}.race.test"), ip)
        })
        .collect();
    let dns = DnsServer::dnsmasq("127.0.0.54", &hosts, 60);
    let server = TcpServer::spawn("0.0.0.0:0", None, 0);
    let dir = tempfile::tempdir().unwrap();
    let policy = policy(
        dir.path(),
        dns.addr,
        "    - {dst: .race.test, proto: tcp, action: allow}\n",
    );
    let cg = TestCgroup::new("ce-dns-race");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg).policy(&policy));
    let out = cg.python(&format!(
        "{resolver}import os\nprint(os.getpid(), flush=True)\n\
         wrong = 0\n\
         for i in range({N}):\n\
         \x20   ip = resolve('n%d.race.test' % i)\n\
         \x20   s = socket.socket()\n\
         \x20   if s.connect_ex((ip, {p})) != 0: wrong += 1\n\
         \x20   s.close()\n\
         print(wrong)\n",
        resolver = py_resolver(dns.addr),
        p = server.port
    ));
    let mut lines = out.lines();
    let pid: u32 = lines.next().unwrap().parse().unwrap();
    assert_eq!(lines.next(), Some("0"), "wrong verdicts out of {N}");
    let recs = daemon.wait_for("every flow", WAIT, |r| egress(r, pid).len() >= N as usize);
    let mine = egress(&recs, pid);
    assert!(mine.iter().all(|r| r["verdict"] == "ALLOWED"));
    assert!(mine
        .iter()
        .all(|r| r["dst_host"].as_str().unwrap().ends_with(".race.test")));
    eprintln!(
        "race: {N} resolve-then-connect, 0 wrong verdicts, {} records",
        mine.len()
    );
}
