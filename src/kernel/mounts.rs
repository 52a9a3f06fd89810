//! Where the cgroup v2 hierarchy and the BPF filesystem are mounted.

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Error)]
pub enum MountError {
    #[error("no cgroup v2 hierarchy in /proc/mounts: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or pass --cgroup-root")]
    NoCgroup2,
    #[error("cannot read /proc/mounts: {0}")]
    ProcMounts(#[source] std::io::Error),
    #[error("{path} is not a BPF filesystem and mounting one failed ({errno}): run `mount -t bpf bpf {path}` as root")]
    NoBpffs {
        path: String,
        errno: nix::errno::Errno,
    },
}

/// Does the cgroup whose id the kernel reports (its kernfs node id, the
/// directory's inode) still exist under the cgroup2 mount `root`? Asked by
/// handle (`open_by_handle_at` with a kernfs file handle, as systemd does):
/// no directory walk. Only a stale handle (no such cgroup) says no: any
/// other failure counts as alive.
pub fn cgroup_alive(root: &Path, id: u64) -> bool {
    use std::os::fd::AsRawFd;

    /// `struct file_handle` with its 8-byte kernfs id.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: libc::c_uint,
        handle_type: libc::c_int,
        id: u64,
    }
    const FILEID_KERNFS: libc::c_int = 0xfe;
    let Ok(dir) = fs::File::open(root) else {
        return true;
    };
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `handle` is a valid `struct file_handle` whose f_handle holds
    // `handle_bytes` (8) bytes; `dir` is an open descriptor for the mount.
    let fd = unsafe {
        libc::open_by_handle_at(
            dir.as_raw_fd(),
            (&mut handle as *mut KernfsHandle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor this function owns.
        unsafe { libc::close(fd) };
        return true;
    }
    let errno = std::io::Error::last_os_error().raw_os_error();
    !matches!(errno, Some(libc::ESTALE) | Some(libc::ENOENT))
}

/// The mount point of the cgroup v2 hierarchy, read from /proc/mounts (it is
/// `/sys/fs/cgroup` on unified hosts and `/sys/fs/cgroup/unified` on hybrid
/// ones; never hard-coded).
pub fn cgroup2_root() -> Result<PathBuf, MountError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(MountError::ProcMounts)?;
    cgroup2_root_in(&mounts).ok_or(MountError::NoCgroup2)
}

fn cgroup2_root_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(raw: &str) -> String {
    raw.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The default BPF filesystem mount point.
pub fn bpffs_root() -> PathBuf {
    PathBuf::from(DEFAULT_BPFFS)
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Make sure `path` is a BPF filesystem, mounting one if it is not.
pub fn ensure_bpffs(path: &Path) -> Result<(), MountError> {
    if is_bpffs(path) {
        return Ok(());
    }
    let _ = fs::create_dir_all(path);
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| MountError::NoBpffs {
        path: path.display().to_string(),
        errno,
    })
}

const SECURITYFS: &str = "/sys/kernel/security";

/// The kernel's active LSMs (`/sys/kernel/security/lsm`), mounting
/// securityfs if it is not mounted yet; empty when they cannot be read.
pub fn active_lsms() -> Vec<String> {
    let list = Path::new(SECURITYFS).join("lsm");
    if !list.exists() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            SECURITYFS,
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    fs::read_to_string(list)
        .map(|s| s.trim().split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_cgroup_is_not_alive() {
        // Root only (making a cgroup); CI runs as root.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let root = cgroup2_root().expect("cgroup2");
        let dir = root.join(format!("clawker-alive-test-{}", std::process::id()));
        fs::create_dir(&dir).expect("mkdir cgroup");
        let id = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&dir).unwrap());
        assert!(cgroup_alive(&root, id));
        fs::remove_dir(&dir).expect("rmdir cgroup");
        assert!(!cgroup_alive(&root, id));
    }

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const UNIFIED: &str =
        "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n";
    const V1_ONLY: &str = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n";

    #[test]
    fn finds_the_unified_hierarchy_on_hybrid_hosts() {
        assert_eq!(
            cgroup2_root_in(HYBRID),
            Some("/sys/fs/cgroup/unified".into())
        );
    }

    #[test]
    fn finds_the_unified_hierarchy_on_v2_hosts() {
        assert_eq!(cgroup2_root_in(UNIFIED), Some("/sys/fs/cgroup".into()));
    }

    #[test]
    fn v1_only_hosts_have_none() {
        assert_eq!(cgroup2_root_in(V1_ONLY), None);
    }

    #[test]
    fn unescapes_octal_in_mount_paths() {
        let m = "cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_root_in(m), Some("/mnt/my cg".into()));
    }
}
