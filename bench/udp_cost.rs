//! Kernel ns per UDP datagram (issue 15, UDP inbound): the cgroup_skb
//! programs' own statistics (`kernel.bpf_stats_enabled`) while a process in
//! a watched cgroup exchanges datagrams with a host echo socket on
//! loopback. Two cases, each DATAGRAMS datagrams:
//!  - replies: an unconnected socket in scope sends, the host answers (the
//!    path every DNS/QUIC answer takes: its flow is found; one egress and
//!    one ingress run per datagram);
//!  - inbound: the host sends to a socket in scope bound to a port (not a
//!    reply: one inbound flow; on loopback it is recorded, not decided).
//!
//! Prints figures only. `cargo bench --bench capture -- udp` runs this part
//! alone; `CLAWKER_BENCH_BIN` measures another build of the daemon.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{print_cost, prog_stats, start_daemon, stop_daemon};

const DATAGRAMS: usize = 50_000;
const PROGRAMS: [&str; 2] = ["flow_ingress", "flow_egress"];

pub fn run() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED udp-cost bench: needs root (BPF attach, cgroups)");
        return;
    }
    let root = clawker_egress::kernel::cgroup2_root().expect("cgroup2 mount");
    let me = std::process::id();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let cg = root.join(format!("clawker-bench-udp-{me}"));
    std::fs::create_dir_all(&cg).expect("bench cgroup");
    let pins = PathBuf::from(format!("/sys/fs/bpf/clawker-bench-udp-{me}"));
    let daemon = start_daemon(&root, &cg, &pins);

    // Replies: the host echoes what the cgroup's client sends.
    let echo = UdpSocket::bind("127.0.0.1:0").expect("echo socket");
    let echo_port = echo.local_addr().expect("addr").port();
    let echo_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        for _ in 0..DATAGRAMS {
            let Ok((n, peer)) = echo.recv_from(&mut buf) else {
                break;
            };
            let _ = echo.send_to(&buf[..n], peer);
        }
    });
    let before = prog_stats(&pins);
    python_in(
        &cg,
        &format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             for _ in range({DATAGRAMS}):\n    s.sendto(b'q' * 32, ('127.0.0.1', {echo_port}))\n    s.recv(512)\n"
        ),
    );
    let after = prog_stats(&pins);
    let _ = echo_thread.join();
    print("replies to an unconnected socket in scope", &before, &after);

    // Inbound: the host sends to a bound socket in the cgroup (it answers
    // nothing; it counts what it got and exits).
    let port = {
        let s = UdpSocket::bind("127.0.0.1:0").expect("port");
        s.local_addr().expect("addr").port()
    };
    let server = spawn_python_in(
        &cg,
        &format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('127.0.0.1', {port}))\ns.settimeout(5)\nprint('bound', flush=True)\n\
             n = 0\ntry:\n    while n < {DATAGRAMS}:\n        s.recv(512)\n        n += 1\nexcept OSError:\n    pass\n"
        ),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = prog_stats(&pins);
    let tx = UdpSocket::bind("127.0.0.1:0").expect("sender");
    for i in 0..DATAGRAMS {
        let _ = tx.send_to(b"inbound-datagram-payload", ("127.0.0.1", port));
        if i % 64 == 63 {
            // paced: the receiver's buffer must not overflow
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
    let _ = server.wait_with_output();
    let after = prog_stats(&pins);
    print(
        "inbound datagrams to a bound socket in scope (allowed: one inbound flow)",
        &before,
        &after,
    );
    stop_daemon(daemon, &cg, &pins);
    let _ = std::fs::remove_dir(&cg);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
}

fn python_in(cgroup: &Path, script: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec python3 -c \"$0\"",
            cgroup.display()
        ))
        .arg(script)
        .status()
        .expect("python3");
    assert!(status.success(), "python loop failed");
}

fn spawn_python_in(cgroup: &Path, script: &str) -> std::process::Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec python3 -c \"$0\"",
            cgroup.display()
        ))
        .arg(script)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3")
}

fn print(what: &str, before: &[(String, u64, u64)], after: &[(String, u64, u64)]) {
    print_cost(
        &format!("kernel ns per datagram, {what} ({DATAGRAMS} datagrams)"),
        ("datagram", DATAGRAMS),
        &PROGRAMS,
        before,
        after,
    );
}
