//! In-band loss reports (Kunai's loss event, Tetragon's rate-limit info):
//! every interval, each container whose kernel loss counters grew gets one
//! `records_lost` observation with the counts by reason, so the operator
//! sees *which* agent lost records, and why, in the same stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use std::path::PathBuf;

use crate::kernel::{cgroup_alive, Losses, ScopeUsage, ScopedCgroups};

/// One container's losses over one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLoss {
    pub time: SystemTime,
    /// The container's scope cgroup (0: everything, in SCOPE_ALL mode).
    pub scope_cgroup_id: u64,
    /// What it lost since the previous report.
    pub lost: Losses,
    /// The reporting interval.
    pub interval: Duration,
}

/// Reads the kernel's per-container counters and reports what grew.
pub struct LossReporter {
    usage: Arc<ScopeUsage>,
    /// Enrolled containers (None in SCOPE_ALL mode: key 0 only).
    scoped: Option<ScopedCgroups>,
    /// The cgroup2 mount: a scope's counters are forgotten only once its
    /// cgroup is gone (a container the kernel put in scope before user
    /// space enrolled it is not enrolled, and lives).
    cgroup_root: Option<PathBuf>,
    seen: HashMap<u64, Losses>,
    interval: Duration,
}

impl LossReporter {
    pub fn new(usage: Arc<ScopeUsage>, scoped: Option<ScopedCgroups>, interval: Duration) -> Self {
        LossReporter {
            usage,
            scoped,
            cgroup_root: crate::kernel::cgroup2_root().ok(),
            seen: HashMap::new(),
            interval,
        }
    }

    /// One reading: the losses that grew since the last one. Containers no
    /// longer enrolled and whose cgroup is gone are forgotten after this,
    /// their last report. Forgetting a live scope would restart its usage
    /// at 0 while its table entries stay (a quota escape) and then let the
    /// releases of those entries run past what it made.
    pub fn poll(&mut self) -> Vec<ContainerLoss> {
        let time = SystemTime::now();
        let enrolled: Option<std::collections::HashSet<u64>> =
            self.scoped.as_ref().map(|s| s.ids().into_iter().collect());
        let mut out = Vec::new();
        for (scope, counts) in self.usage.losses() {
            let before = self.seen.insert(scope, counts).unwrap_or_default();
            let lost = counts.since(&before);
            if !lost.is_empty() {
                out.push(ContainerLoss {
                    time,
                    scope_cgroup_id: scope,
                    lost,
                    interval: self.interval,
                });
            }
            let gone = || {
                self.cgroup_root
                    .as_deref()
                    .is_none_or(|root| !cgroup_alive(root, scope))
            };
            if scope != 0 && enrolled.as_ref().is_some_and(|e| !e.contains(&scope)) && gone() {
                self.usage.forget(scope);
                self.seen.remove(&scope);
            }
        }
        out
    }

    /// Report every interval into the pipeline until it closes.
    pub async fn run<T: From<ContainerLoss> + Send + 'static>(mut self, out: mpsc::Sender<Vec<T>>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let losses = self.poll();
            if losses.is_empty() {
                continue;
            }
            for loss in &losses {
                let lost = loss.lost.records.iter().sum::<u64>();
                if lost > 0 {
                    tracing::warn!(
                        event = "container_records_lost",
                        scope_cgroup_id = loss.scope_cgroup_id,
                        lost,
                        "a container lost records (records_lost record follows)"
                    );
                } else {
                    tracing::info!(
                        event = "container_map_full",
                        scope_cgroup_id = loss.scope_cgroup_id,
                        "a container found kernel tables full, no record lost (records_lost record follows)"
                    );
                }
            }
            if out
                .send(losses.into_iter().map(T::from).collect())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
