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
use crate::record::{key, Record};

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
            self.metrics.agents().observe(r);
        }
        // Chunks (crate::stage_queue): what a sink's queue holds is
        // bounded in records, not only in batches.
        for chunk in crate::stage_queue::chunked(records) {
            let batch = Arc::new(chunk);
            for sink in &self.sinks {
                // Back-pressure: a slow sink slows the drain; the kernel then
                // counts what the ring buffer could not hold.
                let _ = sink.send(batch.clone()).await;
            }
        }
    }

    fn offer(&mut self, observation: Observation, out: &mut Vec<Record>) {
        let (record, cgroup_id, scope_cgroup_id) = match observation {
            Observation::Attempt(ev, host, exe) => {
                self.metrics.event(ev.hook, ev.verdict);
                let mut record = Record::from_sock(&ev);
                if let Some(host) = host {
                    record.set(key::DST_HOST, host);
                }
                record.set_process(ev.tgid, ev.proc, exe.as_deref());
                (record, ev.cgroup_id, ev.scope_cgroup_id)
            }
            Observation::Dns(exchange, exe) => {
                let d = exchange.first();
                let mut record = Record::from_dns(&exchange);
                record.set_process(d.pid, d.proc, exe.as_deref());
                (record, d.cgroup_id, d.scope_cgroup_id)
            }
            Observation::Exec(x) => (
                Record::from_exec(&x),
                x.exec.cgroup_id,
                x.exec.scope_cgroup_id,
            ),
            Observation::Exit(x) => (
                Record::from_exit(&x),
                x.exit.cgroup_id,
                x.exit.scope_cgroup_id,
            ),
            Observation::Lost(loss) => (
                Record::from_loss(&loss),
                loss.scope_cgroup_id,
                loss.scope_cgroup_id,
            ),
            Observation::Flow(f) => {
                let mut record = Record::from_flow(&f);
                record.set_process(f.flow.tgid, f.flow.proc, f.exe.as_deref());
                (record, f.flow.cgroup_id, f.flow.scope_cgroup_id)
            }
        };
        self.attributor
            .offer(record, cgroup_id, scope_cgroup_id, out);
    }
}
