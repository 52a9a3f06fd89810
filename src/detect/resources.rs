//! Per-agent resource usage (seed 000's resource mode): CPU, memory, pids
//! and I/O of each container's cgroup v2, read from its interface files and
//! summed per agent/project. A file the container's cgroup lacks (its
//! controller not enabled) counts as 0 and is not an error.

use std::path::Path;

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
    if !dir.is_dir() {
        return None;
    }
    let file = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let single = |name: &str| file(name).trim().parse::<u64>().unwrap_or(0);
    let cpu_usec = file("cpu.stat")
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let (io_read_bytes, io_write_bytes) = io_bytes(&file("io.stat"));
    Some(Usage {
        cpu_usec,
        memory_bytes: single("memory.current"),
        pids: single("pids.current"),
        io_read_bytes,
        io_write_bytes,
    })
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
