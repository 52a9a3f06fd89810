//! Decoded kernel events: plain Rust values, no kernel layout left in them.

use std::net::IpAddr;
use std::time::SystemTime;

pub use crate::vocab::{CloseReason, DnsReject, Hook, Verdict};

use super::process::{ExecEvent, ExitEvent, ForkEvent, ProcIdent};

/// One socket operation seen at a cgroup hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockEvent {
    pub hook: Hook,
    pub time: SystemTime,
    pub cgroup_id: u64,
    /// The enrolled container cgroup that put the task in scope (0: none).
    pub scope_cgroup_id: u64,
    pub sock_cookie: u64,
    pub pid: u32,
    pub tgid: u32,
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
    pub src: Option<(IpAddr, u16)>,
    pub dst: Option<(IpAddr, u16)>,
    pub verdict: Verdict,
    /// A DENY decided in audit mode: recorded, not enforced.
    pub audit: bool,
    /// Inbound (issue 15): a listen (`Hook::Listen`, `dst` = the listening
    /// address) or a connection attempt to a listener (`src` = the peer,
    /// `dst` = the container's address).
    pub inbound: bool,
    pub comm: String,
    /// The process's start time and parent.
    pub proc: ProcIdent,
}

/// Byte and packet counts of a flow (totals or deltas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
}

impl Counters {
    /// `self - earlier`, never below zero.
    pub fn since(self, earlier: Counters) -> Counters {
        Counters {
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            packets_out: self.packets_out.saturating_sub(earlier.packets_out),
            packets_in: self.packets_in.saturating_sub(earlier.packets_in),
        }
    }
}

/// One flow as the kernel's flow table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSnapshot {
    pub sock_cookie: u64,
    pub remote: (IpAddr, u16),
    pub local: Option<(IpAddr, u16)>,
    /// IPPROTO_* of the flow's packets.
    pub protocol: u8,
    /// Boot-time nanoseconds, as the kernel stamped them.
    pub start_ns: u64,
    pub last_seen_ns: u64,
    pub cgroup_id: u64,
    pub scope_cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub verdict: Verdict,
    /// TCP: the SYN went out, so sock_ops will end this flow.
    pub syn_sent: bool,
    /// Its DENY verdict was decided in audit mode (not enforced).
    pub audit: bool,
    /// A policy change ended its socket (iter.bpf.c): close_reason=policy.
    pub policy_end: bool,
    /// Accepted by a listener in scope: `remote` connected to `local`.
    pub inbound: bool,
    pub counters: Counters,
    /// The process's start time and parent.
    pub proc: ProcIdent,
}

/// A TCP flow the kernel saw close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEnd {
    pub flow: FlowSnapshot,
    pub end_ns: u64,
    pub reason: CloseReason,
    /// errno of the socket at close, 0 if none.
    pub sk_err: i32,
}

/// Which way a DNS message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsKind {
    /// Sent by a socket in scope (recorded when sent, answered or not).
    Query,
    /// Received by a socket in scope.
    Answer,
}

/// One DNS query a socket in scope sent, or one answer it received
/// (parsed in the kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMessage {
    pub kind: DnsKind,
    pub time: SystemTime,
    /// Boot-time nanoseconds, as the kernel stamped it.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub scope_cgroup_id: u64,
    pub sock_cookie: u64,
    pub pid: u32,
    pub comm: String,
    /// Lowercase, no trailing dot; empty when the question did not parse.
    pub qname: String,
    pub qtype: u16,
    /// The DNS transaction id.
    pub txid: u16,
    /// Answers only.
    pub rcode: u8,
    /// Why it did not count (`None`: it counted): an answer that changed
    /// nothing, or a query the kernel dropped (`Segmented`).
    pub rejected: Option<DnsReject>,
    /// The server, as the socket addressed it.
    pub resolver: (IpAddr, u16),
    pub local_port: u16,
    /// IPPROTO_UDP or IPPROTO_TCP.
    pub protocol: u8,
    /// A and AAAA answers with their TTL in seconds.
    pub answers: Vec<(IpAddr, u32)>,
    /// The socket owner's process start time and parent.
    pub proc: ProcIdent,
}

/// Everything the capture stage hands downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A denied attempt, or a raw/packet socket's creation.
    Sock(SockEvent),
    FlowEnd(FlowEnd),
    /// A socket whose datagram flows are now over.
    SockRelease {
        sock_cookie: u64,
    },
    Dns(DnsMessage),
    /// A process in scope ran execve() (argv masked).
    Exec(Box<ExecEvent>),
    /// A new process in scope (the process cache only).
    Fork(ForkEvent),
    /// A process in scope ended.
    Exit(ExitEvent),
}
