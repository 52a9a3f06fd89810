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
    container_cgroup(path).map(|(id, _)| id)
}

/// The container id and the container's own cgroup (the path cut after the
/// component that names it): `/docker/<id>/init.scope` -> (`<id>`,
/// `/docker/<id>`). The outermost container wins: a container nested in
/// another one belongs to the outer one, as the kernel side sees it.
pub fn container_cgroup(path: &str) -> Option<(String, &str)> {
    let mut end = 0;
    for component in path.split('/') {
        end += component.len();
        let stem = component.strip_suffix(".scope").unwrap_or(component);
        let id = stem.rsplit('-').next().unwrap_or(stem);
        if is_container_id(id) {
            return Some((id.to_owned(), &path[..end]));
        }
        end += 1; // the '/'
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The cgroup v2 path in a `/proc/<pid>/cgroup` file: the `0::<path>` line.
/// On a v1-only host there is none (and no cgroup BPF either); on a hybrid
/// host the v1 controller lines around it are ignored.
pub fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim_end)
}

/// The container cgroup a process runs in: its v2 path cut at the
/// container's own directory, and that directory's inode (the cgroup id).
pub fn container_cgroup_of_pid(root: &Path, pid: u32) -> Option<(String, PathBuf, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (id, rel) = container_cgroup(unified_path(&text)?)?;
    let dir = root.join(rel.trim_start_matches('/'));
    let ino = fs::metadata(&dir).ok()?.ino();
    Some((id, dir, ino))
}

/// Is this the live cgroup `ino`, with processes in it? A container's
/// cgroup outlives its processes briefly; a restarted container gets a new
/// directory (and a new id) under the same name.
pub fn cgroup_alive(dir: &Path, ino: u64) -> bool {
    let same = fs::metadata(dir).is_ok_and(|m| m.ino() == ino);
    same && fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
}

/// cgroup id -> path below the v2 root, filled by scanning the hierarchy.
/// Used only to classify cgroups nobody told us about (sub-cgroups in
/// `--scope all`); containers themselves are learned from their runtime.
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

    pub fn root(&self) -> &Path {
        &self.root
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
    /// Captured on a hybrid host (cgroup v1 controllers + unified), Docker
    /// 20.10 with the cgroupfs driver: `/proc/<container init>/cgroup`.
    const HYBRID_CGROUPFS: &str = include_str!("fixtures/proc-cgroup-hybrid-cgroupfs.txt");
    /// The same host, a process outside any container.
    const HYBRID_HOST: &str = include_str!("fixtures/proc-cgroup-hybrid-host.txt");
    const FIXTURE_ID: &str = "88ace1c390b5cc9d6a080995c04b6c20c62a2430b89ce8cd4931a02550be6da9";

    fn v2_systemd() -> String {
        // Pure cgroup v2 host, Docker with the systemd driver: one line.
        format!("0::/system.slice/docker-{ID}.scope\n")
    }

    fn hybrid_systemd() -> String {
        // Hybrid host, systemd driver: v1 lines name the same scope.
        format!(
            "12:pids:/system.slice/docker-{ID}.scope\n\
             1:name=systemd:/system.slice/docker-{ID}.scope\n\
             0::/system.slice/docker-{ID}.scope\n"
        )
    }

    fn v1_only() -> String {
        // Legacy host: no unified hierarchy, so no `0::` line.
        format!("4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n")
    }

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
        assert_eq!(
            container_cgroup(&p),
            Some((ID.into(), &*format!("/docker/{ID}")))
        );
        let p = format!("/system.slice/docker-{ID}.scope/payload/x");
        let cut = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(container_cgroup(&p), Some((ID.into(), cut.as_str())));
    }

    #[test]
    fn host_paths_name_no_container() {
        for p in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/docker.service",
            "/process_api/b47c3aecef1515917de22fd520022054",
        ] {
            assert_eq!(container_id_from_path(p), None, "{p}");
        }
    }

    #[test]
    fn real_hybrid_cgroupfs_file() {
        let path = unified_path(HYBRID_CGROUPFS).unwrap();
        assert_eq!(path, format!("/docker/{FIXTURE_ID}"));
        assert_eq!(container_cgroup(path), Some((FIXTURE_ID.into(), path)));
    }

    #[test]
    fn real_hybrid_host_file_is_no_container() {
        // The v1 memory line names a non-root cgroup; only v2 counts.
        assert_eq!(unified_path(HYBRID_HOST), Some("/"));
        assert_eq!(container_cgroup("/"), None);
    }

    #[test]
    fn systemd_files_v2_and_hybrid() {
        for text in [v2_systemd(), hybrid_systemd()] {
            let path = unified_path(&text).unwrap();
            assert_eq!(path, format!("/system.slice/docker-{ID}.scope"));
            assert_eq!(container_id_from_path(path), Some(ID.into()));
        }
    }

    #[test]
    fn v1_only_host_has_no_v2_path() {
        assert_eq!(unified_path(&v1_only()), None);
    }

    #[test]
    fn liveness_needs_the_same_inode_and_a_process() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("cg");
        fs::create_dir(&cg).unwrap();
        let ino = fs::metadata(&cg).unwrap().ino();
        fs::write(cg.join("cgroup.procs"), "").unwrap();
        assert!(!cgroup_alive(&cg, ino), "empty");
        fs::write(cg.join("cgroup.procs"), "42\n").unwrap();
        assert!(cgroup_alive(&cg, ino));
        assert!(
            !cgroup_alive(&cg, ino + 1),
            "another directory by that name"
        );
        assert!(!cgroup_alive(&dir.path().join("gone"), ino));
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
