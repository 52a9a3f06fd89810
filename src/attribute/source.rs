//! The seam between attribution and a container runtime. Docker implements
//! it today ([`super::DockerSource`]); a Podman or Incus source implements
//! the same trait and nothing downstream changes (docs/ARCHITECTURE.md,
//! "Attribution").

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use futures_util::stream::BoxStream;

use super::cgroup::container_id_from_path;
use super::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The runtime does not answer (socket missing, refused, timed out).
    #[error("{runtime} unavailable: {detail}")]
    Unavailable {
        runtime: &'static str,
        detail: String,
    },
    /// The runtime answered with an error.
    #[error("{runtime}: {detail}")]
    Runtime {
        runtime: &'static str,
        detail: String,
    },
}

impl SourceError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SourceError::Unavailable { .. })
    }
}

/// What a runtime knows about one container, reduced to what attribution
/// needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub identity: Identity,
    /// The init process while the container runs (its cgroup is the
    /// container's).
    pub pid: Option<u32>,
    pub running: bool,
    /// Every address on every network, IPv4 and IPv6.
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Create,
    Start,
    Die {
        exit_code: Option<i64>,
    },
    Destroy,
    Rename,
    /// Connected to or disconnected from a network: addresses changed.
    Network,
}

/// One runtime event about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    pub kind: EventKind,
    pub container_id: String,
    pub time: SystemTime,
    /// Position in the runtime's event log (nanoseconds), to resubscribe
    /// after it without losing events.
    pub cursor: i64,
    /// The identity carried by the event itself, when the runtime puts one
    /// there (Docker does): usable before any lookup.
    pub identity: Option<Identity>,
}

/// A container runtime attribution can follow. Clones share one
/// connection; every method may run concurrently.
pub trait ContainerSource: Clone + Send + Sync + 'static {
    /// For logs and errors ("docker").
    fn runtime(&self) -> &'static str;

    /// (Re)connect and check the runtime answers.
    fn ping(&self) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Ids of the running containers.
    fn running(&self) -> impl Future<Output = Result<Vec<String>, SourceError>> + Send;

    /// One container; `Ok(None)` when the runtime does not know it.
    fn inspect(
        &self,
        container_id: &str,
    ) -> impl Future<Output = Result<Option<ContainerInfo>, SourceError>> + Send;

    /// Container lifecycle and network events from `since_nanos` (wall
    /// clock) on. The stream ends or yields an error when the connection
    /// breaks; the caller resubscribes from its last cursor.
    fn events(&self, since_nanos: i64) -> BoxStream<'static, Result<RuntimeEvent, SourceError>>;

    /// Directories, relative to the cgroup v2 root, in which the runtime
    /// creates one cgroup per container. Watched so that a container is in
    /// scope before its first process runs.
    fn cgroup_parents(&self) -> Vec<PathBuf>;

    /// The container a cgroup path (relative to the v2 root) belongs to.
    fn container_of_cgroup(&self, path: &str) -> Option<String> {
        container_id_from_path(path)
    }
}
