//! Audited break-glass. `clawker-egress bypass` writes an entry into the
//! pinned `bypass` map (who, why, until); the kernel then lets that
//! cgroup's traffic through with verdict BYPASSED — still recorded — and the
//! daemon's watcher turns every start, early stop and expiry into an
//! `overseer` record: the "who toggled bypass at 3am?" answer. When a
//! bypass ends (stopped or expired), the connections it let through are
//! decided again and the ones the policy denies are ended (`Reapply`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::reapply::Reapply;
use crate::capture::BootClock;
use crate::kernel::pod::{c_str, to_c_str};
use crate::kernel::{abi, KernelError, PolicyMaps};
use crate::record::{key, Record, Source};

/// What the `bypass` command asks for.
#[derive(Debug, Clone)]
pub struct BypassRequest {
    pub scope_cgroup_id: u64,
    pub duration: Duration,
    pub reason: String,
}

/// Start a bypass as the calling user.
pub fn request_bypass(maps: &PolicyMaps, req: &BypassRequest) -> Result<(), KernelError> {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let now = BootClock::now_boot_ns();
    let entry = abi::bypass_entry {
        until_ns: now.saturating_add(u64::try_from(req.duration.as_nanos()).unwrap_or(u64::MAX)),
        started_ns: now,
        uid: uid.as_raw(),
        _pad: 0,
        user: to_c_str(&user),
        reason: to_c_str(&req.reason),
    };
    maps.set_bypass(req.scope_cgroup_id, &entry)
}

/// The bypass map as the watcher sees it: the kernel's [`PolicyMaps`], or
/// a plain map in unit tests.
pub trait BypassMap {
    /// Every entry: scope cgroup id -> entry.
    fn bypasses(&self) -> Vec<(u64, abi::bypass_entry)>;
    /// Remove one entry (an expired bypass).
    fn clear_bypass(&self, scope_cgroup_id: u64);
}

impl BypassMap for PolicyMaps {
    fn bypasses(&self) -> Vec<(u64, abi::bypass_entry)> {
        PolicyMaps::bypasses(self)
    }

    fn clear_bypass(&self, scope_cgroup_id: u64) {
        PolicyMaps::clear_bypass(self, scope_cgroup_id);
    }
}

/// Watches the bypass map and reports changes as overseer records.
pub struct BypassWatcher<M: BypassMap = PolicyMaps> {
    maps: M,
    clock: BootClock,
    /// Active bypasses as last seen: cgroup id -> started_ns.
    seen: HashMap<u64, abi::bypass_entry>,
    /// A bypass ended since the last sweep.
    ended: bool,
    reapply: Option<Reapply>,
}

impl<M: BypassMap> BypassWatcher<M> {
    pub fn new(maps: M, clock: BootClock) -> Self {
        BypassWatcher {
            maps,
            clock,
            seen: HashMap::new(),
            ended: false,
            reapply: None,
        }
    }

    /// Decide open sockets again whenever a bypass ends.
    pub fn with_reapply(mut self, reapply: Reapply) -> Self {
        self.reapply = Some(reapply);
        self
    }

    /// Poll forever, sending one record per change.
    pub async fn run(mut self, out: mpsc::Sender<Record>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            for record in self.poll(BootClock::now_boot_ns()) {
                if out.send(record).await.is_err() {
                    return;
                }
            }
            if std::mem::take(&mut self.ended) {
                if let Some(reapply) = &self.reapply {
                    reapply.run("bypass end", &out).await;
                }
            }
        }
    }

    /// One look at the map: started, stopped early, or expired.
    pub fn poll(&mut self, now: u64) -> Vec<Record> {
        let mut records = Vec::new();
        let current: HashMap<u64, abi::bypass_entry> =
            BypassMap::bypasses(&self.maps).into_iter().collect();
        for (id, entry) in &current {
            let known = self
                .seen
                .get(id)
                .is_some_and(|e| e.started_ns == entry.started_ns);
            if !known {
                records.push(self.record("bypass_start", *id, entry, None));
            }
            if entry.until_ns <= now {
                // Expired: the kernel already ignores it; remove and say so.
                BypassMap::clear_bypass(&self.maps, *id);
                records.push(self.record("bypass_expired", *id, entry, Some(entry.until_ns)));
                self.ended = true;
            }
        }
        for (id, entry) in &self.seen {
            let still = current
                .get(id)
                .is_some_and(|e| e.started_ns == entry.started_ns);
            if !still && entry.until_ns > now {
                records.push(self.record("bypass_stop", *id, entry, Some(now)));
                self.ended = true;
            }
        }
        self.seen = current
            .into_iter()
            .filter(|(_, e)| e.until_ns > now)
            .collect();
        records
    }

    fn record(
        &self,
        event: &'static str,
        cgroup_id: u64,
        e: &abi::bypass_entry,
        at: Option<u64>,
    ) -> Record {
        let time = at.map_or_else(
            || self.clock.to_wall(e.started_ns),
            |ns| self.clock.to_wall(ns),
        );
        let until = self.clock.to_wall(e.until_ns);
        let user = c_str(&e.user);
        let reason = c_str(&e.reason);
        let mut r = Record::new(time, Source::Overseer)
            .with_body(format!("{event} cgroup {cgroup_id} by {user}: {reason}"));
        r.set(key::EVENT, event);
        r.set(key::CGROUP_ID, cgroup_id);
        r.set(key::BYPASS_UID, e.uid);
        r.set(key::BYPASS_USER, user);
        r.set(key::BYPASS_REASON, reason);
        r.set(key::BYPASS_UNTIL, rfc3339(until));
        r
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::record::Value;

    /// The bypass map as a plain map: what `clawker-egress bypass` and the
    /// kernel would leave in it.
    #[derive(Clone, Default)]
    struct FakeMap(Arc<Mutex<HashMap<u64, abi::bypass_entry>>>);

    impl FakeMap {
        fn start(&self, id: u64, started_ns: u64, until_ns: u64, user: &str, reason: &str) {
            let entry = abi::bypass_entry {
                until_ns,
                started_ns,
                uid: 1000,
                _pad: 0,
                user: to_c_str(user),
                reason: to_c_str(reason),
            };
            self.0.lock().unwrap().insert(id, entry);
        }

        fn stop(&self, id: u64) {
            self.0.lock().unwrap().remove(&id);
        }

        fn has(&self, id: u64) -> bool {
            self.0.lock().unwrap().contains_key(&id)
        }
    }

    impl BypassMap for FakeMap {
        fn bypasses(&self) -> Vec<(u64, abi::bypass_entry)> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect()
        }

        fn clear_bypass(&self, scope_cgroup_id: u64) {
            self.stop(scope_cgroup_id);
        }
    }

    fn watcher() -> (BypassWatcher<FakeMap>, FakeMap) {
        let map = FakeMap::default();
        (BypassWatcher::new(map.clone(), BootClock::calibrate()), map)
    }

    fn events(records: &[Record]) -> Vec<(String, i64)> {
        records
            .iter()
            .map(|r| {
                let event = r.get_str(key::EVENT).unwrap_or_default().to_owned();
                let id = r.get_int(key::CGROUP_ID).unwrap_or(-1);
                (event, id)
            })
            .collect()
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_start_is_reported_once_with_who_and_why() {
        let (mut w, map) = watcher();
        assert!(w.poll(10 * SEC).is_empty());
        map.start(7, 10 * SEC, 70 * SEC, "alice", "prod outage");
        let r = w.poll(11 * SEC);
        assert_eq!(events(&r), [("bypass_start".to_owned(), 7)]);
        assert_eq!(r[0].source, Source::Overseer);
        assert_eq!(r[0].get_str(key::BYPASS_USER), Some("alice"));
        assert_eq!(r[0].get_str(key::BYPASS_REASON), Some("prod outage"));
        assert_eq!(r[0].get(key::BYPASS_UID), Some(&Value::Int(1000)));
        assert!(r[0]
            .get_str(key::BYPASS_UNTIL)
            .is_some_and(|t| t.ends_with('Z')));
        assert!(w.poll(12 * SEC).is_empty(), "reported again");
        assert!(!std::mem::take(&mut w.ended));
    }

    #[test]
    fn an_early_stop_is_reported_and_asks_for_a_reapply() {
        let (mut w, map) = watcher();
        map.start(7, 10 * SEC, 70 * SEC, "alice", "x");
        w.poll(11 * SEC);
        map.stop(7);
        assert_eq!(events(&w.poll(12 * SEC)), [("bypass_stop".to_owned(), 7)]);
        assert!(std::mem::take(&mut w.ended));
        assert!(w.poll(13 * SEC).is_empty());
    }

    #[test]
    fn an_expired_bypass_is_removed_and_reported_once() {
        let (mut w, map) = watcher();
        map.start(7, 10 * SEC, 20 * SEC, "alice", "x");
        w.poll(11 * SEC);
        assert_eq!(
            events(&w.poll(20 * SEC)),
            [("bypass_expired".to_owned(), 7)]
        );
        assert!(!map.has(7), "an expired entry stays in the map");
        assert!(std::mem::take(&mut w.ended));
        assert!(w.poll(21 * SEC).is_empty(), "expiry reported twice");
    }

    #[test]
    fn a_bypass_seen_only_after_it_expired_is_both_started_and_expired() {
        let (mut w, map) = watcher();
        map.start(7, 10 * SEC, 20 * SEC, "alice", "x");
        let got = events(&w.poll(30 * SEC));
        assert_eq!(
            got,
            [
                ("bypass_start".to_owned(), 7),
                ("bypass_expired".to_owned(), 7)
            ]
        );
    }

    #[test]
    fn a_restart_of_the_same_cgroup_is_a_new_bypass() {
        let (mut w, map) = watcher();
        map.start(7, 10 * SEC, 70 * SEC, "alice", "x");
        w.poll(11 * SEC);
        // Stopped and started again between two polls: a new started_ns.
        map.start(7, 12 * SEC, 80 * SEC, "bob", "y");
        let r = w.poll(13 * SEC);
        let mut got = events(&r);
        got.sort();
        assert_eq!(
            got,
            [
                ("bypass_start".to_owned(), 7),
                ("bypass_stop".to_owned(), 7)
            ]
        );
        let start = r
            .iter()
            .find(|r| r.get_str(key::EVENT) == Some("bypass_start"));
        assert_eq!(start.unwrap().get_str(key::BYPASS_USER), Some("bob"));
    }

    #[test]
    fn bypasses_of_different_cgroups_are_independent() {
        let (mut w, map) = watcher();
        map.start(1, 10 * SEC, 70 * SEC, "a", "x");
        map.start(2, 10 * SEC, 15 * SEC, "b", "y");
        let mut got = events(&w.poll(11 * SEC));
        got.sort();
        assert_eq!(
            got,
            [
                ("bypass_start".to_owned(), 1),
                ("bypass_start".to_owned(), 2)
            ]
        );
        assert_eq!(
            events(&w.poll(16 * SEC)),
            [("bypass_expired".to_owned(), 2)]
        );
        assert!(map.has(1));
    }
}
