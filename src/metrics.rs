//! The daemon's own counters, scraped by Prometheus. Every loss anywhere in
//! the pipeline ends up in `clawker_egress_events_dropped_total{reason}`;
//! the stage that loses a record counts it through this module. A kernel
//! map without room is a degradation, counted apart in
//! `clawker_egress_kernel_map_full_total{map}` (and as a drop only where a
//! record went with it).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::detect::{AgentLimits, AgentMetrics};
use crate::vocab::{DnsReject, Hook, KernelMap, Verdict};

pub use crate::vocab::DropReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    hook: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// `policy_actions_total{action}`: what the control path did to keep the
/// kernel's policy honest (see `Metrics::policy`).
pub const POLICY_ACTIONS: [&str; 5] = [
    "rejected",           // a policy file (or reload) refused, old policy kept
    "fail_closed",        // a cgroup denied everything: its rules found no slot
    "sockets_ended",      // open sockets ended because the policy now denies them
    "sockets_end_failed", // ... that the kernel refused to end
    "reapply_failed",     // a re-decision of open sockets that did not run
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkCauseLabels {
    sink: &'static str,
    cause: &'static str,
}

/// A reading of the kernel-side counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelReading {
    /// Failed ring buffer reservations per hook, indexed by `Hook::raw()`.
    pub ringbuf_drops: [u64; crate::kernel::abi::egress_hook::HOOK_MAX as usize],
    /// New datagram flows the kernel could not track (flow table full):
    /// their packets went unrecorded, counted per packet.
    pub datagram_flows_untracked: u64,
    /// New TCP flows the kernel could not track (flow table full): no
    /// interim records, nothing lost.
    pub tcp_flows_untracked: u64,
    /// DNS answers the kernel could not cache (cache full).
    pub dns_cache_full: u64,
    /// Records not written because their container's budget was spent.
    pub rate_limited: u64,
    /// DNS queries the kernel could not remember (pending table full).
    pub dns_pending_full: u64,
    /// DNS messages the kernel rejected, in `DnsReject::ALL` order.
    pub dns_rejected: [u64; DnsReject::ALL.len()],
    /// Rejected answers past the per-socket record interval (no record).
    pub dns_unrecorded: u64,
    pub ringbuf_used_bytes: u64,
    pub ringbuf_size_bytes: u64,
}

/// Seconds; a new container is usually known within milliseconds.
const ATTRIBUTION_WAIT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    dropped: Family<ReasonLabels, Counter>,
    map_full: Family<MapLabels, Counter>,
    kernel_drops: Family<HookLabels, Counter>,
    dns_rejected: Family<ReasonLabels, Counter>,
    dns_unrecorded: Counter,
    flows: Family<StateLabels, Counter>,
    exported: Family<SinkLabels, Counter>,
    sink_failures: Family<SinkCauseLabels, Counter>,
    spool_bytes: Family<SinkLabels, Gauge>,
    policy_actions: Family<ActionLabels, Counter>,
    unattributed: Counter,
    docker_outages: Counter,
    docker_up: Gauge,
    attribution_wait: Histogram,
    ringbuf_used: Gauge,
    containers_unwatched: Gauge,
    ringbuf_size: Gauge,
    /// Kernel drop totals already folded into the counters.
    kernel_seen: Mutex<KernelSeen>,
    /// Records a local API client missed because its own queue was full.
    api_dropped: Counter,
    /// Self-metrics pushes over OTLP that failed (no record lost).
    metrics_push_failures: Counter,
    /// Per-agent series (bounded), counted by the detection stage.
    agents: AgentMetrics,
}

/// What `observe_kernel` folded in so far, and when it last warned.
#[derive(Default)]
struct KernelSeen {
    ringbuf_drops: [u64; crate::kernel::abi::egress_hook::HOOK_MAX as usize],
    datagram_flows_untracked: u64,
    tcp_flows_untracked: u64,
    dns_cache_full: u64,
    rate_limited: u64,
    dns_pending_full: u64,
    dns_rejected: [u64; DnsReject::ALL.len()],
    dns_unrecorded: u64,
    warned_ringbuf: u64,
    last_warn: Option<std::time::Instant>,
    last_map_warn: Option<std::time::Instant>,
}

/// At most one `kernel_drops` (and one `kernel_map_full`) warning per interval.
const DROP_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Metrics {
    pub fn new() -> Self {
        Self::with_agent_limits(AgentLimits::default())
    }

    pub fn with_agent_limits(limits: AgentLimits) -> Self {
        let mut registry = Registry::with_prefix("clawker_egress");
        let agents = AgentMetrics::register(&mut registry, limits);
        let m = Metrics {
            events: Family::default(),
            dropped: Family::default(),
            map_full: Family::default(),
            kernel_drops: Family::default(),
            dns_rejected: Family::default(),
            dns_unrecorded: Counter::default(),
            flows: Family::default(),
            exported: Family::default(),
            sink_failures: Family::default(),
            spool_bytes: Family::default(),
            policy_actions: Family::default(),
            unattributed: Counter::default(),
            docker_outages: Counter::default(),
            docker_up: Gauge::default(),
            attribution_wait: Histogram::new(ATTRIBUTION_WAIT_BUCKETS),
            ringbuf_used: Gauge::default(),
            containers_unwatched: Gauge::default(),
            ringbuf_size: Gauge::default(),
            kernel_seen: Mutex::new(KernelSeen::default()),
            api_dropped: Counter::default(),
            metrics_push_failures: Counter::default(),
            agents,
            registry: Registry::default(),
        };
        registry.register(
            "events",
            "Events decoded from the kernel, by hook and verdict",
            m.events.clone(),
        );
        registry.register(
            "events_dropped",
            "Records lost anywhere in the pipeline, by reason (ringbuf_full, parse_failure, sink_failure, flow_table_full: a datagram flow's packets, rate_limited, spool_full)",
            m.dropped.clone(),
        );
        // Every reason from the first scrape, so a query or an alert on
        // the counter has a series before anything was lost.
        for reason in DropReason::ALL {
            m.dropped(*reason, 0);
        }
        registry.register(
            "kernel_map_full",
            "New entries a kernel map (or the container's share of it) had no room for, by map (flows: a flow not tracked, a TCP flow still ends with one record, a datagram flow's packets are also counted in events_dropped; dns_cache: an address without domain verdict; dns_pending: a query whose answer will not count)",
            m.map_full.clone(),
        );
        for map in KernelMap::ALL {
            m.map_full(*map, 0);
        }
        registry.register(
            "policy_actions",
            "Policy control-path actions, by action (rejected, fail_closed, sockets_ended, sockets_end_failed, reapply_failed)",
            m.policy_actions.clone(),
        );
        for action in POLICY_ACTIONS {
            m.policy(action, 0);
        }
        registry.register(
            "dns_answers_rejected",
            "DNS messages the kernel did not let count, recorded with dns_rejected, by reason: answers that changed nothing (unsolicited, mismatch, local_sender; at most one record per socket per 10 ms) and queries it dropped (segmented: one send carrying several messages)",
            m.dns_rejected.clone(),
        );
        registry.register(
            "dns_answers_unrecorded",
            "Rejected DNS answers not recorded: past one record per socket per 10 ms (counted in dns_answers_rejected, not charged to the container's record budget)",
            m.dns_unrecorded.clone(),
        );
        for reason in DnsReject::ALL {
            m.dns_rejected
                .get_or_create(&ReasonLabels {
                    reason: reason.name(),
                })
                .inc_by(0);
        }
        registry.register(
            "flows",
            "Flow records made, by state (ended, active: an interim report)",
            m.flows.clone(),
        );
        registry.register(
            "kernel_ringbuf_drops",
            "Failed ring buffer reservations in the kernel, by hook",
            m.kernel_drops.clone(),
        );
        registry.register(
            "records_exported",
            "Records a sink delivered",
            m.exported.clone(),
        );
        registry.register(
            "sink_failures",
            "Records a sink gave up on, by sink and cause",
            m.sink_failures.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes an OTLP sink holds in its disk spool (records waiting for the collector)",
            m.spool_bytes.clone(),
        );
        registry.register(
            "unattributed",
            "Records about a container that no identity could be found for",
            m.unattributed.clone(),
        );
        registry.register(
            "docker_outages",
            "Times the Docker engine became unreachable (identities served from cache meanwhile)",
            m.docker_outages.clone(),
        );
        registry.register(
            "docker_up",
            "1 while the Docker engine answers and its events are followed",
            m.docker_up.clone(),
        );
        registry.register(
            "attribution_wait_seconds",
            "How long records of a container not yet known waited for its identity",
            m.attribution_wait.clone(),
        );
        registry.register(
            "containers_unwatched",
            "Containers whose cgroup lies outside the attached cgroup: their sockets run no program (nothing recorded or enforced)",
            m.containers_unwatched.clone(),
        );
        registry.register(
            "ringbuf_used_bytes",
            "Bytes in the ring buffer not yet read",
            m.ringbuf_used.clone(),
        );
        registry.register(
            "ringbuf_size_bytes",
            "Size of the ring buffer",
            m.ringbuf_size.clone(),
        );
        registry.register(
            "api_dropped",
            "Records a local API client (observe, top) missed because it read too slowly: its queue was full; other clients and sinks are unaffected",
            m.api_dropped.clone(),
        );
        registry.register(
            "metrics_push_failures",
            "Self-metrics pushes over OTLP (otlp_metrics_interval) that failed; the next push carries the cumulative values, no record is lost",
            m.metrics_push_failures.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("abi", crate::kernel::abi::EGRESS_ABI_VERSION.to_string()),
            ]),
        );
        Metrics { registry, ..m }
    }

    pub fn event(&self, hook: Hook, verdict: Verdict) {
        self.events
            .get_or_create(&EventLabels {
                hook: hook.name(),
                verdict: verdict.name(),
            })
            .inc();
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped
            .get_or_create(&ReasonLabels {
                reason: reason.name(),
            })
            .inc_by(n);
    }

    fn map_full(&self, map: KernelMap, n: u64) {
        self.map_full
            .get_or_create(&MapLabels { map: map.name() })
            .inc_by(n);
    }

    pub fn flow(&self, state: &'static str) {
        self.flows.get_or_create(&StateLabels { state }).inc();
    }

    pub fn exported(&self, sink: &'static str, n: u64) {
        self.exported.get_or_create(&SinkLabels { sink }).inc_by(n);
    }

    /// A sink lost `n` records: counted as a drop and by cause.
    pub fn sink_failure(&self, sink: &'static str, cause: &'static str, n: u64) {
        self.sink_failures
            .get_or_create(&SinkCauseLabels { sink, cause })
            .inc_by(n);
        self.dropped(DropReason::SinkFailure, n);
    }

    /// The per-agent series and enforcement gauges.
    pub fn agents(&self) -> &AgentMetrics {
        &self.agents
    }

    /// The disk spool refused `n` records (full): lost, with their reason.
    pub fn spool_full(&self, sink: &'static str, n: u64) {
        self.sink_failures
            .get_or_create(&SinkCauseLabels {
                sink,
                cause: "spool_full",
            })
            .inc_by(n);
        self.dropped(DropReason::SpoolFull, n);
    }

    /// Containers running outside the attached cgroup now.
    pub fn containers_unwatched(&self, n: usize) {
        self.containers_unwatched
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Bytes a sink's disk spool holds on disk.
    pub fn spool_bytes(&self, sink: &'static str, bytes: u64) {
        self.spool_bytes
            .get_or_create(&SinkLabels { sink })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A self-metrics push over OTLP failed.
    pub fn metrics_push_failed(&self) {
        self.metrics_push_failures.inc();
    }

    pub fn api_dropped(&self, n: u64) {
        self.api_dropped.inc_by(n);
    }

    /// One of [`POLICY_ACTIONS`], `n` times.
    pub fn policy(&self, action: &'static str, n: u64) {
        self.policy_actions
            .get_or_create(&ActionLabels { action })
            .inc_by(n);
    }

    pub fn unattributed(&self) {
        self.unattributed.inc();
    }

    pub fn docker_outage(&self) {
        self.docker_outages.inc();
    }

    pub fn docker_up(&self, up: bool) {
        self.docker_up.set(i64::from(up));
    }

    pub fn attribution_wait(&self, waited: std::time::Duration) {
        self.attribution_wait.observe(waited.as_secs_f64());
    }

    /// Fold a reading of the kernel counters in (monotonic deltas).
    pub fn observe_kernel(&self, reading: &KernelReading) {
        let Ok(mut guard) = self.kernel_seen.lock() else {
            return;
        };
        let seen = &mut *guard;
        for hook in Hook::ALL {
            let i = hook.raw() as usize;
            let delta = reading.ringbuf_drops[i].saturating_sub(seen.ringbuf_drops[i]);
            if delta > 0 {
                seen.ringbuf_drops[i] = reading.ringbuf_drops[i];
                self.kernel_drops
                    .get_or_create(&HookLabels { hook: hook.name() })
                    .inc_by(delta);
                self.dropped(DropReason::RingbufFull, delta);
            }
        }
        // A datagram flow without room is a loss (its packets go
        // unrecorded) and a full map; a TCP flow only the latter.
        let datagram = advance(
            reading.datagram_flows_untracked,
            &mut seen.datagram_flows_untracked,
        );
        let limited = advance(reading.rate_limited, &mut seen.rate_limited);
        self.dropped(DropReason::FlowTableFull, datagram);
        self.dropped(DropReason::RateLimited, limited);
        let mut lost = datagram + limited;
        let tcp = advance(reading.tcp_flows_untracked, &mut seen.tcp_flows_untracked);
        let dns_cache = advance(reading.dns_cache_full, &mut seen.dns_cache_full);
        let dns_pending = advance(reading.dns_pending_full, &mut seen.dns_pending_full);
        self.map_full(KernelMap::Flows, datagram + tcp);
        self.map_full(KernelMap::DnsCache, dns_cache);
        self.map_full(KernelMap::DnsPending, dns_pending);
        let full = datagram + tcp + dns_cache + dns_pending;
        self.dns_unrecorded
            .inc_by(advance(reading.dns_unrecorded, &mut seen.dns_unrecorded));
        for (i, reason) in DnsReject::ALL.into_iter().enumerate() {
            let delta = reading.dns_rejected[i].saturating_sub(seen.dns_rejected[i]);
            if delta > 0 {
                seen.dns_rejected[i] = reading.dns_rejected[i];
                self.dns_rejected
                    .get_or_create(&ReasonLabels {
                        reason: reason.name(),
                    })
                    .inc_by(delta);
            }
        }
        // Tetragon's convention: counters graph and alert, the log says when
        // it started (at most one line per interval while it goes on).
        lost += Hook::ALL
            .iter()
            .map(|h| reading.ringbuf_drops[h.raw() as usize])
            .sum::<u64>()
            .saturating_sub(seen.warned_ringbuf);
        seen.warned_ringbuf = Hook::ALL
            .iter()
            .map(|h| reading.ringbuf_drops[h.raw() as usize])
            .sum();
        if lost > 0
            && seen
                .last_warn
                .is_none_or(|t| t.elapsed() >= DROP_WARN_EVERY)
        {
            seen.last_warn = Some(std::time::Instant::now());
            tracing::warn!(
                event = "kernel_drops",
                lost,
                "the kernel lost records (see clawker_egress_events_dropped_total by reason)"
            );
        }
        if full > 0
            && seen
                .last_map_warn
                .is_none_or(|t| t.elapsed() >= DROP_WARN_EVERY)
        {
            seen.last_map_warn = Some(std::time::Instant::now());
            tracing::warn!(
                event = "kernel_map_full",
                flows = datagram + tcp,
                dns_cache,
                dns_pending,
                "kernel maps had no room for new entries: flows not tracked or DNS names without domain verdict (see clawker_egress_kernel_map_full_total by map)"
            );
        }
        self.ringbuf_used
            .set(i64::try_from(reading.ringbuf_used_bytes).unwrap_or(i64::MAX));
        self.ringbuf_size
            .set(i64::try_from(reading.ringbuf_size_bytes).unwrap_or(i64::MAX));
    }

    /// Records one sink delivered (tests, logs).
    pub fn exported_total(&self, sink: &'static str) -> u64 {
        self.exported.get_or_create(&SinkLabels { sink }).get()
    }

    /// Total of `events_dropped` for one reason (tests, logs).
    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.dropped
            .get_or_create(&ReasonLabels {
                reason: reason.name(),
            })
            .get()
    }

    pub fn encode(&self) -> String {
        self.agents.sweep();
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// How far a kernel total moved since `seen` (which then follows it); a
/// total below `seen` (maps replaced) counts nothing until it passes it.
fn advance(now: u64, seen: &mut u64) -> u64 {
    let delta = now.saturating_sub(*seen);
    if delta > 0 {
        *seen = now;
    }
    delta
}

/// Called before each scrape so kernel counters are current.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    refresh: Refresh,
    ready: Ready,
}

/// Set once the whole pipeline runs (drain, stages, sinks, local API):
/// `/readyz` answers 200 from then on, 503 before. `/healthz` only says
/// the process is alive; the metrics endpoint comes up first so a bad
/// address fails the start.
pub type Ready = Arc<std::sync::atomic::AtomicBool>;

/// Serve `/metrics`, `/healthz` (alive) and `/readyz` (pipeline running)
/// on an already bound listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    ready: Ready,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ServerState {
            metrics,
            refresh,
            ready,
        });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(event = "metrics_unavailable", error = %e, "metrics endpoint stopped");
    }
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    if state.ready.load(std::sync::atomic::Ordering::Acquire) {
        (axum::http::StatusCode::OK, "ready\n")
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn scrape(State(state): State<ServerState>) -> impl IntoResponse {
    (state.refresh)();
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Bind the metrics address early so a bad address is a start-up error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Until the pipeline runs, `/readyz` says 503 and `/healthz` 200: a
    /// client that waits on readiness (tests, a health check) does not
    /// talk to an API socket that is not there yet.
    #[tokio::test]
    async fn readyz_waits_for_the_pipeline() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Ready::default();
        tokio::spawn(serve(
            listener,
            Arc::new(Metrics::new()),
            Arc::new(|| {}),
            ready.clone(),
        ));
        let status = move |path: &'static str| {
            tokio::task::spawn_blocking(move || {
                match ureq::get(&format!("http://{addr}{path}")).call() {
                    Ok(r) => r.status().as_u16(),
                    Err(ureq::Error::StatusCode(code)) => code,
                    Err(e) => panic!("{path}: {e}"),
                }
            })
        };
        assert_eq!(status("/healthz").await.unwrap(), 200);
        assert_eq!(status("/readyz").await.unwrap(), 503);
        ready.store(true, std::sync::atomic::Ordering::Release);
        assert_eq!(status("/readyz").await.unwrap(), 200);
    }

    #[test]
    fn kernel_drops_fold_in_as_deltas() {
        let m = Metrics::new();
        let mut r = KernelReading::default();
        r.ringbuf_drops[Hook::Sendmsg4.raw() as usize] = 5;
        m.observe_kernel(&r);
        m.observe_kernel(&r);
        r.ringbuf_drops[Hook::Connect4.raw() as usize] = 2;
        m.observe_kernel(&r);
        assert_eq!(m.dropped_total(DropReason::RingbufFull), 7);
        let text = m.encode();
        assert!(
            text.contains("clawker_egress_events_dropped_total{reason=\"ringbuf_full\"} 7"),
            "{text}"
        );
        assert!(text.contains("clawker_egress_kernel_ringbuf_drops_total{hook=\"sendmsg4\"} 5"));
        assert!(text.contains("clawker_egress_build_info{"));
    }

    #[test]
    fn a_full_map_is_a_drop_only_where_a_record_went_with_it() {
        let m = Metrics::new();
        let map_full = |m: &Metrics, map: &str| {
            value(
                &m.encode(),
                &format!("clawker_egress_kernel_map_full_total{{map=\"{map}\"}}"),
            )
        };
        let mut r = KernelReading {
            tcp_flows_untracked: 4,
            dns_cache_full: 2,
            dns_pending_full: 1,
            ..Default::default()
        };
        m.observe_kernel(&r);
        assert_eq!(map_full(&m, "flows"), 4);
        assert_eq!(map_full(&m, "dns_cache"), 2);
        assert_eq!(map_full(&m, "dns_pending"), 1);
        for reason in DropReason::ALL {
            assert_eq!(m.dropped_total(*reason), 0, "{reason:?}");
        }
        r.datagram_flows_untracked = 3;
        r.tcp_flows_untracked = 5;
        m.observe_kernel(&r);
        m.observe_kernel(&r);
        assert_eq!(map_full(&m, "flows"), 4 + 1 + 3);
        assert_eq!(m.dropped_total(DropReason::FlowTableFull), 3);
    }

    /// The value of one series in a scrape.
    fn value(text: &str, series: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing: {text}"))
    }

    #[test]
    fn drop_and_flow_counters_exist_from_the_first_scrape() {
        let m = Metrics::new();
        let text = m.encode();
        for reason in [
            "ringbuf_full",
            "parse_failure",
            "sink_failure",
            "flow_table_full",
            "rate_limited",
            "spool_full",
        ] {
            assert!(
                text.contains(&format!(
                    "clawker_egress_events_dropped_total{{reason=\"{reason}\"}} 0"
                )),
                "{text}"
            );
        }
        for map in ["flows", "dns_cache", "dns_pending"] {
            assert!(
                text.contains(&format!(
                    "clawker_egress_kernel_map_full_total{{map=\"{map}\"}} 0"
                )),
                "{text}"
            );
        }
        assert!(
            !text.contains("dns_cache_full") && !text.contains("dns_pending_full"),
            "a full DNS map loses no record: not a drop reason: {text}"
        );
        m.flow("ended");
        assert!(
            m.encode()
                .contains("clawker_egress_flows_total{state=\"ended\"} 1"),
            "flows registered"
        );
    }
}
