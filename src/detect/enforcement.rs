//! Whether enforcement is on: the policy mode of every installed rule set
//! and the break-glass bypasses in force, as gauges an alert can hold
//! against a time limit ("audit mode for an hour", "a bypass longer than N").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::record::{key, Record, Source};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BypassLabels {
    cgroup_id: String,
    agent: String,
    project: String,
    user: String,
}

/// How many rule sets are installed in each mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyModes {
    pub enforce: usize,
    pub audit: usize,
    /// 1 when the daemon runs without a policy file: nothing is blocked.
    pub none: usize,
}

pub struct Enforcement {
    modes: Family<ModeLabels, Gauge>,
    bypass_started: Family<BypassLabels, Gauge>,
    /// Active bypasses by cgroup id, to remove the series at the end.
    bypasses: Mutex<HashMap<String, BypassLabels>>,
}

impl Enforcement {
    pub fn register(registry: &mut Registry) -> Self {
        let e = Enforcement {
            modes: Family::default(),
            bypass_started: Family::default(),
            bypasses: Mutex::default(),
        };
        registry.register(
            "policy_rule_sets",
            "Policy rule sets installed in the kernel, by mode (enforce, audit: decided and recorded but not blocked, none: no policy file, nothing is blocked)",
            e.modes.clone(),
        );
        registry.register(
            "bypass_started_timestamp_seconds",
            "Start (Unix time) of each break-glass bypass in force, by cgroup_id, agent, project and the user who started it; gone when it ends",
            e.bypass_started.clone(),
        );
        // Until a policy is installed nothing is enforced.
        e.policy_modes(PolicyModes {
            none: 1,
            ..PolicyModes::default()
        });
        e
    }

    pub fn policy_modes(&self, m: PolicyModes) {
        for (mode, n) in [("enforce", m.enforce), ("audit", m.audit), ("none", m.none)] {
            self.modes
                .get_or_create(&ModeLabels { mode })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Follow `bypass_start` / `bypass_stop` / `bypass_expired` records.
    pub fn observe(&self, r: &Record) {
        if r.source != Source::Overseer {
            return;
        }
        let event = r.get_str(key::EVENT).unwrap_or("");
        if !event.starts_with("bypass_") {
            return;
        }
        let Some(id) = r.get_int(key::CGROUP_ID) else {
            return;
        };
        let id = id.to_string();
        let Ok(mut active) = self.bypasses.lock() else {
            return;
        };
        if let Some(old) = active.remove(&id) {
            self.bypass_started.remove(&old);
        }
        if event == "bypass_start" {
            let s = |k| r.get_str(k).unwrap_or("").to_owned();
            let labels = BypassLabels {
                cgroup_id: id.clone(),
                agent: s(key::AGENT),
                project: s(key::PROJECT),
                user: s(key::BYPASS_USER),
            };
            let started = r
                .time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            self.bypass_started
                .get_or_create(&labels)
                .set(i64::try_from(started).unwrap_or(i64::MAX));
            active.insert(id, labels);
        }
    }
}
