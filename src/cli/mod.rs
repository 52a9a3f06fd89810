//! Command line: one file per subcommand; this file only declares them.

mod bypass;
mod check;
mod detach;
mod observe;
mod opensearch;
mod policy;
mod report;
mod run;
mod suggest_source;
mod top;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Outputs, Overrides, Scope};

pub use bypass::{bypass, BypassArgs};
pub use check::check;
pub use detach::detach;
pub use observe::{observe, ObserveArgs};
pub use policy::{policy, PolicyArgs, PolicyCommand};
pub use report::{report, ReportArgs};
pub use run::run;
pub use top::{top, TopArgs};

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
// Parsed once per process: the size of the flag struct does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Follow the running daemon's records, filtered (its local API).
    Observe(ObserveArgs),
    /// Live per-agent view of the running daemon (terminal UI).
    Top(TopArgs),
    /// Per-agent summary over a window, from OpenSearch: a table, --json or --csv.
    Report(ReportArgs),
    /// Print the version and the kernel ABI version.
    Version,
}

/// How a client reaches the daemon's local API.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", env = "CLAWKER_EGRESS_API_SOCKET", default_value = crate::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
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
    /// `containers` scope: the runtime's container cgroup parent, relative
    /// to the v2 root, where the programs attach ("auto": docker or
    /// system.slice; "/": the v2 root, every host process pays).
    #[arg(long, value_name = "DIR")]
    pub containers_cgroup: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Sinks, comma-separated: stdout, otlp, file:<path> (e.g. stdout,otlp).
    #[arg(long, value_name = "LIST", value_parser = parse_outputs)]
    pub output: Option<Outputs>,
    /// OTLP/gRPC endpoint, e.g. http://127.0.0.1:4317.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// PEM CA bundle that verifies the collector (https:// endpoints;
    /// default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub otlp_ca_file: Option<PathBuf>,
    /// PEM client certificate for mTLS to the collector.
    #[arg(long, value_name = "FILE")]
    pub otlp_client_cert_file: Option<PathBuf>,
    /// PEM private key of --otlp-client-cert-file (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub otlp_client_key_file: Option<PathBuf>,
    /// File holding the collector's bearer token (mode 0600); sent as
    /// `authorization: Bearer <token>`. Never the token itself.
    #[arg(long, value_name = "FILE")]
    pub otlp_bearer_token_file: Option<PathBuf>,
    /// File of `name: value` lines sent as extra OTLP request headers.
    #[arg(long, value_name = "FILE")]
    pub otlp_headers_file: Option<PathBuf>,
    /// Name the collector's certificate must carry, when it is not the
    /// endpoint's host.
    #[arg(long, value_name = "NAME")]
    pub otlp_tls_server_name: Option<String>,
    /// Compress OTLP requests.
    #[arg(long, value_enum)]
    pub otlp_compression: Option<crate::config::Compression>,
    /// Also push the self-metrics over OTLP this often (0s: off).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub otlp_metrics_interval: Option<std::time::Duration>,
    /// Prometheus endpoint address (default 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Ring buffer size in bytes (power of two, >= 4096).
    #[arg(long, value_name = "BYTES")]
    pub ringbuf_bytes: Option<u32>,
    /// Entries of the kernel flow table (default 131072; preallocated).
    #[arg(long, value_name = "N")]
    pub flow_table_size: Option<u32>,
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
    /// Record units per second one container may write (0: no limit); a
    /// record costs one unit per 256 bytes it takes on the ring (a flow
    /// record 1, an exec record 9).
    #[arg(long, value_name = "N")]
    pub container_record_rate: Option<u32>,
    /// Record units one container may write in a burst above its rate.
    #[arg(long, value_name = "N")]
    pub container_record_burst: Option<u32>,
    /// How often per-container losses are reported (`records_lost`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub loss_report_interval: Option<std::time::Duration>,
    /// Unix socket of the local API (observe, top).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
}

impl CommonArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            cgroup_root: self.cgroup_root.clone(),
            pin_root: self.pin_root.clone(),
            containers_cgroup: self.containers_cgroup.clone(),
            ..Default::default()
        }
    }
}

impl RunArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            output: self.output.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            otlp_ca_file: self.otlp_ca_file.clone(),
            otlp_client_cert_file: self.otlp_client_cert_file.clone(),
            otlp_client_key_file: self.otlp_client_key_file.clone(),
            otlp_bearer_token_file: self.otlp_bearer_token_file.clone(),
            otlp_headers_file: self.otlp_headers_file.clone(),
            otlp_tls_server_name: self.otlp_tls_server_name.clone(),
            otlp_compression: self.otlp_compression,
            otlp_metrics_interval: self.otlp_metrics_interval,
            metrics_listen: self.metrics_listen,
            ringbuf_bytes: self.ringbuf_bytes,
            flow_table_size: self.flow_table_size,
            scope: self.scope,
            policy_file: self.policy_file.clone(),
            flow_idle_timeout: self.flow_idle_timeout,
            flow_active_interval: self.flow_active_interval,
            container_record_rate: self.container_record_rate,
            container_record_burst: self.container_record_burst,
            loss_report_interval: self.loss_report_interval,
            api_socket: self.api_socket.clone(),
            ..self.common.overrides()
        }
    }
}

fn parse_outputs(s: &str) -> Result<Outputs, String> {
    s.parse()
}
