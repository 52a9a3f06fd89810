//! Command line: one file per subcommand; this file only declares them.

mod bypass;
mod check;
mod detach;
mod policy;
mod report;
mod run;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Output, Overrides, Scope};

pub use bypass::{bypass, BypassArgs};
pub use check::check;
pub use detach::detach;
pub use policy::{policy, PolicyArgs, PolicyCommand};
pub use report::{report, ReportArgs};
pub use run::run;

#[derive(Debug, Parser)]
#[command(
    name = "clawker-egress",
    version,
    about = "eBPF egress monitor for AI agent containers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the BPF programs and stream records until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Preflight: can this host run the daemon? One line per finding.
    Check(CommonArgs),
    /// Remove the programs and pinned maps from the cgroup.
    Detach(CommonArgs),
    /// Audited break-glass: let a container's traffic through (still
    /// recorded, as BYPASSED) until it expires or `--off`.
    Bypass(BypassArgs),
    /// Egress policy files, offline: `check FILE`, `explain`, `suggest`.
    Policy(PolicyArgs),
    /// Per-agent summary over a window, from OpenSearch: a table, --json or --csv.
    Report(ReportArgs),
    /// Print the version and the kernel ABI version.
    Version,
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// cgroup v2 directory to attach to (default: the host's v2 root).
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// bpffs directory for pinned maps and links.
    #[arg(long, value_name = "PATH")]
    pub pin_root: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, value_enum)]
    pub output: Option<Output>,
    /// OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Prometheus endpoint address (default 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Ring buffer size in bytes (power of two, >= 4096).
    #[arg(long, value_name = "BYTES")]
    pub ringbuf_bytes: Option<u32>,
    #[arg(long, value_enum)]
    pub scope: Option<Scope>,
    /// Egress policy file (YAML); reloaded on SIGHUP and on change.
    #[arg(long = "policy", value_name = "FILE")]
    pub policy_file: Option<PathBuf>,
    /// End a datagram/raw flow after this long without a packet (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub flow_idle_timeout: Option<std::time::Duration>,
    /// Interim `active` record interval for open flows (e.g. 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub flow_active_interval: Option<std::time::Duration>,
    /// Records per second one container may write (0: no limit).
    #[arg(long, value_name = "N")]
    pub container_record_rate: Option<u32>,
    /// Records one container may write in a burst above its rate.
    #[arg(long, value_name = "N")]
    pub container_record_burst: Option<u32>,
    /// How often per-container losses are reported (`records_lost`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub loss_report_interval: Option<std::time::Duration>,
}

impl CommonArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            cgroup_root: self.cgroup_root.clone(),
            pin_root: self.pin_root.clone(),
            ..Default::default()
        }
    }
}

impl RunArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            output: self.output,
            otlp_endpoint: self.otlp_endpoint.clone(),
            metrics_listen: self.metrics_listen,
            ringbuf_bytes: self.ringbuf_bytes,
            scope: self.scope,
            policy_file: self.policy_file.clone(),
            flow_idle_timeout: self.flow_idle_timeout,
            flow_active_interval: self.flow_active_interval,
            container_record_rate: self.container_record_rate,
            container_record_burst: self.container_record_burst,
            loss_report_interval: self.loss_report_interval,
            ..self.common.overrides()
        }
    }
}
