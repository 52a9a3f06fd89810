//! `clawker-egress check`: everything the daemon needs from the host, each
//! failure one sentence with its fix.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::CommonArgs;
use crate::config::{Config, Output, Scope};
use crate::export::OtlpTransport;
use crate::kernel;

/// Effective capability bits the daemon needs (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub struct Finding {
    pub ok: bool,
    pub line: String,
}

fn finding(ok: bool, line: impl Into<String>) -> Finding {
    Finding {
        ok,
        line: line.into(),
    }
}

/// Run every check; the result is one finding per line.
pub fn preflight(config: &Config) -> Vec<Finding> {
    let mut out = vec![privileges()];
    out.push(match Path::new("/sys/kernel/btf/vmlinux").exists() {
        true => finding(true, "kernel BTF: /sys/kernel/btf/vmlinux present"),
        false => finding(
            false,
            "kernel BTF missing: CO-RE programs need a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ),
    });
    out.push(match cgroup_dir(config) {
        Ok(p) => finding(true, format!("cgroup v2: attaching to {}", p.display())),
        Err(e) => finding(false, e.to_string()),
    });
    out.push(match kernel::ensure_bpffs(&kernel::bpffs_root()) {
        Ok(()) => finding(true, "bpffs: mounted at /sys/fs/bpf"),
        Err(e) => finding(false, e.to_string()),
    });
    out.push(match kernel::ringbuf_supported() {
        true => finding(true, "ring buffer maps: supported"),
        false => finding(
            false,
            "ring buffer maps unsupported: a Linux kernel >= 5.8 is required",
        ),
    });
    out.push(match kernel::bpf_loop_supported() {
        true => finding(true, "bpf_loop helper: supported (DNS parsing)"),
        false => finding(
            false,
            "bpf_loop helper unsupported: a Linux kernel >= 5.17 is required (README lists >= 6.3 for all programs)",
        ),
    });
    // Informational: the daemon works either way, with a weaker defence.
    out.push(match kernel::lsm_programs_load() {
        Ok(()) => finding(
            true,
            "BPF LSM: programs load; packet and other non-inet sockets are decided at creation",
        ),
        Err(why) => finding(
            true,
            format!("BPF LSM unavailable: {why}; fallback: packet sockets are recorded at their first send and a denied sender is killed, AF_XDP sockets are decided at their setup (setsockopt; 32-bit syscalls skip it); run agent containers with `--cap-drop NET_RAW` to close AF_PACKET and AF_XDP at the source (docs/SECURITY.md)"),
        ),
    });
    // Informational: TCP flows are tabled a second late or at connect.
    out.push(match kernel::promoter_loads() {
        Ok(()) => finding(
            true,
            "BPF map iterators: supported (short TCP connections never touch the flow table)",
        ),
        Err(why) => finding(
            true,
            format!("BPF map iterators refused ({why}); fallback: every TCP flow gets its flow-table entry at connect (same records, ~1 map insert more per connection)"),
        ),
    });
    if let Some(f) = otlp_transport(config) {
        out.push(f);
    }
    out
}

/// The OTLP transport's files, as the daemon would load them: readable,
/// parsing PEM, secrets (key, token, headers) not accessible to other
/// users, a client key that matches its certificate. Contents never shown.
fn otlp_transport(config: &Config) -> Option<Finding> {
    let settings = config.otlp_transport();
    let any_file = settings.ca_file.is_some()
        || settings.client_cert_file.is_some()
        || settings.bearer_token_file.is_some()
        || settings.headers_file.is_some();
    if config.output != Output::Otlp && !any_file {
        return None;
    }
    let loaded = OtlpTransport::load(&config.otlp_endpoint, &settings).and_then(|t| {
        t.endpoint(&config.otlp_endpoint)?;
        Ok(t)
    });
    Some(match loaded {
        Ok(t) => finding(
            true,
            format!(
                "otlp transport to {}: {}",
                config.otlp_endpoint,
                t.summary()
            ),
        ),
        Err(e) => finding(
            false,
            format!("otlp transport to {}: {e}", config.otlp_endpoint),
        ),
    })
}

fn privileges() -> Finding {
    let caps = effective_caps().unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let bpf = has(CAP_BPF) || has(CAP_SYS_ADMIN);
    let ok = bpf && has(CAP_NET_ADMIN) && (has(CAP_PERFMON) || has(CAP_SYS_ADMIN));
    if ok {
        finding(
            true,
            "privileges: CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN effective",
        )
    } else {
        finding(false, "insufficient privileges: run as root or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (and CAP_SYS_ADMIN to mount bpffs)")
    }
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Fail early, with the fix, when the daemon lacks privileges.
pub fn require_privileges() -> Result<()> {
    let f = privileges();
    if !f.ok {
        bail!("{}", f.line);
    }
    Ok(())
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup directory to attach to: configured, or the v2 root.
/// Where the daemon attaches: an explicit `--cgroup-root`; in `containers`
/// scope the runtime's container parent (`containers_cgroup`), so that no
/// host process runs a program (created if missing, as the runtime would
/// create it: a container made later inherits the programs); else the v2
/// root.
pub fn cgroup_dir(config: &Config) -> Result<PathBuf> {
    let dir = match &config.cgroup_root {
        Some(p) => p.clone(),
        None if config.effective_scope() == Scope::Containers => {
            let root = kernel::cgroup2_root()?;
            let dir = containers_parent(&config.containers_cgroup, &root);
            if !dir.exists() {
                std::fs::create_dir(&dir).with_context(|| {
                    format!("create the containers' cgroup parent {}", dir.display())
                })?;
            }
            dir
        }
        None => kernel::cgroup2_root()?,
    };
    let fs = nix::sys::statfs::statfs(&dir).map_err(|e| {
        anyhow::anyhow!(
            "cgroup root {}: {e}: create it or pass an existing cgroup v2 directory",
            dir.display()
        )
    })?;
    if fs.filesystem_type().0 != CGROUP2_SUPER_MAGIC {
        bail!(
            "{} is not a cgroup v2 directory: pass one under the cgroup2 mount (see /proc/mounts)",
            dir.display()
        );
    }
    Ok(dir)
}

/// Every directory a daemon of this configuration may be attached to:
/// `detach` and `bypass` do not know the running daemon's `--scope`.
pub fn attach_candidates(config: &Config) -> Result<Vec<PathBuf>> {
    if let Some(p) = &config.cgroup_root {
        return Ok(vec![p.clone()]);
    }
    let root = kernel::cgroup2_root()?;
    let parent = containers_parent(&config.containers_cgroup, &root);
    Ok(if parent == root {
        vec![root]
    } else {
        vec![parent, root]
    })
}

/// The containers' cgroup parent for `setting` ("auto", "/" or a path
/// relative to the v2 `root`). "auto": `docker` (Docker's cgroupfs
/// driver), unless it is absent and `system.slice` holds `docker-*.scope`
/// cgroups (the systemd driver).
pub fn containers_parent(setting: &str, root: &Path) -> PathBuf {
    match setting.trim_matches('/') {
        "" => root.to_path_buf(),
        "auto" => {
            let docker = root.join("docker");
            let slice = root.join("system.slice");
            let systemd = std::fs::read_dir(&slice).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("docker-"))
            });
            if !docker.exists() && systemd {
                slice
            } else {
                docker
            }
        }
        rel => root.join(rel),
    }
}

/// Is every child of `dir` a container? Docker's cgroupfs parent
/// (`docker/` under the v2 `root`) holds only containers' cgroups; the
/// systemd driver's `system.slice` and the v2 root hold services too.
pub fn every_child_is_a_container(dir: &Path, root: &Path) -> bool {
    dir == root.join("docker")
}

pub fn check(args: &CommonArgs) -> Result<()> {
    let config = Config::load(args.config.as_deref(), &args.overrides())?;
    let findings = preflight(&config);
    for f in &findings {
        println!("{} {}", if f.ok { "ok  " } else { "FAIL" }, f.line);
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::containers_parent;

    #[test]
    fn containers_parent_follows_the_setting_and_the_driver() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // Nothing there yet: Docker's cgroupfs parent (created by `run`).
        assert_eq!(containers_parent("auto", r), r.join("docker"));
        assert_eq!(containers_parent("/", r), r);
        assert_eq!(containers_parent("", r), r);
        assert_eq!(
            containers_parent("/machine.slice/", r),
            r.join("machine.slice")
        );
        // The systemd driver's scopes, and no docker/: system.slice.
        std::fs::create_dir_all(r.join("system.slice/docker-abc.scope")).unwrap();
        assert_eq!(containers_parent("auto", r), r.join("system.slice"));
        // Both: docker/ exists, so the cgroupfs driver is in use.
        std::fs::create_dir(r.join("docker")).unwrap();
        assert_eq!(containers_parent("auto", r), r.join("docker"));
    }
}
