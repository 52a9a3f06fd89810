//! Follows the container runtime: a full resync on every (re)connection,
//! then its event stream. Keeps the container cache current, answers lookups
//! the pipeline asks for (one in flight per container), and emits the
//! container lifecycle records (`clawker.source` = `overseer`).
//!
//! When the runtime goes away the cache keeps serving what it has; the
//! outage is logged once (`event=docker_unavailable`) and counted, and the
//! follower reconnects with backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};

use super::cache::ContainerCache;
use super::cgroup::{cgroup_alive, container_cgroup, container_cgroup_of_pid, CgroupIndex};
use super::source::{ContainerInfo, ContainerSource, EventKind, RuntimeEvent, SourceError};
use crate::metrics::Metrics;
use crate::record::{key, Record, Source};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Concurrent inspections during a resync.
const RESYNC_PARALLEL: usize = 8;
/// Replayed events already handled are recognised among this many.
const RECENT_EVENTS: usize = 1024;

/// What the pipeline asks of the follower. Never answered directly: the
/// answer lands in the cache, which wakes the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Look this container up.
    Resolve(Arc<str>),
    /// Find out whether this cgroup belongs to a container.
    Classify(u64),
}

/// Per container, in order: what is left to do once its lookup is back.
/// Lifecycle records wait behind a lookup so they carry its answer and
/// keep their order.
#[derive(Debug)]
enum Step {
    Inspect,
    Inspecting,
    Emit(RuntimeEvent),
    Died,
}

#[derive(PartialEq, Eq)]
enum Exit {
    Reconnect,
    Shutdown,
}

type Inspected = (String, Result<Option<ContainerInfo>, SourceError>);

pub struct RuntimeFollower<S: ContainerSource> {
    source: S,
    cache: Arc<ContainerCache>,
    lifecycle: mpsc::Sender<Record>,
    requests: mpsc::Receiver<Request>,
    metrics: Arc<Metrics>,
    root: PathBuf,
    classifier: CgroupIndex,
    steps: HashMap<String, VecDeque<Step>>,
    inspections: JoinSet<Inspected>,
    /// Which container each lookup task is for (a task that panicked still
    /// has its queue moved on).
    tasks: HashMap<tokio::task::Id, String>,
    cursor: Option<i64>,
    recent: VecDeque<(i64, String, &'static str)>,
    /// Tells the cgroup watcher where containers' cgroups live.
    parents: Option<std::sync::mpsc::Sender<PathBuf>>,
}

impl<S: ContainerSource> RuntimeFollower<S> {
    pub fn new(
        source: S,
        cache: Arc<ContainerCache>,
        cgroup_root: PathBuf,
        lifecycle: mpsc::Sender<Record>,
        requests: mpsc::Receiver<Request>,
        metrics: Arc<Metrics>,
    ) -> Self {
        RuntimeFollower {
            source,
            cache,
            lifecycle,
            requests,
            metrics,
            classifier: CgroupIndex::new(cgroup_root.clone()),
            root: cgroup_root,
            steps: HashMap::new(),
            inspections: JoinSet::new(),
            tasks: HashMap::new(),
            cursor: None,
            recent: VecDeque::new(),
            parents: None,
        }
    }

    /// Report every container's cgroup parent to the cgroup watcher.
    pub fn with_parents(mut self, parents: std::sync::mpsc::Sender<PathBuf>) -> Self {
        self.parents = Some(parents);
        self
    }

    /// Until the pipeline goes away.
    pub async fn run(mut self) {
        let runtime = self.source.runtime();
        let mut backoff = BACKOFF_MIN;
        let mut down_since: Option<Instant> = None;
        loop {
            match self.connect().await {
                Ok(()) => {
                    if let Some(t) = down_since.take() {
                        let down_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
                        tracing::info!(
                            event = "docker_available",
                            runtime,
                            down_ms,
                            "container runtime back; resynchronised"
                        );
                    }
                    let followed = Instant::now();
                    if self.follow().await == Exit::Shutdown {
                        return;
                    }
                    // A stream that breaks at once, again and again, must
                    // not become a busy loop of resyncs.
                    if followed.elapsed() < BACKOFF_MAX {
                        if self.serve_for(backoff, true).await == Exit::Shutdown {
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    } else {
                        backoff = BACKOFF_MIN;
                    }
                }
                Err(error) => {
                    self.metrics.docker_up(false);
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        self.metrics.docker_outage();
                        tracing::warn!(event = "docker_unavailable", runtime, %error, "container runtime unavailable: serving cached identities, reconnecting");
                    }
                    if self.serve_for(backoff, false).await == Exit::Shutdown {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<(), SourceError> {
        self.source.ping().await?;
        self.resync().await?;
        self.metrics.docker_up(true);
        Ok(())
    }

    /// Make the cache match the runtime: every running container looked
    /// up, everything else dead.
    async fn resync(&mut self) -> Result<(), SourceError> {
        let started = now_nanos();
        let ids = self.source.running().await?;
        self.cache.clear_unresolvable();
        let source = self.source.clone();
        let results: Vec<Inspected> = stream::iter(ids.iter().cloned())
            .map(|id| {
                let s = source.clone();
                async move {
                    let r = s.inspect(&id).await;
                    (id, r)
                }
            })
            .buffer_unordered(RESYNC_PARALLEL)
            .collect()
            .await;
        for (id, result) in results {
            match result {
                Ok(Some(info)) => self.apply(info),
                Ok(None) => {}
                Err(e) if e.is_unavailable() => return Err(e),
                Err(_) => self.cache.mark_unresolvable(&id),
            }
        }
        let running: HashSet<String> = ids.into_iter().collect();
        self.cache.retain_running(&running, cgroup_alive);
        let stale = self.cache.reconcile_kernel();
        self.cursor.get_or_insert(started);
        let (containers, cgroups, ips) = self.cache.sizes();
        tracing::info!(
            event = "containers_synced",
            runtime = self.source.runtime(),
            running = running.len(),
            containers,
            cgroups,
            ips,
            stale_enrollments_removed = stale,
            "container cache resynchronised"
        );
        Ok(())
    }

    /// Follow the event stream until it breaks (or the pipeline stops).
    async fn follow(&mut self) -> Exit {
        let since = self.cursor.unwrap_or_else(now_nanos);
        let mut events = self.source.events(since);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        if !self.on_event(ev).await {
                            return Exit::Shutdown;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "event stream broke; resubscribing");
                        return Exit::Reconnect;
                    }
                    None => return Exit::Reconnect,
                },
                req = self.requests.recv() => match req {
                    Some(req) => self.on_request(req, true).await,
                    None => return Exit::Shutdown,
                },
                Some(done) = self.inspections.join_next_with_id(), if !self.inspections.is_empty() => {
                    self.on_joined(done).await;
                }
                _ = tick.tick() => self.cache.purge(),
            }
        }
    }

    /// Answer requests for `delay` without following events. While the
    /// runtime is away (`!connected`) lookups fail fast so no record waits.
    async fn serve_for(&mut self, delay: Duration, connected: bool) -> Exit {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Exit::Reconnect,
                req = self.requests.recv() => match req {
                    Some(req) => self.on_request(req, connected).await,
                    None => return Exit::Shutdown,
                },
                Some(done) = self.inspections.join_next_with_id(), if !self.inspections.is_empty() => {
                    self.on_joined(done).await;
                }
            }
        }
    }

    async fn on_request(&mut self, req: Request, connected: bool) {
        let container = match req {
            Request::Resolve(c) => c.to_string(),
            Request::Classify(cgroup_id) => match self.classify(cgroup_id) {
                Some(c) => c,
                None => return,
            },
        };
        if self.cache.identity(&container).is_some() || self.steps.contains_key(&container) {
            return; // known, or its lookup is already under way
        }
        if connected {
            self.enqueue(&container, Step::Inspect).await;
        } else {
            self.cache.mark_unresolvable(&container);
        }
    }

    /// A cgroup the kernel reported that nobody bound: a container's own
    /// cgroup enrolled before we knew it, or (in `--scope all`) one of its
    /// sub-cgroups. Bound here so later records find it.
    fn classify(&mut self, cgroup_id: u64) -> Option<String> {
        let rel = self.classifier.path_of(cgroup_id)?;
        let rel = rel.to_string_lossy();
        let container = self.source.container_of_cgroup(&rel)?;
        let own = container_cgroup(&rel).is_some_and(|(_, dir)| dir == rel);
        let dir = self.root.join(rel.trim_start_matches('/'));
        self.cache.bind(cgroup_id, &container, dir, own);
        Some(container)
    }

    /// Handle one event; false once the pipeline has gone.
    async fn on_event(&mut self, ev: RuntimeEvent) -> bool {
        if self.seen(&ev) {
            return true;
        }
        self.cursor = Some(self.cursor.unwrap_or(0).max(ev.cursor));
        let id = ev.container_id.clone();
        // The event itself names the container: usable before any lookup,
        // which is what attributes a container's very first connection.
        if let Some(identity) = &ev.identity {
            if self.cache.identity(&id).is_none() || ev.kind == EventKind::Rename {
                self.cache.set_identity(identity.clone(), None);
            }
        }
        match ev.kind {
            EventKind::Create if ev.identity.is_none() => self.enqueue(&id, Step::Inspect).await,
            EventKind::Create => {}
            EventKind::Start => {
                self.enqueue(&id, Step::Inspect).await;
                self.enqueue(&id, Step::Emit(ev)).await;
            }
            EventKind::Die { .. } | EventKind::Destroy => {
                self.enqueue(&id, Step::Emit(ev)).await;
                self.enqueue(&id, Step::Died).await;
            }
            EventKind::Rename | EventKind::Network => self.enqueue(&id, Step::Inspect).await,
        }
        !self.lifecycle.is_closed()
    }

    /// Has this event been handled already (a replay after resubscribing)?
    fn seen(&mut self, ev: &RuntimeEvent) -> bool {
        let tag = event_name(&ev.kind);
        if self
            .recent
            .iter()
            .any(|(c, id, t)| *c == ev.cursor && *t == tag && *id == ev.container_id)
        {
            return true;
        }
        if self.recent.len() >= RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent
            .push_back((ev.cursor, ev.container_id.clone(), tag));
        false
    }

    async fn enqueue(&mut self, id: &str, step: Step) {
        self.steps.entry(id.to_owned()).or_default().push_back(step);
        self.advance(id).await;
    }

    /// Run a container's queued steps until one waits on a lookup.
    async fn advance(&mut self, id: &str) {
        loop {
            let Some(queue) = self.steps.get_mut(id) else {
                return;
            };
            match queue.front_mut() {
                None => {
                    self.steps.remove(id);
                    return;
                }
                Some(Step::Inspecting) => return,
                Some(step @ Step::Inspect) => {
                    *step = Step::Inspecting;
                    let (source, owned) = (self.source.clone(), id.to_owned());
                    let task = self.inspections.spawn(async move {
                        let r = source.inspect(&owned).await;
                        (owned, r)
                    });
                    self.tasks.insert(task.id(), id.to_owned());
                    return;
                }
                Some(_) => {
                    if let Some(step) = queue.pop_front() {
                        self.run_step(id, step).await;
                    }
                }
            }
        }
    }

    async fn on_joined(&mut self, done: Result<(tokio::task::Id, Inspected), JoinError>) {
        let (task, inspected) = match done {
            Ok((task, inspected)) => (task, Some(inspected)),
            Err(e) => (e.id(), None),
        };
        let Some(container) = self.tasks.remove(&task) else {
            return;
        };
        let inspected = inspected.unwrap_or_else(|| {
            let detail = "lookup task failed".to_owned();
            let runtime = self.source.runtime();
            (container, Err(SourceError::Runtime { runtime, detail }))
        });
        self.on_inspected(inspected).await;
    }

    async fn on_inspected(&mut self, (id, result): Inspected) {
        match result {
            Ok(Some(info)) => self.apply(info),
            Ok(None) | Err(_) => {
                if self.cache.identity(&id).is_none() {
                    self.cache.mark_unresolvable(&id);
                }
            }
        }
        if let Some(queue) = self.steps.get_mut(&id) {
            if matches!(queue.front(), Some(Step::Inspecting)) {
                queue.pop_front();
            }
        }
        self.advance(&id).await;
    }

    /// What a lookup found: identity and addresses, and the container's
    /// own cgroup (from its init process) bound and enrolled.
    fn apply(&self, info: ContainerInfo) {
        let id = info.identity.container_id.clone();
        let pid = info.pid.filter(|_| info.running);
        self.cache.set_identity(info.identity, Some(info.ips));
        if let Some((cid, dir, ino)) = pid.and_then(|p| container_cgroup_of_pid(&self.root, p)) {
            if cid == id {
                if let (Some(tx), Some(parent)) = (&self.parents, dir.parent()) {
                    let _ = tx.send(parent.to_path_buf()); // the watcher dedupes
                }
                self.cache.bind(ino, &id, dir, true);
            }
        }
    }

    async fn run_step(&mut self, id: &str, step: Step) {
        match step {
            Step::Emit(ev) => {
                let record = self.lifecycle_record(&ev);
                // Waits while the pipeline is busy: lifecycle records are
                // few, and none is dropped.
                let _ = self.lifecycle.send(record).await;
            }
            Step::Died => self.cache.container_died(id, cgroup_alive),
            Step::Inspect | Step::Inspecting => {}
        }
    }

    fn lifecycle_record(&self, ev: &RuntimeEvent) -> Record {
        let event = event_name(&ev.kind);
        let mut r = Record::new(ev.time, Source::Overseer);
        r.set(key::EVENT, event);
        if let EventKind::Die {
            exit_code: Some(code),
        } = ev.kind
        {
            r.set(key::EXIT_CODE, code);
        }
        let identity = self
            .cache
            .identity(&ev.container_id)
            .or_else(|| ev.identity.clone().map(Arc::new));
        let body = match &identity {
            Some(i) => {
                i.apply(&mut r);
                match &i.agent {
                    Some(agent) => format!("{event} {} agent={agent}", i.name),
                    None => format!("{event} {}", i.name),
                }
            }
            None => {
                r.set(key::CONTAINER_ID, ev.container_id.as_str());
                format!("{event} {}", ev.container_id)
            }
        };
        r.with_body(body)
    }
}

fn event_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Create => "container_create",
        EventKind::Start => "container_start",
        EventKind::Die { .. } => "container_die",
        EventKind::Destroy => "container_destroy",
        EventKind::Rename => "container_rename",
        EventKind::Network => "container_network",
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "tests/follower.rs"]
mod tests;
