//! Unit tests of the container cache.

use super::*;
use std::sync::Mutex;

#[derive(Default, Clone)]
struct FakeScope(Arc<Mutex<HashSet<u64>>>);

impl Enroller for FakeScope {
    fn enroll(&self, id: u64) -> Result<(), String> {
        self.0.lock().unwrap().insert(id);
        Ok(())
    }
    fn remove(&self, id: u64) {
        self.0.lock().unwrap().remove(&id);
    }
    fn enrolled(&self) -> Vec<u64> {
        self.0.lock().unwrap().iter().copied().collect()
    }
}

fn ident(id: &str, agent: &str) -> Identity {
    Identity {
        container_id: id.into(),
        name: format!("n-{id}"),
        image: "img".into(),
        agent: Some(agent.into()),
        project: None,
    }
}

fn cache() -> (ContainerCache, FakeScope) {
    let scope = FakeScope::default();
    (ContainerCache::new(Some(Box::new(scope.clone()))), scope)
}

const DEAD: fn(&Path, u64) -> bool = |_, _| false;

#[test]
fn bound_cgroup_is_pending_then_known_and_enrolled() {
    let (c, scope) = cache();
    assert_eq!(c.lookup_cgroup(10), Lookup::Unknown);
    c.bind(10, "a", "/cg/a".into(), true);
    assert_eq!(c.lookup_cgroup(10), Lookup::Pending("a".into()));
    assert_eq!(scope.enrolled(), [10]);
    c.set_identity(ident("a", "x"), Some(vec!["10.0.0.2".parse().unwrap()]));
    assert!(matches!(c.lookup_cgroup(10), Lookup::Known(i) if i.agent.as_deref() == Some("x")));
    assert_eq!(
        c.lookup_ip("10.0.0.2".parse().unwrap())
            .unwrap()
            .container_id,
        "a"
    );
}

#[test]
fn sub_cgroups_are_bound_but_not_enrolled() {
    let (c, scope) = cache();
    c.bind(11, "a", "/cg/a/sub".into(), false);
    assert!(scope.enrolled().is_empty());
    assert_eq!(c.lookup_cgroup(11), Lookup::Pending("a".into()));
}

#[test]
fn death_invalidates_both_indexes_together() {
    let (c, scope) = cache();
    c.bind(10, "a", "/cg/a".into(), true);
    c.set_identity(ident("a", "old"), Some(vec!["10.0.0.2".parse().unwrap()]));
    c.container_died("a", DEAD);
    assert!(scope.enrolled().is_empty(), "left the kernel scope");
    assert_eq!(
        c.lookup_ip("10.0.0.2".parse().unwrap()),
        None,
        "address freed at once"
    );
    // Late records of the dead container are still its own...
    assert!(matches!(c.lookup_cgroup(10), Lookup::Known(_)));
    // ...and a new container on the same address or cgroup id is not.
    c.bind(10, "b", "/cg/b".into(), true);
    c.set_identity(ident("b", "new"), Some(vec!["10.0.0.2".parse().unwrap()]));
    assert!(matches!(c.lookup_cgroup(10), Lookup::Known(i) if i.agent.as_deref() == Some("new")));
    assert_eq!(
        c.lookup_ip("10.0.0.2".parse().unwrap())
            .unwrap()
            .container_id,
        "b"
    );
}

#[test]
fn a_restart_keeps_its_live_cgroup() {
    let (c, scope) = cache();
    c.bind(10, "a", "/cg/a".into(), true);
    c.bind(20, "a", "/cg/a".into(), true); // the restart's new directory
    c.container_died("a", |_, id| id == 20);
    assert_eq!(scope.enrolled(), [20]);
}

#[test]
fn tombstones_expire() {
    let scope = FakeScope::default();
    let c = ContainerCache::with_ttl(Some(Box::new(scope)), Duration::ZERO);
    c.bind(10, "a", "/cg/a".into(), true);
    c.set_identity(ident("a", "x"), None);
    c.container_died("a", DEAD);
    c.purge();
    assert_eq!(c.lookup_cgroup(10), Lookup::Unknown);
    assert_eq!(c.sizes(), (0, 0, 0));
}

#[test]
fn unresolvable_stops_waiting_until_cleared() {
    let (c, _) = cache();
    c.bind(10, "a", "/cg/a".into(), true);
    c.mark_unresolvable("a");
    assert_eq!(c.lookup_cgroup(10), Lookup::Unresolvable("a".into()));
    c.clear_unresolvable();
    assert_eq!(c.lookup_cgroup(10), Lookup::Pending("a".into()));
}

#[test]
fn reconcile_removes_stale_kernel_entries() {
    let (c, scope) = cache();
    scope.enroll(99).unwrap(); // left by an earlier daemon
    c.bind(10, "a", "/cg/a".into(), true);
    assert_eq!(c.reconcile_kernel(), 1);
    assert_eq!(scope.enrolled(), [10]);
}

#[test]
fn changes_are_signalled() {
    let (c, _) = cache();
    let mut rx = c.subscribe();
    c.set_identity(ident("a", "x"), None);
    assert!(rx.has_changed().unwrap());
    rx.mark_unchanged();
}
