//! clawker-egress: eBPF egress monitoring for AI agent containers.
//!
//! Data path, one direction: [`kernel`] (load/attach) -> [`capture`] (ring
//! buffer drain, decode) -> [`flow`] (one record per flow) -> [`pipeline`] ([`record`] + [`attribute`]) ->
//! [`export`] (sinks). [`vocab`] (hooks, verdicts, close and drop reasons)
//! is the ground floor every stage names things from. [`metrics`] counts every stage; [`config`] and [`cli`]
//! sit at the edge. [`api`] is one more sink: the local socket `observe`
//! and `top` read.

pub mod api;
pub mod attribute;
pub mod capture;
pub mod cli;
pub mod config;
pub mod detect;
pub mod enforce;
pub mod export;
pub mod fast_hash;
pub mod flow;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod record;
pub mod stage_queue;
pub mod vocab;
