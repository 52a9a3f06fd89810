//! The process context records (`clawker.source`=`exec`, issue 15): one
//! per exec and one per process end, and the process identity every egress
//! record carries (`exe`, `ppid`, `process_key`) to join them.

use std::fmt::Write as _;

use super::{key, printable, Record, Source};
use crate::capture::{process_key, ProcIdent};
use crate::flow::{ExecRecord, ExitRecord};

impl Record {
    /// One execve() of a process in a container. `args` were masked at
    /// decode; they are joined with spaces (an argument holding a space
    /// is quoted).
    pub fn from_exec(x: &ExecRecord) -> Self {
        let e = &x.exec;
        let mut r = Record::new(e.time, Source::Exec);
        r.set(key::EVENT, "exec");
        r.set(key::CGROUP_ID, e.cgroup_id);
        r.set(key::EXE, e.exe.as_str());
        if e.filename != e.exe {
            r.set(key::EXEC_FILENAME, e.filename.as_str());
        }
        if let Some(cwd) = &e.cwd {
            r.set(key::CWD, cwd.as_str());
        }
        r.set(key::ARGS, join_args(&e.args));
        r.set(key::ARGS_TRUNCATED, e.args_truncated);
        r.set(key::UID, e.uid);
        r.set(key::GID, e.gid);
        r.set(key::EUID, e.euid);
        r.set(key::COMM, e.comm.as_str());
        r.set(key::PARENT_COMM, e.parent_comm.as_str());
        if let Some(parent) = &x.parent_exe {
            r.set(key::PARENT_EXE, &**parent);
        }
        r.set(
            key::PARENT_PROCESS_KEY,
            process_key(e.proc.ppid, e.parent_start_ns),
        );
        r.set(key::PROCESS_START, rfc3339(e.started));
        r.set_process(e.tgid, e.proc, None);
        let mut body = format!("exec {}", printable(&e.exe));
        let _ = write!(body, "[{}] ppid={}", e.tgid, e.proc.ppid);
        r.with_body(body)
    }

    /// A process in a container ended.
    pub fn from_exit(x: &ExitRecord) -> Self {
        let e = &x.exit;
        let mut r = Record::new(e.time, Source::Exec);
        r.set(key::EVENT, "exit");
        r.set(key::CGROUP_ID, e.cgroup_id);
        r.set(key::COMM, e.comm.as_str());
        if let Some(code) = e.exit_code() {
            r.set(key::EXIT_CODE, i64::from(code));
        }
        if let Some(sig) = e.signal() {
            r.set(key::EXIT_SIGNAL, i64::from(sig));
        }
        r.set(
            key::DURATION_MS,
            u64::try_from(x.duration.as_millis()).unwrap_or(u64::MAX),
        );
        r.set(key::PROCESS_START, rfc3339(e.started));
        r.set_process(e.tgid, e.proc, x.exe.as_deref());
        let body = format!(
            "exit {}[{}] {}",
            printable(x.exe.as_deref().unwrap_or(&e.comm)),
            e.tgid,
            match (e.exit_code(), e.signal()) {
                (Some(c), _) => format!("code={c}"),
                (_, Some(s)) => format!("signal={s}"),
                _ => String::new(),
            }
        );
        r.with_body(body)
    }

    /// The process identity: `pid` (tgid), `ppid`, `process_key` and, when
    /// known, `exe`.
    pub fn set_process(&mut self, tgid: u32, proc: ProcIdent, exe: Option<&str>) {
        // `pid` may be there already (the egress shapes' header); the
        // others never are: no search for them.
        self.set(key::PID, tgid);
        self.push(key::PPID, proc.ppid);
        self.push(key::PROCESS_KEY, process_key(tgid, proc.start_ns));
        if let Some(exe) = exe {
            self.push(key::EXE, exe);
        }
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// argv as one string: arguments joined by spaces, one that holds a space
/// or a quote (or is empty) in single quotes.
fn join_args(args: &[String]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if a.is_empty() || a.contains([' ', '\'', '"', '\t', '\n']) {
            out.push('\'');
            out.push_str(&a.replace('\'', r"'\''"));
            out.push('\'');
        } else {
            out.push_str(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::ExecEvent;
    use std::time::SystemTime;

    #[test]
    fn args_are_joined_and_quoted() {
        let a = |v: &[&str]| join_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&["sh", "-c", "echo hi"]), "sh -c 'echo hi'");
        assert_eq!(a(&["x", ""]), "x ''");
        assert_eq!(a(&["it's"]), r"'it'\''s'");
    }

    #[test]
    fn exec_record_carries_the_join_keys() {
        let x = ExecRecord {
            exec: Box::new(ExecEvent {
                time: SystemTime::now(),
                ts_ns: 5,
                cgroup_id: 9,
                scope_cgroup_id: 9,
                tgid: 42,
                proc: ProcIdent {
                    start_ns: 1000,
                    ppid: 7,
                    exec_id: 1,
                },
                started: SystemTime::now(),
                parent_start_ns: 500,
                uid: 0,
                gid: 0,
                euid: 0,
                exe: "/bin/busybox".into(),
                filename: "/bin/nc".into(),
                cwd: Some("/work".into()),
                args: vec!["nc".into(), "--token=********".into()],
                args_truncated: false,
                comm: "nc".into(),
                parent_comm: "sh".into(),
            }),
            parent_exe: Some("/bin/sh".into()),
        };
        let r = Record::from_exec(&x);
        assert_eq!(r.source, Source::Exec);
        assert_eq!(r.get_str(key::EXE), Some("/bin/busybox"));
        assert_eq!(r.get_str(key::EXEC_FILENAME), Some("/bin/nc"));
        assert_eq!(r.get_str(key::CWD), Some("/work"));
        assert_eq!(r.get_str(key::PARENT_EXE), Some("/bin/sh"));
        assert_eq!(r.get_int(key::PID), Some(42));
        assert_eq!(r.get_int(key::PPID), Some(7));
        assert_eq!(
            r.get_str(key::PROCESS_KEY),
            Some(process_key(42, 1000).as_str())
        );
        assert_eq!(
            r.get_str(key::PARENT_PROCESS_KEY),
            Some(process_key(7, 500).as_str())
        );
        assert_eq!(r.get_str(key::ARGS), Some("nc --token=********"));
    }
}
