//! The follower against a fake runtime: outages, replays, one lookup per
//! container, lifecycle order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;

use super::*;
use crate::attribute::cache::Lookup;
use crate::attribute::identity::Identity;
use crate::attribute::source::{ContainerInfo, EventKind, RuntimeEvent, SourceError};

#[derive(Default)]
struct State {
    up: bool,
    pings: usize,
    containers: HashMap<String, ContainerInfo>,
    inspections: HashMap<String, usize>,
    events: Vec<RuntimeEvent>,
    /// Break the next event stream after its events (a replay follows).
    break_once: bool,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn with(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.0.lock().unwrap());
    }
    fn get<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.0.lock().unwrap())
    }
}

fn down() -> SourceError {
    SourceError::Unavailable {
        runtime: "fake",
        detail: "down".into(),
    }
}

impl ContainerSource for Fake {
    fn runtime(&self) -> &'static str {
        "fake"
    }
    async fn ping(&self) -> Result<(), SourceError> {
        let mut s = self.0.lock().unwrap();
        s.pings += 1;
        s.up.then_some(()).ok_or_else(down)
    }
    async fn running(&self) -> Result<Vec<String>, SourceError> {
        let s = self.0.lock().unwrap();
        Ok(s.containers.keys().cloned().collect())
    }
    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, SourceError> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut s = self.0.lock().unwrap();
        *s.inspections.entry(id.to_owned()).or_default() += 1;
        Ok(s.containers.get(id).cloned())
    }
    fn events(&self, since: i64) -> BoxStream<'static, Result<RuntimeEvent, SourceError>> {
        let mut s = self.0.lock().unwrap();
        let evs: Vec<_> = s
            .events
            .iter()
            .filter(|e| e.cursor >= since)
            .cloned()
            .map(Ok)
            .collect();
        if std::mem::take(&mut s.break_once) {
            stream::iter(evs)
                .chain(stream::once(async { Err(down()) }))
                .boxed()
        } else {
            stream::iter(evs).chain(stream::pending()).boxed()
        }
    }
    fn cgroup_parents(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

fn info(id: &str) -> ContainerInfo {
    ContainerInfo {
        identity: Identity {
            container_id: id.into(),
            name: format!("name-{id}"),
            image: "img".into(),
            agent: Some(format!("agent-{id}")),
            project: None,
        },
        pid: None,
        running: true,
        ips: vec![],
    }
}

fn event(kind: EventKind, id: &str, cursor: i64) -> RuntimeEvent {
    RuntimeEvent {
        kind,
        container_id: id.into(),
        time: UNIX_EPOCH + Duration::from_nanos(cursor as u64),
        cursor,
        identity: None,
    }
}

struct Harness {
    fake: Fake,
    cache: Arc<ContainerCache>,
    metrics: Arc<Metrics>,
    requests: mpsc::Sender<Request>,
    lifecycle: mpsc::Receiver<Record>,
}

fn start(fake: Fake) -> Harness {
    let cache = Arc::new(ContainerCache::new(None));
    let metrics = Arc::new(Metrics::new());
    let (req_tx, req_rx) = mpsc::channel(64);
    let (life_tx, life_rx) = mpsc::channel(64);
    let o = RuntimeFollower::new(
        fake.clone(),
        cache.clone(),
        "/nonexistent".into(),
        life_tx,
        req_rx,
        metrics.clone(),
    );
    tokio::spawn(o.run());
    Harness {
        fake,
        cache,
        metrics,
        requests: req_tx,
        lifecycle: life_rx,
    }
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric(m: &Metrics, name: &str) -> String {
    m.encode()
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn an_outage_is_counted_once_however_many_retries() {
    let h = start(Fake::default());
    until("three failed reconnects", || h.fake.get(|s| s.pings >= 3)).await;
    assert_eq!(
        metric(&h.metrics, "clawker_egress_docker_outages_total"),
        "clawker_egress_docker_outages_total 1"
    );
    assert_eq!(
        metric(&h.metrics, "clawker_egress_docker_up"),
        "clawker_egress_docker_up 0"
    );
    // Lookups fail fast while down: records do not wait for them.
    h.cache.bind(1, "c1", "/x".into(), true);
    h.requests
        .send(Request::Resolve("c1".into()))
        .await
        .unwrap();
    until("unresolvable", || {
        h.cache.lookup_cgroup(1) == Lookup::Unresolvable("c1".into())
    })
    .await;

    h.fake.with(|s| {
        s.up = true;
        s.containers.insert("c1".into(), info("c1"));
    });
    until("resynced", || {
        matches!(h.cache.lookup_cgroup(1), Lookup::Known(_))
    })
    .await;
    assert_eq!(
        metric(&h.metrics, "clawker_egress_docker_up"),
        "clawker_egress_docker_up 1"
    );
    assert_eq!(
        metric(&h.metrics, "clawker_egress_docker_outages_total"),
        "clawker_egress_docker_outages_total 1"
    );
}

#[tokio::test]
async fn one_lookup_in_flight_per_container() {
    let fake = Fake::default();
    fake.with(|s| s.up = true);
    let h = start(fake);
    until("connected", || h.fake.get(|s| s.pings >= 1)).await;
    h.fake.with(|s| {
        s.containers.insert("c2".into(), info("c2"));
    });
    for _ in 0..5 {
        h.requests
            .send(Request::Resolve("c2".into()))
            .await
            .unwrap();
    }
    until("known", || h.cache.identity("c2").is_some()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.fake.get(|s| s.inspections.get("c2").copied()), Some(1));
}

#[tokio::test]
async fn lifecycle_records_are_ordered_and_replays_are_not_repeated() {
    let fake = Fake::default();
    fake.with(|s| {
        s.up = true;
        s.break_once = true;
        s.containers.insert("c3".into(), info("c3"));
        s.events = vec![
            event(EventKind::Start, "c3", i64::MAX - 3),
            event(EventKind::Die { exit_code: Some(7) }, "c3", i64::MAX - 2),
            event(EventKind::Destroy, "c3", i64::MAX - 1),
        ];
    });
    let mut h = start(fake);
    let mut got = Vec::new();
    while got.len() < 3 {
        let r = tokio::time::timeout(Duration::from_secs(30), h.lifecycle.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(r);
    }
    let names: Vec<_> = got
        .iter()
        .map(|r| r.get_str(key::EVENT).unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["container_start", "container_die", "container_destroy"]
    );
    // The start waited for its lookup: it carries the identity.
    assert_eq!(got[0].get_str(key::AGENT), Some("agent-c3"));
    assert_eq!(got[1].get_int(key::EXIT_CODE), Some(7));
    assert!(got.iter().all(|r| r.source == Source::Overseer));
    // The stream broke and was resubscribed from the last event: the
    // replayed events are recognised.
    until("resubscribed", || h.fake.get(|s| s.pings >= 2)).await;
    let more = tokio::time::timeout(Duration::from_millis(200), h.lifecycle.recv()).await;
    assert!(more.is_err(), "no duplicate lifecycle record: {more:?}");
}
