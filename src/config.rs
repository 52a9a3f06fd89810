//! Configuration: defaults <- TOML file <- `CLAWKER_EGRESS_*` environment
//! <- command-line flags. An unknown key or a bad value is an error that
//! names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "CLAWKER_EGRESS_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// One JSON object per line on standard output.
    Stdout,
    /// OTLP/gRPC logs to --otlp-endpoint.
    Otlp,
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
    pub output: Output,
    pub otlp_endpoint: String,
    pub metrics_listen: SocketAddr,
    /// Ring buffer size in bytes: a power of two, at least 4096 (P6: 1 MiB).
    pub ringbuf_bytes: u32,
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
    /// identity before it goes out unattributed ("1s"). Docker answers an
    /// inspect of a starting container only once it has started.
    #[serde(with = "humantime_serde")]
    pub attribution_wait: Duration,
    /// Records per second one container may put on the ring buffer (P14;
    /// 0: no limit). Its excess is lost, counted and reported for it only.
    pub container_record_rate: u32,
    /// Records one container may write in a burst above its rate.
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cgroup_root: None,
            output: Output::Stdout,
            otlp_endpoint: "http://127.0.0.1:4317".into(),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            ringbuf_bytes: crate::kernel::abi::EGRESS_RINGBUF_DEFAULT_BYTES,
            pin_root: PathBuf::from("/sys/fs/bpf/clawker-egress"),
            scope: Scope::Auto,
            policy_file: None,
            log_level: "info".into(),
            flow_idle_timeout: Duration::from_secs(30),
            flow_active_interval: Duration::from_secs(300),
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            agent_label: "dev.clawker.agent".into(),
            project_label: "dev.clawker.project".into(),
            attribution_wait: Duration::from_secs(1),
            container_record_rate: crate::kernel::Fairness::default().records_per_sec,
            container_record_burst: crate::kernel::Fairness::default().record_burst,
            container_max_flows: crate::kernel::Fairness::default().max_flows_per_container,
            container_max_dns_answers: crate::kernel::Fairness::default().max_dns_per_container,
            container_max_dns_pending: crate::kernel::Fairness::default()
                .max_dns_pending_per_container,
            loss_report_interval: Duration::from_secs(10),
        }
    }
}

/// Flags given on the command line; `None` means "not given".
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ringbuf_bytes: Option<u32>,
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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
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
        if self.ringbuf_bytes < 4096 || !self.ringbuf_bytes.is_power_of_two() {
            return Err(ConfigError::Invalid(format!(
                "ringbuf_bytes = {}: must be a power of two of at least 4096",
                self.ringbuf_bytes
            )));
        }
        if self.output == Output::Otlp && !self.otlp_endpoint.starts_with("http") {
            return Err(ConfigError::Invalid(format!(
                "otlp_endpoint = {:?}: must be an http:// or https:// URL",
                self.otlp_endpoint
            )));
        }
        if self.container_max_flows > crate::kernel::abi::EGRESS_MAX_FLOWS
            || self.container_max_dns_answers > crate::kernel::abi::EGRESS_MAX_DNS_ENTRIES
            || self.container_max_dns_pending > crate::kernel::abi::EGRESS_MAX_DNS_PENDING
        {
            return Err(ConfigError::Invalid(format!(
                "container_max_flows = {}, container_max_dns_answers = {}, container_max_dns_pending = {}: at most the kernel tables' {}, {} and {} entries",
                self.container_max_flows,
                self.container_max_dns_answers,
                self.container_max_dns_pending,
                crate::kernel::abi::EGRESS_MAX_FLOWS,
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

    /// Which Docker labels name the agent and the project.
    pub fn label_policy(&self) -> crate::attribute::LabelPolicy {
        crate::attribute::LabelPolicy {
            agent_key: self.agent_label.clone(),
            project_key: self.project_label.clone(),
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
            output: Some(Output::Stdout),
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
    fn scope_auto_follows_the_root() {
        let mut c = Config::default();
        assert_eq!(c.effective_scope(), Scope::Containers);
        c.cgroup_root = Some("/sys/fs/cgroup/unified/x".into());
        assert_eq!(c.effective_scope(), Scope::All);
    }
}
