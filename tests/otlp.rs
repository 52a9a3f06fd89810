//! Issue 2: records over OTLP/gRPC. The receiver here is a minimal OTLP
//! logs server built from `opentelemetry-proto` in the test (the real
//! collector is exercised by tests/stack_e2e.rs); it stores every request so
//! the exact LogRecords can be asserted.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use support::otlp::Receiver;
use support::{Daemon, DaemonOptions, TestCgroup};

fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn s(kvs: &[KeyValue], key: &str) -> String {
    match attr(kvs, key) {
        Some(any_value::Value::StringValue(v)) => v.clone(),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn i(kvs: &[KeyValue], key: &str) -> i64 {
    match attr(kvs, key) {
        Some(any_value::Value::IntValue(v)) => *v,
        other => panic!("{key} is not an int: {other:?}"),
    }
}

fn pid_attr(r: &LogRecord) -> Option<i64> {
    match attr(&r.attributes, "pid") {
        Some(any_value::Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

/// The pid of a flow, socket or DNS record (exec/exit records carry the
/// process's pid too).
fn egress_pid(r: &LogRecord) -> Option<i64> {
    match attr(&r.attributes, "clawker.source") {
        Some(any_value::Value::StringValue(s)) if s == "egress" => pid_attr(r),
        _ => None,
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn connect_script(port: u16) -> String {
    format!("import os, socket\nprint(os.getpid(), flush=True)\nsocket.create_connection(('127.0.0.1', {port})).close()\n")
}

#[test]
fn records_arrive_as_otlp_log_records_and_the_daemon_never_records_itself() {
    require_root!();
    let addr = free_addr();
    let receiver = Receiver::serve(addr);
    let cg = TestCgroup::new("ce-otlp");
    // The daemon runs inside the cgroup it watches: its own export
    // connections are exactly the traffic it must not record.
    let mut opts = DaemonOptions::for_cgroup(&cg)
        .arg("--output")
        .arg("otlp")
        .arg("--otlp-endpoint")
        .arg(format!("http://{addr}"));
    opts.run_inside = Some(cg.path.clone());
    let daemon = Daemon::start(opts);
    let daemon_pid = i64::from(daemon.child.id());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let before = SystemTime::now();
    let pid = i64::from(
        cg.python(&connect_script(port))
            .lines()
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap(),
    );
    let recs = receiver.wait_for("the connect", |r| {
        r.iter().any(|(lr, _)| egress_pid(lr) == Some(pid))
    });
    let (lr, resource) = recs
        .iter()
        .find(|(lr, _)| egress_pid(lr) == Some(pid))
        .unwrap();

    let a = &lr.attributes;
    assert_eq!(s(a, "clawker.source"), "egress");
    assert_eq!(s(a, "verdict"), "ALLOWED");
    assert_eq!(s(a, "flow_state"), "ended");
    assert_eq!(s(a, "close_reason"), "fin");
    assert_eq!(i(a, "bytes_out"), 0);
    assert!(s(a, "community_id").starts_with("1:"));
    assert_eq!(s(a, "l4_proto"), "tcp");
    assert_eq!(s(a, "l7_proto"), "unknown");
    assert_eq!(i(a, "ip_version"), 4);
    assert_eq!(s(a, "dst_ip"), "127.0.0.1");
    assert_eq!(i(a, "dst_port"), i64::from(port));
    assert_eq!(s(a, "dst_host"), "");
    assert_eq!(i(a, "cgroup_id") as u64, cg.id());
    assert_eq!(s(a, "comm"), "python3");
    let t = UNIX_EPOCH + Duration::from_nanos(lr.time_unix_nano);
    assert!(
        t >= before - Duration::from_secs(1) && t <= SystemTime::now(),
        "Timestamp is the event time"
    );
    assert!(lr.observed_time_unix_nano >= lr.time_unix_nano);
    let body = match lr.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(b)) => b.clone(),
        other => panic!("body: {other:?}"),
    };
    assert!(
        body.contains("127.0.0.1") && body.contains("ALLOWED"),
        "{body}"
    );
    assert_eq!(s(resource, "service.name"), "clawker-egress");
    assert_eq!(s(resource, "service.version"), env!("CARGO_PKG_VERSION"));
    assert!(!s(resource, "host.name").is_empty());

    std::thread::sleep(Duration::from_millis(500));
    let own: Vec<_> = receiver
        .records()
        .into_iter()
        .filter(|(lr, _)| pid_attr(lr) == Some(daemon_pid))
        .collect();
    assert!(
        own.is_empty(),
        "the daemon recorded its own export traffic: {own:#?}"
    );
    assert!(daemon.metric("clawker_egress_records_exported_total{sink=\"otlp\"}") >= 1.0);
}

#[test]
fn a_collector_that_is_down_loses_nothing_once_it_returns() {
    require_root!();
    let addr = free_addr(); // nothing listens here yet
    let cg = TestCgroup::new("ce-otlp-down");
    let daemon = Daemon::start(
        DaemonOptions::for_cgroup(&cg)
            .arg("--output")
            .arg("otlp")
            .arg("--otlp-endpoint")
            .arg(format!("http://{addr}")),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pids: Vec<i64> = (0..5)
        .map(|_| {
            i64::from(
                cg.python(&connect_script(port))
                    .lines()
                    .next()
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let receiver = Receiver::serve(addr);
    receiver.wait_for("all five connects after the collector came back", |r| {
        pids.iter()
            .all(|p| r.iter().any(|(lr, _)| egress_pid(lr) == Some(*p)))
    });
    daemon.wait_stderr("collector_unavailable", |l| {
        l.contains("collector_unavailable")
    });
    // The outage itself reaches the collector once it is back, as the
    // daemon's own log (clawker.source=cp, WARN); the cp sink's own
    // warnings about the same outage do not (no feedback loop).
    let recs = receiver.wait_for("event=collector_unavailable as a cp record", |r| {
        r.iter().any(|(lr, _)| {
            attr(&lr.attributes, "clawker.source")
                == Some(&any_value::Value::StringValue("cp".into()))
                && attr(&lr.attributes, "event")
                    == Some(&any_value::Value::StringValue(
                        "collector_unavailable".into(),
                    ))
        })
    });
    let cp: Vec<&LogRecord> = recs
        .iter()
        .map(|(lr, _)| lr)
        .filter(|lr| s(&lr.attributes, "clawker.source") == "cp")
        .collect();
    let outage = cp
        .iter()
        .find(|lr| s(&lr.attributes, "event") == "collector_unavailable")
        .unwrap();
    assert_eq!(outage.severity_text, "WARN");
    assert_eq!(s(&outage.attributes, "sink"), "otlp");
    assert!(
        cp.iter().all(|lr| attr(&lr.attributes, "sink")
            != Some(&any_value::Value::StringValue("cp_logs".into()))),
        "the cp sink shipped its own warnings"
    );
    assert!(cp.iter().any(|lr| s(&lr.attributes, "event") == "attached"));
    assert_eq!(
        daemon.metric("clawker_egress_events_dropped_total{reason=\"sink_failure\"}"),
        0.0
    );
}
