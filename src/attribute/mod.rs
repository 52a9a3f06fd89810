//! Attribution stage: who sent it. Every record about a container gets the
//! container's identity before any sink sees it (D2, D27); sinks never look
//! anything up.
//!
//! ```text
//! runtime (Docker) --events/inspect--> RuntimeFollower --+--> ContainerCache <-- Attributor (pipeline)
//!                                                        |        ^
//!                                                        |        +-- CgroupWatcher (inotify: mkdir -> enroll)
//!                                                        +--> lifecycle records --> pipeline
//! ```
//!
//! The pipeline only reads the cache and asks (never waits) for lookups;
//! the follower and the cgroup watcher write it. Enrolment in the kernel's
//! scope map follows the cache's cgroup index.

mod attributor;
mod cache;
mod cgroup;
mod docker;
mod follower;
mod identity;
mod source;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use attributor::Attributor;
pub use cache::{ContainerCache, Enroller, Lookup, TOMBSTONE_TTL};
pub use cgroup::{
    cgroup_alive, container_cgroup, container_cgroup_of_pid, container_id_from_path, unified_path,
    CgroupIndex,
};
pub use docker::{event_from_message, info_from_inspect, DockerSource};
pub use follower::{Request, RuntimeFollower};
pub use identity::{bounded, Identity, LabelPolicy, MAX_VALUE_BYTES, TRUNCATION_MARK};
pub use source::{ContainerInfo, ContainerSource, EventKind, RuntimeEvent, SourceError};
pub use watch::CgroupWatcher;

use crate::metrics::Metrics;
use crate::record::Record;

/// Lookups queued from the pipeline to the follower.
const REQUEST_QUEUE: usize = 1024;
/// Lifecycle records queued from the follower to the pipeline.
const LIFECYCLE_QUEUE: usize = 1024;

pub struct AttributionOptions {
    /// The cgroup v2 mount.
    pub cgroup2_root: PathBuf,
    /// The kernel's scope map (`containers` scope), else None.
    pub enroller: Option<Box<dyn Enroller>>,
    /// The longest a record waits for a new container's identity.
    pub wait: Duration,
}

/// The running attribution stage.
pub struct Attribution {
    /// For the pipeline.
    pub attributor: Attributor,
    /// Container lifecycle records, for the pipeline.
    pub lifecycle: mpsc::Receiver<Record>,
    pub cache: Arc<ContainerCache>,
    follower: JoinHandle<()>,
    watcher: Option<CgroupWatcher>,
}

impl Attribution {
    /// Start following `source` (inside a tokio runtime). Existing container
    /// cgroups are bound and enrolled before this returns; identities
    /// follow as the runtime answers.
    pub fn start<S: ContainerSource>(
        source: S,
        opts: AttributionOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cache = Arc::new(ContainerCache::new(opts.enroller));
        let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE);
        let (life_tx, life_rx) = mpsc::channel(LIFECYCLE_QUEUE);
        let watcher = match CgroupWatcher::spawn(
            opts.cgroup2_root.clone(),
            source.clone(),
            cache.clone(),
            req_tx.clone(),
        ) {
            Ok(w) => Some(w),
            Err(error) => {
                tracing::error!(event = "cgroup_watch_unavailable", %error, "cannot watch container cgroups: containers are in scope only from their start event");
                None
            }
        };
        let follower = RuntimeFollower::new(
            source,
            cache.clone(),
            opts.cgroup2_root,
            life_tx,
            req_rx,
            metrics.clone(),
        );
        let follower = match &watcher {
            Some(w) => follower.with_parents(w.parents()),
            None => follower,
        };
        let follower = tokio::spawn(follower.run());
        Attribution {
            attributor: Attributor::new(cache.clone(), req_tx, metrics, opts.wait),
            lifecycle: life_rx,
            cache,
            follower,
            watcher,
        }
    }

    /// Split off what the pipeline takes; the rest stops when dropped.
    pub fn split(self) -> (Attributor, mpsc::Receiver<Record>, AttributionHandle) {
        let handle = AttributionHandle {
            follower: self.follower,
            _watcher: self.watcher,
        };
        (self.attributor, self.lifecycle, handle)
    }
}

/// Keeps the follower and the cgroup watcher alive; dropping it stops them.
pub struct AttributionHandle {
    follower: JoinHandle<()>,
    _watcher: Option<CgroupWatcher>,
}

impl Drop for AttributionHandle {
    fn drop(&mut self) {
        self.follower.abort();
    }
}
