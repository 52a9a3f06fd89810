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
//!
//! The buffer is shared fairly between containers ([`super::fair`]): with
//! a spool in spool bytes, without one in records of the memory queue. A
//! container holding more than its fair share of a filling buffer has its
//! new records refused (`spool_full`, or `queue_full` without a spool), attributed to
//! it in-band (a `records_lost` record with `lost_spool_full`, one per
//! container per loss interval) and in `container_records_lost_total`;
//! the daemon's own records are never starved by a flooding container.

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

use super::fair::{Ledger, Pending, Refused, Tenant};
use super::otlp_wire::{RecordEncoder, RequestFrame};
use super::spool::{frame_bytes, Position, Spool};
use super::transport::{safe_message, OtlpClient, OtlpTransport, TransportError};
use super::{Batch, Sink};
use crate::metrics::Metrics;
use crate::record::Record;

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
    /// How often what the buffer refused of each container is reported
    /// in-band (`records_lost`, `lost_spool_full`).
    pub loss_interval: Duration,
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
            loss_interval: Duration::from_secs(10),
        }
    }
}

/// An export request stays under this size (the collector's default gRPC
/// limit is 4 MiB).
const MAX_REQUEST_BYTES: usize = 3 << 20;

/// One encoded OTLP `LogRecord` and who its buffer space is charged to.
struct Queued {
    tenant: Tenant,
    bytes: Vec<u8>,
}

impl AsRef<[u8]> for Queued {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The sink's buffer: the fair-share accounting of what each tenant holds
/// (memory queue + disk spool), what was refused per container, and the
/// disk spool when one is configured.
struct Buffer {
    /// `None`: the memory queue is the whole buffer, and the shares are
    /// counted in records of it; else in spool frame bytes.
    spool: Option<Spool>,
    ledger: Ledger,
    /// Records refused per container, not reported yet.
    pending: Pending,
}

impl Buffer {
    /// What a record of `len` encoded bytes costs in the ledger.
    fn cost(&self, len: usize) -> u64 {
        match self.spool {
            Some(_) => frame_bytes(len),
            None => 1,
        }
    }

    /// A record of the memory queue left the buffer. (With a spool, the
    /// memory queue adds to the capacity: it is bounded on its own, in
    /// records; without one, it is the capacity.)
    fn release_mem(&mut self, q: &Queued) {
        let cost = self.cost(q.bytes.len());
        self.ledger.release(q.tenant, cost, self.spool.is_some());
    }
}

struct Shared {
    /// Records waiting, encoded, oldest first; all older than the spool's.
    queue: Mutex<VecDeque<Queued>>,
    /// The batch being exported when it came from `queue` (retried until
    /// delivered; at shutdown spooled in front of the queue, or lost and
    /// counted).
    inflight: Mutex<Vec<Queued>>,
    buffer: Mutex<Buffer>,
    wake: Notify,
    closing: std::sync::atomic::AtomicBool,
}

pub struct OtlpSink {
    shared: Arc<Shared>,
    opts: OtlpOptions,
    metrics: Arc<Metrics>,
    exporter: Option<JoinHandle<()>>,
    /// Reports what the spool refused, per container, every loss interval.
    reporter: Option<JoinHandle<()>>,
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
            buffer: Mutex::new(Buffer {
                spool: None,
                ledger: Ledger::records(opts.queue_records as u64),
                pending: Pending::default(),
            }),
            wake: Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        let exporter = tokio::spawn(export_loop(
            client,
            shared.clone(),
            opts.clone(),
            metrics.clone(),
        ));
        let reporter = tokio::spawn(loss_reports(shared.clone(), opts.clone(), metrics.clone()));
        Ok(OtlpSink {
            shared,
            opts,
            metrics,
            exporter: Some(exporter),
            reporter: Some(reporter),
            encoder: RecordEncoder::default(),
        })
    }
}

impl OtlpSink {
    /// Spill to (and first replay) this disk spool. Records already in it
    /// (a previous run's) go out before anything new; what each container
    /// holds in it is what the last clean shutdown counted (the spool's
    /// summary) or, failing that, counted again from its records (one read
    /// of the spool), so fairness holds across a restart.
    pub fn with_spool(self, mut spool: Spool) -> Self {
        let t0 = std::time::Instant::now();
        // After a clean shutdown, what it counted; else one read of the spool.
        let kept = spool
            .take_summary()
            .and_then(|text| Ledger::restore(spool.max_bytes(), &text))
            .filter(|l| l.total() == spool.pending_bytes());
        let counted_from = if kept.is_some() { "summary" } else { "spool" };
        let ledger = kept.unwrap_or_else(|| {
            let mut ledger = Ledger::new(spool.max_bytes());
            if let Err(e) = spool.for_each_pending(|r| {
                ledger.add(Tenant::of_encoded(r), frame_bytes(r.len()), false)
            }) {
                // Approximate then: the unread part is charged to nobody;
                // the ledger restarts from zero once the spool is drained.
                tracing::warn!(event = "sink_failure", sink = self.opts.name, error = %e, "disk spool read failed while counting what each container holds");
            }
            ledger
        });
        if let Ok(mut b) = self.shared.buffer.lock() {
            self.metrics.spool_bytes(self.opts.name, spool.bytes());
            if !spool.is_empty() {
                tracing::info!(event = "spool_replay", sink = self.opts.name, dir = %spool.dir().display(), bytes = spool.bytes(), containers = ledger.holders(), counted_from, counted_ms = t0.elapsed().as_millis() as u64, "records spooled by an earlier run will be sent first");
            }
            // Called before any record is queued: nothing to carry over.
            b.spool = Some(spool);
            b.ledger = ledger;
        }
        self.shared.wake.notify_one();
        self
    }
}

/// Every loss interval: report what the spool refused, per container.
async fn loss_reports(shared: Arc<Shared>, opts: OtlpOptions, metrics: Arc<Metrics>) {
    let mut encoder = RecordEncoder::default();
    let mut tick = tokio::time::interval(opts.loss_interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        if shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
            // flush() sends the last reports.
            return;
        }
        report_losses(&shared, &mut encoder, &opts, &metrics);
    }
}

/// Each container the spool refused records of since the last report gets
/// one `records_lost` record (`lost_spool_full`), counted in the
/// per-container metric as the kernel's loss reports are, and queued as
/// the daemon's own record (never refused for a container's flood).
fn report_losses(
    shared: &Shared,
    encoder: &mut RecordEncoder,
    opts: &OtlpOptions,
    metrics: &Metrics,
) {
    let (taken, spooled) = {
        let mut b = shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if b.pending.is_empty() {
            return;
        }
        (b.pending.take(), b.spool.is_some())
    };
    let now = SystemTime::now();
    let reports: Vec<Record> = taken
        .into_iter()
        .map(|(_, lost, identity)| {
            let r = Record::from_sink_loss(now, &identity, lost, opts.loss_interval);
            tracing::warn!(
                event = "container_records_lost",
                sink = opts.name,
                reason = if spooled { "spool_full" } else { "queue_full" },
                lost,
                cgroup_id = r.get_int(crate::record::key::CGROUP_ID).unwrap_or(0),
                container_id = r.get_str(crate::record::key::CONTAINER_ID).unwrap_or(""),
                "the OTLP sink's buffer refused a container's records (collector away; spool full or over the container's fair share)"
            );
            metrics.agents().observe(&r);
            r
        })
        .collect();
    enqueue(shared, encoder, opts, metrics, &reports);
    shared.wake.notify_one();
}

/// Queue records: memory first; while the spool holds anything (or the
/// memory queue is full) to the spool, admitted by the fair-share ledger;
/// what is refused is lost, counted and attributed to its container.
fn enqueue(
    shared: &Shared,
    encoder: &mut RecordEncoder,
    opts: &OtlpOptions,
    metrics: &Metrics,
    records: &[Record],
) {
    let Ok(mut q) = shared.queue.lock() else {
        metrics.sink_failure(opts.name, "queue_full", records.len() as u64);
        return;
    };
    let mut guard = match shared.buffer.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let observed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let st = &mut *guard;
    let Some(spool) = st.spool.as_mut() else {
        // No spool: the memory queue is the whole buffer, shared between
        // containers by the same rule, counted in records.
        let mut refused = Refused::default();
        for r in records {
            let tenant = Tenant::of(r);
            if q.len() < opts.queue_records && st.ledger.admit(tenant, 1).is_ok() {
                st.ledger.add(tenant, 1, false);
                let bytes = encoder.log_record(r, observed).to_vec();
                q.push_back(Queued { tenant, bytes });
                continue;
            }
            refused.note(&mut st.pending, tenant, r);
        }
        if refused.total > 0 {
            metrics.sink_failure(opts.name, "queue_full", refused.total);
        }
        if refused.daemon > 0 {
            tracing::warn!(
                event = "queue_full",
                sink = opts.name,
                records = refused.daemon,
                "memory queue full (no disk spool); the daemon's own records lost"
            );
        }
        return;
    };
    // While the spool holds anything, new records queue behind it.
    let mut spooling = !spool.is_empty();
    let mut spill: Vec<Queued> = Vec::new();
    let mut from: Vec<usize> = Vec::new();
    let mut refused = Refused::default();
    for (i, r) in records.iter().enumerate() {
        let tenant = Tenant::of(r);
        let bytes = encoder.log_record(r, observed).to_vec();
        let cost = frame_bytes(bytes.len());
        if !spooling && q.len() < opts.queue_records {
            st.ledger.add(tenant, cost, true);
            q.push_back(Queued { tenant, bytes });
            continue;
        }
        spooling = true;
        match st.ledger.admit(tenant, cost) {
            Ok(()) => {
                st.ledger.add(tenant, cost, false);
                spill.push(Queued { tenant, bytes });
                from.push(i);
            }
            Err(_) => refused.note(&mut st.pending, tenant, r),
        }
    }
    drop(q);
    if !spill.is_empty() {
        match spool.append(&spill) {
            Ok(k) => {
                // What the spool's own bound refused: lost, each to its
                // container.
                for (q, i) in spill[k..].iter().zip(&from[k..]) {
                    st.ledger
                        .release(q.tenant, frame_bytes(q.bytes.len()), false);
                    refused.note(&mut st.pending, q.tenant, &records[*i]);
                }
            }
            Err(e) => {
                metrics.sink_failure(opts.name, "spool_write", spill.len() as u64);
                tracing::warn!(event = "sink_failure", sink = opts.name, error = %e, "disk spool write failed; records lost");
                for q in &spill {
                    st.ledger
                        .release(q.tenant, frame_bytes(q.bytes.len()), false);
                }
            }
        }
        metrics.spool_bytes(opts.name, spool.bytes());
    }
    if refused.total > 0 {
        metrics.spool_full(opts.name, refused.total);
    }
    if refused.daemon > 0 {
        // The daemon's own records (few: loss reports, audit): the spool
        // is really full. Containers' losses are logged per container with
        // their loss report.
        tracing::warn!(event = "spool_full", sink = opts.name, records = refused.daemon, dir = %spool.dir().display(), "disk spool full; the daemon's own records lost");
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        self.opts.name
    }

    async fn send(&mut self, batch: Batch) {
        enqueue(
            &self.shared,
            &mut self.encoder,
            &self.opts,
            &self.metrics,
            &batch,
        );
        self.shared.wake.notify_one();
    }

    async fn flush(&mut self) {
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // The last loss reports go into the buffer first, so the exporter
        // delivers them with everything else (without a spool, a report
        // queued after it stopped would be lost).
        if let Some(task) = self.reporter.take() {
            task.abort();
            report_losses(&self.shared, &mut self.encoder, &self.opts, &self.metrics);
        }
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
        let mut left: Vec<Queued> = self
            .shared
            .inflight
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        if let Ok(mut q) = self.shared.queue.lock() {
            left.extend(q.drain(..));
        }
        let mut lost = left.len() as u64;
        if let Ok(mut guard) = self.shared.buffer.lock() {
            let Buffer { spool, ledger, .. } = &mut *guard;
            if let Some(spool) = spool.as_mut() {
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
                match spool.sync() {
                    // Everything the ledger holds is in the spool now: the
                    // next run takes its counts instead of reading the
                    // spool (only when they add up to what is there).
                    Ok(()) if lost == 0 && ledger.total() == spool.pending_bytes() => {
                        if let Err(e) = spool.save_summary(&ledger.snapshot()) {
                            tracing::warn!(event = "sink_failure", sink = self.opts.name, error = %e, "disk spool summary not written: the next start reads the spool");
                        }
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(event = "sink_failure", sink = self.opts.name, error = %e, "disk spool sync failed at shutdown");
                    }
                }
                self.metrics.spool_bytes(self.opts.name, spool.bytes());
            }
            // The sink is done: the spool (and its lock) is released now,
            // not when the last task holding the shared state goes.
            guard.spool.take();
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
    /// The spooled records' tenants and frame sizes (released from the
    /// ledger once delivered).
    charged: Vec<(Tenant, u64)>,
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
                bytes += r.bytes.len() + 8;
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
                charged: Vec::new(),
            });
        }
        // Nothing queued and nothing in flight (a batch is delivered
        // before the next is asked for): without a spool the buffer is
        // empty, and its accounting starts from zero (heals any drift).
        let f = shared.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_empty() {
            let mut b = shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
            if b.spool.is_none() {
                b.ledger.clear();
            }
        }
    }
    let mut guard = shared.buffer.lock().ok()?;
    let Buffer { spool, ledger, .. } = &mut *guard;
    let spool = spool.as_mut()?;
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
                if spool.is_empty() && ledger.mem() == 0 {
                    ledger.clear();
                }
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
            let charged = batch
                .iter()
                .map(|b| (Tenant::of_encoded(b), frame_bytes(b.len())))
                .collect();
            Some(Next {
                records: valid.len() as u64,
                request: frame.request(&valid),
                spooled: Some(pos),
                charged,
            })
        }
        Err(e) => {
            tracing::warn!(event = "sink_failure", sink = opts.name, error = %e, "disk spool read failed");
            None
        }
    }
}

/// The request went out (or was refused for good): its records leave the
/// buffer, and their tenants' share of it.
fn delivered(
    shared: &Shared,
    metrics: &Metrics,
    name: &'static str,
    spooled: Option<Position>,
    charged: &[(Tenant, u64)],
) {
    match spooled {
        None => {
            let mut f = shared.inflight.lock().unwrap_or_else(|p| p.into_inner());
            let mut b = shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
            for q in f.iter() {
                b.release_mem(q);
            }
            f.clear();
        }
        Some(pos) => {
            if let Ok(mut guard) = shared.buffer.lock() {
                let Buffer { spool, ledger, .. } = &mut *guard;
                if let Some(spool) = spool.as_mut() {
                    if let Err(e) = spool.commit(pos) {
                        tracing::warn!(event = "sink_failure", sink = name, error = %e, "disk spool cursor write failed (records may be sent again)");
                    }
                    for (t, bytes) in charged {
                        ledger.release(*t, *bytes, false);
                    }
                    if spool.is_empty() && ledger.mem() == 0 {
                        // Nothing held: start the accounting from zero.
                        ledger.clear();
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
            charged,
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
                    delivered(&shared, &metrics, opts.name, spooled, &charged);
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
                    delivered(&shared, &metrics, opts.name, spooled, &charged);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::SpoolOptions;
    use crate::record::{key, Source};

    fn flow(cgroup: u64, i: usize) -> Record {
        let mut r = Record::new(SystemTime::now(), Source::Egress)
            .with_body(format!("ALLOWED tcp python3 -> 127.0.0.1:{i}"));
        r.set(key::CGROUP_ID, cgroup);
        r.set(key::DST_PORT, (1024 + i) as u64);
        r.set(key::COMM, "python3");
        r
    }

    /// A sink whose collector is down (a port nobody listens on).
    fn sink(dir: &std::path::Path, metrics: Arc<Metrics>) -> OtlpSink {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut opts = OtlpOptions::new(format!("http://{dead}"));
        opts.queue_records = 20;
        opts.shutdown_grace = Duration::from_millis(100);
        opts.loss_interval = Duration::from_secs(3600);
        let spool = Spool::open(SpoolOptions {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
            segment_bytes: 64 << 10,
        })
        .unwrap();
        OtlpSink::new(opts, metrics).unwrap().with_spool(spool)
    }

    fn held(s: &OtlpSink, t: Tenant) -> u64 {
        s.shared.buffer.lock().unwrap().ledger.held(t)
    }

    async fn send(s: &mut OtlpSink, cgroup: u64, n: usize) {
        let batch: Vec<Record> = (0..n).map(|i| flow(cgroup, i)).collect();
        s.send(Arc::new(batch)).await;
    }

    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
        LogsService, LogsServiceServer,
    };
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    };

    /// A receiver that keeps every LogRecord.
    #[derive(Clone, Default)]
    struct Rx(Arc<Mutex<Vec<LogRecord>>>);

    #[tonic::async_trait]
    impl LogsService for Rx {
        async fn export(
            &self,
            request: tonic::Request<ExportLogsServiceRequest>,
        ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
            let mut kept = self.0.lock().unwrap();
            for rl in request.into_inner().resource_logs {
                for sl in rl.scope_logs {
                    kept.extend(sl.log_records);
                }
            }
            Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
        }
    }

    fn serve(listener: tokio::net::TcpListener) -> Rx {
        let rx = Rx::default();
        let svc = LogsServiceServer::new(rx.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        rx
    }

    /// Without a spool the memory queue is the buffer: a flooder is held
    /// to its share while the collector is away, delivery gives the share
    /// back (else the flooder, then everyone, would be refused for good),
    /// and the last loss report is delivered at shutdown, not dropped.
    #[tokio::test]
    async fn without_a_spool_delivery_frees_the_share_and_the_last_report_arrives() {
        let metrics = Arc::new(Metrics::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener); // the collector is away
        let mut opts = OtlpOptions::new(format!("http://{addr}"));
        opts.queue_records = 1000;
        opts.shutdown_grace = Duration::from_secs(10);
        opts.loss_interval = Duration::from_secs(3600);
        let mut s = OtlpSink::new(opts, metrics.clone()).unwrap();
        let flood = Tenant::Cgroup(1);
        for _ in 0..40 {
            send(&mut s, 1, 100).await;
        }
        assert_eq!(held(&s, flood), 500, "a lone flooder stops at half");
        let refused = sample(
            &metrics,
            "clawker_egress_sink_failures_total{sink=\"otlp\",cause=\"queue_full\"}",
        );
        assert_eq!(refused, 3500.0);
        // The collector comes back: what was held is delivered and released.
        let rx = serve(tokio::net::TcpListener::bind(addr).await.unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while held(&s, flood) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(held(&s, flood), 0, "delivery did not free the share");
        // The flooder may send again (held at its share, it could not).
        send(&mut s, 1, 400).await;
        assert_eq!(
            sample(
                &metrics,
                "clawker_egress_sink_failures_total{sink=\"otlp\",cause=\"queue_full\"}"
            ),
            3500.0
        );
        s.flush().await;
        let got = rx.0.lock().unwrap().clone();
        let attr = |lr: &LogRecord, k: &str| {
            lr.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        let lost: Vec<_> = got
            .iter()
            .filter_map(|lr| attr(lr, "lost_spool_full"))
            .collect();
        assert_eq!(lost, [any_value::Value::IntValue(3500)], "the last report");
        assert_eq!(got.len(), 500 + 400 + 1);
    }

    #[tokio::test]
    async fn a_flooder_is_held_to_its_share_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (flood, quiet) = (Tenant::Cgroup(1), Tenant::Cgroup(2));
        let mut s = sink(dir.path(), metrics.clone());
        for _ in 0..40 {
            send(&mut s, 1, 100).await;
        }
        let refused = |m: &Metrics| {
            sample(
                m,
                "clawker_egress_events_dropped_total{reason=\"spool_full\"}",
            )
        };
        let before = held(&s, flood);
        assert!(before > 400 << 10 && before < 600 << 10, "{before}");
        assert_eq!(held(&s, quiet), 0);
        // The refusals are reported at shutdown (queued before the
        // memory queue is written in front of the spool).
        let run1 = refused(&metrics);
        assert!(run1 > 0.0);
        s.flush().await;
        drop(s);

        // A new daemon on the same spool: the flooder's bytes are counted
        // again (its memory queue was written in front of the spool). As
        // after a crash first: no summary, one read of the spool...
        let summary = dir.path().join("summary");
        assert!(summary.exists(), "a clean shutdown leaves its counts");
        std::fs::remove_file(&summary).unwrap();
        let mut s = sink(dir.path(), metrics.clone());
        assert_eq!(held(&s, flood), before, "counted by reading the spool");
        s.flush().await;
        drop(s);
        // ...then as after a clean shutdown: the counts it left, taken as
        // they are (here charged to another cgroup, to tell them from a
        // read of the spool), once.
        let text = std::fs::read_to_string(&summary).unwrap();
        assert!(text.contains(&format!("\ng 1 {before}\n")), "{text}");
        std::fs::write(&summary, text.replace("\ng 1 ", "\ng 9 ")).unwrap();
        let mut s = sink(dir.path(), metrics.clone());
        assert!(!summary.exists(), "a summary is used once");
        assert_eq!(held(&s, Tenant::Cgroup(9)), before, "not from the summary");
        assert_eq!(held(&s, flood), 0);
        s.flush().await;
        drop(s);
        // (Back to the spool's own counts for the rest.)
        std::fs::remove_file(&summary).unwrap();
        let mut s = sink(dir.path(), metrics.clone());
        let rebuilt = held(&s, flood);
        assert_eq!(rebuilt, before, "rebuilt on open");
        // The flooder is still refused; the quiet cgroup is admitted.
        let r0 = refused(&metrics);
        send(&mut s, 1, 50).await;
        assert_eq!(held(&s, flood), rebuilt);
        assert_eq!(refused(&metrics) - r0, 50.0);
        send(&mut s, 2, 50).await;
        assert!(held(&s, quiet) > 0);
        assert_eq!(refused(&metrics) - r0, 50.0, "a quiet record was refused");
        // What was refused is reported for the flooder (its cgroup; no
        // container here: agent and project `_other`), queued as the
        // daemon's own record.
        report_losses(&s.shared, &mut RecordEncoder::default(), &s.opts, &metrics);
        assert_eq!(
            sample(
                &metrics,
                "clawker_egress_container_records_lost_total{agent=\"_other\",project=\"_other\",reason=\"spool_full\"}"
            ),
            run1 + 50.0
        );
        assert!(
            held(&s, Tenant::Daemon) > 0,
            "the loss report was not queued"
        );
        let mut found = Vec::new();
        {
            let st = s.shared.buffer.lock().unwrap();
            st.spool
                .as_ref()
                .unwrap()
                .for_each_pending(|r| {
                    let lr = LogRecord::decode(r).unwrap();
                    let get = |k: &str| lr.attributes.iter().find(|kv| kv.key == k).cloned();
                    if get("lost_spool_full").is_some() {
                        found.push((get("cgroup_id"), get("lost_spool_full")));
                    }
                })
                .unwrap();
        }
        let int = |n: i64| {
            Some(AnyValue {
                value: Some(any_value::Value::IntValue(n)),
            })
        };
        let found: Vec<_> = found
            .into_iter()
            .map(|(c, n)| (c.unwrap().value, n.unwrap().value))
            .collect();
        assert_eq!(
            found,
            [(int(1), int(run1 as i64)), (int(1), int(50))],
            "one report per run, the flooder's"
        );
        s.flush().await;
    }

    fn sample(m: &Metrics, name: &str) -> f64 {
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}
