//! Decoded kernel events: plain Rust values, no kernel layout left in them.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::kernel::abi::{egress_hook as h, egress_verdict as v};

/// The cgroup hook that saw an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Connect4,
    Connect6,
    Sendmsg4,
    Sendmsg6,
    Recvmsg4,
    Recvmsg6,
    SockCreate,
}

impl Hook {
    pub const ALL: [Hook; 7] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
        Hook::Recvmsg4,
        Hook::Recvmsg6,
        Hook::SockCreate,
    ];

    pub fn from_raw(raw: u32) -> Option<Hook> {
        Some(match raw {
            h::HOOK_CONNECT4 => Hook::Connect4,
            h::HOOK_CONNECT6 => Hook::Connect6,
            h::HOOK_SENDMSG4 => Hook::Sendmsg4,
            h::HOOK_SENDMSG6 => Hook::Sendmsg6,
            h::HOOK_RECVMSG4 => Hook::Recvmsg4,
            h::HOOK_RECVMSG6 => Hook::Recvmsg6,
            h::HOOK_SOCK_CREATE => Hook::SockCreate,
            _ => return None,
        })
    }

    /// The index of this hook's slot in the kernel's drop counters.
    pub fn raw(self) -> u32 {
        match self {
            Hook::Connect4 => h::HOOK_CONNECT4,
            Hook::Connect6 => h::HOOK_CONNECT6,
            Hook::Sendmsg4 => h::HOOK_SENDMSG4,
            Hook::Sendmsg6 => h::HOOK_SENDMSG6,
            Hook::Recvmsg4 => h::HOOK_RECVMSG4,
            Hook::Recvmsg6 => h::HOOK_RECVMSG6,
            Hook::SockCreate => h::HOOK_SOCK_CREATE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::Sendmsg4 => "sendmsg4",
            Hook::Sendmsg6 => "sendmsg6",
            Hook::Recvmsg4 => "recvmsg4",
            Hook::Recvmsg6 => "recvmsg6",
            Hook::SockCreate => "sock_create",
        }
    }
}

/// What the kernel-side policy decided (D3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allowed,
    Denied,
    Bypassed,
}

impl Verdict {
    pub fn from_raw(raw: u32) -> Option<Verdict> {
        Some(match raw {
            v::VERDICT_ALLOW => Verdict::Allowed,
            v::VERDICT_DENY => Verdict::Denied,
            v::VERDICT_BYPASS => Verdict::Bypassed,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allowed => "ALLOWED",
            Verdict::Denied => "DENIED",
            Verdict::Bypassed => "BYPASSED",
        }
    }
}

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
    pub comm: String,
}

/// Everything the capture stage hands downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Sock(SockEvent),
}
