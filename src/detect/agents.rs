//! Per-agent series: what each agent did, as Prometheus counters labelled
//! `agent` and `project` (and `verdict`, `l4_proto`, `reason` where a
//! detection needs them), counted from every attributed record.
//!
//! Cardinality is bounded: at most `max_pairs` (agent, project) pairs have
//! their own series; records of any further pair (and records without
//! labels) are counted under `_other`, and the overflow is counted. A pair
//! whose containers all died or were destroyed (or that was never seen
//! starting, after a daemon restart) and that sent nothing for `retention`
//! loses its series and its slot. `l4_proto` is folded into a fixed set so
//! an agent cannot grow its own series by inventing socket types.

use std::collections::{HashMap, HashSet};
use std::hash::RandomState;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::destinations::Destinations;
use super::dns::{suspicious, Suspicion};
use super::enforcement::Enforcement;
use super::resources::Usage;
use crate::capture::DnsReject;
use crate::record::{key, Record, Source, LOSS_FIELDS, RECORDS_LOST};

/// The label value of everything past the cap (and of unlabelled records).
pub const OTHER: &str = "_other";

/// How many agents get their own series, and for how long after they stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLimits {
    pub max_pairs: usize,
    pub retention: Duration,
}

impl Default for AgentLimits {
    fn default() -> Self {
        AgentLimits {
            max_pairs: 1000,
            retention: Duration::from_secs(600),
        }
    }
}

const VERDICTS: [&str; 4] = ["ALLOWED", "DENIED", "BYPASSED", "other"];
const L4: [&str; 6] = ["tcp", "udp", "icmp", "raw", "packet", "other"];
const RCODES: [&str; 5] = ["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "other"];
const SUSPICIONS: [Suspicion; 2] = [Suspicion::Long, Suspicion::Encoded];

fn fold<'a>(value: Option<&str>, known: &[&'a str]) -> &'a str {
    known[fold_index(value, known)]
}

/// Where `value` is in `known`; the last entry (`other`) if nowhere.
fn fold_index(value: Option<&str>, known: &[&str]) -> usize {
    value
        .and_then(|v| known.iter().position(|k| *k == v))
        .unwrap_or(known.len() - 1)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
    project: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    agent: String,
    project: String,
    verdict: &'static str,
    l4_proto: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtoLabels {
    agent: String,
    project: String,
    l4_proto: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    agent: String,
    project: String,
    l4_proto: &'static str,
    enforced: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RcodeLabels {
    agent: String,
    project: String,
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    agent: String,
    project: String,
    reason: &'static str,
}

type Pair = (String, String);

/// One pair's bookkeeping.
struct Slot {
    last_seen: Instant,
    /// Containers of this pair started and not yet dead.
    live: HashSet<String>,
    destinations: Destinations,
    /// The pair's busiest series, looked up once: a record then costs no
    /// label copy and no family lookup. They leave with the slot (the
    /// sweep removes a slot and its series together).
    flows: [[Option<Counter>; L4.len()]; VERDICTS.len()],
    /// bytes_out, bytes_in, packets_out, packets_in, bypassed, by l4_proto.
    proto: [[Option<Counter>; L4.len()]; 5],
}

impl Slot {
    fn new(now: Instant) -> Self {
        Slot {
            last_seen: now,
            live: HashSet::new(),
            destinations: Destinations::default(),
            flows: Default::default(),
            proto: Default::default(),
        }
    }
}

struct Table {
    slots: HashMap<Pair, Slot>,
    /// Pairs whose resource gauges are set.
    with_resources: HashSet<Pair>,
    last_sweep: Option<Instant>,
    /// The last record's (agent, project) and the pair it was counted
    /// under: consecutive records of one pair skip `pair_for`. Cleared
    /// when slots are removed (the cap may then let a pair in).
    last: Option<(Pair, Pair)>,
}

pub struct AgentMetrics {
    limits: AgentLimits,
    flows: Family<FlowLabels, Counter>,
    bytes_out: Family<ProtoLabels, Counter>,
    bytes_in: Family<ProtoLabels, Counter>,
    packets_out: Family<ProtoLabels, Counter>,
    packets_in: Family<ProtoLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
    bypassed: Family<ProtoLabels, Counter>,
    dns_queries: Family<RcodeLabels, Counter>,
    dns_suspicious: Family<ReasonLabels, Counter>,
    dns_rejected: Family<ReasonLabels, Counter>,
    new_destinations: Family<AgentLabels, Counter>,
    records_lost: Family<ReasonLabels, Counter>,
    cpu_seconds: Family<AgentLabels, Gauge<f64, AtomicU64>>,
    memory_bytes: Family<AgentLabels, Gauge>,
    pids: Family<AgentLabels, Gauge>,
    io_read_bytes: Family<AgentLabels, Gauge>,
    io_write_bytes: Family<AgentLabels, Gauge>,
    tracked: Gauge,
    overflow: Counter,
    expired: Counter,
    enforcement: Enforcement,
    hasher: RandomState,
    table: Mutex<Table>,
}

impl AgentMetrics {
    /// The families, registered under the daemon's `clawker_egress` prefix.
    pub fn register(registry: &mut Registry, limits: AgentLimits) -> Self {
        let m = AgentMetrics {
            limits,
            flows: Family::default(),
            bytes_out: Family::default(),
            bytes_in: Family::default(),
            packets_out: Family::default(),
            packets_in: Family::default(),
            denials: Family::default(),
            bypassed: Family::default(),
            dns_queries: Family::default(),
            dns_suspicious: Family::default(),
            dns_rejected: Family::default(),
            new_destinations: Family::default(),
            records_lost: Family::default(),
            cpu_seconds: Family::default(),
            memory_bytes: Family::default(),
            pids: Family::default(),
            io_read_bytes: Family::default(),
            io_write_bytes: Family::default(),
            tracked: Gauge::default(),
            overflow: Counter::default(),
            expired: Counter::default(),
            enforcement: Enforcement::register(registry),
            hasher: RandomState::new(),
            table: Mutex::new(Table {
                slots: HashMap::new(),
                with_resources: HashSet::new(),
                last_sweep: None,
                last: None,
            }),
        };
        let cap = limits.max_pairs;
        let per_agent = |what: &str| {
            format!("{what}; at most {cap} agent/project pairs, the rest as agent=\"_other\"")
        };
        registry.register(
            "agent_flows",
            per_agent("Flows and attempts an agent made (ended flows and single-record attempts, not interim reports), by verdict and l4_proto"),
            m.flows.clone(),
        );
        registry.register(
            "agent_bytes_out",
            per_agent("Bytes an agent sent (flow deltas, interim reports included), by l4_proto"),
            m.bytes_out.clone(),
        );
        registry.register(
            "agent_bytes_in",
            per_agent("Bytes an agent received, by l4_proto"),
            m.bytes_in.clone(),
        );
        registry.register(
            "agent_packets_out",
            per_agent("Packets an agent sent, by l4_proto"),
            m.packets_out.clone(),
        );
        registry.register(
            "agent_packets_in",
            per_agent("Packets an agent received, by l4_proto"),
            m.packets_in.clone(),
        );
        registry.register(
            "agent_denials",
            per_agent("Connections the policy denied for an agent, by l4_proto and enforced (false: audit mode let it through)"),
            m.denials.clone(),
        );
        registry.register(
            "agent_bypassed_flows",
            per_agent("Flows an agent made under a break-glass bypass, by l4_proto"),
            m.bypassed.clone(),
        );
        registry.register(
            "agent_dns_queries",
            per_agent("DNS exchanges of an agent, by rcode"),
            m.dns_queries.clone(),
        );
        registry.register(
            "agent_dns_suspicious",
            per_agent("DNS query names of an agent that look like tunnelling, by reason (long, encoded; docs/ALERTS.md)"),
            m.dns_suspicious.clone(),
        );
        registry.register(
            "agent_dns_answers_rejected",
            per_agent("DNS answers of an agent the kernel did not let count, by reason (unsolicited, mismatch, local_sender: forged or stray answers)"),
            m.dns_rejected.clone(),
        );
        registry.register(
            "agent_new_destinations",
            per_agent("Destinations (host name, else address) an agent reached for the first time"),
            m.new_destinations.clone(),
        );
        registry.register(
            "container_records_lost",
            per_agent("Records a container lost, by agent, project and reason (in the kernel: rate_limited, ringbuf_full, flow_not_tracked: a datagram flow its full flow share could not hold; in the OTLP sink's buffer during a collector outage: spool_full)"),
            m.records_lost.clone(),
        );
        for (name, help, family) in [
            ("agent_memory_bytes", "Memory of an agent's running containers (cgroup memory.current, summed)", &m.memory_bytes),
            ("agent_pids", "Processes of an agent's running containers (cgroup pids.current, summed)", &m.pids),
            ("agent_io_read_bytes", "Bytes an agent's running containers read from block devices (cgroup io.stat rbytes, summed; falls when a container ends)", &m.io_read_bytes),
            ("agent_io_write_bytes", "Bytes an agent's running containers wrote to block devices (cgroup io.stat wbytes, summed; falls when a container ends)", &m.io_write_bytes),
        ] {
            registry.register(name, per_agent(help), family.clone());
        }
        registry.register(
            "agent_cpu_usage_seconds",
            per_agent("CPU time of an agent's running containers (cgroup cpu.stat usage_usec, summed; falls when a container ends)"),
            m.cpu_seconds.clone(),
        );
        registry.register(
            "agent_series",
            "Agent/project pairs that have their own per-agent series now",
            m.tracked.clone(),
        );
        registry.register(
            "agent_series_overflow",
            "Records counted under agent=\"_other\" because the agent/project cap was reached",
            m.overflow.clone(),
        );
        registry.register(
            "agent_series_expired",
            "Agent/project pairs whose series were removed after their containers were gone",
            m.expired.clone(),
        );
        m
    }

    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// Count one attributed record.
    pub fn observe(&self, r: &Record) {
        self.observe_at(r, Instant::now());
    }

    pub fn observe_at(&self, r: &Record, now: Instant) {
        self.enforcement.observe(r);
        let Ok(mut guard) = self.table.lock() else {
            return;
        };
        let table = &mut *guard;
        self.resolve(table, r, now);
        if let Some((_, pair)) = &table.last {
            if let Some(slot) = table.slots.get_mut(pair) {
                match r.source {
                    Source::Overseer => self.overseer(r, &pair.0, &pair.1, slot),
                    Source::Egress => self.egress(r, &pair.0, &pair.1, slot),
                    Source::ControlPlane | Source::Exec => {}
                }
            }
        }
        self.sweep_if_due(table, now);
    }

    /// The record's pair (its own slot, taken if free, touched; past the
    /// cap, `_other`), left in `table.last`.
    fn resolve(&self, table: &mut Table, r: &Record, now: Instant) {
        let (agent, project) = (r.get_str(key::AGENT), r.get_str(key::PROJECT));
        let input = (agent.unwrap_or(OTHER), project.unwrap_or(OTHER));
        if let Some((last, pair)) = &table.last {
            if (last.0.as_str(), last.1.as_str()) == input {
                if let Some(slot) = table.slots.get_mut(pair) {
                    slot.last_seen = now;
                    let other = (OTHER, OTHER);
                    if (pair.0.as_str(), pair.1.as_str()) == other && input != other {
                        self.overflow.inc();
                    }
                    return;
                }
            }
        }
        let pair = self.pair_for(table, agent, project, now, true);
        table
            .slots
            .entry(pair.clone())
            .or_insert_with(|| Slot::new(now));
        table.last = Some(((input.0.to_owned(), input.1.to_owned()), pair));
    }

    /// The pair's own slot (taken if free, touched), or `_other` (counted
    /// as overflow when `record`: the overflow counter counts records).
    fn pair_for(
        &self,
        table: &mut Table,
        agent: Option<&str>,
        project: Option<&str>,
        now: Instant,
        record: bool,
    ) -> Pair {
        let pair = match (agent, project) {
            (None, None) => (OTHER.to_owned(), OTHER.to_owned()),
            (a, p) => (a.unwrap_or(OTHER).to_owned(), p.unwrap_or(OTHER).to_owned()),
        };
        let other = (OTHER.to_owned(), OTHER.to_owned());
        let own = table.slots.len() - usize::from(table.slots.contains_key(&other));
        let pair =
            if pair == other || table.slots.contains_key(&pair) || own < self.limits.max_pairs {
                pair
            } else {
                if record {
                    self.overflow.inc();
                }
                other
            };
        let size = table.slots.len() + usize::from(!table.slots.contains_key(&pair));
        self.tracked.set(i64::try_from(size).unwrap_or(i64::MAX));
        if !table.slots.contains_key(&pair) {
            self.zero_series(&pair.0, &pair.1);
        }
        table
            .slots
            .entry(pair.clone())
            .or_insert_with(|| Slot::new(now))
            .last_seen = now;
        pair
    }

    /// Set the resource gauges from a scan of the live containers' cgroups
    /// (agent, project, usage); pairs with no container left lose them. A
    /// running container keeps its pair's series from expiring.
    pub fn resources(&self, containers: &[(Option<String>, Option<String>, Usage)]) {
        self.resources_at(containers, Instant::now());
    }

    pub fn resources_at(
        &self,
        containers: &[(Option<String>, Option<String>, Usage)],
        now: Instant,
    ) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        let mut sums: HashMap<Pair, Usage> = HashMap::new();
        for (agent, project, usage) in containers {
            let pair = self.pair_for(&mut table, agent.as_deref(), project.as_deref(), now, false);
            *sums.entry(pair).or_default() += *usage;
        }
        for ((agent, project), u) in &sums {
            let labels = AgentLabels {
                agent: agent.clone(),
                project: project.clone(),
            };
            let g = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.cpu_seconds
                .get_or_create(&labels)
                .set(u.cpu_usec as f64 / 1e6);
            self.memory_bytes
                .get_or_create(&labels)
                .set(g(u.memory_bytes));
            self.pids.get_or_create(&labels).set(g(u.pids));
            self.io_read_bytes
                .get_or_create(&labels)
                .set(g(u.io_read_bytes));
            self.io_write_bytes
                .get_or_create(&labels)
                .set(g(u.io_write_bytes));
        }
        let gone: Vec<Pair> = table
            .with_resources
            .iter()
            .filter(|p| !sums.contains_key(*p))
            .cloned()
            .collect();
        for pair in gone {
            self.remove_resources(&pair.0, &pair.1);
        }
        table.with_resources = sums.into_keys().collect();
    }

    fn remove_resources(&self, agent: &str, project: &str) {
        let labels = AgentLabels {
            agent: agent.to_owned(),
            project: project.to_owned(),
        };
        self.cpu_seconds.remove(&labels);
        for family in [
            &self.memory_bytes,
            &self.pids,
            &self.io_read_bytes,
            &self.io_write_bytes,
        ] {
            family.remove(&labels);
        }
    }

    fn overseer(&self, r: &Record, agent: &str, project: &str, slot: &mut Slot) {
        let event = r.get_str(key::EVENT).unwrap_or("");
        if event == RECORDS_LOST {
            for (field, reason) in LOSS_FIELDS {
                let n = r.get_int(field).unwrap_or(0);
                if n > 0 {
                    self.records_lost
                        .get_or_create(&ReasonLabels {
                            agent: agent.into(),
                            project: project.into(),
                            reason,
                        })
                        .inc_by(n.unsigned_abs());
                }
            }
            return;
        }
        let Some(id) = r.get_str(key::CONTAINER_ID) else {
            return;
        };
        match event {
            "container_start" => {
                // Bounded by the containers Docker runs, not by agents.
                slot.live.insert(id.to_owned());
            }
            "container_die" | "container_destroy" => {
                slot.live.remove(id);
            }
            _ => {}
        }
    }

    fn egress(&self, r: &Record, agent: &str, project: &str, slot: &mut Slot) {
        let a = || agent.to_owned();
        let p = || project.to_owned();
        let l4 = fold_index(r.get_str(key::L4_PROTO), &L4);
        let l4_proto = L4[l4];
        if r.get_str(key::L7_PROTO) == Some("dns") && r.get_str(key::QNAME).is_some() {
            let (agent, project) = (a(), p());
            let qname = r.get_str(key::QNAME).unwrap_or("");
            self.dns_queries
                .get_or_create(&RcodeLabels {
                    agent: agent.clone(),
                    project: project.clone(),
                    rcode: fold(r.get_str(key::RCODE), &RCODES),
                })
                .inc();
            if let Some(why) = r.get_str(key::DNS_REJECTED) {
                let reason = DnsReject::ALL
                    .iter()
                    .map(|d| d.name())
                    .find(|n| *n == why)
                    .unwrap_or("other");
                self.dns_rejected
                    .get_or_create(&ReasonLabels {
                        agent: agent.clone(),
                        project: project.clone(),
                        reason,
                    })
                    .inc();
            }
            if let Some(s) = suspicious(qname) {
                self.dns_suspicious
                    .get_or_create(&ReasonLabels {
                        agent,
                        project,
                        reason: s.label(),
                    })
                    .inc();
            }
            return;
        }
        let proto = |family: &Family<ProtoLabels, Counter>| {
            family
                .get_or_create(&ProtoLabels {
                    agent: a(),
                    project: p(),
                    l4_proto,
                })
                .clone()
        };
        for (i, (family, field)) in [
            (&self.bytes_out, key::BYTES_OUT),
            (&self.bytes_in, key::BYTES_IN),
            (&self.packets_out, key::PACKETS_OUT),
            (&self.packets_in, key::PACKETS_IN),
        ]
        .into_iter()
        .enumerate()
        {
            let n = r.get_int(field).unwrap_or(0);
            if n > 0 {
                slot.proto[i][l4]
                    .get_or_insert_with(|| proto(family))
                    .inc_by(n.unsigned_abs());
            }
        }
        // An interim report is the same flow again: bytes only.
        if r.get_str(key::FLOW_STATE) == Some("active") {
            return;
        }
        let v = fold_index(r.get_str(key::VERDICT), &VERDICTS);
        let verdict = VERDICTS[v];
        slot.flows[v][l4]
            .get_or_insert_with(|| {
                self.flows
                    .get_or_create(&FlowLabels {
                        agent: a(),
                        project: p(),
                        verdict,
                        l4_proto,
                    })
                    .clone()
            })
            .inc();
        match verdict {
            "DENIED" => {
                let enforced = match r.get(key::ENFORCED) {
                    Some(crate::record::Value::Bool(false)) => "false",
                    _ => "true",
                };
                self.denials
                    .get_or_create(&DenialLabels {
                        agent: a(),
                        project: p(),
                        l4_proto,
                        enforced,
                    })
                    .inc();
            }
            "BYPASSED" => {
                slot.proto[4][l4]
                    .get_or_insert_with(|| proto(&self.bypassed))
                    .inc();
            }
            _ => {}
        }
        // An inbound record's dst is the container itself: no destination.
        let dest = match r.get_str(key::DST_HOST) {
            _ if r.get_str(key::DIRECTION) == Some(crate::record::INBOUND) => None,
            Some(h) if !h.is_empty() => Some(h),
            _ => r.get_str(key::DST_IP),
        };
        if let Some(dest) = dest {
            if slot.destinations.first_seen(&self.hasher, dest) {
                self.new_destinations
                    .get_or_create(&AgentLabels {
                        agent: a(),
                        project: p(),
                    })
                    .inc();
            }
        }
    }

    /// Drop expired pairs now (before a scrape) if a sweep is due.
    pub fn sweep(&self) {
        if let Ok(mut table) = self.table.lock() {
            self.sweep_if_due(&mut table, Instant::now());
        }
    }

    pub fn sweep_at(&self, now: Instant) {
        if let Ok(mut table) = self.table.lock() {
            table.last_sweep = None;
            self.sweep_if_due(&mut table, now);
        }
    }

    fn sweep_if_due(&self, table: &mut Table, now: Instant) {
        let every =
            (self.limits.retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(30));
        if table
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            return;
        }
        table.last_sweep = Some(now);
        let retention = self.limits.retention;
        let gone: Vec<Pair> = table
            .slots
            .iter()
            .filter(|(pair, slot)| {
                pair.0 != OTHER
                    && slot.live.is_empty()
                    && now.saturating_duration_since(slot.last_seen) >= retention
            })
            .map(|(pair, _)| pair.clone())
            .collect();
        if !gone.is_empty() {
            table.last = None;
        }
        for pair in gone {
            table.slots.remove(&pair);
            self.remove_series(&pair.0, &pair.1);
            self.expired.inc();
        }
        self.tracked
            .set(i64::try_from(table.slots.len()).unwrap_or(i64::MAX));
    }

    /// A new pair's alert inputs start at 0: `increase()` cannot see what a
    /// series already held at its first scrape, so an agent's first burst
    /// (its first upload, its first denials) would otherwise go unseen.
    fn zero_series(&self, agent: &str, project: &str) {
        let a = || agent.to_owned();
        let p = || project.to_owned();
        for l4_proto in ["tcp", "udp"] {
            let _ = self.bytes_out.get_or_create(&ProtoLabels {
                agent: a(),
                project: p(),
                l4_proto,
            });
            let _ = self.denials.get_or_create(&DenialLabels {
                agent: a(),
                project: p(),
                l4_proto,
                enforced: "true",
            });
        }
        let _ = self.new_destinations.get_or_create(&AgentLabels {
            agent: a(),
            project: p(),
        });
        for s in SUSPICIONS {
            let _ = self.dns_suspicious.get_or_create(&ReasonLabels {
                agent: a(),
                project: p(),
                reason: s.label(),
            });
        }
    }

    /// Every label set a pair can have (the vocabularies are fixed).
    fn remove_series(&self, agent: &str, project: &str) {
        let a = || agent.to_owned();
        let p = || project.to_owned();
        self.new_destinations.remove(&AgentLabels {
            agent: a(),
            project: p(),
        });
        for l4_proto in L4 {
            for verdict in VERDICTS {
                self.flows.remove(&FlowLabels {
                    agent: a(),
                    project: p(),
                    verdict,
                    l4_proto,
                });
            }
            let proto = ProtoLabels {
                agent: a(),
                project: p(),
                l4_proto,
            };
            for family in [
                &self.bytes_out,
                &self.bytes_in,
                &self.packets_out,
                &self.packets_in,
                &self.bypassed,
            ] {
                family.remove(&proto);
            }
            for enforced in ["true", "false"] {
                self.denials.remove(&DenialLabels {
                    agent: a(),
                    project: p(),
                    l4_proto,
                    enforced,
                });
            }
        }
        for rcode in RCODES {
            self.dns_queries.remove(&RcodeLabels {
                agent: a(),
                project: p(),
                rcode,
            });
        }
        for s in SUSPICIONS {
            self.dns_suspicious.remove(&ReasonLabels {
                agent: a(),
                project: p(),
                reason: s.label(),
            });
        }
        for reason in DnsReject::ALL.iter().map(|d| d.name()).chain(["other"]) {
            self.dns_rejected.remove(&ReasonLabels {
                agent: a(),
                project: p(),
                reason,
            });
        }
        self.remove_resources(agent, project);
        for (_, reason) in LOSS_FIELDS {
            self.records_lost.remove(&ReasonLabels {
                agent: a(),
                project: p(),
                reason,
            });
        }
    }
}
