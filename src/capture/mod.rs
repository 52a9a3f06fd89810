//! Capture stage: drain the kernel ring buffer on a dedicated thread (epoll,
//! no busy polling), decode each record, and pass batches of [`Event`]s down
//! the pipeline. Parse failures are counted here, where they happen.

pub mod argv;
mod clock;
mod decode;
mod drain;
mod event;
mod loss;
mod process;

pub use clock::BootClock;
pub use decode::{decode, decode_flow, DecodeError};
pub use drain::{spawn_drain, DrainHandle};
pub use event::{
    CloseReason, Counters, DnsKind, DnsMessage, DnsReject, Event, FlowEnd, FlowSnapshot, Hook,
    SockEvent, Verdict,
};
pub use loss::{ContainerLoss, LossReporter};
pub use process::{boot_id, process_key, ExecEvent, ExitEvent, ForkEvent, ProcIdent};
