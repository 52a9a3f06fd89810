//! The daemon side of the local API: a sink that keeps the history ring and
//! the per-agent aggregates and hands each batch to every subscriber's own
//! bounded queue. Publishing never waits on a client: a subscriber whose
//! queue is full loses records, counted for it
//! (`clawker_egress_api_dropped_total`) and told to it in band.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::agents::Agents;
use super::agents::{agent_key, RECENT_PER_AGENT};
use super::filter::Filter;
use super::history::History;
use super::wire::State;
use crate::capture::FlowSnapshot;
use crate::detect::resources::Usage;
use crate::export::{Batch, Sink};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct HubOptions {
    /// History ring: at most this many records...
    pub history_records: usize,
    /// ...no older than this.
    pub history_age: Duration,
    /// Records queued for one subscriber before its records are dropped.
    pub queue_records: usize,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            history_records: 4_096,
            history_age: Duration::from_secs(300),
            queue_records: 10_000,
        }
    }
}

pub struct Hub {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    queue_records: usize,
}

struct Inner {
    history: History,
    subscribers: Vec<Arc<Subscriber>>,
    agents: Agents,
}

/// One following client.
pub struct Subscriber {
    filter: Filter,
    tx: mpsc::UnboundedSender<(Batch, usize)>,
    /// Matching records queued and not yet written (the queue's bound).
    queued: AtomicUsize,
    /// Matching records dropped since the client was last told.
    missed: AtomicU64,
}

/// What a subscriber task holds: its queue's receiving end and its state.
pub struct Subscription {
    pub rx: mpsc::UnboundedReceiver<(Batch, usize)>,
    pub sub: Arc<Subscriber>,
}

impl Subscriber {
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// `n` matching records were written.
    pub fn written(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Records dropped for this client since the last call.
    pub fn take_missed(&self) -> u64 {
        self.missed.swap(0, Ordering::Relaxed)
    }

    /// Queue the batch if the client has room for its matching records;
    /// `false` once the client is gone.
    fn offer(&self, batch: &Batch, bound: usize, metrics: &Metrics) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let n = batch.iter().filter(|r| self.filter.matches(r)).count();
        if n == 0 {
            return true;
        }
        let queued = self.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + n > bound {
            self.missed.fetch_add(n as u64, Ordering::Relaxed);
            metrics.api_dropped(n as u64);
            return true;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.tx.send((batch.clone(), n)).is_ok()
    }
}

impl Hub {
    pub fn new(opts: &HubOptions, metrics: Arc<Metrics>) -> Arc<Hub> {
        Arc::new(Hub {
            inner: Mutex::new(Inner {
                history: History::new(opts.history_records, opts.history_age),
                subscribers: Vec::new(),
                agents: Agents::default(),
            }),
            metrics,
            queue_records: opts.queue_records,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn publish(&self, batch: &Batch) {
        let mut inner = self.lock();
        inner.history.push(batch.clone(), Instant::now());
        inner.agents.ingest_batch(batch);
        let (bound, metrics) = (self.queue_records, &*self.metrics);
        inner.subscribers.retain(|s| s.offer(batch, bound, metrics));
    }

    /// The history held now and, when following, a subscription that
    /// starts exactly after it (taken under one lock: no gap, no repeat).
    pub fn subscribe(&self, filter: Filter, follow: bool) -> (Vec<Batch>, Option<Subscription>) {
        let mut inner = self.lock();
        let history = inner.history.snapshot(Instant::now());
        if !follow {
            return (history, None);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let sub = Arc::new(Subscriber {
            filter,
            tx,
            queued: AtomicUsize::new(0),
            missed: AtomicU64::new(0),
        });
        inner.subscribers.push(sub.clone());
        (history, Some(Subscription { rx, sub }))
    }

    /// The latest per-container cgroup readings (see [`Agents::resources`]).
    pub fn resources(&self, by_container: &HashMap<String, Usage>) {
        self.lock().agents.resources(by_container, Instant::now());
    }

    /// A reading for `top`: the aggregates joined with the open flows and,
    /// for `detail` (an agent key), its newest records in the history.
    pub fn state(&self, open: &[FlowSnapshot], now_ns: u64, detail: Option<&str>) -> State {
        let inner = self.lock();
        let mut state = inner.agents.state(open, now_ns);
        if let Some(k) = detail {
            state.recent = inner
                .history
                .newest(RECENT_PER_AGENT, |r| agent_key(r).as_deref() == Some(k))
                .into_iter()
                .map(|r| serde_json::to_value(r).unwrap_or_default())
                .collect();
        }
        state
    }
}

/// The pipeline's handle on the hub.
pub struct ApiSink(pub Arc<Hub>);

impl Sink for ApiSink {
    fn name(&self) -> &'static str {
        "api"
    }

    async fn send(&mut self, batch: Batch) {
        self.0.publish(&batch);
    }

    async fn flush(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::filter::FilterSpec;
    use crate::record::{key, Record, Source};
    use std::time::SystemTime;

    fn batch(agent: &str, n: usize) -> Batch {
        Arc::new(
            (0..n)
                .map(|_| {
                    let mut r = Record::new(SystemTime::now(), Source::Egress);
                    r.set(key::AGENT, agent);
                    r
                })
                .collect(),
        )
    }

    fn only(agent: &str) -> Filter {
        Filter::compile(FilterSpec {
            agent: vec![agent.into()],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_full_queue_drops_for_that_subscriber_only() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            &HubOptions {
                queue_records: 5,
                ..Default::default()
            },
            metrics.clone(),
        );
        let (_, slow) = hub.subscribe(Filter::default(), true);
        let (_, fast) = hub.subscribe(Filter::default(), true);
        let (slow, mut fast) = (slow.unwrap(), fast.unwrap());
        for _ in 0..4 {
            hub.publish(&batch("a", 2));
            // The fast one keeps up.
            let (_, n) = fast.rx.try_recv().unwrap();
            fast.sub.written(n);
        }
        assert_eq!(fast.sub.take_missed(), 0);
        // slow: 2 + 2 queued (4), the third batch would make 6 > 5.
        assert_eq!(slow.sub.take_missed(), 4);
        assert_eq!(slow.sub.take_missed(), 0);
        assert!(metrics
            .encode()
            .contains("clawker_egress_api_dropped_total 4"));
    }

    #[test]
    fn filters_apply_before_queueing_and_gone_clients_leave() {
        let hub = Hub::new(&HubOptions::default(), Arc::new(Metrics::new()));
        let (_, sub) = hub.subscribe(only("b"), true);
        let mut sub = sub.unwrap();
        hub.publish(&batch("a", 3));
        assert!(sub.rx.try_recv().is_err());
        hub.publish(&batch("b", 1));
        assert_eq!(sub.rx.try_recv().unwrap().1, 1);
        drop(sub);
        hub.publish(&batch("b", 1));
        assert!(hub.lock().subscribers.is_empty());
        let (history, none) = hub.subscribe(Filter::default(), false);
        assert!(none.is_none());
        assert_eq!(history.iter().map(|b| b.len()).sum::<usize>(), 5);
    }

    #[test]
    fn the_drill_down_shows_the_agents_newest_records_from_the_history() {
        let hub = Hub::new(&HubOptions::default(), Arc::new(Metrics::new()));
        hub.publish(&batch("a", RECENT_PER_AGENT + 5));
        hub.publish(&batch("b", 3));
        let newest_a = hub
            .lock()
            .history
            .newest(1, |r| r.get_str(key::AGENT) == Some("a"))[0]
            .get_str(key::RECORD_ID)
            .unwrap()
            .to_owned();
        let s = hub.state(&[], 0, Some("a/"));
        assert_eq!(s.recent.len(), RECENT_PER_AGENT);
        assert_eq!(s.recent.last().unwrap()["record_id"], newest_a.as_str());
        assert_eq!(hub.state(&[], 0, Some("b/")).recent.len(), 3);
        assert!(hub.state(&[], 0, None).recent.is_empty());
        assert!(hub.state(&[], 0, Some("nobody")).recent.is_empty());
    }
}
