//! `clawker-egress detach`: unpin links (detaching the programs) and maps.

use anyhow::{Context, Result};

use super::check::attach_candidates;
use super::CommonArgs;
use crate::config::Config;
use crate::kernel;

pub fn detach(args: &CommonArgs) -> Result<()> {
    let config = Config::load(args.config.as_deref(), &args.overrides())?;
    // The running daemon's --scope is not known here: every place a daemon
    // of this configuration may have attached to.
    for cgroup in attach_candidates(&config)? {
        if !cgroup.exists() {
            continue;
        }
        let links = kernel::detach(&cgroup, &config.pin_root)
            .with_context(|| format!("detach from {}", cgroup.display()))?;
        println!("detached {links} program(s) from {}", cgroup.display());
    }
    Ok(())
}
