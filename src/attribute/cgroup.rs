//! cgroup ids and paths. The kernel reports a cgroup id, which is the inode
//! number of the cgroup's directory in the v2 hierarchy; a container
//! runtime names the directory after the container.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Deepest directory level scanned below the root.
const MAX_DEPTH: usize = 12;
/// A miss triggers at most one rescan per this interval.
const RESCAN_EVERY: Duration = Duration::from_millis(250);

/// The container id a cgroup path names, if any. Understands the cgroupfs
/// driver (`/docker/<id>`), the systemd driver
/// (`/system.slice/docker-<id>.scope`), podman/CRI-O (`libpod-<id>.scope`,
/// `crio-<id>.scope`) and containerd under Kubernetes
/// (`cri-containerd-<id>.scope`), including a container's own sub-cgroups.
pub fn container_id_from_path(path: &str) -> Option<String> {
    path.split('/').find_map(|component| {
        let stem = component.strip_suffix(".scope").unwrap_or(component);
        let id = stem.rsplit('-').next().unwrap_or(stem);
        is_container_id(id).then(|| id.to_owned())
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// cgroup id -> path below the v2 root, filled by scanning the hierarchy.
pub struct CgroupIndex {
    root: PathBuf,
    paths: HashMap<u64, PathBuf>,
    last_scan: Option<Instant>,
}

impl CgroupIndex {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        CgroupIndex {
            root: root.into(),
            paths: HashMap::new(),
            last_scan: None,
        }
    }

    /// The path of a cgroup relative to the v2 root (`/docker/<id>`).
    pub fn path_of(&mut self, id: u64) -> Option<PathBuf> {
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        if self.last_scan.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return None;
        }
        self.rescan();
        self.paths.get(&id).cloned()
    }

    fn rescan(&mut self) {
        self.paths.clear();
        self.last_scan = Some(Instant::now());
        let root = self.root.clone();
        self.scan(&root, 0);
    }

    fn scan(&mut self, dir: &Path, depth: usize) {
        if let Ok(meta) = fs::metadata(dir) {
            let rel = dir.strip_prefix(&self.root).unwrap_or(dir);
            self.paths.insert(meta.ino(), Path::new("/").join(rel));
        }
        if depth >= MAX_DEPTH {
            return;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.scan(&entry.path(), depth + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

    #[test]
    fn cgroupfs_layout() {
        assert_eq!(
            container_id_from_path(&format!("/docker/{ID}")),
            Some(ID.into())
        );
    }

    #[test]
    fn systemd_layout() {
        let p = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(container_id_from_path(&p), Some(ID.into()));
    }

    #[test]
    fn sub_cgroups_of_a_container_are_the_container() {
        let p = format!("/docker/{ID}/init.scope");
        assert_eq!(container_id_from_path(&p), Some(ID.into()));
    }

    #[test]
    fn host_paths_name_no_container() {
        for p in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/docker.service",
        ] {
            assert_eq!(container_id_from_path(p), None, "{p}");
        }
    }

    #[test]
    fn index_finds_directories_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let child = dir.path().join("docker").join(ID);
        fs::create_dir_all(&child).unwrap();
        let ino = fs::metadata(&child).unwrap().ino();
        let mut idx = CgroupIndex::new(dir.path());
        assert_eq!(
            idx.path_of(ino),
            Some(PathBuf::from(format!("/docker/{ID}")))
        );
        assert_eq!(idx.path_of(1), None);
    }
}
