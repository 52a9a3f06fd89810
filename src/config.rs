//! Configuration: defaults <- TOML file <- `CLAWKER_EGRESS_*` environment
//! <- command-line flags. An unknown key or a bad value is an error that
//! names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use crate::export::Compression;
use crate::export::TransportSettings;

pub const ENV_PREFIX: &str = "CLAWKER_EGRESS_";

/// One sink: `stdout`, `otlp` or `file:<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// One JSON object per line on standard output.
    Stdout,
    /// OTLP/gRPC logs to --otlp-endpoint.
    Otlp,
    /// JSON lines appended to a file, rotated by size (`file_rotate_bytes`,
    /// `file_rotate_keep`).
    File(PathBuf),
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Stdout => f.write_str("stdout"),
            Output::Otlp => f.write_str("otlp"),
            Output::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "stdout" => Ok(Output::Stdout),
            "otlp" => Ok(Output::Otlp),
            other => match other.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Output::File(PathBuf::from(p))),
                _ => Err(format!(
                    "{other:?}: an output is stdout, otlp or file:<path>"
                )),
            },
        }
    }
}

/// Every sink the records go to, each with its own queue and loss
/// accounting: `stdout`, `stdout,otlp`, `otlp,file:/var/log/egress.jsonl`.
/// In TOML a comma-separated string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs(pub Vec<Output>);

impl Outputs {
    pub fn one(o: Output) -> Self {
        Outputs(vec![o])
    }

    pub fn has(&self, o: &Output) -> bool {
        self.0.contains(o)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Output> {
        self.0.iter()
    }
}

impl PartialEq<Output> for Outputs {
    fn eq(&self, other: &Output) -> bool {
        self.0.len() == 1 && &self.0[0] == other
    }
}

impl std::str::FromStr for Outputs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let list = s
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<Output>, String>>()?;
        Outputs::checked(list)
    }
}

impl Outputs {
    fn checked(list: Vec<Output>) -> Result<Self, String> {
        if list.is_empty() {
            return Err("no output given".into());
        }
        for (i, o) in list.iter().enumerate() {
            if list[..i].contains(o) {
                return Err(format!("output {o} is given twice"));
            }
        }
        Ok(Outputs(list))
    }
}

impl std::fmt::Display for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.iter().map(Output::to_string).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for Outputs {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Outputs {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            One(String),
            Many(Vec<String>),
        }
        let list = match Repr::deserialize(de)? {
            Repr::One(s) => s,
            Repr::Many(v) => v.join(","),
        };
        list.parse().map_err(serde::de::Error::custom)
    }
}

/// Which processes are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `all` with an explicit --cgroup-root, `containers` at the host root.
    Auto,
    /// Every process under the attach cgroup.
    All,
    /// Only container cgroups (and their sub-cgroups).
    Containers,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// cgroup v2 directory to attach to; default: the v2 root from /proc/mounts.
    pub cgroup_root: Option<PathBuf>,
    /// `containers` scope: where the runtime makes container cgroups,
    /// relative to the v2 root. The programs attach there, so host
    /// processes run none. "auto": `docker` (cgroupfs driver), or
    /// `system.slice` when Docker's systemd driver put containers there;
    /// "/": the v2 root (every host process pays the scope check; needed
    /// for containers under a custom `--cgroup-parent` outside it).
    pub containers_cgroup: String,
    pub output: Outputs,
    pub otlp_endpoint: String,
    /// A `file:` output is rotated when it reaches this size ("file.1", …).
    pub file_rotate_bytes: u64,
    /// Rotated files kept per `file:` output (the oldest is deleted).
    pub file_rotate_keep: u32,
    /// OTLP: records held in memory (encoded, ~0.5 KB each) while the
    /// collector is slow or away; beyond it records go to the disk spool.
    pub otlp_queue_records: usize,
    /// OTLP disk spool directory (one subdirectory per OTLP sink, locked:
    /// one daemon per directory).
    pub spool_dir: PathBuf,
    /// Bound of the disk spool in bytes; 0 disables it: the memory queue
    /// is then the whole buffer, shared fairly between containers (a lone
    /// busy container gets about half of it during an outage), and what
    /// it refuses is lost, counted as `queue_full` and reported per
    /// container (docs/SECURITY.md "The OTLP sink's buffer is shared fairly").
    pub spool_bytes: u64,
    /// PEM CA bundle that verifies the collector (https:// only); none:
    /// the system's roots. docs/SECURITY.md "Credentials and transport".
    pub otlp_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mTLS (both or neither).
    pub otlp_client_cert_file: Option<PathBuf>,
    pub otlp_client_key_file: Option<PathBuf>,
    /// File holding the token sent as `authorization: Bearer <token>`.
    pub otlp_bearer_token_file: Option<PathBuf>,
    /// File of `name: value` lines sent as extra request headers.
    pub otlp_headers_file: Option<PathBuf>,
    /// Name the collector's certificate must carry, when not the endpoint's host.
    pub otlp_tls_server_name: Option<String>,
    /// Request compression: "none" or "gzip".
    pub otlp_compression: Compression,
    /// Push the self-metrics over OTLP this often, beside `/metrics`
    /// ("0s": off, the default; needs `output` otlp).
    #[serde(with = "humantime_serde")]
    pub otlp_metrics_interval: Duration,
    pub metrics_listen: SocketAddr,
    /// Ring buffer size in bytes: a power of two, at least 4096 (P6: 1 MiB).
    pub ringbuf_bytes: u32,
    /// Entries of the kernel flow table (open flows of every container;
    /// preallocated: docs/SCALE.md "Flow table").
    pub flow_table_size: u32,
    /// Where maps and links are pinned (a bpffs directory).
    pub pin_root: PathBuf,
    pub scope: Scope,
    /// Egress policy (YAML, docs/POLICY.md); none: observe only, block nothing.
    pub policy_file: Option<PathBuf>,
    /// tracing filter, e.g. "info" or "clawker_egress=debug".
    pub log_level: String,
    /// A datagram/raw flow with no packet for this long has ended ("30s").
    #[serde(with = "humantime_serde")]
    pub flow_idle_timeout: Duration,
    /// An open flow gets an interim `active` record this often ("5m").
    #[serde(with = "humantime_serde")]
    pub flow_active_interval: Duration,
    /// The Docker engine's API socket (attribution).
    pub docker_socket: PathBuf,
    /// Docker label whose value is a record's `agent` (D17: verbatim).
    pub agent_label: String,
    /// Docker label whose value is a record's `project`.
    pub project_label: String,
    /// Longest a record of a just-started container waits for its
    /// identity before it goes out unattributed ("5s": a loaded dockerd took
    /// over a second to start a container, and its records then went out
    /// unattributed). Docker answers an
    /// inspect of a starting container only once it has started.
    #[serde(with = "humantime_serde")]
    pub attribution_wait: Duration,
    /// Record units per second one container may put on the ring buffer
    /// (P14; 0: no limit): a record costs one unit per 256 bytes of ring
    /// (`EGRESS_RECORD_UNIT_BYTES`; a flow record 1, an exec record 9). Its
    /// excess is lost, counted and reported for it only.
    pub container_record_rate: u32,
    /// Record units one container may write in a burst above its rate.
    pub container_record_burst: u32,
    /// Open flows one container may hold in the kernel's flow table.
    pub container_max_flows: u32,
    /// DNS answers one container may hold in the kernel's DNS cache.
    pub container_max_dns_answers: u32,
    /// DNS queries one container may have waiting for their answer in the
    /// kernel (beyond, a query is still recorded but its answer does not
    /// count: its domain rules fail closed, no one else's).
    pub container_max_dns_pending: u32,
    /// How often per-container losses become `records_lost` records ("10s").
    #[serde(with = "humantime_serde")]
    pub loss_report_interval: Duration,
    /// The local API's unix socket (`observe`, `top`; docs/API.md).
    pub api_socket: PathBuf,
    /// Group that may use the API socket besides root (mode 0660).
    pub api_group: Option<String>,
    /// History `observe --since/--last` can reach: at most this many
    /// records...
    pub api_history_records: usize,
    /// ...of at most this age ("5m").
    #[serde(with = "humantime_serde")]
    pub api_history_age: Duration,
    /// Records queued for one API client before its records are dropped
    /// (counted, and told to that client).
    pub api_queue_records: usize,
    /// Agent/project pairs with their own per-agent Prometheus series; the
    /// rest are counted as agent="_other" (docs/ALERTS.md).
    pub agent_series_max: usize,
    /// How long a pair's series stay after its last container is gone ("10m").
    #[serde(with = "humantime_serde")]
    pub agent_series_retention: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cgroup_root: None,
            containers_cgroup: "auto".into(),
            output: Outputs::one(Output::Stdout),
            otlp_endpoint: "http://127.0.0.1:4317".into(),
            file_rotate_bytes: 100 << 20,
            file_rotate_keep: 5,
            otlp_queue_records: 20_000,
            spool_dir: PathBuf::from("/var/lib/clawker-egress/spool"),
            spool_bytes: 1 << 30,
            otlp_ca_file: None,
            otlp_client_cert_file: None,
            otlp_client_key_file: None,
            otlp_bearer_token_file: None,
            otlp_headers_file: None,
            otlp_tls_server_name: None,
            otlp_compression: Compression::None,
            otlp_metrics_interval: Duration::ZERO,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            ringbuf_bytes: crate::kernel::abi::EGRESS_RINGBUF_DEFAULT_BYTES,
            flow_table_size: crate::kernel::abi::EGRESS_MAX_FLOWS,
            pin_root: PathBuf::from("/sys/fs/bpf/clawker-egress"),
            scope: Scope::Auto,
            policy_file: None,
            log_level: "info".into(),
            flow_idle_timeout: Duration::from_secs(30),
            flow_active_interval: Duration::from_secs(300),
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            agent_label: "dev.clawker.agent".into(),
            project_label: "dev.clawker.project".into(),
            attribution_wait: Duration::from_secs(5),
            container_record_rate: crate::kernel::Fairness::default().records_per_sec,
            container_record_burst: crate::kernel::Fairness::default().record_burst,
            container_max_flows: crate::kernel::Fairness::default().max_flows_per_container,
            container_max_dns_answers: crate::kernel::Fairness::default().max_dns_per_container,
            container_max_dns_pending: crate::kernel::Fairness::default()
                .max_dns_pending_per_container,
            loss_report_interval: Duration::from_secs(10),
            api_socket: PathBuf::from(crate::api::DEFAULT_SOCKET),
            api_group: None,
            api_history_records: crate::api::HubOptions::default().history_records,
            api_history_age: crate::api::HubOptions::default().history_age,
            api_queue_records: crate::api::HubOptions::default().queue_records,
            agent_series_max: crate::detect::AgentLimits::default().max_pairs,
            agent_series_retention: crate::detect::AgentLimits::default().retention,
        }
    }
}

/// Flags given on the command line; `None` means "not given".
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containers_cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Outputs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_client_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_client_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_bearer_token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_headers_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_tls_server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_compression: Option<Compression>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub otlp_metrics_interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ringbuf_bytes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_table_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_root: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<PathBuf>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub flow_idle_timeout: Option<Duration>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub flow_active_interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_record_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_record_burst: Option<u32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub loss_report_interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The local API's bounds.
    pub fn api_options(&self) -> crate::api::HubOptions {
        crate::api::HubOptions {
            history_records: self.api_history_records,
            history_age: self.api_history_age,
            queue_records: self.api_queue_records.max(1),
        }
    }

    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_path_buf()));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig.merge(Env::prefixed(ENV_PREFIX))
            .merge(Serialized::defaults(flags))
            .extract::<Config>()
            .map_err(|e| ConfigError::Invalid(one_line(&e)))
            .and_then(Config::validated)
    }

    fn validated(self) -> Result<Config, ConfigError> {
        if !self.otlp_metrics_interval.is_zero() {
            if self.otlp_metrics_interval < Duration::from_secs(1) {
                return Err(ConfigError::Invalid(format!(
                    "otlp_metrics_interval = {:?}: at least 1s (or 0s: off)",
                    self.otlp_metrics_interval
                )));
            }
            if !self.output.has(&Output::Otlp) {
                return Err(ConfigError::Invalid(
                    "otlp_metrics_interval is set but output has no otlp: the metrics go to otlp_endpoint".into(),
                ));
            }
        }
        if self.ringbuf_bytes < 4096 || !self.ringbuf_bytes.is_power_of_two() {
            return Err(ConfigError::Invalid(format!(
                "ringbuf_bytes = {}: must be a power of two of at least 4096",
                self.ringbuf_bytes
            )));
        }
        if self.otlp_queue_records == 0 {
            return Err(ConfigError::Invalid(
                "otlp_queue_records = 0: at least 1".into(),
            ));
        }
        if self.spool_bytes != 0 && self.spool_bytes < (1 << 20) {
            return Err(ConfigError::Invalid(format!(
                "spool_bytes = {}: 0 (no spool) or at least 1 MiB",
                self.spool_bytes
            )));
        }
        if self.file_rotate_bytes < 4096 {
            return Err(ConfigError::Invalid(format!(
                "file_rotate_bytes = {}: at least 4096",
                self.file_rotate_bytes
            )));
        }
        let scheme = self.otlp_endpoint.to_ascii_lowercase();
        let https = scheme.starts_with("https://");
        if self.output.has(&Output::Otlp) && !https && !scheme.starts_with("http://") {
            return Err(ConfigError::Invalid(format!(
                "otlp_endpoint = {:?}: must be an http:// or https:// URL",
                self.otlp_endpoint
            )));
        }
        // Never a downgrade: TLS material or credentials with a plaintext
        // endpoint is a mistake the operator must hear about.
        if self.output.has(&Output::Otlp) && !https {
            let t = self.otlp_transport();
            let given: Vec<&str> = [
                ("otlp_ca_file", t.ca_file.is_some()),
                ("otlp_client_cert_file", t.client_cert_file.is_some()),
                ("otlp_client_key_file", t.client_key_file.is_some()),
                ("otlp_bearer_token_file", t.bearer_token_file.is_some()),
                ("otlp_headers_file", t.headers_file.is_some()),
                ("otlp_tls_server_name", t.server_name.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, set)| set.then_some(k))
            .collect();
            if !given.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "otlp_endpoint = {:?} is plaintext but {} is set: TLS settings and credentials need an https:// endpoint",
                    self.otlp_endpoint,
                    given.join(", ")
                )));
            }
        }
        if self.otlp_client_cert_file.is_some() != self.otlp_client_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "otlp_client_cert_file and otlp_client_key_file go together: set both or neither"
                    .into(),
            ));
        }
        if !crate::kernel::FLOW_TABLE_SIZES.contains(&self.flow_table_size) {
            return Err(ConfigError::Invalid(format!(
                "flow_table_size = {}: between {} and {} entries",
                self.flow_table_size,
                crate::kernel::FLOW_TABLE_SIZES.start(),
                crate::kernel::FLOW_TABLE_SIZES.end()
            )));
        }
        if self.container_max_flows > self.flow_table_size
            || self.container_max_dns_answers > crate::kernel::abi::EGRESS_MAX_DNS_ENTRIES
            || self.container_max_dns_pending > crate::kernel::abi::EGRESS_MAX_DNS_PENDING
        {
            return Err(ConfigError::Invalid(format!(
                "container_max_flows = {}, container_max_dns_answers = {}, container_max_dns_pending = {}: at most the kernel tables' {}, {} and {} entries",
                self.container_max_flows,
                self.container_max_dns_answers,
                self.container_max_dns_pending,
                self.flow_table_size,
                crate::kernel::abi::EGRESS_MAX_DNS_ENTRIES,
                crate::kernel::abi::EGRESS_MAX_DNS_PENDING
            )));
        }
        if self.loss_report_interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(format!(
                "loss_report_interval = {:?}: at least 100ms",
                self.loss_report_interval
            )));
        }
        if self.agent_series_max > 100_000 {
            return Err(ConfigError::Invalid(format!(
                "agent_series_max = {}: at most 100000 (each pair costs ~15 series)",
                self.agent_series_max
            )));
        }
        if self.attribution_wait > Duration::from_secs(60) {
            return Err(ConfigError::Invalid(format!(
                "attribution_wait = {:?}: at most 60s (records wait in memory)",
                self.attribution_wait
            )));
        }
        if self.agent_label.is_empty()
            || self.project_label.is_empty()
            || self.agent_label == self.project_label
        {
            return Err(ConfigError::Invalid(format!(
                "agent_label = {:?}, project_label = {:?}: must be two different, non-empty label keys",
                self.agent_label, self.project_label
            )));
        }
        Ok(self)
    }

    /// The OTLP transport's files and options (loaded by the sink).
    pub fn otlp_transport(&self) -> TransportSettings {
        TransportSettings {
            ca_file: self.otlp_ca_file.clone(),
            client_cert_file: self.otlp_client_cert_file.clone(),
            client_key_file: self.otlp_client_key_file.clone(),
            bearer_token_file: self.otlp_bearer_token_file.clone(),
            headers_file: self.otlp_headers_file.clone(),
            server_name: self.otlp_tls_server_name.clone(),
            compression: self.otlp_compression,
        }
    }

    /// Which Docker labels name the agent and the project.
    pub fn label_policy(&self) -> crate::attribute::LabelPolicy {
        crate::attribute::LabelPolicy {
            agent_key: self.agent_label.clone(),
            project_key: self.project_label.clone(),
        }
    }

    /// The bounds of the per-agent Prometheus series.
    pub fn agent_limits(&self) -> crate::detect::AgentLimits {
        crate::detect::AgentLimits {
            max_pairs: self.agent_series_max,
            retention: self.agent_series_retention,
        }
    }

    /// The per-container limits the kernel enforces.
    pub fn fairness(&self) -> crate::kernel::Fairness {
        crate::kernel::Fairness {
            records_per_sec: self.container_record_rate,
            record_burst: self.container_record_burst,
            max_flows_per_container: self.container_max_flows,
            max_dns_per_container: self.container_max_dns_answers,
            max_dns_pending_per_container: self.container_max_dns_pending,
        }
    }

    pub fn flow_options(&self) -> crate::flow::FlowOptions {
        crate::flow::FlowOptions {
            idle_timeout: self.flow_idle_timeout,
            active_interval: self.flow_active_interval,
            ..Default::default()
        }
    }

    /// `Auto` resolved: everything under an explicit root, else containers.
    pub fn effective_scope(&self) -> Scope {
        match (self.scope, &self.cgroup_root) {
            (Scope::Auto, Some(_)) => Scope::All,
            (Scope::Auto, None) => Scope::Containers,
            (s, _) => s,
        }
    }
}

/// figment errors can span lines; a CLI error is one line.
fn one_line(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| e.to_string().replace('\n', " "))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), &Overrides::default())
    }

    #[test]
    fn defaults_are_the_embedded_stdout_mode() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.output, Output::Stdout);
        assert_eq!(c.ringbuf_bytes, 1 << 20);
        assert_eq!(c.metrics_listen.to_string(), "127.0.0.1:9464");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_toml("ouput = \"otlp\"\n").unwrap_err().to_string();
        assert!(err.contains("ouput"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = load_toml("output = \"kafka\"\n").unwrap_err().to_string();
        assert!(err.contains("output"), "{err}");
        let err = load_toml("ringbuf_bytes = 5000\n").unwrap_err().to_string();
        assert!(err.contains("ringbuf_bytes"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "output = \"otlp\"\nringbuf_bytes = 8192\n").unwrap();
        let flags = Overrides {
            output: Some(Outputs::one(Output::Stdout)),
            ..Default::default()
        };
        let c = Config::load(Some(&path), &flags).unwrap();
        assert_eq!(c.output, Output::Stdout);
        assert_eq!(c.ringbuf_bytes, 8192);
    }

    #[test]
    fn attribution_settings_load_from_toml() {
        let c = load_toml(
            "docker_socket = \"/run/alt.sock\"\nagent_label = \"x.agent\"\nattribution_wait = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.docker_socket, PathBuf::from("/run/alt.sock"));
        assert_eq!(c.label_policy().agent_key, "x.agent");
        assert_eq!(c.label_policy().project_key, "dev.clawker.project");
        assert_eq!(c.attribution_wait, Duration::from_secs(2));
        let err =
            load_toml("project_label = \"x.agent\"\nagent_label = \"x.agent\"\n").unwrap_err();
        assert!(err.to_string().contains("agent_label"), "{err}");
    }

    #[test]
    fn several_outputs_parse_from_a_string_or_a_list() {
        let c = load_toml("output = \"stdout,otlp,file:/var/log/e.jsonl\"\n").unwrap();
        assert_eq!(
            c.output.0,
            vec![
                Output::Stdout,
                Output::Otlp,
                Output::File("/var/log/e.jsonl".into())
            ]
        );
        let c = load_toml("output = [\"otlp\", \"stdout\"]\n").unwrap();
        assert_eq!(c.output.0, vec![Output::Otlp, Output::Stdout]);
        assert_eq!(c.output.to_string(), "otlp,stdout");
        for bad in ["stdout,stdout", "stdout,kafka", "file:", ""] {
            let err = load_toml(&format!("output = {bad:?}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("output"), "{bad}: {err}");
        }
        let o: Outputs = "stdout, otlp".parse().unwrap();
        assert_eq!(o.0, vec![Output::Stdout, Output::Otlp]);
    }

    #[test]
    fn otlp_transport_keys_load_from_toml_and_env_and_refuse_plaintext() {
        let c = load_toml(
            "output = \"otlp\"\notlp_endpoint = \"https://c:4317\"\notlp_ca_file = \"/etc/ca.pem\"\notlp_bearer_token_file = \"/run/t\"\notlp_compression = \"gzip\"\n",
        )
        .unwrap();
        let t = c.otlp_transport();
        assert_eq!(t.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(t.bearer_token_file, Some(PathBuf::from("/run/t")));
        assert_eq!(t.compression, Compression::Gzip);
        let err = load_toml(
            "output = \"otlp\"\notlp_endpoint = \"http://c:4317\"\notlp_bearer_token_file = \"/run/t\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("otlp_bearer_token_file") && err.contains("https://"),
            "{err}"
        );
        let err = load_toml(
            "output = \"otlp\"\notlp_endpoint = \"https://c:4317\"\notlp_client_cert_file = \"/c\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("otlp_client_key_file"), "{err}");
        let err = load_toml("otlp_compression = \"zstd\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("otlp_compression"), "{err}");
    }

    #[test]
    fn scope_auto_follows_the_root() {
        let mut c = Config::default();
        assert_eq!(c.effective_scope(), Scope::Containers);
        c.cgroup_root = Some("/sys/fs/cgroup/unified/x".into());
        assert_eq!(c.effective_scope(), Scope::All);
    }
}
