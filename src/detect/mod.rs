//! Detection signals for Prometheus: per-agent series counted from every
//! attributed record (the pipeline calls [`AgentMetrics::observe`] once per
//! record), the DNS tunnelling heuristic, first-seen destinations, and the
//! enforcement gauges, and each agent's containers' resource usage. The alert rules built on them are in
//! prometheus/rules.yml, documented in docs/ALERTS.md.

mod agents;
mod destinations;
pub mod dns;
mod enforcement;
pub mod resources;

pub use agents::{AgentLimits, AgentMetrics, OTHER};
pub use enforcement::{Enforcement, PolicyModes};

#[cfg(test)]
mod tests;
