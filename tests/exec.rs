//! Issue 15: process context. Real dockerd and busybox containers, a daemon
//! at the host's cgroup v2 root, loopback listeners the test owns.
//!  - a shell's `nc` flow carries the program (`exe`), its `ppid` and the
//!    `process_key` of its exec record; the ppid leads to the shell's exec;
//!  - secrets on a command line never leave the daemon (masked args);
//!  - a container flooding fork/exec/exit records spends only its own
//!    record budget: another container's exec and flow records all arrive.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::docker::{engine, wait_attribution_ready, Spec};
use support::{Daemon, DaemonOptions, TcpServer};

const WAIT: Duration = Duration::from_secs(30);

/// Tests with a daemon at the host root run one at a time.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn is(r: &Value, source: &str, container: &str) -> bool {
    r["clawker.source"] == source && r["container_id"] == container
}

/// An exec record of `program` (busybox runs its applets through
/// /proc/self/exe: the program is argv[0]).
fn runs(r: &Value, program: &str) -> bool {
    r["args"]
        .as_str()
        .is_some_and(|a| a.split(' ').next() == Some(program))
}

#[test]
fn a_shells_flow_names_its_program_and_leads_to_the_shell() {
    require_root!();
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let daemon = Daemon::start(DaemonOptions::host_root());
    wait_attribution_ready(&daemon);
    let server = TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    let secrets = ["s3cr3t-tok", "hunter2pw", "pa55w0rd"];
    let c = Spec::new(
        "ex-shell",
        format!(
            "mkdir -p /tmp/wd/sub; cd /tmp/wd/sub; sleep 0.5; echo hi | nc -w 2 127.0.0.1 {port}; \
             env API_TOKEN={} /bin/true --password {} https://bob:{}@example.test/x; exit 0",
            secrets[0],
            secrets[1],
            secrets[2],
            port = server.port
        ),
    )
    .label("dev.clawker.agent", "exec-agent")
    .label("dev.clawker.project", "exec-proj")
    .run();
    assert_eq!(c.wait(), 0);

    let flows = daemon.collect(1, WAIT, |r| {
        is(r, "egress", &c.id) && r["dst_port"] == server.port
    });
    let [flow] = flows.as_slice() else {
        panic!("one flow to the listener: {flows:#?}");
    };
    // The records asserted on below, each waited for by what it is: a count
    // can be reached by other processes' records (the shell's forks, mkdir,
    // sleep) while nc's exit or true's exec are still on their way.
    let of_c = |recs: &[Value], event: &str| -> Vec<Value> {
        recs.iter()
            .filter(|r| is(r, "exec", &c.id) && r["event"] == event)
            .cloned()
            .collect()
    };
    let recs = daemon.wait_for(
        "the exec and exit records of the shell, nc and true",
        WAIT,
        |r| {
            let (execs, exits) = (of_c(r, "exec"), of_c(r, "exit"));
            execs
                .iter()
                .any(|e| e["process_key"] == flow["process_key"])
                && execs.iter().any(|e| e["pid"] == flow["ppid"])
                && execs.iter().any(|e| runs(e, "/bin/true"))
                && exits
                    .iter()
                    .any(|e| e["process_key"] == flow["process_key"])
        },
    );
    let (execs, exits) = (of_c(&recs, "exec"), of_c(&recs, "exit"));

    // The flow's program, its exec record (same process key), its parent.
    let nc_exec = execs
        .iter()
        .find(|r| r["process_key"] == flow["process_key"])
        .unwrap_or_else(|| {
            panic!("an exec record with the flow's process_key: {flow:#} {execs:#?}")
        });
    assert!(runs(nc_exec, "nc"), "{nc_exec:#}");
    // The file that ran, as the container sees it (not /proc/self/exe).
    assert_eq!(nc_exec["exe"], "/bin/busybox", "{nc_exec:#}");
    assert_eq!(nc_exec["exec_filename"], "/proc/self/exe", "{nc_exec:#}");
    assert_eq!(
        flow["exe"], nc_exec["exe"],
        "the flow names its program: {flow:#}"
    );
    assert_eq!(nc_exec["cwd"], "/tmp/wd/sub", "where it ran: {nc_exec:#}");
    assert_eq!(nc_exec["pid"], flow["pid"]);
    assert_eq!(nc_exec["ppid"], flow["ppid"]);
    assert_eq!(
        nc_exec["args"],
        format!("nc -w 2 127.0.0.1 {}", server.port),
        "{nc_exec:#}"
    );
    let shell = execs
        .iter()
        .find(|r| r["pid"] == flow["ppid"])
        .unwrap_or_else(|| panic!("the ppid leads to an exec record: {flow:#} {execs:#?}"));
    assert!(runs(shell, "sh"), "the parent is the shell: {shell:#}");
    assert_eq!(shell["cwd"], "/", "the container's workdir: {shell:#}");
    assert_eq!(nc_exec["parent_process_key"], shell["process_key"]);
    assert_eq!(nc_exec["parent_exe"], shell["exe"], "{nc_exec:#}");
    assert_eq!(shell["agent"], "exec-agent");
    assert_eq!(nc_exec["project"], "exec-proj");

    // nc ended: its exit record, same key, with a code and a duration.
    let nc_exit = exits
        .iter()
        .find(|r| r["process_key"] == flow["process_key"])
        .unwrap_or_else(|| panic!("nc's exit record: {exits:#?}"));
    assert_eq!(nc_exit["exit_code"], 0, "{nc_exit:#}");
    assert!(nc_exit["duration_ms"].as_u64().is_some(), "{nc_exit:#}");
    assert_eq!(nc_exit["exe"], "/bin/busybox", "{nc_exit:#}");

    // Secrets on a command line are masked before anything leaves: in the
    // shell's script and in the command env ran.
    assert!(
        shell["args"]
            .as_str()
            .is_some_and(|a| a.contains("env API_TOKEN=******** /bin/true --password ******** https://bob:********@example.test/x")),
        "{shell:#}"
    );
    let t = execs
        .iter()
        .find(|r| runs(r, "/bin/true"))
        .unwrap_or_else(|| panic!("true's exec record: {execs:#?}"));
    assert_eq!(
        t["args"], "/bin/true --password ******** https://bob:********@example.test/x",
        "{t:#}"
    );
    let everything = format!("{:?}{:?}", daemon.records(), daemon.stderr_lines());
    for s in secrets {
        assert!(!everything.contains(s), "{s} left the daemon");
    }
}

#[test]
fn an_exec_flood_does_not_drop_another_containers_exec_or_flow_records() {
    require_root!();
    const N: usize = 40;
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let _engine = engine();
    let daemon = Daemon::start(
        DaemonOptions::host_root()
            .arg("--container-record-rate")
            .arg("300")
            .arg("--container-record-burst")
            .arg("600")
            .arg("--loss-report-interval")
            .arg("1s"),
    );
    wait_attribution_ready(&daemon);
    // Two loops of fork + exec + exit: thousands of records a second.
    let flooder = Spec::new(
        "ex-flood",
        "for i in 1 2; do (while :; do /bin/true; done) & done; sleep 120",
    )
    .label("dev.clawker.agent", "flooder")
    .run();
    let limited = {
        let deadline = Instant::now() + WAIT;
        loop {
            let dropped =
                daemon.metric("clawker_egress_events_dropped_total{reason=\"rate_limited\"}");
            if dropped > 0.0 || Instant::now() > deadline {
                break dropped > 0.0;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let server = TcpServer::spawn("127.0.0.1:0", Some(3), 0);
    let victim = Spec::new(
        "ex-victim",
        format!(
            "i=0; while [ $i -lt {N} ]; do echo hi | nc -w 2 127.0.0.1 {}; i=$((i+1)); done",
            server.port
        ),
    )
    .label("dev.clawker.agent", "victim")
    .run();
    assert_eq!(victim.wait(), 0);
    let flows = daemon.collect(N, WAIT, |r| {
        is(r, "egress", &victim.id) && r["dst_port"] == server.port
    });
    let execs = daemon.collect(N, WAIT, |r| {
        is(r, "exec", &victim.id) && r["event"] == "exec" && runs(r, "nc")
    });
    let flooder_lost = daemon.collect(1, WAIT, |r| {
        r["event"] == "records_lost" && r["container_id"] == flooder.id.as_str()
    });
    drop(flooder);
    let recs = daemon.records();
    let victim_lost: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "records_lost" && r["container_id"] == victim.id.as_str())
        .collect();
    assert!(
        limited,
        "the flooder spent its budget before the victim started"
    );
    assert_eq!(flows.len(), N, "every victim flow recorded");
    assert_eq!(execs.len(), N, "every victim exec of nc recorded");
    assert!(
        flows.iter().all(|f| f["exe"] == "/bin/busybox"
            && execs.iter().any(|e| e["process_key"] == f["process_key"])),
        "every victim flow joins its exec record"
    );
    assert!(
        victim_lost.is_empty(),
        "the victim lost nothing: {victim_lost:#?}"
    );
    assert!(
        !flooder_lost.is_empty() && flooder_lost[0]["lost_rate_limited"].as_u64() > Some(0),
        "the flooder's losses are reported in-band: {flooder_lost:#?}"
    );
}
