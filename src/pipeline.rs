//! The transform stage between capture and the sinks: events become
//! records, records get their identity, and each batch fans out to every
//! sink. Data flows one way: nothing here calls back into capture, and
//! attribution is only read or asked, never waited on.
//!
//! Two inputs: observations from the kernel, and container lifecycle
//! records from the attribution stage (already attributed at their source).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::attribute::Attributor;
use crate::export::Batch;
use crate::flow::Observation;
use crate::metrics::Metrics;
use crate::record::{key, Record, LOSS_FIELDS, RECORDS_LOST};

pub struct Pipeline {
    attributor: Attributor,
    metrics: Arc<Metrics>,
    sinks: Vec<mpsc::Sender<Batch>>,
}

impl Pipeline {
    pub fn new(
        attributor: Attributor,
        metrics: Arc<Metrics>,
        sinks: Vec<mpsc::Sender<Batch>>,
    ) -> Self {
        Pipeline {
            attributor,
            metrics,
            sinks,
        }
    }

    /// Run until the capture stage closes its channel, then release what
    /// is held; dropping the sink senders lets every sink flush and finish.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Vec<Observation>>,
        mut lifecycle: mpsc::Receiver<Record>,
    ) {
        let mut changes = self.attributor.changes();
        let mut lifecycle_open = true;
        let mut changes_open = true;
        loop {
            let mut out = Vec::new();
            let deadline = self.attributor.next_deadline();
            let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into());
            tokio::select! {
                batch = events.recv() => match batch {
                    Some(batch) => {
                        for observation in batch {
                            self.offer(observation, &mut out);
                        }
                    }
                    None => break,
                },
                record = lifecycle.recv(), if lifecycle_open => match record {
                    Some(r) => out.push(r),
                    None => lifecycle_open = false,
                },
                changed = changes.changed(), if changes_open => {
                    changes_open = changed.is_ok();
                    self.attributor.release(Instant::now(), &mut out);
                }
                _ = sleep, if deadline.is_some() => self.attributor.release(Instant::now(), &mut out),
            }
            self.send(out).await;
        }
        let mut out = Vec::new();
        while let Ok(r) = lifecycle.try_recv() {
            out.push(r);
        }
        self.attributor.flush(&mut out);
        self.send(out).await;
    }

    async fn send(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        for r in &records {
            self.count_losses(r);
        }
        let batch = Arc::new(records);
        for sink in &self.sinks {
            // Back-pressure: a slow sink slows the drain; the kernel then
            // counts what the ring buffer could not hold.
            let _ = sink.send(batch.clone()).await;
        }
    }

    /// Per-agent loss series, from the in-band reports once attributed.
    fn count_losses(&self, r: &Record) {
        if r.get_str(key::EVENT) != Some(RECORDS_LOST) {
            return;
        }
        for (field, reason) in LOSS_FIELDS {
            let n = r.get_int(field).unwrap_or(0);
            if n > 0 {
                self.metrics.container_lost(
                    r.get_str(key::AGENT),
                    r.get_str(key::PROJECT),
                    reason,
                    n.unsigned_abs(),
                );
            }
        }
    }

    fn offer(&mut self, observation: Observation, out: &mut Vec<Record>) {
        let (record, cgroup_id, scope_cgroup_id) = match observation {
            Observation::Attempt(ev, host) => {
                self.metrics.event(ev.hook, ev.verdict);
                let mut record = Record::from_sock(&ev);
                if let Some(host) = host {
                    record.set(key::DST_HOST, host);
                }
                (record, ev.cgroup_id, ev.scope_cgroup_id)
            }
            Observation::Dns(exchange) => (
                Record::from_dns(&exchange),
                exchange.first().cgroup_id,
                exchange.first().scope_cgroup_id,
            ),
            Observation::Lost(loss) => (
                Record::from_loss(&loss),
                loss.scope_cgroup_id,
                loss.scope_cgroup_id,
            ),
            Observation::Flow(f) => (
                Record::from_flow(&f),
                f.flow.cgroup_id,
                f.flow.scope_cgroup_id,
            ),
        };
        self.attributor
            .offer(record, cgroup_id, scope_cgroup_id, out);
    }
}
