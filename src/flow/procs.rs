//! The process cache (Tetragon's idea): process (tgid + start time) → the
//! program it runs, learned from exec and fork records, with `/proc` as
//! the fallback for processes that started before the daemon. Every
//! egress record gets its process's `exe` from here.
//!
//! Bounded: at most [`CAPACITY`] processes. A process that ended stays
//! for [`EXITED_TTL`]: its flows' records come after it exits (a socket
//! closes at exit). When full, ended processes go first, then the oldest
//! entries; a process missing from the cache only costs its records the
//! `exe` field (counted in `misses`), never a record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::{ExecEvent, ExitEvent, ForkEvent};
use crate::kernel::abi;

/// Processes the cache holds at most.
pub const CAPACITY: usize = 65_536;
/// How long an ended process stays (its last flows end after it).
pub const EXITED_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Entry {
    /// None: looked up in /proc and not found (not asked again).
    exe: Option<Arc<str>>,
    exited: Option<Instant>,
    seq: u64,
}

#[derive(Debug, Default)]
pub struct Processes {
    by_key: HashMap<(u32, u64), Entry>,
    seq: u64,
    /// Lookups that found no program (not in the cache, not in /proc).
    pub misses: u64,
    /// Entries dropped to stay within [`CAPACITY`] while still running.
    pub evicted: u64,
}

impl Processes {
    fn insert(&mut self, key: (u32, u64), exe: Option<Arc<str>>) {
        if self.by_key.len() >= CAPACITY && !self.by_key.contains_key(&key) {
            self.make_room();
        }
        self.seq += 1;
        self.by_key.insert(
            key,
            Entry {
                exe,
                exited: None,
                seq: self.seq,
            },
        );
    }

    fn make_room(&mut self) {
        self.expire(Instant::now() + EXITED_TTL);
        if self.by_key.len() < CAPACITY {
            return;
        }
        // Still full of running processes: drop the oldest eighth.
        let mut seqs: Vec<u64> = self.by_key.values().map(|e| e.seq).collect();
        let cut = CAPACITY / 8;
        let (_, &mut nth, _) = seqs.select_nth_unstable(cut);
        let before = self.by_key.len();
        self.by_key.retain(|_, e| e.seq > nth);
        self.evicted += (before - self.by_key.len()) as u64;
    }

    /// A process ran execve(): it now runs `filename`.
    pub fn exec(&mut self, ev: &ExecEvent) {
        self.insert(
            (ev.tgid, ev.proc.start_ns),
            Some(Arc::from(ev.exe.as_str())),
        );
    }

    /// A new process runs its parent's program until it execs.
    pub fn fork(&mut self, ev: &ForkEvent) {
        let parent = self.exe(ev.proc.ppid, ev.parent_start_ns);
        self.insert((ev.tgid, ev.proc.start_ns), parent);
    }

    /// A process ended: kept for [`EXITED_TTL`]; returns its program.
    pub fn exit(&mut self, ev: &ExitEvent) -> Option<Arc<str>> {
        let exe = self.exe(ev.tgid, ev.proc.start_ns);
        if let Some(e) = self.by_key.get_mut(&(ev.tgid, ev.proc.start_ns)) {
            e.exited = Some(Instant::now());
        }
        exe
    }

    /// The program process (`tgid`, `start_ns`) runs, from the cache or
    /// `/proc` (only if the process there is the same one: start time).
    pub fn exe(&mut self, tgid: u32, start_ns: u64) -> Option<Arc<str>> {
        if tgid == 0 {
            return None;
        }
        if let Some(e) = self.by_key.get(&(tgid, start_ns)) {
            return e.exe.clone();
        }
        let exe = from_proc(tgid, start_ns).map(Arc::<str>::from);
        if exe.is_none() {
            self.misses += 1;
        }
        self.insert((tgid, start_ns), exe.clone());
        exe
    }

    /// Forget processes that ended more than [`EXITED_TTL`] before `now`.
    pub fn expire(&mut self, now: Instant) {
        self.by_key.retain(|_, e| {
            e.exited
                .is_none_or(|t| now.saturating_duration_since(t) < EXITED_TTL)
        });
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// `/proc/<tgid>/exe` if `/proc/<tgid>` is the process that started at
/// `start_ns` (boot time; /proc says it in clock ticks).
fn from_proc(tgid: u32, start_ns: u64) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    if ticks != start_ns / u64::from(abi::EGRESS_CLOCK_TICK_NS) {
        return None;
    }
    let exe = std::fs::read_link(format!("/proc/{tgid}/exe")).ok()?;
    Some(exe.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::ProcIdent;
    use std::time::SystemTime;

    fn exec(tgid: u32, start: u64, file: &str) -> ExecEvent {
        ExecEvent {
            time: SystemTime::UNIX_EPOCH,
            ts_ns: start,
            cgroup_id: 1,
            scope_cgroup_id: 1,
            tgid,
            proc: ProcIdent {
                start_ns: start,
                ppid: 1,
            },
            started: SystemTime::UNIX_EPOCH,
            parent_start_ns: 0,
            uid: 0,
            gid: 0,
            euid: 0,
            exe: file.into(),
            filename: file.into(),
            args: vec![],
            args_truncated: false,
            comm: String::new(),
            parent_comm: String::new(),
        }
    }

    #[test]
    fn fork_inherits_then_exec_replaces() {
        let mut p = Processes::default();
        p.exec(&exec(10, 100, "/bin/sh"));
        p.fork(&ForkEvent {
            scope_cgroup_id: 1,
            tgid: 11,
            proc: ProcIdent {
                start_ns: 200,
                ppid: 10,
            },
            parent_start_ns: 100,
        });
        assert_eq!(p.exe(11, 200).as_deref(), Some("/bin/sh"));
        p.exec(&exec(11, 200, "/bin/nc"));
        assert_eq!(p.exe(11, 200).as_deref(), Some("/bin/nc"));
        // Same pid, another start time: another process.
        assert_eq!(p.exe(11, 999_999_999_999_999), None);
    }

    #[test]
    fn our_own_process_is_found_in_proc() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let ticks: u64 = rest.split_whitespace().nth(19).unwrap().parse().unwrap();
        let me = std::process::id();
        let mut p = Processes::default();
        let exe = p.exe(me, ticks * u64::from(abi::EGRESS_CLOCK_TICK_NS) + 5);
        assert_eq!(
            exe.as_deref(),
            Some(std::env::current_exe().unwrap().to_str().unwrap())
        );
        assert_eq!(
            p.exe(me, (ticks + 1) * u64::from(abi::EGRESS_CLOCK_TICK_NS)),
            None
        );
    }

    #[test]
    fn stays_bounded() {
        let mut p = Processes::default();
        for i in 0..(CAPACITY as u32 + 10) {
            p.exec(&exec(i + 1, u64::from(i), "/x"));
        }
        assert!(p.len() <= CAPACITY);
        assert!(p.evicted > 0);
        // The newest survive.
        assert_eq!(
            p.exe(CAPACITY as u32 + 10, u64::from(CAPACITY as u32 + 9))
                .as_deref(),
            Some("/x")
        );
    }

    #[test]
    fn ended_processes_expire() {
        let mut p = Processes::default();
        p.exec(&exec(5, 1, "/bin/true"));
        let exit = ExitEvent {
            time: SystemTime::UNIX_EPOCH,
            ts_ns: 2,
            cgroup_id: 1,
            scope_cgroup_id: 1,
            tgid: 5,
            proc: ProcIdent {
                start_ns: 1,
                ppid: 1,
            },
            started: SystemTime::UNIX_EPOCH,
            status: 0,
            comm: String::new(),
        };
        assert_eq!(p.exit(&exit).as_deref(), Some("/bin/true"));
        p.expire(Instant::now());
        assert_eq!(p.len(), 1, "kept for its late flows");
        p.expire(Instant::now() + EXITED_TTL + Duration::from_secs(1));
        assert_eq!(p.len(), 0);
    }
}
