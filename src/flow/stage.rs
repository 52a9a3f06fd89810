//! The flow stage task: between capture and the record stage.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::dns::Exchanges;
use super::names::Names;
use super::procs::Processes;
use super::{ExecRecord, ExitRecord, FlowRecord, FlowState, Observation};
use crate::capture::{decode_flow, BootClock, CloseReason, Counters, Event, FlowEnd, FlowSnapshot};
use crate::kernel::{abi, FlowMaps};
use crate::metrics::{DropReason, Metrics};

#[derive(Debug, Clone, Copy)]
pub struct FlowOptions {
    /// A datagram/raw flow with no packet for this long has ended.
    pub idle_timeout: Duration,
    /// An open flow gets an interim `active` record this often.
    pub active_interval: Duration,
    /// How often the flow table is swept for idle and long flows.
    pub sweep_every: Duration,
}

impl Default for FlowOptions {
    fn default() -> Self {
        FlowOptions {
            idle_timeout: Duration::from_secs(30),
            active_interval: Duration::from_secs(300),
            sweep_every: Duration::from_secs(1),
        }
    }
}

/// Released sockets are handled this soon (one table sweep covers many).
const RELEASE_LATENCY: Duration = Duration::from_millis(100);

pub struct FlowStage {
    maps: FlowMaps,
    clock: BootClock,
    opts: FlowOptions,
    metrics: Arc<Metrics>,
    /// Sockets released since the last sweep: their datagram flows end.
    /// Socket cookies (kernel-assigned): foldhash (docs/ARCHITECTURE.md
    /// "Hash maps").
    released: crate::fast_hash::HashSet<u64>,
    names: Names,
    dns: Exchanges,
    procs: Processes,
    last_sweep: Instant,
}

impl FlowStage {
    pub fn new(maps: FlowMaps, clock: BootClock, opts: FlowOptions, metrics: Arc<Metrics>) -> Self {
        FlowStage {
            maps,
            clock,
            opts,
            metrics,
            released: Default::default(),
            names: Names::default(),
            dns: Exchanges::default(),
            procs: Processes::default(),
            last_sweep: Instant::now(),
        }
    }

    /// Run until capture closes its channel. Open flows stay in the pinned
    /// table for the next daemon to end.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Vec<Event>>,
        tx: mpsc::Sender<Vec<Observation>>,
    ) {
        let mut tick = tokio::time::interval(RELEASE_LATENCY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let out = tokio::select! {
                batch = rx.recv() => match batch {
                    Some(events) => self.on_events(events),
                    None => return,
                },
                _ = tick.tick() => self.maybe_sweep(),
            };
            // In chunks (a sweep can end a whole table of datagram flows).
            if crate::stage_queue::send(&tx, out).await.is_err() {
                return;
            }
        }
    }

    fn on_events(&mut self, events: Vec<Event>) -> Vec<Observation> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            match event {
                Event::Sock(ev) => {
                    let host = ev
                        .dst
                        .and_then(|(ip, _)| self.names.name_of(ev.scope_cgroup_id, ip));
                    // Named now, in ring order: a later exec record of the
                    // same batch must not rename it.
                    let exe = self.procs.exe_for(ev.tgid, &ev.proc);
                    out.push(Observation::Attempt(ev, host, exe));
                }
                Event::Dns(message) => {
                    self.names.learn(&message);
                    let mut done = Vec::new();
                    self.dns.on_message(message, &mut done);
                    out.extend(done.into_iter().map(|d| Observation::Dns(d, None)));
                }
                Event::FlowEnd(end) => {
                    self.dns_socket_closed(end.flow.sock_cookie, &mut out);
                    out.push(self.tcp_ended(end));
                }
                Event::SockRelease { sock_cookie } => {
                    self.dns_socket_closed(sock_cookie, &mut out);
                    self.released.insert(sock_cookie);
                }
                Event::Exec(exec) => {
                    let parent_exe =
                        self.procs
                            .exe_at(exec.proc.ppid, exec.parent_start_ns, exec.ts_ns);
                    self.procs.exec(&exec);
                    out.push(Observation::Exec(ExecRecord { exec, parent_exe }));
                }
                Event::Fork(fork) => self.procs.fork(&fork),
                Event::Exit(exit) => {
                    let exe = self.procs.exit(&exit);
                    let duration =
                        Duration::from_nanos(exit.ts_ns.saturating_sub(exit.proc.start_ns));
                    out.push(Observation::Exit(ExitRecord {
                        exit,
                        exe,
                        duration,
                    }));
                }
            }
        }
        self.name_programs(&mut out);
        out
    }

    /// Every flow and DNS observation gets the program its process ran
    /// when the flow started or the message was sent: the one whose exec
    /// record carries the image id the record carries (process cache), so
    /// an exec after that does not rename it. Attempts are named as they
    /// are read.
    fn name_programs(&mut self, out: &mut [Observation]) {
        for o in out {
            match o {
                Observation::Flow(f) => {
                    let flow = &f.flow;
                    f.exe = self.procs.exe_for(flow.tgid, &flow.proc)
                }
                Observation::Dns(d, exe) => {
                    let m = d.first();
                    *exe = self.procs.exe_for(m.pid, &m.proc);
                }
                Observation::Attempt(..)
                | Observation::Exec(_)
                | Observation::Exit(_)
                | Observation::Lost(_) => {}
            }
        }
    }

    fn dns_socket_closed(&mut self, cookie: u64, out: &mut Vec<Observation>) {
        let mut done = Vec::new();
        self.dns.socket_closed(cookie, &mut done);
        out.extend(done.into_iter().map(|d| Observation::Dns(d, None)));
    }

    fn maybe_sweep(&mut self) -> Vec<Observation> {
        let due = self.last_sweep.elapsed() >= self.opts.sweep_every;
        if !due && self.released.is_empty() {
            return Vec::new();
        }
        let mut done = Vec::new();
        self.dns.expire(Instant::now(), &mut done);
        let mut out = self.sweep();
        out.extend(done.into_iter().map(|d| Observation::Dns(d, None)));
        self.procs.expire(Instant::now());
        self.name_programs(&mut out);
        out
    }

    /// One pass over the open flows: end what is over, report what is long.
    fn sweep(&mut self) -> Vec<Observation> {
        self.last_sweep = Instant::now();
        let now = BootClock::now_boot_ns();
        let released = std::mem::take(&mut self.released);
        let mut out = Vec::new();
        // Streamed batch by batch: the table is not copied (it can hold
        // 100,000 open flows, ~26 MiB).
        for (key, value) in self.maps.each_open_flow() {
            let Ok(flow) = decode_flow(&key, &value) else {
                self.metrics.dropped(DropReason::ParseFailure, 1);
                continue;
            };
            let is_tcp = i32::from(flow.protocol) == libc::IPPROTO_TCP;
            let gone = released.contains(&flow.sock_cookie);
            let idle = now.saturating_sub(flow.last_seen_ns) >= nanos(self.opts.idle_timeout);
            let ending = match (is_tcp, gone, idle) {
                // A connect that never sent its SYN: sock_ops will not see it.
                (true, true, _) if !flow.syn_sent => Some((CloseReason::Unreachable, now)),
                (true, _, _) => None,
                // A datagram socket a policy change disconnected.
                (false, _, _) if flow.policy_end => Some((CloseReason::Policy, now)),
                (false, true, _) => Some((CloseReason::SocketClosed, now)),
                (false, false, true) => Some((CloseReason::Idle, flow.last_seen_ns)),
                (false, false, false) => None,
            };
            let record = match ending {
                Some((reason, end_ns)) => self.end(&key, reason, end_ns),
                None => self.interim(&key, flow, now),
            };
            out.extend(record.map(Observation::Flow));
        }
        self.maps.flush_released();
        out
    }

    /// End a flow user space owns; `None` if the kernel ended it first.
    fn end(&self, key: &abi::flow_key, reason: CloseReason, end_ns: u64) -> Option<FlowRecord> {
        let value = self.maps.take(key)?;
        let flow = decode_flow(key, &value).ok()?;
        Some(self.ended(flow, key, reason, end_ns, 0))
    }

    fn tcp_ended(&self, end: FlowEnd) -> Observation {
        let key = raw_key(&end.flow);
        Observation::Flow(self.ended(end.flow, &key, end.reason, end.end_ns, end.sk_err))
    }

    fn ended(
        &self,
        flow: FlowSnapshot,
        key: &abi::flow_key,
        reason: CloseReason,
        end_ns: u64,
        errno: i32,
    ) -> FlowRecord {
        let baseline = self.maps.reported(key).map(counters_of).unwrap_or_default();
        self.maps.forget_reported(key);
        self.metrics.flow(FlowState::Ended.name());
        FlowRecord {
            dst_host: self.names.name_of(flow.scope_cgroup_id, flow.remote.0),
            state: FlowState::Ended,
            time: self.clock.to_wall(end_ns),
            duration: Duration::from_nanos(end_ns.saturating_sub(flow.start_ns)),
            delta: flow.counters.since(baseline),
            close_reason: Some(reason),
            errno: if reason == CloseReason::Fin { 0 } else { errno },
            exe: None,
            flow,
        }
    }

    /// An `active` record when the flow has been open for another interval.
    fn interim(&self, key: &abi::flow_key, flow: FlowSnapshot, now: u64) -> Option<FlowRecord> {
        let reported = self.maps.reported(key);
        let since = reported.map_or(flow.start_ns, |r| r.last_report_ns);
        if now.saturating_sub(since) < nanos(self.opts.active_interval) {
            return None;
        }
        let baseline = reported.map(counters_of).unwrap_or_default();
        let mark = abi::flow_reported {
            bytes_out: flow.counters.bytes_out,
            bytes_in: flow.counters.bytes_in,
            packets_out: flow.counters.packets_out,
            packets_in: flow.counters.packets_in,
            last_report_ns: now,
        };
        if let Err(e) = self.maps.set_reported(key, &mark) {
            // Without a baseline the next record would repeat these bytes.
            tracing::warn!(event = "flow_report_failed", error = %e, "interim record skipped");
            return None;
        }
        self.metrics.flow(FlowState::Active.name());
        Some(FlowRecord {
            dst_host: self.names.name_of(flow.scope_cgroup_id, flow.remote.0),
            state: FlowState::Active,
            time: self.clock.to_wall(now),
            duration: Duration::from_nanos(now.saturating_sub(flow.start_ns)),
            delta: flow.counters.since(baseline),
            close_reason: None,
            errno: 0,
            exe: None,
            flow,
        })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn counters_of(r: abi::flow_reported) -> Counters {
    Counters {
        bytes_out: r.bytes_out,
        bytes_in: r.bytes_in,
        packets_out: r.packets_out,
        packets_in: r.packets_in,
    }
}

/// The kernel key of a decoded flow (the inverse of `decode_flow`'s key part).
fn raw_key(flow: &FlowSnapshot) -> abi::flow_key {
    let mut key = abi::flow_key {
        sock_cookie: flow.sock_cookie,
        remote_port: flow.remote.1,
        protocol: flow.protocol,
        ..Default::default()
    };
    match flow.remote.0 {
        IpAddr::V4(a) => {
            key.family = libc::AF_INET as u8;
            key.remote_ip[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key.family = libc::AF_INET6 as u8;
            key.remote_ip = a.octets();
        }
    }
    key
}
