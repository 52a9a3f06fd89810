//! The container cache (P13): one cache, two indexes over it. `cgroup_id ->
//! container` for kernel records, `container_ip -> container` for sources
//! that only see an address (DNS, Envoy). A container's bindings and
//! addresses go together when it dies, so a reused cgroup id or address
//! never inherits the old labels.
//!
//! The cache also keeps the kernel's `scoped_cgroups` map in step: a cgroup
//! bound here as a container's own cgroup is enrolled there, and removed
//! when the binding dies.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::identity::Identity;
use crate::kernel::ScopedCgroups;

/// How long a dead container's cgroup still attributes records: flows end
/// (and are reported) after the processes that opened them are gone.
/// Safe: cgroup ids are never reused while a binding could still be asked
/// for (the kernel allocates them cyclically, and a new container's
/// directory is bound, replacing any old binding, before it runs).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(30);

/// Where container cgroups are enrolled for the kernel (SCOPE_ENROLLED).
pub trait Enroller: Send + Sync {
    fn enroll(&self, cgroup_id: u64) -> Result<(), String>;
    fn remove(&self, cgroup_id: u64);
    fn enrolled(&self) -> Vec<u64>;
}

impl Enroller for ScopedCgroups {
    fn enroll(&self, cgroup_id: u64) -> Result<(), String> {
        ScopedCgroups::enroll(self, cgroup_id).map_err(|e| e.to_string())
    }
    fn remove(&self, cgroup_id: u64) {
        ScopedCgroups::remove(self, cgroup_id);
    }
    fn enrolled(&self) -> Vec<u64> {
        self.ids()
    }
}

/// What the cache knows about a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Known(Arc<Identity>),
    /// A container's cgroup whose identity is still being looked up.
    Pending(Arc<str>),
    /// A container's cgroup whose identity cannot be had (the runtime does
    /// not know it, or is down): do not wait for it.
    Unresolvable(Arc<str>),
    /// Not a cgroup the cache knows as a container's.
    Unknown,
}

#[derive(Debug)]
struct Binding {
    container: Arc<str>,
    dir: PathBuf,
    enrolled: bool,
    /// Set when the cgroup died: attributes late records until then.
    dead_until: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    identity: Option<Arc<Identity>>,
    unresolvable: bool,
    ips: Vec<IpAddr>,
    touched: Instant,
}

impl Entry {
    fn new() -> Self {
        Entry {
            identity: None,
            unresolvable: false,
            ips: Vec::new(),
            touched: Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    containers: HashMap<Arc<str>, Entry>,
    /// Kernel-assigned ids: foldhash (docs/ARCHITECTURE.md "Hash maps").
    by_cgroup: crate::fast_hash::HashMap<u64, Binding>,
    by_ip: HashMap<IpAddr, Arc<str>>,
}

impl Inner {
    fn key(&mut self, container_id: &str) -> Arc<str> {
        match self.containers.get_key_value(container_id) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(container_id);
                self.containers.insert(k.clone(), Entry::new());
                k
            }
        }
    }

    fn drop_ips(&mut self, container: &str) {
        let Some(entry) = self.containers.get_mut(container) else {
            return;
        };
        for ip in entry.ips.drain(..) {
            if self.by_ip.get(&ip).is_some_and(|c| &**c == container) {
                self.by_ip.remove(&ip);
            }
        }
    }
}

pub struct ContainerCache {
    inner: RwLock<Inner>,
    enroller: Option<Box<dyn Enroller>>,
    changed: watch::Sender<u64>,
    tombstone_ttl: Duration,
}

impl ContainerCache {
    /// `enroller`: the kernel's scope map in `containers` scope, else None.
    pub fn new(enroller: Option<Box<dyn Enroller>>) -> Self {
        Self::with_ttl(enroller, TOMBSTONE_TTL)
    }

    pub fn with_ttl(enroller: Option<Box<dyn Enroller>>, tombstone_ttl: Duration) -> Self {
        ContainerCache {
            inner: RwLock::default(),
            enroller,
            changed: watch::channel(0).0,
            tombstone_ttl,
        }
    }

    /// Ticks whenever an identity becomes known or unresolvable.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic elsewhere must not take attribution down with it (D30).
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Live enrolled container cgroups, with the identity when known: the
    /// targets of per-container policy.
    pub fn enrolled(&self) -> Vec<(u64, Option<Arc<Identity>>)> {
        let inner = self.read();
        inner
            .by_cgroup
            .iter()
            .filter(|(_, b)| b.enrolled && b.dead_until.is_none())
            .map(|(id, b)| {
                let identity = inner
                    .containers
                    .get(&b.container)
                    .and_then(|e| e.identity.clone());
                (*id, identity)
            })
            .collect()
    }

    /// Live enrolled container cgroup directories with the identity when
    /// known: where per-container resource usage is read.
    pub fn enrolled_dirs(&self) -> Vec<(PathBuf, Option<Arc<Identity>>)> {
        let inner = self.read();
        inner
            .by_cgroup
            .values()
            .filter(|b| b.enrolled && b.dead_until.is_none())
            .map(|b| {
                let identity = inner
                    .containers
                    .get(&b.container)
                    .and_then(|e| e.identity.clone());
                (b.dir.clone(), identity)
            })
            .collect()
    }

    pub fn lookup_cgroup(&self, cgroup_id: u64) -> Lookup {
        let inner = self.read();
        let Some(b) = inner.by_cgroup.get(&cgroup_id) else {
            return Lookup::Unknown;
        };
        match inner.containers.get(&b.container) {
            Some(Entry {
                identity: Some(id), ..
            }) => Lookup::Known(id.clone()),
            Some(e) if !e.unresolvable && b.dead_until.is_none() => {
                Lookup::Pending(b.container.clone())
            }
            _ => Lookup::Unresolvable(b.container.clone()),
        }
    }

    /// The container an address belongs to right now (all networks).
    pub fn lookup_ip(&self, ip: IpAddr) -> Option<Arc<Identity>> {
        let inner = self.read();
        let container = inner.by_ip.get(&ip)?;
        inner.containers.get(container)?.identity.clone()
    }

    pub fn identity(&self, container_id: &str) -> Option<Arc<Identity>> {
        self.read().containers.get(container_id)?.identity.clone()
    }

    /// Bind a cgroup to a container; `own` marks the container's own cgroup
    /// (enrolled for the kernel) rather than one of its sub-cgroups.
    pub fn bind(&self, cgroup_id: u64, container_id: &str, dir: PathBuf, own: bool) {
        let mut inner = self.write();
        if let Some(b) = inner.by_cgroup.get(&cgroup_id) {
            if &*b.container == container_id && b.dead_until.is_none() {
                return;
            }
        }
        let container = inner.key(container_id);
        let enrolled = own && self.enroll(cgroup_id, container_id);
        inner.by_cgroup.insert(
            cgroup_id,
            Binding {
                container,
                dir,
                enrolled,
                dead_until: None,
            },
        );
        drop(inner);
        self.notify();
    }

    fn enroll(&self, cgroup_id: u64, container_id: &str) -> bool {
        let Some(enroller) = &self.enroller else {
            return false;
        };
        match enroller.enroll(cgroup_id) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(event = "enroll_failed", cgroup_id, container_id, %error, "container cgroup not in kernel scope: its traffic is not recorded");
                false
            }
        }
    }

    /// A container cgroup directory disappeared.
    pub fn unbind_dir(&self, dir: &Path) {
        let mut inner = self.write();
        let until = Instant::now() + self.tombstone_ttl;
        for (id, b) in inner.by_cgroup.iter_mut() {
            if b.dir == dir && b.dead_until.is_none() {
                self.kill(*id, b, until);
            }
        }
    }

    fn kill(&self, cgroup_id: u64, b: &mut Binding, until: Instant) {
        b.dead_until = Some(until);
        if b.enrolled {
            if let Some(enroller) = &self.enroller {
                enroller.remove(cgroup_id);
            }
            b.enrolled = false;
        }
    }

    /// Record what the runtime says about a container; `ips` replaces its
    /// addresses when given.
    pub fn set_identity(&self, identity: Identity, ips: Option<Vec<IpAddr>>) {
        let mut inner = self.write();
        let key = inner.key(&identity.container_id);
        if let Some(ips) = ips {
            inner.drop_ips(&key);
            for ip in &ips {
                inner.by_ip.insert(*ip, key.clone());
            }
            if let Some(e) = inner.containers.get_mut(&key) {
                e.ips = ips;
            }
        }
        if let Some(e) = inner.containers.get_mut(&key) {
            e.identity = Some(Arc::new(identity));
            e.unresolvable = false;
            e.touched = Instant::now();
        }
        drop(inner);
        self.notify();
    }

    /// The runtime cannot say who this is: records stop waiting for it.
    pub fn mark_unresolvable(&self, container_id: &str) {
        let mut inner = self.write();
        let key = inner.key(container_id);
        if let Some(e) = inner.containers.get_mut(&key) {
            if e.identity.is_none() {
                e.unresolvable = true;
            }
        }
        drop(inner);
        self.notify();
    }

    /// After a reconnect, give every unknown container another lookup.
    pub fn clear_unresolvable(&self) {
        for e in self.write().containers.values_mut() {
            e.unresolvable = false;
        }
    }

    /// The container stopped: its dead cgroups leave the kernel scope and
    /// the cgroup index, its addresses leave the address index. `alive`
    /// spares a cgroup that already belongs to a restart of it.
    pub fn container_died(&self, container_id: &str, alive: impl Fn(&Path, u64) -> bool) {
        let candidates: Vec<(u64, PathBuf)> = self
            .read()
            .by_cgroup
            .iter()
            .filter(|(_, b)| &*b.container == container_id && b.dead_until.is_none())
            .map(|(id, b)| (*id, b.dir.clone()))
            .collect();
        let dead: HashSet<u64> = candidates
            .into_iter()
            .filter(|(id, dir)| !alive(dir, *id))
            .map(|(id, _)| id)
            .collect();
        let mut inner = self.write();
        let until = Instant::now() + self.tombstone_ttl;
        for (id, b) in inner.by_cgroup.iter_mut() {
            if dead.contains(id) {
                self.kill(*id, b, until);
            }
        }
        inner.drop_ips(container_id);
    }

    /// Resynchronisation: every container not in `running` has died.
    pub fn retain_running(&self, running: &HashSet<String>, alive: impl Fn(&Path, u64) -> bool) {
        let gone: Vec<Arc<str>> = self
            .read()
            .containers
            .keys()
            .filter(|k| !running.contains(&***k))
            .cloned()
            .collect();
        for c in gone {
            self.container_died(&c, &alive);
        }
    }

    /// Forget what nothing refers to any more: dead bindings past their
    /// grace period, containers without cgroups or addresses.
    pub fn purge(&self) {
        let now = Instant::now();
        let mut inner = self.write();
        inner
            .by_cgroup
            .retain(|_, b| !matches!(b.dead_until, Some(t) if t <= now));
        let referenced: HashSet<Arc<str>> = inner
            .by_cgroup
            .values()
            .map(|b| b.container.clone())
            .collect();
        let ttl = self.tombstone_ttl;
        inner.containers.retain(|k, e| {
            referenced.contains(k) || !e.ips.is_empty() || now.duration_since(e.touched) < ttl
        });
    }

    /// Remove from the kernel scope whatever no live binding accounts for
    /// (left pinned by an earlier daemon). Returns how many went.
    pub fn reconcile_kernel(&self) -> usize {
        let Some(enroller) = &self.enroller else {
            return 0;
        };
        let inner = self.write();
        let mut removed = 0;
        for id in enroller.enrolled() {
            let live = inner.by_cgroup.get(&id).is_some_and(|b| b.enrolled);
            if !live {
                enroller.remove(id);
                removed += 1;
            }
        }
        removed
    }

    /// (containers, live cgroup bindings, addresses), for logs.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let inner = self.read();
        let live = inner
            .by_cgroup
            .values()
            .filter(|b| b.dead_until.is_none())
            .count();
        (inner.containers.len(), live, inner.by_ip.len())
    }
}

#[cfg(test)]
#[path = "tests/cache.rs"]
mod tests;
