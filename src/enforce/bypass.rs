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

/// Watches the bypass map and reports changes as overseer records.
pub struct BypassWatcher {
    maps: PolicyMaps,
    clock: BootClock,
    /// Active bypasses as last seen: cgroup id -> started_ns.
    seen: HashMap<u64, abi::bypass_entry>,
    /// A bypass ended since the last sweep.
    ended: bool,
    reapply: Option<Reapply>,
}

impl BypassWatcher {
    pub fn new(maps: PolicyMaps, clock: BootClock) -> Self {
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
        let current: HashMap<u64, abi::bypass_entry> = self.maps.bypasses().into_iter().collect();
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
                self.maps.clear_bypass(*id);
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
