//! One JSON object per line on standard output: the embedded default, so
//! the daemon is useful with no stack running.

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use super::{Batch, Sink};
use crate::metrics::Metrics;

/// The line buffer's capacity kept between batches.
const LINES_KEPT: usize = 1 << 20;

pub struct StdoutSink<W: AsyncWrite + Unpin + Send + 'static = tokio::io::Stdout> {
    out: BufWriter<W>,
    metrics: Arc<Metrics>,
    /// The current batch's lines (reused).
    lines: Vec<u8>,
}

impl StdoutSink {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        StdoutSink::with_writer(tokio::io::stdout(), metrics)
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> StdoutSink<W> {
    pub fn with_writer(out: W, metrics: Arc<Metrics>) -> Self {
        StdoutSink {
            out: BufWriter::with_capacity(256 * 1024, out),
            metrics,
            lines: Vec::with_capacity(64 * 1024),
        }
    }

    async fn write_batch(&mut self, batch: &Batch) -> std::io::Result<()> {
        // The whole batch as one buffer (`Record::write_json`: the bytes
        // serde_json would write), then one write.
        self.lines.clear();
        for record in batch.iter() {
            record.write_json(&mut self.lines);
            self.lines.push(b'\n');
        }
        self.out.write_all(&self.lines).await?;
        if self.lines.capacity() > LINES_KEPT {
            // One huge batch does not keep its buffer for good.
            self.lines = Vec::with_capacity(LINES_KEPT / 16);
        }
        // Flush per batch: a reader (jq, a test) sees records promptly.
        self.out.flush().await
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Sink for StdoutSink<W> {
    fn name(&self) -> &'static str {
        "stdout"
    }

    async fn send(&mut self, batch: Batch) {
        match self.write_batch(&batch).await {
            Ok(()) => self.metrics.exported("stdout", batch.len() as u64),
            Err(e) => {
                // A closed pipe loses the batch: counted, and said once per batch.
                self.metrics
                    .sink_failure("stdout", "write", batch.len() as u64);
                tracing::warn!(event = "sink_failure", sink = "stdout", error = %e, "stdout write failed");
            }
        }
    }

    async fn flush(&mut self) {
        let _ = self.out.flush().await;
    }
}
