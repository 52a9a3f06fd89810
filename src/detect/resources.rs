//! Per-agent resource usage (seed 000's resource mode): CPU, memory, pids
//! and I/O of each container's cgroup v2, read from its interface files and
//! summed per agent/project. A file the container's cgroup lacks (its
//! controller not enabled) counts as 0 and is not an error. On a hybrid
//! host (memory, pids and blkio still on cgroup v1, as Docker's cgroupfs
//! driver leaves them) those figures come from the container's v1 cgroups
//! at the same path ([`V1Fallback`]).

use std::path::{Path, PathBuf};

/// One container cgroup's usage now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.cpu_usec = self.cpu_usec.saturating_add(o.cpu_usec);
        self.memory_bytes = self.memory_bytes.saturating_add(o.memory_bytes);
        self.pids = self.pids.saturating_add(o.pids);
        self.io_read_bytes = self.io_read_bytes.saturating_add(o.io_read_bytes);
        self.io_write_bytes = self.io_write_bytes.saturating_add(o.io_write_bytes);
    }
}

/// Read `dir`'s cpu.stat, memory.current, pids.current and io.stat; `None`
/// when the directory is gone (the container just ended).
pub fn read_usage(dir: &Path) -> Option<Usage> {
    read_usage_with(dir, None)
}

/// Where a hybrid host keeps the v1 controllers: the v2 root (to find a
/// container's path) and the v1 mount of each controller still on v1.
#[derive(Debug, Clone, Default)]
pub struct V1Fallback {
    pub v2_root: PathBuf,
    pub memory: Option<PathBuf>,
    pub pids: Option<PathBuf>,
    pub blkio: Option<PathBuf>,
}

impl V1Fallback {
    /// From /proc/mounts: `None` when no controller we read is on v1.
    pub fn detect(v2_root: &Path) -> Option<V1Fallback> {
        let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
        Self::from_mounts(v2_root, &mounts)
    }

    fn from_mounts(v2_root: &Path, mounts: &str) -> Option<V1Fallback> {
        let mut f = V1Fallback {
            v2_root: v2_root.to_path_buf(),
            ..Default::default()
        };
        for line in mounts.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let (Some(dir), Some(&"cgroup"), Some(opts)) = (w.get(1), w.get(2), w.get(3)) else {
                continue;
            };
            for opt in opts.split(',') {
                let slot = match opt {
                    "memory" => &mut f.memory,
                    "pids" => &mut f.pids,
                    "blkio" => &mut f.blkio,
                    _ => continue,
                };
                *slot = Some(PathBuf::from(dir));
            }
        }
        (f.memory.is_some() || f.pids.is_some() || f.blkio.is_some()).then_some(f)
    }

    /// The same cgroup under a v1 controller's mount.
    fn dir(&self, mount: &Option<PathBuf>, v2_dir: &Path) -> Option<PathBuf> {
        let rel = v2_dir.strip_prefix(&self.v2_root).ok()?;
        Some(mount.as_ref()?.join(rel))
    }
}

/// [`read_usage`], with the figures a v2 cgroup lacks taken from v1.
pub fn read_usage_with(dir: &Path, v1: Option<&V1Fallback>) -> Option<Usage> {
    if !dir.is_dir() {
        return None;
    }
    let read = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let file = |name: &str| read(dir, name).unwrap_or_default();
    let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
    let v1_number = |mount: fn(&V1Fallback) -> &Option<PathBuf>, name: &str| {
        let v1 = v1?;
        number(read(&v1.dir(mount(v1), dir)?, name))
    };
    let cpu_usec = file("cpu.stat")
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let memory_bytes = number(read(dir, "memory.current"))
        .or_else(|| v1_number(|f| &f.memory, "memory.usage_in_bytes"))
        .unwrap_or(0);
    let pids = number(read(dir, "pids.current"))
        .or_else(|| v1_number(|f| &f.pids, "pids.current"))
        .unwrap_or(0);
    let (io_read_bytes, io_write_bytes) = match read(dir, "io.stat") {
        Some(stat) => io_bytes(&stat),
        None => v1
            .and_then(|v1| read(&v1.dir(&v1.blkio, dir)?, "blkio.throttle.io_service_bytes"))
            .map(|stat| blkio_bytes(&stat))
            .unwrap_or((0, 0)),
    };
    Some(Usage {
        cpu_usec,
        memory_bytes,
        pids,
        io_read_bytes,
        io_write_bytes,
    })
}

/// v1 `blkio.throttle.io_service_bytes`: `<dev> Read <n>` / `<dev> Write <n>`
/// lines summed over devices (the `Total` line is skipped).
fn blkio_bytes(stat: &str) -> (u64, u64) {
    let mut read = 0u64;
    let mut write = 0u64;
    for line in stat.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let n = w.get(2).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        match w.get(1) {
            Some(&"Read") => read = read.saturating_add(n),
            Some(&"Write") => write = write.saturating_add(n),
            _ => {}
        }
    }
    (read, write)
}

/// `rbytes` and `wbytes` summed over every device line of io.stat.
fn io_bytes(stat: &str) -> (u64, u64) {
    let mut read = 0u64;
    let mut write = 0u64;
    for field in stat.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            read = read.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            write = write.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (read, write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cgroup_v2_interface_files() {
        let dir = tempfile::tempdir().unwrap();
        let w = |n: &str, t: &str| std::fs::write(dir.path().join(n), t).unwrap();
        w(
            "cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        );
        w("memory.current", "1048576\n");
        w("pids.current", "7\n");
        w(
            "io.stat",
            "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n259:0 rbytes=5 wbytes=6 rios=1 wios=1\n",
        );
        let u = read_usage(dir.path()).unwrap();
        assert_eq!(
            u,
            Usage {
                cpu_usec: 2_500_000,
                memory_bytes: 1 << 20,
                pids: 7,
                io_read_bytes: 105,
                io_write_bytes: 206,
            }
        );
        // A controller not enabled: its figures are 0, the rest still read.
        std::fs::remove_file(dir.path().join("io.stat")).unwrap();
        assert_eq!(read_usage(dir.path()).unwrap().io_read_bytes, 0);
        assert_eq!(read_usage(&dir.path().join("gone")), None);
    }

    #[test]
    fn a_hybrid_host_reads_memory_pids_and_io_from_v1() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("unified/docker/c1");
        let mem = root.path().join("memory/docker/c1");
        let pids = root.path().join("pids/docker/c1");
        let blkio = root.path().join("blkio/docker/c1");
        for d in [&v2, &mem, &pids, &blkio] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(v2.join("cpu.stat"), "usage_usec 42\n").unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "2097152\n").unwrap();
        std::fs::write(pids.join("pids.current"), "5\n").unwrap();
        std::fs::write(
            blkio.join("blkio.throttle.io_service_bytes"),
            "8:0 Read 10\n8:0 Write 20\n8:0 Sync 30\n8:16 Read 1\nTotal 61\n",
        )
        .unwrap();
        let r = root.path().display();
        let mounts = format!(
            "cgroup2 {r}/unified cgroup2 rw 0 0\n\
             cgroup {r}/memory cgroup rw,nosuid,memory 0 0\n\
             cgroup {r}/pids cgroup rw,pids 0 0\n\
             cgroup {r}/blkio cgroup rw,blkio 0 0\n\
             cgroup {r}/cpu cgroup rw,cpu 0 0\n"
        );
        let v1 = V1Fallback::from_mounts(&root.path().join("unified"), &mounts).unwrap();
        let u = read_usage_with(&v2, Some(&v1)).unwrap();
        assert_eq!(
            u,
            Usage {
                cpu_usec: 42,
                memory_bytes: 2 << 20,
                pids: 5,
                io_read_bytes: 11,
                io_write_bytes: 20,
            }
        );
        // Without the fallback those figures are 0, as before.
        assert_eq!(read_usage(&v2).unwrap().memory_bytes, 0);
        // A pure v2 host has nothing to fall back to.
        assert!(V1Fallback::from_mounts(Path::new("/x"), "cgroup2 /x cgroup2 rw 0 0\n").is_none());
    }

    #[test]
    fn reads_a_real_cgroup() {
        // This process's own cgroup (cgroup v2 is required by the daemon).
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            panic!("not on cgroup v2: {own}");
        };
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .and_then(|l| l.split(' ').nth(4).map(str::to_owned))
            .expect("a cgroup2 mount");
        let dir = Path::new(&root).join(rel.trim_start_matches('/'));
        let u = read_usage(&dir).expect("own cgroup readable");
        assert!(
            u.pids >= 1 || u.memory_bytes > 0 || u.cpu_usec > 0,
            "{u:?} from {dir:?}"
        );
    }
}
