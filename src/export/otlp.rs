//! OTLP/gRPC logs: one LogRecord per record, built with opentelemetry-proto
//! and sent with tonic, behind our own bounded queue so that every loss is
//! counted (the SDK's batch processor drops silently when full).
//!
//! Retries follow the OTLP spec: UNAVAILABLE and friends are retried with
//! backoff, forever while the queue has room (a restarting collector loses
//! nothing); a request the receiver rejects is not retried; a
//! `partial_success` counts its rejected records and is not retried either.
//!
//! The queue holds each record already ENCODED (a protobuf `LogRecord`,
//! ~0.5 KB) rather than the `Record` (a vector of fields and strings, several
//! times that): the memory a full queue costs is what bounds the daemon's
//! RSS. What the memory queue cannot hold goes to the disk spool
//! ([`super::spool`]) when one is configured: in order (memory first, then
//! the spool), replayed when the collector is back, kept across restarts
//! (the memory queue is written in front of the spool at shutdown). A
//! record the spool cannot hold is counted (`spool_full`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::bytes::Bytes;
use prost::Message;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::Code;

use super::otlp_wire::{RecordEncoder, RequestFrame};
use super::spool::{Position, Spool};
use super::transport::{safe_message, OtlpClient, OtlpTransport, TransportError};
use super::{Batch, Sink};
use crate::metrics::Metrics;

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

/// An export request stays under this size (the collector's default gRPC
/// limit is 4 MiB).
const MAX_REQUEST_BYTES: usize = 3 << 20;

/// One encoded OTLP `LogRecord`.
type Encoded = Vec<u8>;

struct Shared {
    /// Records waiting, encoded, oldest first; all older than the spool's.
    queue: Mutex<VecDeque<Encoded>>,
    /// The batch being exported when it came from `queue` (put back in
    /// front of the queue, or spooled, if the export does not complete).
    inflight: Mutex<Vec<Encoded>>,
    spool: Mutex<Option<Spool>>,
    wake: Notify,
    closing: std::sync::atomic::AtomicBool,
}

pub struct OtlpSink {
    shared: Arc<Shared>,
    opts: OtlpOptions,
    metrics: Arc<Metrics>,
    exporter: Option<JoinHandle<()>>,
    encoder: RecordEncoder,
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
            inflight: Mutex::new(Vec::new()),
            spool: Mutex::new(None),
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
            encoder: RecordEncoder::default(),
        })
    }
}

impl OtlpSink {
    /// Spill to (and first replay) this disk spool. Records already in it
    /// (a previous run's) go out before anything new.
    pub fn with_spool(self, spool: Spool) -> Self {
        if let Ok(mut s) = self.shared.spool.lock() {
            self.metrics.spool_bytes(self.opts.name, spool.bytes());
            if !spool.is_empty() {
                tracing::info!(event = "spool_replay", sink = self.opts.name, dir = %spool.dir().display(), bytes = spool.bytes(), "records spooled by an earlier run will be sent first");
            }
            *s = Some(spool);
        }
        self.shared.wake.notify_one();
        self
    }

    /// Records the memory queue cannot take: to the spool, else lost.
    fn spill(&self, records: Vec<Encoded>) {
        let n = records.len() as u64;
        let Ok(mut guard) = self.shared.spool.lock() else {
            self.metrics.sink_failure(self.opts.name, "queue_full", n);
            return;
        };
        let Some(spool) = guard.as_mut() else {
            self.metrics.sink_failure(self.opts.name, "queue_full", n);
            return;
        };
        match spool.append(&records) {
            Ok(k) => {
                self.metrics.spool_bytes(self.opts.name, spool.bytes());
                let lost = n - k as u64;
                if lost > 0 {
                    self.metrics.spool_full(self.opts.name, lost);
                    tracing::warn!(event = "spool_full", sink = self.opts.name, records = lost, dir = %spool.dir().display(), "disk spool full; records lost");
                }
            }
            Err(e) => {
                self.metrics.sink_failure(self.opts.name, "spool_write", n);
                tracing::warn!(event = "sink_failure", sink = self.opts.name, error = %e, "disk spool write failed; records lost");
            }
        }
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        self.opts.name
    }

    async fn send(&mut self, batch: Batch) {
        let mut overflow = Vec::new();
        if let Ok(mut q) = self.shared.queue.lock() {
            // While the spool holds anything, new records queue behind it.
            let spooling = self
                .shared
                .spool
                .lock()
                .map(|s| s.as_ref().is_some_and(|s| !s.is_empty()))
                .unwrap_or(false);
            let observed = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            for r in batch.iter() {
                let enc = self.encoder.log_record(r, observed).to_vec();
                if !spooling && q.len() < self.opts.queue_records {
                    q.push_back(enc);
                } else {
                    overflow.push(enc);
                }
            }
        }
        if !overflow.is_empty() {
            self.spill(overflow);
        }
        self.shared.wake.notify_one();
    }

    async fn flush(&mut self) {
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.wake.notify_one();
        if let Some(task) = self.exporter.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(self.opts.shutdown_grace, task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        // What was not delivered: the batch in flight, then the queue.
        let mut left: Vec<Encoded> = self
            .shared
            .inflight
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        if let Ok(mut q) = self.shared.queue.lock() {
            left.extend(q.drain(..));
        }
        let mut lost = left.len() as u64;
        if let Ok(mut guard) = self.shared.spool.lock() {
            if let Some(spool) = guard.as_mut() {
                match spool.prepend(&left) {
                    Ok(k) => {
                        lost -= k as u64;
                        if k > 0 {
                            tracing::info!(
                                event = "spooled_at_shutdown",
                                sink = self.opts.name,
                                records = k,
                                "undelivered records kept in the disk spool for the next run"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(event = "sink_failure", sink = self.opts.name, error = %e, "disk spool write failed at shutdown");
                    }
                }
                if let Err(e) = spool.sync() {
                    tracing::warn!(event = "sink_failure", sink = self.opts.name, error = %e, "disk spool sync failed at shutdown");
                }
                self.metrics.spool_bytes(self.opts.name, spool.bytes());
            }
        }
        if lost > 0 {
            self.metrics.sink_failure(self.opts.name, "shutdown", lost);
            tracing::warn!(
                event = "sink_failure",
                sink = self.opts.name,
                records = lost,
                "records still queued at shutdown were lost"
            );
        }
    }
}

/// An export request ready to send.
struct Next {
    /// Records it carries.
    records: u64,
    /// The encoded `ExportLogsServiceRequest`.
    request: Bytes,
    /// Where it came from in the spool (committed once delivered); `None`:
    /// from the memory queue (held in `inflight` until delivered).
    spooled: Option<Position>,
}

/// The next request: from the memory queue (older), else from the spool.
fn next_request(
    shared: &Shared,
    opts: &OtlpOptions,
    metrics: &Metrics,
    frame: &mut RequestFrame,
) -> Option<Next> {
    if let Ok(mut q) = shared.queue.lock() {
        if !q.is_empty() {
            // At most batch_records, and within the request size limit
            // (at least one record, whatever its size).
            let mut n = 0;
            let mut bytes = 0;
            for r in q.iter().take(opts.batch_records.max(1)) {
                bytes += r.len() + 8;
                if n > 0 && bytes > MAX_REQUEST_BYTES {
                    break;
                }
                n += 1;
            }
            let mut f = shared.inflight.lock().unwrap_or_else(|p| p.into_inner());
            f.clear();
            f.extend(q.drain(..n));
            drop(q);
            return Some(Next {
                records: n as u64,
                request: frame.request(&f),
                spooled: None,
            });
        }
    }
    let mut guard = shared.spool.lock().ok()?;
    let spool = guard.as_mut()?;
    if spool.is_empty() {
        return None;
    }
    match spool.peek(opts.batch_records) {
        Ok((batch, pos, corrupt)) => {
            if corrupt {
                metrics.sink_failure(opts.name, "spool_corrupt", 1);
                tracing::warn!(event = "sink_failure", sink = opts.name, dir = %spool.dir().display(), "corrupt frame in the disk spool; the rest of that segment is skipped");
            }
            if batch.is_empty() {
                // Only a corrupt tail was left: step over it.
                let _ = spool.commit(pos);
                metrics.spool_bytes(opts.name, spool.bytes());
                return None;
            }
            // The spool's records come from disk: checked before they go.
            let mut valid = Vec::with_capacity(batch.len());
            for b in &batch {
                match LogRecord::decode(b.as_slice()) {
                    Ok(_) => valid.push(b),
                    Err(_) => metrics.sink_failure(opts.name, "spool_corrupt", 1),
                }
            }
            Some(Next {
                records: valid.len() as u64,
                request: frame.request(&valid),
                spooled: Some(pos),
            })
        }
        Err(e) => {
            tracing::warn!(event = "sink_failure", sink = opts.name, error = %e, "disk spool read failed");
            None
        }
    }
}

fn delivered(shared: &Shared, metrics: &Metrics, name: &'static str, spooled: Option<Position>) {
    match spooled {
        None => {
            if let Ok(mut f) = shared.inflight.lock() {
                f.clear();
            }
        }
        Some(pos) => {
            if let Ok(mut guard) = shared.spool.lock() {
                if let Some(spool) = guard.as_mut() {
                    if let Err(e) = spool.commit(pos) {
                        tracing::warn!(event = "sink_failure", sink = name, error = %e, "disk spool cursor write failed (records may be sent again)");
                    }
                    metrics.spool_bytes(name, spool.bytes());
                }
            }
        }
    }
}

async fn export_loop(
    mut client: OtlpClient,
    shared: Arc<Shared>,
    opts: OtlpOptions,
    metrics: Arc<Metrics>,
) {
    let mut frame = RequestFrame::new(&resource(), &scope());
    let mut outage = false;
    loop {
        let Some(Next {
            records: n,
            request,
            spooled,
        }) = next_request(&shared, &opts, &metrics, &mut frame)
        else {
            if shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            // Wake on new records, or re-check the closing flag now and then.
            let _ = tokio::time::timeout(Duration::from_millis(200), shared.wake.notified()).await;
            continue;
        };
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
                    metrics.exported(opts.name, n - rejected.min(n));
                    if rejected > 0 {
                        metrics.sink_failure(opts.name, "rejected", rejected);
                    }
                    delivered(&shared, &metrics, opts.name, spooled);
                    break;
                }
                Err(status) if retryable(status.code()) => {
                    if !outage {
                        tracing::warn!(event = "collector_unavailable", sink = opts.name, endpoint = %opts.endpoint, code = ?status.code(), error = %safe_message(&status), "OTLP export failed; retrying with backoff");
                        outage = true;
                    }
                    if shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
                        // Left for flush(): the in-flight batch goes back in
                        // front (spool) or is still in the spool.
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(status) => {
                    tracing::warn!(event = "sink_failure", sink = opts.name, code = ?status.code(), error = %safe_message(&status), "collector rejected a batch");
                    metrics.sink_failure(opts.name, "rejected", n);
                    delivered(&shared, &metrics, opts.name, spooled);
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

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "clawker-egress".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}
