//! `clawker-egress bypass`: audited break-glass for one container (or every
//! container of an agent, or a cgroup). The kernel keeps recording its
//! traffic as BYPASSED; the daemon turns the change into overseer records.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use bollard::{Docker, API_DEFAULT_VERSION};
use clap::Args;

use super::check::attach_candidates;
use super::CommonArgs;
use crate::attribute::container_cgroup_of_pid;
use crate::config::Config;
use crate::enforce::{request_bypass, BypassRequest};
use crate::kernel::{self, PinLayout, PolicyMaps};

/// Longest bypass one command may start.
const MAX_BYPASS: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Args)]
pub struct BypassArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Container id or name (needs the Docker socket).
    pub container: Option<String>,
    /// Every running container whose agent label has this value.
    #[arg(long, conflicts_with = "container")]
    pub agent: Option<String>,
    /// A cgroup v2 directory (for hosts without Docker, and tests).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["container", "agent"])]
    pub cgroup: Option<PathBuf>,
    /// How long, e.g. 15m (at most 24h).
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "15m")]
    pub duration: Duration,
    /// Why: recorded in the audit trail.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// End the bypass now.
    #[arg(long)]
    pub off: bool,
}

pub async fn bypass(args: &BypassArgs) -> Result<()> {
    let config = Config::load(args.common.config.as_deref(), &args.common.overrides())?;
    if args.duration > MAX_BYPASS {
        bail!(
            "--for {}: a bypass lasts at most 24h",
            humantime::format_duration(args.duration)
        );
    }
    if !args.off && args.reason.trim().is_empty() {
        bail!("--reason is required: the audit trail must say why");
    }
    // Where the running daemon attached (its --scope is not known here):
    // the first candidate with pinned maps.
    let mut layouts = Vec::new();
    for dir in attach_candidates(&config)? {
        if let Ok(meta) = std::fs::metadata(&dir) {
            layouts.push(PinLayout::new(
                &config.pin_root,
                std::os::unix::fs::MetadataExt::ino(&meta),
            ));
        }
    }
    let pins = layouts
        .iter()
        .find(|l| l.maps().exists())
        .or(layouts.first())
        .context("no cgroup v2 directory to find the daemon's maps under")?;
    let maps = PolicyMaps::open_pinned(&pins.maps())?;
    let targets = targets(args, &config).await?;
    for (name, cgroup_id) in &targets {
        if args.off {
            match maps.clear_bypass(*cgroup_id) {
                Some(_) => println!("bypass ended for {name}"),
                None => println!("no bypass was active for {name}"),
            }
        } else {
            let req = BypassRequest {
                scope_cgroup_id: *cgroup_id,
                duration: args.duration,
                reason: args.reason.clone(),
            };
            request_bypass(&maps, &req).with_context(|| format!("bypass {name}"))?;
            println!(
                "bypass on for {name} for {}",
                humantime::format_duration(args.duration)
            );
        }
    }
    Ok(())
}

/// (display name, scope cgroup id) of every target.
async fn targets(args: &BypassArgs, config: &Config) -> Result<Vec<(String, u64)>> {
    if let Some(dir) = &args.cgroup {
        let meta = std::fs::metadata(dir).with_context(|| format!("cgroup {}", dir.display()))?;
        // An explicit cgroup root is SCOPE_ALL: its policy key is 0.
        let id = if Some(dir.as_path()) == config.cgroup_root.as_deref() {
            0
        } else {
            std::os::unix::fs::MetadataExt::ino(&meta)
        };
        return Ok(vec![(dir.display().to_string(), id)]);
    }
    let docker = Docker::connect_with_unix(
        &config.docker_socket.to_string_lossy(),
        10,
        API_DEFAULT_VERSION,
    )
    .context("connect to Docker")?
    .negotiate_version()
    .await
    .context("Docker API")?;
    let v2 = kernel::cgroup2_root()?;
    let names = match (&args.container, &args.agent) {
        (Some(c), _) => vec![c.clone()],
        (None, Some(agent)) => containers_of_agent(&docker, &config.agent_label, agent).await?,
        (None, None) => bail!("name a container, --agent or --cgroup"),
    };
    let mut out = Vec::new();
    for name in names {
        out.push((name.clone(), container_cgroup(&docker, &v2, &name).await?));
    }
    if out.is_empty() {
        bail!("no running container matches");
    }
    Ok(out)
}

async fn containers_of_agent(docker: &Docker, label: &str, agent: &str) -> Result<Vec<String>> {
    let filter =
        std::collections::HashMap::from([("label".to_string(), vec![format!("{label}={agent}")])]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            filters: Some(filter),
            ..Default::default()
        }))
        .await
        .context("list containers")?;
    Ok(list.into_iter().filter_map(|c| c.id).collect())
}

async fn container_cgroup(docker: &Docker, v2: &Path, name: &str) -> Result<u64> {
    let info = docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .with_context(|| format!("container {name}"))?;
    let pid = info
        .state
        .and_then(|s| s.pid)
        .filter(|p| *p > 0)
        .with_context(|| format!("container {name} is not running"))?;
    let (_, _, ino) = container_cgroup_of_pid(v2, pid as u32)
        .with_context(|| format!("cgroup of container {name}"))?;
    Ok(ino)
}
