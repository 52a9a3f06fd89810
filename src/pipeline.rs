//! The transform stage between capture and the sinks: events become
//! records, records get their identity, and each batch fans out to every
//! sink. Data flows one way: nothing here calls back into capture.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::attribute::Attributor;
use crate::export::Batch;
use crate::flow::Observation;
use crate::metrics::Metrics;
use crate::record::Record;

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

    /// Run until the capture stage closes its channel; dropping the sink
    /// senders then lets every sink flush and finish.
    pub async fn run(mut self, mut events: mpsc::Receiver<Vec<Observation>>) {
        while let Some(batch) = events.recv().await {
            let records: Vec<Record> = batch.into_iter().map(|e| self.record_of(e)).collect();
            let batch = Arc::new(records);
            for sink in &self.sinks {
                // Back-pressure: a slow sink slows the drain; the kernel then
                // counts what the ring buffer could not hold.
                let _ = sink.send(batch.clone()).await;
            }
        }
    }

    fn record_of(&mut self, observation: Observation) -> Record {
        let (mut record, cgroup_id, scope_cgroup_id) = match observation {
            Observation::Attempt(ev) => {
                self.metrics.event(ev.hook, ev.verdict);
                (Record::from_sock(&ev), ev.cgroup_id, ev.scope_cgroup_id)
            }
            Observation::Flow(f) => (
                Record::from_flow(&f),
                f.flow.cgroup_id,
                f.flow.scope_cgroup_id,
            ),
        };
        self.attributor
            .attribute(&mut record, cgroup_id, scope_cgroup_id);
        record
    }
}
