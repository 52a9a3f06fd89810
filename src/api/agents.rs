//! Per-agent aggregates for `top`, folded from the records as they pass,
//! joined with the kernel's open flows when a client asks. Bounded: at most
//! [`MAX_AGENTS`] agents (the least recently seen leaves first).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime};

use super::wire::{AgentState, OpenFlow, State};
use crate::capture::{process_key, FlowSnapshot};
use crate::detect::resources::Usage;
use crate::record::{key, l4_proto, Record, Source};

pub const MAX_AGENTS: usize = 1000;
/// Records shown in an agent's drill-down: its newest in the local API's
/// history ring (`Hub::state`), not a copy per agent (1,000 agents x 20
/// copies were ~25 MiB in a burst; issue 11).
pub const RECENT_PER_AGENT: usize = 20;
/// Denied records kept for the denials pane.
const RECENT_DENIALS: usize = 50;
/// Distinct names kept per agent.
const DNS_NAMES: usize = 5;
/// cgroup ids and interim-reported flows remembered (cleared past this).
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
struct Agent {
    state: AgentState,
    /// When `state.cpu_usec` was read.
    cpu_read_at: Option<Instant>,
    seq: u64,
    /// The time of its latest record (`state.last_seen`, written when
    /// read).
    last_seen: Option<SystemTime>,
}

#[derive(Default)]
pub struct Agents {
    /// Container ids, agent/project labels, cgroup ids: none chosen by
    /// code in a container, so foldhash (docs/ARCHITECTURE.md "Hash maps").
    by_key: crate::fast_hash::HashMap<String, Agent>,
    /// cgroup id -> agent key, to place the kernel's open flows.
    cgroups: crate::fast_hash::HashMap<u64, String>,
    /// community id -> (agent key, bytes out, bytes in) already reported
    /// by interim records of flows still open: the kernel's live counters
    /// include them. (Addresses and ports are the container's choice:
    /// std's keyed SipHash.)
    interim: HashMap<String, (String, u64, u64)>,
    /// process_key -> exe, from the records that carried both: names the
    /// program of each open flow (cleared past MAX_TRACKED). Process keys
    /// are the kernel's (boot id, start time, pid): foldhash, looked up
    /// once per record.
    programs: crate::fast_hash::HashMap<String, String>,
    denials: VecDeque<Record>,
    seq: u64,
}

/// The key a record is aggregated under; `None` for daemon logs. Borrowed
/// from the record when it is the container id (no copy per record).
pub fn agent_key(r: &Record) -> Option<Cow<'_, str>> {
    if r.source == Source::ControlPlane {
        return None;
    }
    if let Some(id) = r.get_str(key::CONTAINER_ID).filter(|s| !s.is_empty()) {
        return Some(Cow::Borrowed(id));
    }
    if let Some(agent) = r.get_str(key::AGENT).filter(|s| !s.is_empty()) {
        let project = r.get_str(key::PROJECT).unwrap_or("");
        return Some(Cow::Owned(format!("{agent}/{project}")));
    }
    r.get_int(key::CGROUP_ID)
        .map(|id| Cow::Owned(format!("cgroup:{id}")))
}

fn nonneg(n: Option<i64>) -> u64 {
    n.map_or(0, i64::unsigned_abs)
}

impl Agents {
    /// Fold one record in.
    #[cfg(test)]
    pub fn ingest(&mut self, r: &Record) {
        self.ingest_batch(std::slice::from_ref(r));
    }

    /// Fold a batch in.
    pub fn ingest_batch(&mut self, batch: &[Record]) {
        for r in batch {
            if let Some(k) = agent_key(r) {
                self.aggregate(r, &k);
            }
        }
    }

    /// Fold one record into its agent's aggregates.
    fn aggregate(&mut self, r: &Record, k: &str) {
        self.seq += 1;
        if !self.by_key.contains_key(k) && self.by_key.len() >= MAX_AGENTS {
            self.evict_oldest();
        }
        let agent = match self.by_key.get_mut(k) {
            Some(a) => a,
            None => self.by_key.entry(k.to_owned()).or_default(),
        };
        agent.seq = self.seq;
        agent.last_seen = Some(r.time);
        let s = &mut agent.state;
        if s.key != k {
            k.clone_into(&mut s.key);
        }
        for (field, slot) in [
            (key::AGENT, &mut s.agent),
            (key::PROJECT, &mut s.project),
            (key::CONTAINER_NAME, &mut s.container_name),
            (key::CONTAINER_ID, &mut s.container_id),
        ] {
            if let Some(v) = r.get_str(field).filter(|v| !v.is_empty()) {
                if slot != v {
                    *slot = v.to_owned();
                }
            }
        }
        s.records += 1;
        if let (Some(pk), Some(exe)) = (r.get_str(key::PROCESS_KEY), r.get_str(key::EXE)) {
            if !self.programs.contains_key(pk) {
                if self.programs.len() >= MAX_TRACKED {
                    self.programs.clear();
                }
                self.programs.insert(pk.to_owned(), exe.to_owned());
            }
        }
        if let Some(id) = r.get_int(key::CGROUP_ID) {
            let id = id.unsigned_abs();
            if self.cgroups.get(&id).is_none_or(|known| known != k) {
                if self.cgroups.len() >= MAX_TRACKED {
                    self.cgroups.clear();
                }
                self.cgroups.insert(id, k.to_owned());
            }
        }
        let (out, inb) = (
            nonneg(r.get_int(key::BYTES_OUT)),
            nonneg(r.get_int(key::BYTES_IN)),
        );
        s.bytes_out += out;
        s.bytes_in += inb;
        let community = r.get_str(key::COMMUNITY_ID).filter(|c| !c.is_empty());
        match r.get_str(key::FLOW_STATE) {
            Some("active") => {
                if let Some(c) = community {
                    if self.interim.len() >= MAX_TRACKED {
                        self.interim.clear();
                    }
                    let e = self
                        .interim
                        .entry(c.to_owned())
                        .or_insert_with(|| (k.to_owned(), 0, 0));
                    e.1 += out;
                    e.2 += inb;
                }
            }
            Some("ended") => {
                if let Some(c) = community {
                    self.interim.remove(c);
                }
                if r.get_str(key::CLOSE_REASON) != Some("denied") {
                    s.flows += 1;
                }
            }
            _ => {}
        }
        if r.get_str(key::VERDICT) == Some("DENIED") {
            s.denials += 1;
            s.last_denied = destination(r);
            if self.denials.len() == RECENT_DENIALS {
                self.denials.pop_front();
            }
            self.denials.push_back(r.clone());
        }
        if let Some(q) = r.get_str(key::QNAME).filter(|q| !q.is_empty()) {
            let q = q.trim_end_matches('.').to_owned();
            s.dns_names.retain(|n| *n != q);
            s.dns_names.push(q);
            if s.dns_names.len() > DNS_NAMES {
                s.dns_names.remove(0);
            }
        }
    }

    /// The latest cgroup readings, by container id: agents seen in records
    /// take theirs; containers not seen yet wait for their first record.
    pub fn resources(&mut self, by_container: &HashMap<String, Usage>, at: Instant) {
        for agent in self.by_key.values_mut() {
            let s = &mut agent.state;
            if let Some(u) = by_container.get(&s.container_id) {
                if let Some(then) = agent.cpu_read_at {
                    let secs = at.saturating_duration_since(then).as_secs_f64();
                    if secs > 0.0 {
                        let used = u.cpu_usec.saturating_sub(s.cpu_usec) as f64;
                        s.cpu_millicores = (used / secs / 1000.0).round() as u64;
                    }
                }
                agent.cpu_read_at = Some(at);
                s.cpu_usec = u.cpu_usec;
                s.memory_bytes = u.memory_bytes;
                s.pids = u.pids;
            }
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(k) = self
            .by_key
            .iter()
            .min_by_key(|(_, a)| a.seq)
            .map(|(k, _)| k.clone())
        {
            self.by_key.remove(&k);
        }
    }

    /// A reading: the aggregates joined with the open flows (`now_ns`:
    /// boot-clock nanoseconds, for their age). `recent` is left empty: the
    /// hub fills it from its history.
    pub fn state(&self, open: &[FlowSnapshot], now_ns: u64) -> State {
        let mut agents: HashMap<&str, AgentState> = self
            .by_key
            .iter()
            .map(|(k, a)| {
                let mut state = a.state.clone();
                if let Some(t) = a.last_seen {
                    state.last_seen = crate::record::timestamp(t);
                }
                (k.as_str(), state)
            })
            .collect();
        for (k, out, inb) in self.interim.values() {
            if let Some(a) = agents.get_mut(k.as_str()) {
                a.bytes_out = a.bytes_out.saturating_sub(*out);
                a.bytes_in = a.bytes_in.saturating_sub(*inb);
            }
        }
        let mut flows = Vec::with_capacity(open.len());
        for f in open {
            let k = self.cgroups.get(&f.cgroup_id).map(String::as_str);
            let agent = k.and_then(|k| agents.get_mut(k));
            let mut flow = OpenFlow {
                key: k.unwrap_or("").to_owned(),
                l4_proto: l4_proto(
                    if f.remote.0.is_ipv4() {
                        libc::AF_INET as u16
                    } else {
                        libc::AF_INET6 as u16
                    },
                    0,
                    u16::from(f.protocol),
                )
                .into(),
                dst_ip: f.remote.0.to_string(),
                dst_port: f.remote.1,
                comm: f.comm.clone(),
                pid: f.tgid,
                exe: self
                    .programs
                    .get(&process_key(f.tgid, f.proc.start_ns))
                    .cloned()
                    .unwrap_or_default(),
                inbound: f.inbound,
                bytes_out: f.counters.bytes_out,
                bytes_in: f.counters.bytes_in,
                age_ms: now_ns.saturating_sub(f.start_ns) / 1_000_000,
                ..Default::default()
            };
            if let Some(a) = agent {
                a.open_flows += 1;
                a.bytes_out += f.counters.bytes_out;
                a.bytes_in += f.counters.bytes_in;
                flow.agent.clone_from(&a.agent);
                flow.project.clone_from(&a.project);
                flow.container_name.clone_from(&a.container_name);
            }
            flows.push(flow);
        }
        let mut agents: Vec<AgentState> = agents.into_values().collect();
        agents.sort_by(|a, b| a.key.cmp(&b.key));
        let json = |r: &Record| serde_json::to_value(r).unwrap_or_default();
        State {
            time: Record::new(SystemTime::now(), Source::Egress).timestamp(),
            agents,
            open_flows: flows,
            denials: self.denials.iter().map(json).collect(),
            recent: Vec::new(),
        }
    }
}

/// `host:port`, else `ip:port`, of a record's destination.
pub fn destination(r: &Record) -> String {
    let host = r
        .get_str(key::DST_HOST)
        .filter(|h| !h.is_empty())
        .or_else(|| r.get_str(key::DST_IP))
        .unwrap_or("?");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    match r.get_int(key::DST_PORT) {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Counters, Verdict};
    use std::net::{IpAddr, Ipv4Addr};

    fn rec(fields: &[(&'static str, &str)], ints: &[(&'static str, i64)]) -> Record {
        let mut r = Record::new(SystemTime::now(), Source::Egress);
        for (k, v) in fields {
            r.set(k, *v);
        }
        for (k, v) in ints {
            r.set(k, *v);
        }
        r
    }

    #[test]
    fn cgroup_readings_reach_their_container_with_a_cpu_rate() {
        let mut agents = Agents::default();
        agents.ingest(&rec(
            &[(key::CONTAINER_ID, "c1"), (key::AGENT, "a")],
            &[(key::CGROUP_ID, 7)],
        ));
        let reading = |cpu_usec| {
            HashMap::from([(
                "c1".to_owned(),
                Usage {
                    cpu_usec,
                    memory_bytes: 4 << 20,
                    pids: 3,
                    ..Default::default()
                },
            )])
        };
        let t0 = Instant::now();
        agents.resources(&reading(1_000_000), t0);
        let state = |agents: &Agents| agents.state(&[], 0).agents[0].clone();
        let s = state(&agents);
        assert_eq!((s.memory_bytes, s.pids, s.cpu_millicores), (4 << 20, 3, 0));
        // 0.5 s of CPU over 2 s: a quarter of a core.
        agents.resources(&reading(1_500_000), t0 + std::time::Duration::from_secs(2));
        assert_eq!(state(&agents).cpu_millicores, 250);
        // Another container's reading changes nothing here.
        let mut other = reading(9_000_000);
        other.insert("c2".to_owned(), other["c1"]);
        other.remove("c1");
        agents.resources(&other, t0 + std::time::Duration::from_secs(4));
        assert_eq!(state(&agents).cpu_usec, 1_500_000);
    }

    fn flow(cgroup_id: u64, out: u64) -> FlowSnapshot {
        FlowSnapshot {
            sock_cookie: 1,
            remote: (IpAddr::V4(Ipv4Addr::LOCALHOST), 80),
            local: None,
            protocol: libc::IPPROTO_TCP as u8,
            start_ns: 1_000_000,
            last_seen_ns: 0,
            cgroup_id,
            scope_cgroup_id: cgroup_id,
            pid: 5,
            tgid: 5,
            comm: "curl".into(),
            proc: Default::default(),
            verdict: Verdict::Allowed,
            syn_sent: true,
            audit: false,
            policy_end: false,
            inbound: false,
            counters: Counters {
                bytes_out: out,
                bytes_in: 0,
                packets_out: 1,
                packets_in: 0,
            },
        }
    }

    #[test]
    fn totals_denials_names_and_open_flows() {
        let mut a = Agents::default();
        let id = [
            (key::CONTAINER_ID, "c1"),
            (key::AGENT, "dev"),
            (key::PROJECT, "web"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut f = id.to_vec();
            f.extend_from_slice(extra);
            f
        };
        // the open flow's process (tgid 5, start 0) named by an earlier record
        let pk: &'static str = Box::leak(process_key(5, 0).into_boxed_str());
        a.ingest(&rec(
            &with(&[
                (key::FLOW_STATE, "ended"),
                (key::VERDICT, "ALLOWED"),
                (key::PROCESS_KEY, pk),
                (key::EXE, "/usr/bin/curl"),
            ]),
            &[
                (key::BYTES_OUT, 100),
                (key::BYTES_IN, 10),
                (key::CGROUP_ID, 7),
            ],
        ));
        a.ingest(&rec(
            &with(&[
                (key::FLOW_STATE, "ended"),
                (key::VERDICT, "DENIED"),
                (key::CLOSE_REASON, "denied"),
                (key::DST_IP, "10.0.0.1"),
                (key::DST_HOST, "evil.test"),
            ]),
            &[(key::DST_PORT, 443)],
        ));
        a.ingest(&rec(
            &with(&[(key::L7_PROTO, "dns"), (key::QNAME, "a.test.")]),
            &[],
        ));
        // An interim report of a flow still open: its bytes are in the
        // kernel's counter too, and must not count twice.
        a.ingest(&rec(
            &with(&[(key::FLOW_STATE, "active"), (key::COMMUNITY_ID, "1:x")]),
            &[(key::BYTES_OUT, 40)],
        ));
        let s = a.state(&[flow(7, 50)], 2_000_000);
        assert_eq!(s.agents.len(), 1);
        let dev = &s.agents[0];
        assert_eq!((dev.agent.as_str(), dev.project.as_str()), ("dev", "web"));
        assert_eq!(dev.flows, 1);
        assert_eq!(dev.denials, 1);
        assert_eq!(dev.last_denied, "evil.test:443");
        assert_eq!(dev.dns_names, vec!["a.test".to_string()]);
        assert_eq!(dev.open_flows, 1);
        assert_eq!(dev.bytes_out, 100 + 50);
        assert_eq!(dev.bytes_in, 10);
        assert_eq!(s.open_flows[0].agent, "dev");
        assert_eq!(s.open_flows[0].age_ms, 1);
        assert_eq!(s.open_flows[0].exe, "/usr/bin/curl");
        assert_eq!(s.denials.len(), 1);
    }

    #[test]
    fn bounded_agents() {
        let mut a = Agents::default();
        for i in 0..(MAX_AGENTS + 10) {
            a.ingest(&rec(&[(key::CONTAINER_ID, &format!("c{i}"))], &[]));
        }
        let s = a.state(&[], 0);
        assert_eq!(s.agents.len(), MAX_AGENTS);
        assert!(s.agents.iter().all(|x| x.key != "c0"));
    }

    #[test]
    fn daemon_logs_are_not_agents() {
        let r = Record::new(SystemTime::now(), Source::ControlPlane);
        assert_eq!(agent_key(&r), None);
    }
}
