//! Starting, stopping and talking to the stack pieces.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

// ---------------------------------------------------------------- plumbing

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Written straight to fd 2: libtest's capture does not swallow it.
pub(crate) fn loud(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

pub(crate) fn port(var: &str, default: u16) -> u16 {
    let offset: u16 = std::env::var("CLAWKER_STACK_PORT_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let base = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    base + offset
}

/// One phase of a long scenario that shares one stack: its failure is
/// reported as `phase \`<name>\` failed: <the assertion's message>` (the
/// assertion's own location is printed above it by the panic hook).
pub(crate) fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    loud(&format!("phase {name}"));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("phase `{name}` failed: {msg}");
        }
    }
}

pub(crate) fn on_path(cmd: &str) -> bool {
    let extra = ["/usr/local/go/bin", "/usr/sbin", "/sbin"];
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(extra)
        .any(|d| Path::new(d).join(cmd).is_file())
}

/// Skip loudly, or fail under CI.  `needs_root`: the test starts servers.
pub(crate) fn preconditions(test: &str, needs_root: bool, commands: &[&str]) -> bool {
    let mut missing: Vec<String> = commands
        .iter()
        .filter(|c| !on_path(c))
        .map(|c| format!("`{c}`"))
        .collect();
    if needs_root && !crate::support::is_root() {
        missing.insert(0, "root".into());
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("needs {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why} (CI never skips the stack tests)");
    }
    loud(&format!(
        "SKIPPED {test}: {why} (`sudo -E cargo test --test stack_e2e` with them installed)"
    ));
    false
}

pub(crate) fn script(name: &str) -> Command {
    let mut c = Command::new(repo().join("scripts").join(name));
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("{path}:/usr/local/go/bin"));
    c.current_dir(repo());
    c
}

pub(crate) fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// (status, body as JSON or Null).
pub(crate) fn http(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let a = agent();
    let res = match (method, body) {
        ("GET", _) => a.get(url).call(),
        ("DELETE", _) => a.delete(url).call(),
        ("POST", Some(b)) => a
            .post(url)
            .header("Content-Type", "application/json")
            .send(b.to_string()),
        ("POST", None) => a.post(url).send_empty(),
        ("PUT", Some(b)) => a
            .put(url)
            .header("Content-Type", "application/json")
            .send(b.to_string()),
        ("PUT", None) => a.put(url).send_empty(),
        _ => unreachable!("{method}"),
    };
    match res {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({ "transport_error": e.to_string() })),
    }
}

pub(crate) fn get_json(url: &str) -> Value {
    let (s, v) = http("GET", url, None);
    assert_eq!(s, 200, "GET {url}: {v}");
    v
}

pub(crate) use crate::support::wait_until;

pub(crate) fn unique() -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{}", std::process::id(), ns % 1_000_000_000_000)
}

pub(crate) fn now_ns() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string()
}

/// Everything a test started, stopped in reverse order on drop (also when the
/// test panics; then the work directory is kept for its logs).
pub(crate) struct Stack {
    pub(crate) dir: Option<tempfile::TempDir>,
    pub(crate) children: Vec<(String, Child)>,
    pub(crate) stops: Vec<(String, Command)>,
}

impl Stack {
    /// Stale servers reaped first (`reap_stale_servers`): for `stack-*`
    /// names, which that reaper owns.
    pub(crate) fn new(name: &str) -> Stack {
        reap_stale_servers();
        Self::unreaped(name)
    }

    /// A stack in `clawker-<name>-<pid>-*` that reaps no one. With a name
    /// outside `stack-*` no other test process takes its servers for stale
    /// (delivery, fleet, alerts, dashboards, report).
    pub(crate) fn unreaped(name: &str) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix(&format!("clawker-{name}-{}-", std::process::id()))
            .tempdir()
            .expect("tempdir");
        Stack {
            dir: Some(dir),
            children: vec![],
            stops: vec![],
        }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.as_ref().unwrap().path().join(rel)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, cmd) in self.stops.iter_mut().rev() {
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        if std::thread::panicking() {
            let kept = self.dir.take().unwrap().keep();
            loud(&format!(
                "stack test failed: logs kept in {}",
                kept.display()
            ));
        }
    }
}

/// Servers left behind by an earlier test process that was killed (its work
/// directory and pid files survive): stop them so their ports are free.
/// Directories of the current process (parallel tests) are left alone.
pub(crate) fn reap_stale_servers() {
    let me = format!("-{}-", std::process::id());
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("clawker-stack-") || name.contains(&me) {
            continue;
        }
        // "clawker-<name>-<pid>-<random>": only a DEAD test process's
        // servers are stale; a live one (another test binary running now,
        // e.g. another engineer's) keeps its servers.
        let owner = name
            .rsplit_once('-')
            .and_then(|(head, _)| head.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        for (what, pidfile, marker) in [
            (
                "opensearch",
                "opensearch/opensearch.pid",
                "ClawkerOpenSearch",
            ),
            ("prometheus", "prometheus/prometheus.pid", "prometheus"),
            ("collector", "collector-a.pid", "otelcol-clawker"),
            ("collector", "collector-b.pid", "otelcol-clawker"),
        ] {
            let path = e.path().join(pidfile);
            let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(marker) {
                loud(&format!(
                    "stack: stopping stale {what} (pid {pid}) from {}",
                    e.path().display()
                ));
                let _ = Command::new("kill").arg(pid.to_string()).status();
                for _ in 0..60 {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
}

/// The sum of a collector self-metric over its series.
pub(crate) fn collector_metric(telemetry: u16, name: &str) -> f64 {
    let text = crate::support::http_get(&format!("http://127.0.0.1:{telemetry}/metrics"))
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Make every write to the record data streams (clawker-egress,
/// clawker-exec) visible to the next search.
pub(crate) fn refresh_records(os: &str) {
    let _ = http(
        "POST",
        &format!("{os}/clawker-egress,clawker-exec/_refresh?ignore_unavailable=true"),
        None,
    );
}

/// The delivery proof (tests/delivery.rs, tests/fleet.rs): the record_ids
/// the daemons emitted against those stored, as a set comparison.
pub(crate) struct ExactlyOnce {
    /// Emitted, not stored.
    pub(crate) missing: Vec<String>,
    /// Stored, never emitted.
    pub(crate) extra: Vec<String>,
    /// Stored more than once: (record_id, documents).
    pub(crate) duplicated: Vec<(String, usize)>,
}

impl ExactlyOnce {
    /// `stored`: (record_id, documents carrying it).
    pub(crate) fn compare<'a>(
        emitted: impl IntoIterator<Item = &'a str>,
        stored: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> ExactlyOnce {
        let emitted: std::collections::BTreeSet<&str> = emitted.into_iter().collect();
        let stored: BTreeMap<&str, usize> = stored.into_iter().collect();
        ExactlyOnce {
            missing: emitted
                .iter()
                .filter(|id| !stored.contains_key(*id))
                .map(|id| id.to_string())
                .collect(),
            extra: stored
                .keys()
                .filter(|id| !emitted.contains(*id))
                .map(|id| id.to_string())
                .collect(),
            duplicated: stored
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(id, n)| (id.to_string(), *n))
                .collect(),
        }
    }

    /// For the figures line.
    pub(crate) fn summary(&self) -> String {
        format!(
            "missing {}, extra {}, duplicated {}",
            self.missing.len(),
            self.extra.len(),
            self.duplicated.len()
        )
    }

    /// Every emitted record stored once, nothing else.
    pub(crate) fn assert(&self) {
        assert!(
            self.missing.is_empty(),
            "{} records lost, e.g. {:?}",
            self.missing.len(),
            &self.missing[..self.missing.len().min(5)]
        );
        assert!(
            self.extra.is_empty(),
            "records nobody emitted: {:?}",
            self.extra
        );
        assert!(
            self.duplicated.is_empty(),
            "stored more than once: {:?}",
            self.duplicated
        );
    }
}

/// Nobody counted a loss: not the daemons (sink_failure, spool_full), not
/// the collector (send_failed).
pub(crate) fn assert_no_loss_counted(daemons: &[&crate::support::Daemon], telemetry: u16) {
    for d in daemons {
        for reason in ["sink_failure", "spool_full"] {
            assert_eq!(
                d.metric(&format!(
                    "clawker_egress_events_dropped_total{{reason=\"{reason}\"}}"
                )),
                0.0,
                "{reason}"
            );
        }
    }
    assert_eq!(
        collector_metric(telemetry, "otelcol_exporter_send_failed_log_records"),
        0.0
    );
}

pub(crate) struct CollectorPorts {
    /// The daemon door (TLS + mTLS + bearer token), gRPC and HTTP.
    pub(crate) grpc: u16,
    pub(crate) daemon_http: u16,
    /// The agent door (OTLP/HTTP, unauthenticated, Claude Code only).
    pub(crate) http: u16,
    pub(crate) telemetry: u16,
    pub(crate) exporter: u16,
    pub(crate) health: u16,
}

/// The stack's credentials (CA, collector and daemon certificates, the
/// daemon door's token), made once per stack by scripts/stack-credentials --
/// the script the compose init service runs.
pub(crate) fn stack_pki(stack: &Stack) -> PathBuf {
    let dir = stack.path("pki");
    if !dir.join("daemon.token").exists() {
        let mut c = script("stack-credentials");
        c.arg(&dir).args(["--names", "localhost,127.0.0.1"]);
        run_ok(c, "scripts/stack-credentials");
    }
    dir
}

/// How a trusted sender reaches the daemon door.
#[derive(Clone)]
pub(crate) struct DaemonDoor {
    pub(crate) grpc: u16,
    pub(crate) http: u16,
    pub(crate) pki: PathBuf,
}

impl DaemonDoor {
    pub(crate) fn new(stack: &Stack, ports: &CollectorPorts) -> DaemonDoor {
        DaemonDoor {
            grpc: ports.grpc,
            http: ports.daemon_http,
            pki: stack_pki(stack),
        }
    }

    /// An HTTP client that trusts the stack's CA and presents the daemon's
    /// client certificate.
    pub(crate) fn agent(&self, with_client_cert: bool) -> ureq::Agent {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        let ca = std::fs::read(self.pki.join("ca.pem")).unwrap();
        let cert = std::fs::read(self.pki.join("daemon.pem")).unwrap();
        let key = std::fs::read(self.pki.join("daemon.key")).unwrap();
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(std::sync::Arc::new(vec![
                Certificate::from_pem(&ca).unwrap(),
            ])))
            .client_cert(with_client_cert.then(|| {
                ClientCert::new_with_certs(
                    &[Certificate::from_pem(&cert).unwrap()],
                    PrivateKey::from_pem(&key).unwrap(),
                )
            }))
            .build();
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .tls_config(tls)
            .build()
            .into()
    }

    /// A daemon's flags to export through this door: TLS with the stack's
    /// CA, the daemon's client certificate and its bearer token file.
    pub(crate) fn daemon_flags(
        &self,
        opts: crate::support::DaemonOptions,
    ) -> crate::support::DaemonOptions {
        let f = |name: &str| self.pki.join(name).display().to_string();
        opts.arg("--otlp-endpoint")
            .arg(format!("https://localhost:{}", self.grpc))
            .arg("--otlp-ca-file")
            .arg(f("ca.pem"))
            .arg("--otlp-client-cert-file")
            .arg(f("daemon.pem"))
            .arg("--otlp-client-key-file")
            .arg(f("daemon.key"))
            .arg("--otlp-bearer-token-file")
            .arg(f("daemon.token"))
    }

    pub(crate) fn token(&self) -> String {
        std::fs::read_to_string(self.pki.join("daemon.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// POST OTLP/HTTP JSON to the daemon door: (status, body), status 0 on
    /// a transport (TLS) error. `token`: the authorization value, if any.
    pub(crate) fn post(&self, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
        self.post_as(true, path, body, token)
    }

    pub(crate) fn post_without_client_cert(
        &self,
        path: &str,
        body: &Value,
        token: &str,
    ) -> (u16, Value) {
        self.post_as(false, path, body, Some(token))
    }

    fn post_as(
        &self,
        with_client_cert: bool,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("https://localhost:{}{path}", self.http);
        let mut req = self
            .agent(with_client_cert)
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        match req.send(body.to_string()) {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({ "transport_error": e.to_string() })),
        }
    }
}

/// The shipped config (plus optional overlays), only addresses and
/// credential file paths in the env.
pub(crate) fn start_collector(
    stack: &mut Stack,
    name: &str,
    ports: &CollectorPorts,
    opensearch: &str,
    overlays: &[&str],
    extra_env: &[(&str, String)],
) -> Duration {
    let t0 = Instant::now();
    let bin = run_ok(script("stack-collector"), "scripts/stack-collector");
    let build = t0.elapsed();
    let log = File::create(stack.path(&format!("{name}.log"))).unwrap();
    let pki = stack_pki(stack);
    let mut cmd = Command::new(&bin);
    cmd.arg("--config")
        .arg(repo().join("otel-collector/config.yaml"));
    for o in overlays {
        cmd.arg("--config")
            .arg(repo().join("otel-collector").join(o));
    }
    cmd.env("OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{}", ports.grpc))
        .env("OTLP_HTTP_ENDPOINT", format!("127.0.0.1:{}", ports.http))
        .env(
            "OTLP_DAEMON_HTTP_ENDPOINT",
            format!("127.0.0.1:{}", ports.daemon_http),
        )
        .env("DAEMON_DOOR_CERT_FILE", pki.join("collector.pem"))
        .env("DAEMON_DOOR_KEY_FILE", pki.join("collector.key"))
        .env("DAEMON_DOOR_CLIENT_CA_FILE", pki.join("ca.pem"))
        .env("DAEMON_DOOR_TOKEN_FILE", pki.join("daemon.token"))
        .env("OPENSEARCH_ENDPOINT", opensearch)
        .env("OPENSEARCH_PASSWORD", "unused-on-a-node-without-security")
        .env(
            "PROMETHEUS_EXPORTER_ENDPOINT",
            format!("127.0.0.1:{}", ports.exporter),
        )
        .env("OTELCOL_TELEMETRY_HOST", "127.0.0.1")
        .env("OTELCOL_TELEMETRY_PORT", ports.telemetry.to_string())
        .env(
            "OTELCOL_HEALTH_ENDPOINT",
            format!("127.0.0.1:{}", ports.health),
        )
        .env("OTELCOL_STORAGE_DIR", stack.path(&format!("{name}-queue")))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start the collector");
    std::fs::write(stack.path(&format!("{name}.pid")), child.id().to_string()).unwrap();
    stack.children.push((name.into(), child));
    let health = format!("http://127.0.0.1:{}/", ports.health);
    let logfile = stack.path(&format!("{name}.log"));
    wait_until(
        "the collector's health_check",
        Duration::from_secs(30),
        || {
            if let Some((_, c)) = stack.children.last_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "collector exited ({st}):\n{}",
                        std::fs::read_to_string(&logfile).unwrap_or_default()
                    );
                }
            }
            (http("GET", &health, None).0 == 200).then_some(())
        },
    );
    build
}

pub(crate) fn start_opensearch(stack: &mut Stack, port: u16) -> String {
    let data = stack.path("opensearch");
    let mut stop = script("stack-opensearch");
    stop.arg("stop").arg("--data").arg(&data);
    stack.stops.push(("opensearch".into(), stop));
    let mut start = script("stack-opensearch");
    start
        .args(["start", "--port", &port.to_string(), "--data"])
        .arg(&data);
    run_ok(start, "scripts/stack-opensearch start")
}

pub(crate) fn bootstrap(url: &str) -> (bool, Vec<String>, String) {
    let mut c = script("stack-bootstrap");
    c.args(["--opensearch", url])
        .env_remove("OPENSEARCH_PASSWORD");
    let out: Output = c.output().expect("scripts/stack-bootstrap");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

pub(crate) fn kv(key: &str, v: Value) -> Value {
    let value = match v {
        Value::String(s) => json!({ "stringValue": s }),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n }),
        Value::Bool(b) => json!({ "boolValue": b }),
        other => panic!("unsupported attribute value {other}"),
    };
    json!({ "key": key, "value": value })
}

pub(crate) fn attrs(pairs: &[(&str, Value)]) -> Value {
    Value::Array(pairs.iter().map(|(k, v)| kv(k, v.clone())).collect())
}

pub(crate) fn log_record(body: &str, pairs: &[(&str, Value)]) -> Value {
    json!({ "timeUnixNano": now_ns(), "severityNumber": 9, "severityText": "INFO",
            "body": { "stringValue": body }, "attributes": attrs(pairs) })
}

pub(crate) fn resource_logs(resource: &[(&str, Value)], scope: &str, records: Vec<Value>) -> Value {
    json!({ "resource": { "attributes": attrs(resource) },
            "scopeLogs": [{ "scope": { "name": scope }, "logRecords": records }] })
}

pub(crate) fn search(os: &str, index: &str, query: Value) -> Vec<Value> {
    let (s, v) = http(
        "POST",
        &format!("{os}/{index}/_search?size=100&expand_wildcards=all&ignore_unavailable=true"),
        Some(&json!({ "query": query })),
    );
    assert_eq!(s, 200, "search {index}: {v}");
    v["hits"]["hits"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn term(field: &str, value: &str) -> Value {
    json!({ "term": { field: value } })
}

pub(crate) fn field_types(os: &str, index: &str) -> BTreeMap<String, String> {
    let v = get_json(&format!("{os}/{index}/_mapping/field/*"));
    let mut out = BTreeMap::new();
    for (_, idx) in v.as_object().unwrap() {
        for (field, m) in idx["mappings"].as_object().unwrap() {
            if let Some(t) = m["mapping"]
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(|x| x["type"].as_str())
            {
                out.insert(field.clone(), t.to_string());
            }
        }
    }
    out
}

pub(crate) fn prom_query(prom: &str, q: &str) -> Vec<Value> {
    let url = format!("{prom}/api/v1/query?query={}", urlencode(q));
    let v = get_json(&url);
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) const SOURCES: [&str; 8] = [
    "claude", "cp", "dns", "egress", "envoy", "exec", "overseer", "unrouted",
];
