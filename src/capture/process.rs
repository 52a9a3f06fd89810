//! Process context events (issue 15): exec, fork and exit of processes in
//! scope, decoded from `bpf/exec.bpf.c`'s records, and the process identity
//! every other event carries.

use std::sync::OnceLock;
use std::time::SystemTime;

/// Which process did something: with its tgid, the process key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ProcIdent {
    /// The process's start (thread group leader), boot-time nanoseconds.
    pub start_ns: u64,
    /// The real parent's tgid.
    pub ppid: u32,
    /// Which program image the process ran (raised by every execve(),
    /// copied by fork): the exec record with the same id names it.
    pub exec_id: u32,
}

/// A process in scope ran execve(). `args` are already masked: no
/// secret-looking value of argv exists past decode (`capture::argv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecEvent {
    pub time: SystemTime,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub scope_cgroup_id: u64,
    pub tgid: u32,
    pub proc: ProcIdent,
    /// When the process started (wall clock).
    pub started: SystemTime,
    pub parent_start_ns: u64,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    /// The executed file's path in the container (its mount namespace),
    /// walked by the kernel from the file itself; `filename` when that
    /// walk found nothing. `…/` in front: deeper than the kernel walks.
    pub exe: String,
    /// The path execve() was given (a symlink, `/proc/self/exe`, ...).
    pub filename: String,
    /// The working directory in the container, walked like `exe`; `None`
    /// when the walk did not reach the root (a deleted directory, ...).
    pub cwd: Option<String>,
    /// argv, masked, as far as the kernel read it.
    pub args: Vec<String>,
    /// argv was longer than the kernel reads (or could not be read).
    pub args_truncated: bool,
    pub comm: String,
    pub parent_comm: String,
}

/// A new process (not a thread) of a process in scope: it runs its
/// parent's program until it execs (the process cache only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkEvent {
    pub scope_cgroup_id: u64,
    pub tgid: u32,
    pub proc: ProcIdent,
    pub parent_start_ns: u64,
}

/// The last thread of a process in scope ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    pub time: SystemTime,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub scope_cgroup_id: u64,
    pub tgid: u32,
    pub proc: ProcIdent,
    /// When the process started (wall clock).
    pub started: SystemTime,
    /// wait(2) status: exit status in bits 8..15, or the killing signal.
    pub status: i32,
    pub comm: String,
}

impl ExitEvent {
    /// The exit status (0..=255) when the process exited by itself.
    pub fn exit_code(&self) -> Option<i32> {
        (self.status & 0x7f == 0).then_some((self.status >> 8) & 0xff)
    }

    /// The signal that ended it, if one did.
    pub fn signal(&self) -> Option<i32> {
        let sig = self.status & 0x7f;
        (sig != 0).then_some(sig)
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): with a process's
/// tgid and start time, a key no other process of any boot shares.
pub fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

/// The stable key of a process (Tetragon's exec_id idea): boot id, tgid
/// and start time. Flows, exec and exit records of one process share it.
pub fn process_key(tgid: u32, start_ns: u64) -> String {
    // `{boot_id}:{start_ns}:{tgid}`, without a formatter (once per record).
    let boot = boot_id();
    let mut out = String::with_capacity(boot.len() + 32);
    out.push_str(boot);
    out.push(':');
    out.push_str(itoa::Buffer::new().format(start_ns));
    out.push(':');
    out.push_str(itoa::Buffer::new().format(tgid));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_key_is_boot_start_and_tgid() {
        for (tgid, start) in [(0u32, 0u64), (1, 12_345), (u32::MAX, u64::MAX)] {
            assert_eq!(
                process_key(tgid, start),
                format!("{}:{start}:{tgid}", boot_id())
            );
        }
    }

    #[test]
    fn exit_status_splits_code_and_signal() {
        let mut e = ExitEvent {
            time: SystemTime::UNIX_EPOCH,
            ts_ns: 0,
            cgroup_id: 0,
            scope_cgroup_id: 0,
            tgid: 1,
            proc: ProcIdent::default(),
            started: SystemTime::UNIX_EPOCH,
            status: 3 << 8,
            comm: String::new(),
        };
        assert_eq!((e.exit_code(), e.signal()), (Some(3), None));
        e.status = 9;
        assert_eq!((e.exit_code(), e.signal()), (None, Some(9)));
    }

    #[test]
    fn process_keys_differ_by_start_time() {
        assert_ne!(process_key(7, 1), process_key(7, 2));
        assert!(process_key(7, 1).ends_with(":1:7"));
    }
}
