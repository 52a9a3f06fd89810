//! The process cache (Tetragon's idea): process (tgid + start time) → the
//! programs it ran, learned from exec and fork records, with `/proc` as
//! the fallback for processes that started before the daemon. Every
//! egress record gets its process's `exe` from here.
//!
//! An exec replaces the program, not the process (same key), and a socket
//! outlives it unless it is close-on-exec: each process keeps its last
//! [`HISTORY`] programs, each with its program image id (the kernel's
//! `self_exec_id`, raised by every execve() and copied by fork, on every
//! record: [`ProcIdent::exec_id`]). A record is named by the program whose
//! exec record carries its id ([`Processes::exe_of`]): a flow opened
//! before an exec keeps the program that opened it, and a process whose
//! exec record was lost (its budget spent) matches no program — no `exe`,
//! never the program it ran before. A flow older than the history gets no
//! program rather than a later one.
//!
//! Bounded: at most [`CAPACITY`] processes. A process that ended stays
//! for [`EXITED_TTL`]: its flows' records come after it exits (a socket
//! closes at exit). When full, an eighth goes: ended processes first (the
//! longest ended first, so a flood of short processes cannot push out one
//! that ended a moment ago), then the oldest running ones. A process
//! missing from the cache only costs its records the `exe` field (counted
//! in `misses`), never a record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capture::{ExecEvent, ExitEvent, ForkEvent, ProcIdent};
use crate::kernel::abi;

/// Processes the cache holds at most.
pub const CAPACITY: usize = 65_536;
/// How long an ended process stays (its last flows end after it).
pub const EXITED_TTL: Duration = Duration::from_secs(30);
/// Programs kept per process (each exec adds one).
pub const HISTORY: usize = 4;

/// One program a process ran.
#[derive(Debug, Clone)]
struct Run {
    /// Its program image id; None: learned from `/proc` (a process older
    /// than the daemon), taken by the first record that asks.
    exec_id: Option<u32>,
    /// Boot ns it began (0: unknown, from `/proc`).
    since_ns: u64,
    /// None: looked up in `/proc` and not found (not asked again).
    exe: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The programs it ran, oldest first.
    runs: Vec<Run>,
    exited: Option<Instant>,
    seq: u64,
}

impl Entry {
    /// The program with image id `exec_id` (None: not among those kept,
    /// or its exec record was lost).
    fn with_id(&mut self, exec_id: u32) -> Option<Arc<str>> {
        if let Some(run) = self.runs.iter().find(|r| r.exec_id == Some(exec_id)) {
            return run.exe.clone();
        }
        // The program `/proc` showed (a process older than the daemon) is
        // the one before every exec recorded since.
        let older = self
            .runs
            .iter()
            .skip(1)
            .all(|r| r.exec_id.is_some_and(|id| id > exec_id));
        match self.runs.first_mut() {
            Some(first) if first.exec_id.is_none() && older => {
                first.exec_id = Some(exec_id);
                first.exe.clone()
            }
            _ => None,
        }
    }

    /// The program it ran at `at_ns` (None: before what is kept).
    fn at(&self, at_ns: u64) -> Option<Arc<str>> {
        self.runs
            .iter()
            .rev()
            .find(|r| r.since_ns <= at_ns)
            .and_then(|r| r.exe.clone())
    }
}

#[derive(Debug, Default)]
pub struct Processes {
    /// (tgid, start time), both the kernel's: foldhash
    /// (docs/ARCHITECTURE.md "Hash maps").
    by_key: crate::fast_hash::HashMap<(u32, u64), Entry>,
    seq: u64,
    /// Lookups that found no program (not in the cache, not in /proc, or
    /// an exec record that never came).
    pub misses: u64,
    /// Entries dropped to stay within [`CAPACITY`] while still running.
    pub evicted: u64,
}

impl Processes {
    /// A new entry for `key`, running `run`.
    fn insert(&mut self, key: (u32, u64), run: Run) {
        if self.by_key.len() >= CAPACITY && !self.by_key.contains_key(&key) {
            self.make_room();
        }
        self.seq += 1;
        self.by_key.insert(
            key,
            Entry {
                runs: vec![run],
                exited: None,
                seq: self.seq,
            },
        );
    }

    /// Drop an eighth of the entries: ended processes first, the longest
    /// ended first, then the oldest running ones. A flood of short-lived
    /// processes pushes out its own older ones, never one that ended a
    /// moment ago and whose flows' records are still to come.
    fn make_room(&mut self) {
        let mut order: Vec<_> = self
            .by_key
            .iter()
            .map(|(k, e)| ((e.exited.is_none(), e.exited, e.seq), *k))
            .collect();
        let cut = CAPACITY / 8;
        if order.len() > cut {
            order.select_nth_unstable_by_key(cut, |(rank, _)| *rank);
            order.truncate(cut);
        }
        for (rank, key) in order {
            self.by_key.remove(&key);
            if rank.0 {
                self.evicted += 1;
            }
        }
    }

    /// A process ran execve(): from the exec on it runs `exe` under a new
    /// image id (the same process: its earlier programs stay for its older
    /// flows).
    pub fn exec(&mut self, ev: &ExecEvent) {
        let key = (ev.tgid, ev.proc.start_ns);
        let run = Run {
            exec_id: Some(ev.proc.exec_id),
            since_ns: ev.ts_ns,
            exe: Some(Arc::from(ev.exe.as_str())),
        };
        match self.by_key.get_mut(&key) {
            Some(e) => {
                if e.runs.len() >= HISTORY {
                    e.runs.remove(0);
                }
                e.runs.push(run);
            }
            None => self.insert(key, run),
        }
    }

    /// A new process runs its parent's program (the one with the image id
    /// fork copied) until it execs.
    pub fn fork(&mut self, ev: &ForkEvent) {
        let parent = self.exe_of(ev.proc.ppid, ev.parent_start_ns, ev.proc.exec_id);
        let run = Run {
            exec_id: Some(ev.proc.exec_id),
            since_ns: ev.proc.start_ns,
            exe: parent,
        };
        self.insert((ev.tgid, ev.proc.start_ns), run);
    }

    /// A process ended: kept for [`EXITED_TTL`]; returns its program.
    pub fn exit(&mut self, ev: &ExitEvent) -> Option<Arc<str>> {
        let exe = self.exe_of(ev.tgid, ev.proc.start_ns, ev.proc.exec_id);
        if let Some(e) = self.by_key.get_mut(&(ev.tgid, ev.proc.start_ns)) {
            e.exited = Some(Instant::now());
        }
        exe
    }

    /// The program a record of process `tgid` (`proc`) was made by: the
    /// one whose exec record carries the record's image id.
    pub fn exe_for(&mut self, tgid: u32, proc: &ProcIdent) -> Option<Arc<str>> {
        self.exe_of(tgid, proc.start_ns, proc.exec_id)
    }

    fn exe_of(&mut self, tgid: u32, start_ns: u64, exec_id: u32) -> Option<Arc<str>> {
        let exe = self.entry(tgid, start_ns)?.with_id(exec_id);
        if exe.is_none() {
            self.misses += 1;
        }
        exe
    }

    /// The program process (`tgid`, `start_ns`) ran at `at_ns` (boot
    /// time), for a record that does not carry the image id (an exec
    /// record's parent).
    pub fn exe_at(&mut self, tgid: u32, start_ns: u64, at_ns: u64) -> Option<Arc<str>> {
        self.entry(tgid, start_ns).and_then(|e| e.at(at_ns))
    }

    /// The process's entry; one from `/proc` when the cache has none (only
    /// if the process there is the same one: start time).
    fn entry(&mut self, tgid: u32, start_ns: u64) -> Option<&mut Entry> {
        if tgid == 0 {
            return None;
        }
        let key = (tgid, start_ns);
        if !self.by_key.contains_key(&key) {
            let exe = from_proc(tgid, start_ns).map(Arc::<str>::from);
            // Its program since it started, as far as we can know.
            let run = Run {
                exec_id: None,
                since_ns: 0,
                exe,
            };
            self.insert(key, run);
        }
        self.by_key.get_mut(&key)
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
    use std::time::SystemTime;

    fn ident(start: u64, exec_id: u32) -> ProcIdent {
        ProcIdent {
            start_ns: start,
            ppid: 1,
            exec_id,
        }
    }

    /// Process (`tgid`, `start`) ran `file` at `ts` as its image `id`.
    fn exec(tgid: u32, start: u64, id: u32, ts: u64, file: &str) -> ExecEvent {
        ExecEvent {
            time: SystemTime::UNIX_EPOCH,
            ts_ns: ts,
            cgroup_id: 1,
            scope_cgroup_id: 1,
            tgid,
            proc: ident(start, id),
            started: SystemTime::UNIX_EPOCH,
            parent_start_ns: 0,
            uid: 0,
            gid: 0,
            euid: 0,
            exe: file.into(),
            filename: file.into(),
            cwd: None,
            args: vec![],
            args_truncated: false,
            comm: String::new(),
            parent_comm: String::new(),
        }
    }

    fn fork(tgid: u32, start: u64, id: u32, parent: u32, parent_start: u64) -> ForkEvent {
        ForkEvent {
            scope_cgroup_id: 1,
            tgid,
            proc: ProcIdent {
                start_ns: start,
                ppid: parent,
                exec_id: id,
            },
            parent_start_ns: parent_start,
        }
    }

    fn exit_of(tgid: u32, start: u64, id: u32) -> ExitEvent {
        ExitEvent {
            time: SystemTime::UNIX_EPOCH,
            ts_ns: start + 1,
            cgroup_id: 1,
            scope_cgroup_id: 1,
            tgid,
            proc: ident(start, id),
            started: SystemTime::UNIX_EPOCH,
            status: 0,
            comm: String::new(),
        }
    }

    #[test]
    fn fork_inherits_then_exec_replaces() {
        let mut p = Processes::default();
        p.exec(&exec(10, 100, 1, 100, "/bin/sh"));
        p.fork(&fork(11, 200, 1, 10, 100));
        assert_eq!(p.exe_of(11, 200, 1).as_deref(), Some("/bin/sh"));
        p.exec(&exec(11, 200, 2, 210, "/bin/nc"));
        assert_eq!(p.exe_of(11, 200, 2).as_deref(), Some("/bin/nc"));
        // Same pid, another start time: another process.
        assert_eq!(p.exe_of(11, 999_999_999_999_999, 2), None);
    }

    #[test]
    fn a_flow_keeps_the_program_that_opened_it() {
        let mut p = Processes::default();
        p.exec(&exec(10, 100, 1, 150, "/tmp/evil"));
        p.exec(&exec(10, 100, 2, 300, "/usr/bin/git"));
        // A flow opened by evil (image 1) ends after the exec into git.
        assert_eq!(p.exe_of(10, 100, 1).as_deref(), Some("/tmp/evil"));
        assert_eq!(p.exe_of(10, 100, 2).as_deref(), Some("/usr/bin/git"));
        // A fork inherits the program of the image it copied.
        p.fork(&fork(11, 250, 1, 10, 100));
        assert_eq!(p.exe_of(11, 250, 1).as_deref(), Some("/tmp/evil"));
        // A long exec chain: older flows than the history get nothing.
        for i in 0..HISTORY as u32 {
            p.exec(&exec(10, 100, 3 + i, 400 + u64::from(i), "/bin/true"));
        }
        assert_eq!(p.exe_of(10, 100, 1), None);
        assert_eq!(p.exe_of(10, 100, 6).as_deref(), Some("/bin/true"));
        // The exec record's parent is named by time.
        assert_eq!(p.exe_at(10, 100, 500).as_deref(), Some("/bin/true"));
    }

    /// Review finding (session 4): a process spends its record budget,
    /// execs (that exec record is lost), then connects. Its flow carries
    /// the new image id, which no exec record named: no program, not the
    /// one it was forked with.
    #[test]
    fn a_lost_exec_record_leaves_no_program_not_the_previous_one() {
        let mut p = Processes::default();
        p.exec(&exec(10, 100, 1, 100, "/usr/bin/python3"));
        p.fork(&fork(11, 200, 1, 10, 100));
        // 11 execs /usr/bin/bash as image 2: the record never comes.
        assert_eq!(p.exe_of(11, 200, 2), None);
        assert_eq!(p.exe_of(11, 200, 1).as_deref(), Some("/usr/bin/python3"));
    }

    #[test]
    fn our_own_process_is_found_in_proc() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let ticks: u64 = rest.split_whitespace().nth(19).unwrap().parse().unwrap();
        let me = std::process::id();
        let start = ticks * u64::from(abi::EGRESS_CLOCK_TICK_NS) + 5;
        let mut p = Processes::default();
        let exe = p.exe_of(me, start, 7);
        let own = std::env::current_exe().unwrap();
        assert_eq!(exe.as_deref(), Some(own.to_str().unwrap()));
        // The first record's image id is the one /proc showed; an exec
        // recorded since is a later image, and an image after that whose
        // exec record was lost gets nothing.
        p.exec(&exec(me, start, 8, start + 1, "/bin/true"));
        assert_eq!(
            p.exe_of(me, start, 7).as_deref(),
            Some(own.to_str().unwrap())
        );
        assert_eq!(p.exe_of(me, start, 8).as_deref(), Some("/bin/true"));
        assert_eq!(p.exe_of(me, start, 9), None);
        assert_eq!(
            p.exe_of(me, (ticks + 1) * u64::from(abi::EGRESS_CLOCK_TICK_NS), 7),
            None
        );
    }

    #[test]
    fn stays_bounded() {
        let mut p = Processes::default();
        for i in 0..(CAPACITY as u32 + 10) {
            p.exec(&exec(i + 1, u64::from(i), 1, u64::from(i), "/x"));
        }
        assert!(p.len() <= CAPACITY);
        assert!(p.evicted > 0);
        // The newest survive.
        let last = CAPACITY as u32 + 10;
        assert_eq!(
            p.exe_of(last, u64::from(last - 1), 1).as_deref(),
            Some("/x")
        );
    }

    #[test]
    fn a_flood_of_short_processes_does_not_push_out_one_that_just_ended() {
        let mut p = Processes::default();
        p.exec(&exec(1, 1, 1, 1, "/bin/victim-daemon"));
        // Another container forks and reaps short processes, fast: the
        // cache is nearly full of them.
        for i in 0..CAPACITY as u32 - 50 {
            let pid = 1000 + i;
            p.exec(&exec(pid, u64::from(pid), 1, u64::from(pid), "/bin/true"));
            p.exit(&exit_of(pid, u64::from(pid), 1));
        }
        // A victim process ends; its flow's record comes a moment later,
        // while the flood goes on.
        p.exec(&exec(2, 2, 1, 2, "/usr/bin/curl"));
        p.exit(&exit_of(2, 2, 1));
        for i in 0..100u32 {
            let pid = 900_000 + i;
            p.exec(&exec(pid, u64::from(pid), 1, u64::from(pid), "/bin/true"));
        }
        assert!(p.len() <= CAPACITY);
        assert_eq!(p.exe_of(2, 2, 1).as_deref(), Some("/usr/bin/curl"));
        assert_eq!(p.exe_of(1, 1, 1).as_deref(), Some("/bin/victim-daemon"));
        assert_eq!(p.evicted, 0, "only ended processes were dropped");
    }

    #[test]
    fn ended_processes_expire() {
        let mut p = Processes::default();
        p.exec(&exec(5, 1, 1, 1, "/bin/true"));
        assert_eq!(p.exit(&exit_of(5, 1, 1)).as_deref(), Some("/bin/true"));
        p.expire(Instant::now());
        assert_eq!(p.len(), 1, "kept for its late flows");
        p.expire(Instant::now() + EXITED_TTL + Duration::from_secs(1));
        assert_eq!(p.len(), 0);
    }
}
