//! The daemon's own logs as records (`clawker.source`=`cp`): a tracing
//! [`Layer`] turns every info+ event of this crate into a [`Record`] and
//! hands it to a second [`OtlpSink`](super::OtlpSink) instance through a
//! bounded channel, so degraded paths (`event=collector_unavailable`,
//! `event=docker_unavailable`, …) reach the operator's UI.
//!
//! - Never blocks the caller: `try_send`; a full channel is counted
//!   (`sink_failure{sink="cp_logs",cause="queue_full"}`) once the
//!   forwarder runs (the layer starts before the metrics registry exists).
//! - Body = the event's message, severity = its level, attributes = its
//!   fields plus `target`. Keys are flat: a `.` in a field name becomes `_`,
//!   so no key can be both a leaf and the prefix of another (`event` beside
//!   `event.x` would break the OpenSearch mapping).
//! - No feedback loop: events of the cp sink itself (field `sink` =
//!   [`CONTROL_PLANE_SINK`]) and of other crates (tonic, h2, hyper: the export path)
//!   are not turned into records.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

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

/// The tracing side: install with the subscriber.
pub struct ControlPlaneLogLayer {
    tx: mpsc::Sender<Record>,
    dropped: Arc<AtomicU64>,
}

/// The sink side: feed it to [`spawn`] once the runtime and metrics exist.
pub struct ControlPlaneLogReceiver {
    rx: mpsc::Receiver<Record>,
    dropped: Arc<AtomicU64>,
}

pub fn channel(capacity: usize) -> (ControlPlaneLogLayer, ControlPlaneLogReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    (
        ControlPlaneLogLayer {
            tx,
            dropped: dropped.clone(),
        },
        ControlPlaneLogReceiver { rx, dropped },
    )
}

impl<S: Subscriber> Layer<S> for ControlPlaneLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(record) = to_record(event, SystemTime::now()) else {
            return;
        };
        if self.tx.try_send(record).is_err() {
            // Full, or the forwarder is gone (shutdown): a lost record.
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One tracing event as a cp record; `None` for events that are not
/// shipped (below info, another crate's, the cp sink's own).
pub fn to_record(event: &Event<'_>, time: SystemTime) -> Option<Record> {
    let meta = event.metadata();
    // tracing orders levels by verbosity: DEBUG and TRACE are "greater".
    if *meta.level() > Level::INFO {
        return None;
    }
    let target = meta.target();
    if target != OWN_TARGET && !target.starts_with("clawker_egress::") {
        return None;
    }
    let mut v = Fields::default();
    event.record(&mut v);
    if v.from_cp_sink {
        return None;
    }
    let severity = match *meta.level() {
        Level::ERROR => Severity::Error,
        Level::WARN => Severity::Warn,
        _ => Severity::Info,
    };
    let mut r = Record::new(time, Source::ControlPlane)
        .with_severity(severity)
        .with_body(v.message.unwrap_or_default());
    r.set("target", target);
    for (k, value) in v.fields {
        r.set(k, value);
    }
    Some(r)
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    fields: Vec<(&'static str, Value)>,
    from_cp_sink: bool,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            if let Value::Str(s) = value {
                self.message = Some(s);
            }
            return;
        }
        if name == "sink" && matches!(&value, Value::Str(s) if s == CONTROL_PLANE_SINK) {
            self.from_cp_sink = true;
        }
        self.fields.push((flat_key(name), value));
    }
}

impl Visit for Fields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::Int(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields and the message arrive here with Debug = Display.
        self.put(field, format!("{value:?}").into());
    }
}

/// A field name as a flat attribute key: `.` -> `_`, reserved names get a
/// `_field` suffix. Field names are static (callsite metadata), so the
/// few rewritten ones are interned once and live for the process.
fn flat_key(name: &'static str) -> &'static str {
    if !name.contains('.') && !RESERVED.contains(&name) {
        return name;
    }
    static INTERNED: OnceLock<Mutex<HashMap<&'static str, &'static str>>> = OnceLock::new();
    let map = INTERNED.get_or_init(|| Mutex::new(HashMap::new()));
    let Ok(mut map) = map.lock() else {
        return "field";
    };
    map.entry(name).or_insert_with(|| {
        let mut flat = name.replace('.', "_");
        if RESERVED.contains(&flat.as_str()) {
            flat.push_str("_field");
        }
        Box::leak(flat.into_boxed_str())
    })
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
        let subscriber = tracing_subscriber::registry().with(layer);
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
        let subscriber = tracing_subscriber::registry().with(layer);
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
