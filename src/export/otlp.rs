//! OTLP/gRPC logs: one LogRecord per record, built with opentelemetry-proto
//! and sent with tonic, behind our own bounded queue so that every loss is
//! counted (the SDK's batch processor drops silently when full).
//!
//! Retries follow the OTLP spec: UNAVAILABLE and friends are retried with
//! backoff, forever while the queue has room (a restarting collector loses
//! nothing); a request the receiver rejects is not retried; a
//! `partial_success` counts its rejected records and is not retried either.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::Code;

use super::transport::{safe_message, OtlpClient, OtlpTransport, TransportError};
use super::{Batch, Sink};
use crate::metrics::Metrics;
use crate::record::{key, Record, Severity, Value};

/// The default instance's name (metrics `sink` label, log field `sink`).
const SINK: &str = "otlp";

#[derive(Debug, Clone)]
pub struct OtlpOptions {
    /// Names this instance in metrics (`sink` label) and in its own logs.
    pub name: &'static str,
    pub endpoint: String,
    /// TLS, credentials, headers, compression (docs/SECURITY.md
    /// "Credentials and transport"); the default: none of them.
    pub transport: OtlpTransport,
    /// Records held while the collector is slow or away.
    pub queue_records: usize,
    /// Records per export request: well under the collector's 4 MiB limit.
    pub batch_records: usize,
    /// How long a shutdown may spend delivering what is queued.
    pub shutdown_grace: Duration,
}

impl OtlpOptions {
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtlpOptions {
            name: SINK,
            endpoint: endpoint.into(),
            transport: OtlpTransport::default(),
            queue_records: 100_000,
            batch_records: 1_000,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

struct Shared {
    queue: Mutex<VecDeque<Record>>,
    wake: Notify,
    closing: std::sync::atomic::AtomicBool,
}

pub struct OtlpSink {
    shared: Arc<Shared>,
    opts: OtlpOptions,
    metrics: Arc<Metrics>,
    exporter: Option<JoinHandle<()>>,
}

impl OtlpSink {
    /// The connection is lazy: a collector that is down at start-up is a
    /// degraded sink (records queue, then count), not a failed daemon. A
    /// transport that cannot be set up (TLS for https://) is an error here.
    pub fn new(opts: OtlpOptions, metrics: Arc<Metrics>) -> Result<Self, TransportError> {
        let endpoint = opts
            .transport
            .endpoint(&opts.endpoint)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        let client = opts.transport.client(endpoint);
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        let exporter = tokio::spawn(export_loop(
            client,
            shared.clone(),
            opts.clone(),
            metrics.clone(),
        ));
        Ok(OtlpSink {
            shared,
            opts,
            metrics,
            exporter: Some(exporter),
        })
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        self.opts.name
    }

    async fn send(&mut self, batch: Batch) {
        let mut lost = 0u64;
        if let Ok(mut q) = self.shared.queue.lock() {
            for r in batch.iter() {
                if q.len() >= self.opts.queue_records {
                    lost += 1;
                } else {
                    q.push_back(r.clone());
                }
            }
        }
        if lost > 0 {
            self.metrics
                .sink_failure(self.opts.name, "queue_full", lost);
        }
        self.shared.wake.notify_one();
    }

    async fn flush(&mut self) {
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.wake.notify_one();
        if let Some(task) = self.exporter.take() {
            let _ = tokio::time::timeout(self.opts.shutdown_grace, task).await;
        }
        let left = self.shared.queue.lock().map(|q| q.len()).unwrap_or(0);
        if left > 0 {
            self.metrics
                .sink_failure(self.opts.name, "shutdown", left as u64);
            tracing::warn!(
                event = "sink_failure",
                sink = self.opts.name,
                records = left,
                "records still queued at shutdown were lost"
            );
        }
    }
}

fn take_batch(shared: &Shared, max: usize) -> Vec<Record> {
    let Ok(mut q) = shared.queue.lock() else {
        return Vec::new();
    };
    let n = q.len().min(max);
    q.drain(..n).collect()
}

async fn export_loop(
    mut client: OtlpClient,
    shared: Arc<Shared>,
    opts: OtlpOptions,
    metrics: Arc<Metrics>,
) {
    let resource = resource();
    let mut outage = false;
    loop {
        let batch = take_batch(&shared, opts.batch_records);
        if batch.is_empty() {
            if shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            // Wake on new records, or re-check the closing flag now and then.
            let _ = tokio::time::timeout(Duration::from_millis(200), shared.wake.notified()).await;
            continue;
        }
        let request = request(&resource, &batch);
        let mut backoff = Duration::from_millis(100);
        loop {
            match client.export(request.clone()).await {
                Ok(resp) => {
                    if outage {
                        tracing::info!(
                            event = "collector_available",
                            sink = opts.name,
                            "OTLP collector reachable again"
                        );
                        outage = false;
                    }
                    let rejected = resp
                        .into_inner()
                        .partial_success
                        .map(|p| p.rejected_log_records.max(0) as u64)
                        .unwrap_or(0);
                    metrics.exported(
                        opts.name,
                        batch.len() as u64 - rejected.min(batch.len() as u64),
                    );
                    if rejected > 0 {
                        metrics.sink_failure(opts.name, "rejected", rejected);
                    }
                    break;
                }
                Err(status) if retryable(status.code()) => {
                    if !outage {
                        tracing::warn!(event = "collector_unavailable", sink = opts.name, endpoint = %opts.endpoint, code = ?status.code(), error = %safe_message(&status), "OTLP export failed; retrying with backoff");
                        outage = true;
                    }
                    if shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
                        metrics.sink_failure(opts.name, "shutdown", batch.len() as u64);
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(status) => {
                    tracing::warn!(event = "sink_failure", sink = opts.name, code = ?status.code(), error = %safe_message(&status), "collector rejected a batch");
                    metrics.sink_failure(opts.name, "rejected", batch.len() as u64);
                    break;
                }
            }
        }
    }
}

/// Transient per the OTLP spec (RESOURCE_EXHAUSTED is treated as transient
/// too: the collector's memory_limiter answers with it while it sheds load).
/// A refused credential (UNAUTHENTICATED, PERMISSION_DENIED) is held too,
/// unlike the spec: the records are evidence, and they stay queued (bounded,
/// overflow counted) until the credential is fixed -- the token file is
/// re-read on change, so fixing it delivers them.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unavailable
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::DataLoss
            | Code::ResourceExhausted
            | Code::Unknown
    )
}

fn string_kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn resource() -> Resource {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    Resource {
        attributes: vec![
            string_kv("service.name", "clawker-egress"),
            string_kv("service.version", env!("CARGO_PKG_VERSION")),
            string_kv("host.name", host),
        ],
        ..Default::default()
    }
}

fn request(resource: &Resource, batch: &[Record]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "clawker-egress".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: batch.iter().map(log_record).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One record as an OTLP LogRecord: Timestamp is the event time (never 0).
pub fn log_record(r: &Record) -> LogRecord {
    let observed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let event_time = match r.unix_nanos() {
        0 => observed,
        t => t,
    };
    let mut attributes = Vec::with_capacity(24);
    attributes.push(string_kv(key::SOURCE, r.source.name()));
    attributes.extend(r.fields().map(|(k, v)| KeyValue {
        key: k.to_owned(),
        value: Some(AnyValue {
            value: Some(match v {
                Value::Str(s) => any_value::Value::StringValue(s.clone()),
                Value::Int(n) => any_value::Value::IntValue(*n),
                Value::Bool(b) => any_value::Value::BoolValue(*b),
            }),
        }),
        ..Default::default()
    }));
    LogRecord {
        time_unix_nano: event_time,
        observed_time_unix_nano: observed,
        severity_number: severity_number(r.severity()) as i32,
        severity_text: r.severity().name().into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(r.body())),
        }),
        attributes,
        ..Default::default()
    }
}

fn severity_number(s: Severity) -> SeverityNumber {
    match s {
        Severity::Trace => SeverityNumber::Trace,
        Severity::Debug => SeverityNumber::Debug,
        Severity::Info => SeverityNumber::Info,
        Severity::Warn => SeverityNumber::Warn,
        Severity::Error => SeverityNumber::Error,
    }
}
