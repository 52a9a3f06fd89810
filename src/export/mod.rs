//! Sinks: where finished records go. A sink never looks anything up; it
//! writes what the record holds, and counts what it loses.

pub mod control_plane_logs;
mod fair;
mod file;
mod metrics_push;
mod otlp;
mod otlp_wire;
mod spool;
mod stdout;
mod transport;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

pub use file::{FileOptions, FileSink};
pub use metrics_push::MetricsPush;
pub use otlp::{OtlpOptions, OtlpSink};
/// The OTLP `LogRecord` encoder (public for bench/record_cost.rs).
pub use otlp_wire::RecordEncoder;
pub use spool::{Spool, SpoolOptions};
pub use stdout::StdoutSink;
pub use transport::{Compression, OtlpTransport, TransportError, TransportSettings};

use crate::record::Record;

/// Records travel between stages in shared batches.
pub type Batch = Arc<Vec<Record>>;

pub trait Sink: Send + 'static {
    fn name(&self) -> &'static str;
    /// Take one batch. Must not stall on a slow or absent peer for long:
    /// queue, and count what cannot be queued.
    fn send(&mut self, batch: Batch) -> impl Future<Output = ()> + Send;
    /// Deliver everything still queued (shutdown), within the sink's limits.
    fn flush(&mut self) -> impl Future<Output = ()> + Send;
}

/// Feed a sink from its channel until the channel closes, then flush it.
pub async fn run_sink<S: Sink>(mut sink: S, mut rx: mpsc::Receiver<Batch>) {
    while let Some(batch) = rx.recv().await {
        sink.send(batch).await;
    }
    sink.flush().await;
    tracing::debug!(sink = sink.name(), "sink flushed");
}
