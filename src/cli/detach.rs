//! `clawker-egress detach`: unpin links (detaching the programs) and maps.

use anyhow::{Context, Result};

use super::check::cgroup_dir;
use super::CommonArgs;
use crate::config::Config;
use crate::kernel;

pub fn detach(args: &CommonArgs) -> Result<()> {
    let config = Config::load(args.config.as_deref(), &args.overrides())?;
    let cgroup = cgroup_dir(&config)?;
    let links = kernel::detach(&cgroup, &config.pin_root)
        .with_context(|| format!("detach from {}", cgroup.display()))?;
    println!("detached {links} program(s) from {}", cgroup.display());
    Ok(())
}
