//! The daemon's own logs as records (`clawker.source`=`cp`), through the
//! OpenTelemetry SDK's tracing appender: `opentelemetry-appender-tracing`
//! turns every tracing event into an SDK `LogRecord` (body = the message,
//! severity, target, one attribute per field), an `SdkLoggerProvider`
//! hands it to [`ToRecords`], our `LogProcessor`, which makes it a
//! [`Record`] and passes it through a bounded channel to a second
//! [`OtlpSink`](super::OtlpSink) instance (`cp_logs`: own queue, retry,
//! disk spool, `record_id`), so degraded paths (`event=collector_unavailable`,
//! `event=docker_unavailable`, …) reach the operator's UI.
//!
//! Why not the SDK's `BatchLogProcessor` + OTLP log exporter: its queue
//! drops silently when full (its count is private), it does not retry
//! an outage, has no disk spool and no per-record id (docs/ARCHITECTURE.md
//! "The OpenTelemetry SDK"). Every loss here is ours and counted:
//!
//! - Never blocks the caller: `try_send`; a full channel is counted
//!   (`sink_failure{sink="cp_logs",cause="queue_full"}`) once the
//!   forwarder runs (the layer starts before the metrics registry exists).
//! - Keys are flat: a `.` in a field name becomes `_`, so no key can be
//!   both a leaf and the prefix of another (`event` beside `event.x`
//!   would break the OpenSearch mapping).
//! - No feedback loop: events of the cp sink itself (field `sink` =
//!   [`CONTROL_PLANE_SINK`]) and of other crates (tonic, h2, hyper, the
//!   SDK: the export path) are not turned into records (`event_enabled`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, Severity as OtelSeverity};
use opentelemetry::InstrumentationScope;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord, SdkLogger, SdkLoggerProvider};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Sink;
use crate::metrics::Metrics;
use crate::record::{Record, Severity, Source, Value};

/// The cp sink's name: metrics label and the `sink` field of its own logs.
pub const CONTROL_PLANE_SINK: &str = "cp_logs";

/// Records waiting for the cp sink (its own queue sits behind this).
pub const QUEUE_RECORDS: usize = 4096;

/// Only this crate's events become records.
const OWN_TARGET: &str = "clawker_egress";

/// Attribute keys the collector/exporter owns: a field of that name is
/// renamed (`<name>_field`) rather than clash with it.
const RESERVED: &[&str] = &[
    "clawker_source",
    "data_stream",
    crate::record::key::RECORD_ID,
];

/// The tracing side: the SDK logger provider whose one processor is
/// [`ToRecords`]; [`ControlPlaneLogLayer::bridge`] is the tracing layer.
pub struct ControlPlaneLogLayer {
    provider: SdkLoggerProvider,
}

/// The sink side: feed it to [`spawn`] once the runtime and metrics exist.
pub struct ControlPlaneLogReceiver {
    rx: mpsc::Receiver<Record>,
    dropped: Arc<AtomicU64>,
}

pub fn channel(capacity: usize) -> (ControlPlaneLogLayer, ControlPlaneLogReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let provider = SdkLoggerProvider::builder()
        .with_log_processor(ToRecords {
            tx,
            dropped: dropped.clone(),
        })
        .build();
    (
        ControlPlaneLogLayer { provider },
        ControlPlaneLogReceiver { rx, dropped },
    )
}

impl ControlPlaneLogLayer {
    /// The tracing layer (the SDK's appender) to install with the subscriber.
    pub fn bridge(&self) -> OpenTelemetryTracingBridge<SdkLoggerProvider, SdkLogger> {
        OpenTelemetryTracingBridge::new(&self.provider)
    }
}

/// Our `LogProcessor`: an SDK log record -> a [`Record`] -> the bounded
/// channel. The SDK itself queues nothing on this path, so it cannot lose
/// a record we do not count.
#[derive(Debug)]
pub struct ToRecords {
    tx: mpsc::Sender<Record>,
    dropped: Arc<AtomicU64>,
}

impl LogProcessor for ToRecords {
    fn emit(&self, data: &mut SdkLogRecord, _scope: &InstrumentationScope) {
        let Some(record) = to_record(data) else {
            return;
        };
        if self.tx.try_send(record).is_err() {
            // Full, or the forwarder is gone (shutdown): a lost record.
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    /// Info and above, of this crate only: the SDK does not even build a
    /// log record for the rest (tonic, h2, hyper: the export path itself).
    fn event_enabled(&self, level: OtelSeverity, target: &str, _name: Option<&str>) -> bool {
        level >= OtelSeverity::Info
            && (target == OWN_TARGET || target.starts_with("clawker_egress::"))
    }
}

/// One SDK log record as a cp record; `None` for records that are not
/// shipped (below info, another crate's, the cp sink's own).
pub fn to_record(log: &SdkLogRecord) -> Option<Record> {
    let target = log.target().map(|t| t.as_ref()).unwrap_or_default();
    let level = log.severity_number()?;
    // The provider asks `event_enabled` first; a record emitted around it
    // (another appender) is filtered here alike.
    let enabled = level >= OtelSeverity::Info
        && (target == OWN_TARGET || target.starts_with("clawker_egress::"));
    if !enabled {
        return None;
    }
    let mut fields = Vec::new();
    for (k, v) in log.attributes_iter() {
        let value = value_of(v);
        if k.as_str() == "sink" && matches!(&value, Value::Str(s) if s == CONTROL_PLANE_SINK) {
            return None;
        }
        fields.push((flat_key(k.as_str()), value));
    }
    let severity = match level {
        l if l >= OtelSeverity::Error => Severity::Error,
        l if l >= OtelSeverity::Warn => Severity::Warn,
        _ => Severity::Info,
    };
    let body = match log.body() {
        Some(AnyValue::String(s)) => s.as_str().to_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let time = log
        .timestamp()
        .or_else(|| log.observed_timestamp())
        .unwrap_or_else(SystemTime::now);
    let mut r = Record::new(time, Source::ControlPlane)
        .with_severity(severity)
        .with_body(body);
    r.set("target", target);
    for (k, value) in fields {
        r.set(k, value);
    }
    Some(r)
}

/// An SDK attribute value as a record value (the appender makes strings,
/// i64, bools and f64; a u64 past i64 arrives as a string).
fn value_of(v: &AnyValue) -> Value {
    match v {
        AnyValue::Int(i) => Value::Int(*i),
        AnyValue::Boolean(b) => Value::Bool(*b),
        AnyValue::String(s) => s.as_str().into(),
        AnyValue::Double(d) => d.to_string().as_str().into(),
        other => format!("{other:?}").as_str().into(),
    }
}

/// A field name as a flat attribute key: `.` -> `_`, reserved names get a
/// `_field` suffix. Field names come from callsite metadata (a bounded
/// set), so each is interned once and lives for the process.
fn flat_key(name: &str) -> &'static str {
    static INTERNED: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let map = INTERNED.get_or_init(|| Mutex::new(HashMap::new()));
    let Ok(mut map) = map.lock() else {
        return "field";
    };
    if let Some(k) = map.get(name) {
        return k;
    }
    let mut flat = name.replace('.', "_");
    if RESERVED.contains(&flat.as_str()) {
        flat.push_str("_field");
    }
    let interned: &'static str = Box::leak(flat.into_boxed_str());
    map.insert(name.to_owned(), interned);
    interned
}

/// The running forwarder: channel -> sink.
pub struct ControlPlaneLogs {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Forward records from the layer's channel to `sink` until [`ControlPlaneLogs::finish`].
pub fn spawn<S: Sink>(
    rx: ControlPlaneLogReceiver,
    sink: S,
    metrics: Arc<Metrics>,
) -> ControlPlaneLogs {
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(forward(rx, sink, metrics, stop_rx));
    ControlPlaneLogs {
        stop: Some(stop_tx),
        task,
    }
}

impl ControlPlaneLogs {
    /// Deliver what was logged so far (within the sink's shutdown grace).
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

async fn forward<S: Sink>(
    mut rx: ControlPlaneLogReceiver,
    mut sink: S,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) {
    let report = |dropped: &AtomicU64| {
        let n = dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            metrics.sink_failure(CONTROL_PLANE_SINK, "queue_full", n);
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = Vec::with_capacity(256);
    loop {
        tokio::select! {
            n = rx.rx.recv_many(&mut buf, 256) => {
                if n == 0 {
                    break;
                }
                sink.send(Arc::new(std::mem::take(&mut buf))).await;
            }
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        report(&rx.dropped);
    }
    // Shutdown: what is already in the channel still goes out.
    while let Ok(r) = rx.rx.try_recv() {
        buf.push(r);
    }
    if !buf.is_empty() {
        sink.send(Arc::new(buf)).await;
    }
    rx.rx.close();
    report(&rx.dropped);
    sink.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Events logged inside `f`, as the layer would ship them.
    fn capture(f: impl FnOnce()) -> (Vec<Record>, u64) {
        let (layer, mut rx) = channel(16);
        let subscriber = tracing_subscriber::registry().with(layer.bridge());
        tracing::subscriber::with_default(subscriber, f);
        let mut out = Vec::new();
        while let Ok(r) = rx.rx.try_recv() {
            out.push(r);
        }
        (out, rx.dropped.load(Ordering::Relaxed))
    }

    #[test]
    fn an_event_becomes_a_cp_record() {
        let path = std::path::Path::new("/sys/fs/cgroup");
        let (recs, dropped) = capture(|| {
            tracing::info!(
                event = "attached",
                cgroup = %path.display(),
                cgroup_id = 42u64,
                links_created = 3i64,
                reused = false,
                scope = ?crate::config::Scope::Containers,
                "BPF programs attached"
            );
        });
        assert_eq!(dropped, 0);
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(r.source, Source::ControlPlane);
        assert_eq!(r.severity(), Severity::Info);
        assert_eq!(r.body(), "BPF programs attached");
        assert_eq!(r.get_str("event"), Some("attached"));
        assert_eq!(r.get_str("cgroup"), Some("/sys/fs/cgroup"));
        assert_eq!(r.get_int("cgroup_id"), Some(42));
        assert_eq!(r.get_int("links_created"), Some(3));
        assert_eq!(r.get("reused"), Some(&Value::Bool(false)));
        assert_eq!(r.get_str("scope"), Some("Containers"));
        assert_eq!(r.get_str("target"), Some(module_path!()));
        assert!(r.get("message").is_none());
        let age = SystemTime::now().duration_since(r.time).unwrap();
        assert!(age < Duration::from_secs(5), "{age:?}");
    }

    #[test]
    fn severity_follows_the_level_and_debug_is_not_shipped() {
        let (recs, _) = capture(|| {
            tracing::warn!(event = "collector_unavailable", "w");
            tracing::error!(event = "e", "e");
            tracing::debug!(event = "d", "d");
            tracing::trace!(event = "t", "t");
        });
        let sev: Vec<Severity> = recs.iter().map(Record::severity).collect();
        assert_eq!(sev, [Severity::Warn, Severity::Error]);
    }

    #[test]
    fn keys_are_flat_and_never_a_prefix_of_another() {
        let (recs, _) = capture(|| {
            tracing::info!(
                event = "x",
                event.kind = "y",
                data_stream = "z",
                record_id = "forged",
                "m"
            );
        });
        let keys: Vec<&str> = recs[0].fields().map(|(k, _)| k).collect();
        assert!(
            keys.contains(&"event") && keys.contains(&"event_kind"),
            "{keys:?}"
        );
        assert!(keys.contains(&"data_stream_field"), "{keys:?}");
        // A log field never replaces the record's own id (the document _id).
        assert!(keys.contains(&"record_id_field"), "{keys:?}");
        assert_ne!(recs[0].get_str("record_id"), Some("forged"));
        assert_eq!(keys.iter().filter(|k| **k == "record_id").count(), 1);
        for a in &keys {
            assert!(!a.contains('.'), "{a}");
            for b in &keys {
                assert!(!b.starts_with(&format!("{a}.")), "{a} / {b}");
            }
        }
    }

    #[test]
    fn the_cp_sinks_own_logs_and_other_crates_are_not_shipped() {
        let (recs, _) = capture(|| {
            tracing::warn!(
                event = "collector_unavailable",
                sink = CONTROL_PLANE_SINK,
                "own"
            );
            tracing::warn!(target: "h2", "transport noise");
            tracing::warn!(target: "clawker_egressx", "look-alike crate");
            tracing::warn!(event = "collector_unavailable", sink = "otlp", "main sink");
        });
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].get_str("sink"), Some("otlp"));
    }

    #[test]
    fn a_full_channel_is_counted_and_never_blocks() {
        let (recs, dropped) = capture(|| {
            for i in 0..40 {
                tracing::info!(event = "spam", i, "spam");
            }
        });
        assert_eq!(recs.len(), 16);
        assert_eq!(dropped, 24);
    }

    #[test]
    fn the_body_is_one_printable_line() {
        let (recs, _) = capture(|| tracing::info!("two\nlines"));
        assert_eq!(recs[0].body(), "two\u{fffd}lines");
    }

    #[tokio::test]
    async fn the_forwarder_reports_drops_and_delivers_on_finish() {
        #[derive(Clone, Default)]
        struct Collect(Arc<Mutex<Vec<Record>>>, Arc<AtomicU64>);
        impl Sink for Collect {
            fn name(&self) -> &'static str {
                "collect"
            }
            async fn send(&mut self, batch: super::super::Batch) {
                self.0.lock().unwrap().extend(batch.iter().cloned());
            }
            async fn flush(&mut self) {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (layer, rx) = channel(4);
        let subscriber = tracing_subscriber::registry().with(layer.bridge());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..6 {
                tracing::info!(event = "x", "x");
            }
        });
        let metrics = Arc::new(Metrics::new());
        let sink = Collect::default();
        let control_plane = spawn(rx, sink.clone(), metrics.clone());
        control_plane.finish().await;
        assert_eq!(sink.0.lock().unwrap().len(), 4);
        assert_eq!(sink.1.load(Ordering::SeqCst), 1, "flushed once");
        let text = metrics.encode();
        assert!(
            text.lines().any(|l| l.contains("sink=\"cp_logs\"")
                && l.contains("cause=\"queue_full\"")
                && l.ends_with(" 2")),
            "{text}"
        );
    }
}
