//! The pipeline's side of attribution: look the record's cgroup up in the
//! cache, and never wait on the runtime. A container's identity that is not
//! known yet (a container that started a moment ago) is asked for, and its
//! records wait in a small side queue, per cgroup and in order, until the
//! answer lands or a short deadline passes. Everything else flows on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::cache::{ContainerCache, Lookup};
use super::follower::Request;
use crate::metrics::Metrics;
use crate::record::{key, Record};

/// Records held at most, over all cgroups; past it records go out at once.
const MAX_HELD: usize = 8192;
/// A cgroup nobody knows is asked about at most this often.
const ASK_AGAIN: Duration = Duration::from_secs(1);
/// Bound on the memory of what was asked.
const MAX_ASKED: usize = 65_536;
/// Cgroups whose unattributed records were already logged (the count goes
/// on; the warning is once per cgroup, bounded).
const MAX_WARNED: usize = 4096;

struct Held {
    since: Instant,
    deadline: Instant,
    records: Vec<Record>,
}

pub struct Attributor {
    cache: Arc<ContainerCache>,
    requests: mpsc::Sender<Request>,
    metrics: Arc<Metrics>,
    wait: Duration,
    /// By cgroup id (kernel-assigned): foldhash (docs/ARCHITECTURE.md
    /// "Hash maps").
    held: crate::fast_hash::HashMap<u64, Held>,
    held_records: usize,
    asked: crate::fast_hash::HashMap<u64, Instant>,
    warned: crate::fast_hash::HashSet<u64>,
}

/// Why a record went out without its container's identity.
#[derive(Clone, Copy)]
enum Unattributed {
    /// The runtime could not say whose container this is (gone, or inspect
    /// failed).
    Unresolvable,
    /// The side queue was full: records go out at once.
    QueueFull,
    /// The runtime did not answer within `attribution_wait`.
    WaitExpired,
}

impl Unattributed {
    fn as_str(self) -> &'static str {
        match self {
            Unattributed::Unresolvable => "unresolvable",
            Unattributed::QueueFull => "queue_full",
            Unattributed::WaitExpired => "wait_expired",
        }
    }
}

impl Attributor {
    /// `wait`: the longest a record waits for its container's identity.
    pub fn new(
        cache: Arc<ContainerCache>,
        requests: mpsc::Sender<Request>,
        metrics: Arc<Metrics>,
        wait: Duration,
    ) -> Self {
        Attributor {
            cache,
            requests,
            metrics,
            wait,
            held: Default::default(),
            held_records: 0,
            asked: Default::default(),
            warned: Default::default(),
        }
    }

    /// Count a record that goes out without identity; say so once per
    /// cgroup (which container, why), so the count has a name in the log.
    fn unattributed(&mut self, cgroup_id: u64, record: &Record, why: Unattributed) {
        self.metrics.unattributed();
        if self.warned.len() >= MAX_WARNED || !self.warned.insert(cgroup_id) {
            return;
        }
        tracing::warn!(
            event = "record_unattributed",
            cgroup_id,
            container = record.get_str(key::CONTAINER_ID).unwrap_or(""),
            source = record.source.name(),
            reason = why.as_str(),
            "a record went out without its container's identity (counted in clawker_egress_unattributed_total; once per cgroup)"
        );
    }

    /// Ticks when identities land: time to call [`Attributor::release`].
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.cache.subscribe()
    }

    /// Attribute a record, or hold it. `scope_cgroup_id` (the enrolled
    /// container cgroup) wins over the leaf: a container's sub-cgroups are
    /// the container. Ready records are pushed to `out`.
    pub fn offer(
        &mut self,
        mut record: Record,
        cgroup_id: u64,
        scope_cgroup_id: u64,
        out: &mut Vec<Record>,
    ) {
        let key = if scope_cgroup_id != 0 {
            scope_cgroup_id
        } else {
            cgroup_id
        };
        if let Some(h) = self.held.get_mut(&key) {
            if self.held_records < MAX_HELD {
                // Behind the records already waiting: order kept per cgroup.
                h.records.push(record);
                self.held_records += 1;
                return;
            }
        }
        match self.cache.lookup_cgroup(key) {
            Lookup::Known(identity) => {
                identity.apply(&mut record);
                out.push(record);
            }
            Lookup::Unresolvable(container) => {
                record.set(key::CONTAINER_ID, &*container);
                self.unattributed(key, &record, Unattributed::Unresolvable);
                out.push(record);
            }
            Lookup::Pending(container) => {
                record.set(key::CONTAINER_ID, &*container);
                self.hold(key, record, Request::Resolve(container), out);
            }
            // In scope only through an enrolled container cgroup we have not
            // bound yet (enrolled by an earlier daemon): find out whose.
            Lookup::Unknown if scope_cgroup_id != 0 => {
                self.hold(key, record, Request::Classify(key), out);
            }
            // `--scope all`: may be a host cgroup or a container's
            // sub-cgroup; ask, but do not hold host records.
            Lookup::Unknown => {
                self.ask_about(key);
                out.push(record);
            }
        }
    }

    fn hold(&mut self, key: u64, record: Record, ask: Request, out: &mut Vec<Record>) {
        if self.held_records >= MAX_HELD {
            self.unattributed(key, &record, Unattributed::QueueFull);
            out.push(record);
            return;
        }
        let now = Instant::now();
        let deadline = now.checked_add(self.wait).unwrap_or(now);
        let held = self.held.entry(key).or_insert_with(|| Held {
            since: now,
            deadline,
            records: Vec::new(),
        });
        if held.records.is_empty() {
            // One request per waiting cgroup; the follower also dedupes.
            let _ = self.requests.try_send(ask);
        }
        held.records.push(record);
        self.held_records += 1;
    }

    fn ask_about(&mut self, cgroup_id: u64) {
        let now = Instant::now();
        if self
            .asked
            .get(&cgroup_id)
            .is_some_and(|t| now.duration_since(*t) < ASK_AGAIN)
        {
            return;
        }
        if self.asked.len() >= MAX_ASKED {
            self.asked.clear();
        }
        self.asked.insert(cgroup_id, now);
        let _ = self.requests.try_send(Request::Classify(cgroup_id));
    }

    /// Release held records whose identity is now known, or whose wait is
    /// over (those go out with what is known and are counted).
    pub fn release(&mut self, now: Instant, out: &mut Vec<Record>) {
        let keys: Vec<u64> = self.held.keys().copied().collect();
        for key in keys {
            let lookup = self.cache.lookup_cgroup(key);
            let expired = self.held.get(&key).is_some_and(|h| h.deadline <= now);
            let ready = match &lookup {
                Lookup::Known(_) | Lookup::Unresolvable(_) => true,
                Lookup::Pending(_) | Lookup::Unknown => expired,
            };
            if !ready {
                continue;
            }
            let Some(held) = self.held.remove(&key) else {
                continue;
            };
            self.held_records = self.held_records.saturating_sub(held.records.len());
            self.metrics
                .attribution_wait(now.saturating_duration_since(held.since));
            for mut record in held.records {
                match &lookup {
                    Lookup::Known(identity) => identity.apply(&mut record),
                    Lookup::Pending(c) => {
                        record.set(key::CONTAINER_ID, &**c);
                        self.unattributed(key, &record, Unattributed::WaitExpired);
                    }
                    Lookup::Unresolvable(c) => {
                        record.set(key::CONTAINER_ID, &**c);
                        self.unattributed(key, &record, Unattributed::Unresolvable);
                    }
                    Lookup::Unknown => self.unattributed(key, &record, Unattributed::WaitExpired),
                }
                out.push(record);
            }
        }
    }

    /// When the next held record's wait is over.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held.values().map(|h| h.deadline).min()
    }

    /// Shutdown: everything held goes out now.
    pub fn flush(&mut self, out: &mut Vec<Record>) {
        // The latest deadline: every held record counts as expired.
        let far = self
            .held
            .values()
            .map(|h| h.deadline)
            .chain([Instant::now()])
            .max();
        self.release(far.unwrap_or_else(Instant::now), out);
    }

    pub fn held(&self) -> usize {
        self.held_records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::identity::Identity;
    use crate::record::Source;
    use std::time::UNIX_EPOCH;

    fn setup(
        wait: Duration,
    ) -> (
        Attributor,
        Arc<ContainerCache>,
        mpsc::Receiver<Request>,
        Arc<Metrics>,
    ) {
        let cache = Arc::new(ContainerCache::new(None));
        let (tx, rx) = mpsc::channel(16);
        let metrics = Arc::new(Metrics::new());
        (
            Attributor::new(cache.clone(), tx, metrics.clone(), wait),
            cache,
            rx,
            metrics,
        )
    }

    fn rec(n: i64) -> Record {
        let mut r = Record::new(UNIX_EPOCH, Source::Egress);
        r.set(key::PID, n);
        r
    }

    fn ident(id: &str) -> Identity {
        Identity {
            container_id: id.into(),
            name: "ce".into(),
            image: "img".into(),
            agent: Some("ralph".into()),
            project: Some("p".into()),
        }
    }

    fn unattributed(m: &Metrics) -> bool {
        m.encode().contains("clawker_egress_unattributed_total 0")
    }

    #[test]
    fn known_cgroups_are_attributed_at_once_by_scope_id() {
        let (mut a, cache, _rx, _) = setup(Duration::from_secs(1));
        cache.bind(10, "c1", "/x".into(), true);
        cache.set_identity(ident("c1"), None);
        let mut out = Vec::new();
        a.offer(rec(1), 77, 10, &mut out); // leaf 77 is a sub-cgroup of 10
        assert_eq!(out[0].get_str(key::AGENT), Some("ralph"));
        assert_eq!(out[0].get_str(key::CONTAINER_ID), Some("c1"));
    }

    #[test]
    fn a_new_container_waits_in_order_then_is_attributed() {
        let (mut a, cache, mut rx, metrics) = setup(Duration::from_secs(5));
        cache.bind(10, "c1", "/x".into(), true);
        let mut out = Vec::new();
        a.offer(rec(1), 10, 10, &mut out);
        a.offer(rec(2), 10, 10, &mut out);
        assert!(out.is_empty());
        assert_eq!(rx.try_recv().unwrap(), Request::Resolve("c1".into()));
        assert!(rx.try_recv().is_err(), "one request per cgroup");
        cache.set_identity(ident("c1"), None);
        a.release(Instant::now(), &mut out);
        let pids: Vec<_> = out.iter().map(|r| r.get_int(key::PID)).collect();
        assert_eq!(pids, [Some(1), Some(2)]);
        assert!(out.iter().all(|r| r.get_str(key::AGENT) == Some("ralph")));
        assert!(unattributed(&metrics));
    }

    #[test]
    fn an_unknown_identity_goes_out_with_its_container_id_after_the_wait() {
        let (mut a, cache, _rx, metrics) = setup(Duration::from_millis(10));
        cache.bind(10, "c1", "/x".into(), true);
        let mut out = Vec::new();
        a.offer(rec(1), 10, 10, &mut out);
        let deadline = a.next_deadline().unwrap();
        a.release(deadline, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].get_str(key::CONTAINER_ID), Some("c1"));
        assert_eq!(out[0].get(key::AGENT), None);
        assert!(metrics
            .encode()
            .contains("clawker_egress_unattributed_total 1"));
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn other_containers_are_not_held_up() {
        let (mut a, cache, _rx, _) = setup(Duration::from_secs(5));
        cache.bind(10, "slow", "/x".into(), true);
        cache.bind(20, "c2", "/y".into(), true);
        cache.set_identity(ident("c2"), None);
        let mut out = Vec::new();
        a.offer(rec(1), 10, 10, &mut out);
        a.offer(rec(2), 20, 20, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].get_str(key::CONTAINER_ID), Some("c2"));
    }

    #[test]
    fn host_records_in_scope_all_pass_untouched_and_uncounted() {
        let (mut a, _cache, mut rx, metrics) = setup(Duration::from_secs(5));
        let mut out = Vec::new();
        a.offer(rec(1), 5, 0, &mut out);
        a.offer(rec(2), 5, 0, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out[0].get(key::CONTAINER_ID).is_none());
        assert_eq!(rx.try_recv().unwrap(), Request::Classify(5));
        assert!(rx.try_recv().is_err(), "asked once");
        assert!(unattributed(&metrics));
    }

    #[test]
    fn unresolvable_is_not_waited_for() {
        let (mut a, cache, _rx, _) = setup(Duration::from_secs(5));
        cache.bind(10, "c1", "/x".into(), true);
        cache.mark_unresolvable("c1");
        let mut out = Vec::new();
        a.offer(rec(1), 10, 10, &mut out);
        assert_eq!(out.len(), 1);
    }
}
