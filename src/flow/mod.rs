//! Flow stage: turns kernel flow state into one record per flow, at its end
//! (D7, D29), plus interim `active` records for long flows.
//!
//! TCP flows end in the kernel (sock_ops sees TCP_CLOSE and emits the final
//! counters). Datagram and raw flows end here: when their socket is released
//! (the kernel says so) or after the idle timeout. Ending a flow is
//! `lookup_and_delete` on the kernel table, so exactly one path ends each
//! flow, across daemon restarts too (the table is pinned).

mod community;
mod dns;
mod names;
mod procs;
mod stage;

pub use community::community_id;
pub use dns::DnsExchange;
pub use procs::Processes;
pub use stage::{FlowOptions, FlowStage};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::capture::{
    CloseReason, ContainerLoss, Counters, ExecEvent, ExitEvent, FlowSnapshot, SockEvent,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// The flow is over; counters are what flowed since the last record.
    Ended,
    /// The flow is still open (interim record, one per active interval).
    Active,
}

impl FlowState {
    pub fn name(self) -> &'static str {
        match self {
            FlowState::Ended => "ended",
            FlowState::Active => "active",
        }
    }
}

/// One record's worth of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    pub flow: FlowSnapshot,
    pub state: FlowState,
    /// When it ended, or when this interim record was taken.
    pub time: SystemTime,
    /// Age of the flow at `time`.
    pub duration: Duration,
    /// What flowed since the previous record of this flow.
    pub delta: Counters,
    pub close_reason: Option<CloseReason>,
    /// errno of a failed connection (0: none).
    pub errno: i32,
    /// The name the container resolved the remote address from.
    pub dst_host: Option<String>,
    /// The program of the process that made it (the process cache).
    pub exe: Option<Arc<str>>,
}

/// One exec, with its parent's program (the process cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub exec: Box<ExecEvent>,
    pub parent_exe: Option<Arc<str>>,
}

/// One process end, with its program and how long it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    pub exit: ExitEvent,
    pub exe: Option<Arc<str>>,
    pub duration: Duration,
}

/// What the record stage receives: flows, and the attempts that never
/// became flows (denied, raw socket creation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// With the name the destination was resolved from, if any, and the
    /// process's program.
    Attempt(SockEvent, Option<String>, Option<Arc<str>>),
    Flow(FlowRecord),
    /// A DNS exchange: its own record (`l7_proto`=`dns`), and the program
    /// of the process that asked.
    Dns(DnsExchange, Option<Arc<str>>),
    /// A process in scope ran execve() (`clawker.source`=`exec`).
    Exec(ExecRecord),
    /// A process in scope ended (`clawker.source`=`exec`).
    Exit(ExitRecord),
    /// Records a container lost in the kernel over an interval (in-band).
    Lost(ContainerLoss),
}

impl From<ContainerLoss> for Observation {
    fn from(loss: ContainerLoss) -> Self {
        Observation::Lost(loss)
    }
}
