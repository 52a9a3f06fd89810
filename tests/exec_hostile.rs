//! Attacks on process context (issue 15) from code in scope: a daemon
//! attached to a test cgroup, real processes in it, loopback listeners the
//! test owns.
//!  - a process that connects and then execs another program keeps the
//!    socket: the flow still names the program that opened it;
//!  - a child forked by a non-main thread still names its parent process
//!    (parent_process_key, and the program it inherits on its flows);
//!  - a program run from memory (memfd) through a symlink with a trusted
//!    name is not recorded under that name;
//!  - secrets in common command-line shapes never leave the daemon;
//!  - an exec flood pays its record budget by size: an exec record (~2 KiB)
//!    costs as much of the budget as the ring space it takes;
//!  - a process that spends its budget so that its exec record is lost does
//!    not pass its later flows off as the program it ran before.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Daemon, DaemonOptions, TcpServer, TestCgroup};

const WAIT: Duration = Duration::from_secs(20);

fn exe_of(path: &str) -> String {
    std::fs::canonicalize(path)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_flow_names_the_program_that_opened_it_not_the_one_exec_made_later() {
    require_root!();
    let cg = TestCgroup::new("exh-exec-after-connect");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg));
    let server = TcpServer::spawn("127.0.0.1:0", None, 0);
    // Connect, send, then exec `sleep` with the socket still open (no
    // CLOEXEC): the flow ends when sleep exits, after the exec record.
    let py = format!(
        "import os, socket\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b'x' * 1000)\n\
         s.set_inheritable(True)\n\
         print(os.path.realpath('/proc/self/exe'), flush=True)\n\
         os.execv('/bin/sleep', ['sleep', '0.5'])\n",
        port = server.port
    );
    let python = cg.python(&py).trim().to_owned();
    let flows = daemon.collect(1, WAIT, |r| {
        support::is_egress(r) && r["dst_port"] == server.port && r["bytes_out"] == 1000
    });
    let [flow] = flows.as_slice() else {
        panic!("one flow with its bytes: {flows:#?}");
    };
    let sleep = exe_of("/bin/sleep");
    assert_ne!(python, sleep);
    let execs = daemon.collect(2, WAIT, |r| {
        r["clawker.source"] == "exec" && r["event"] == "exec" && r["pid"] == flow["pid"]
    });
    assert!(
        execs.iter().any(|e| e["exe"] == sleep),
        "the exec into sleep is recorded: {execs:#?}"
    );
    assert_eq!(
        flow["exe"], python,
        "the flow's program is the one that connected and sent: {flow:#}"
    );
}

#[test]
fn a_child_forked_by_a_thread_still_leads_to_its_parent_process() {
    require_root!();
    let cg = TestCgroup::new("exh-thread-fork");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg));
    let server = TcpServer::spawn("127.0.0.1:0", None, 0);
    // A thread (not the main one) forks; the child connects, then execs.
    let py = format!(
        "import os, socket, threading\n\
         def work():\n\
         \x20   pid = os.fork()\n\
         \x20   if pid == 0:\n\
         \x20       s = socket.create_connection(('127.0.0.1', {port}))\n\
         \x20       s.sendall(b'y' * 700)\n\
         \x20       s.close()\n\
         \x20       os.execv('/bin/true', ['true', 'from-thread'])\n\
         \x20   os.waitpid(pid, 0)\n\
         t = threading.Thread(target=work)\n\
         t.start()\n\
         t.join()\n\
         print(os.getpid(), os.path.realpath('/proc/self/exe'), flush=True)\n",
        port = server.port
    );
    let out = cg.python(&py);
    let (pid, python) = out.trim().split_once(' ').unwrap();
    let pid: u32 = pid.parse().unwrap();
    let flows = daemon.collect(1, WAIT, |r| {
        support::is_egress(r) && r["dst_port"] == server.port && r["bytes_out"] == 700
    });
    let [flow] = flows.as_slice() else {
        panic!("the child's flow: {flows:#?}");
    };
    assert_eq!(flow["ppid"], pid, "{flow:#}");
    assert_eq!(
        flow["exe"], python,
        "a forked child runs its parent's program: {flow:#}"
    );
    // Wait for the child's exec record itself: python (a pyenv shim here)
    // makes several exec records of its own first.
    daemon.collect(1, WAIT, |r| {
        r["clawker.source"] == "exec" && r["event"] == "exec" && r["args"] == "true from-thread"
    });
    let execs: Vec<Value> = daemon
        .records()
        .into_iter()
        .filter(|r| r["clawker.source"] == "exec" && r["event"] == "exec")
        .collect();
    let parent = execs
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("python's exec record: {execs:#?}"));
    let child = execs
        .iter()
        .find(|r| r["args"] == "true from-thread")
        .unwrap_or_else(|| panic!("the child's exec record: {execs:#?}"));
    assert_eq!(
        child["parent_process_key"], parent["process_key"],
        "the child's parent is the python process, not its thread: {child:#}"
    );
    assert_eq!(child["parent_exe"], python, "{child:#}");
}

#[test]
fn a_program_run_from_memory_is_not_recorded_under_the_symlink_it_was_run_by() {
    require_root!();
    let cg = TestCgroup::new("exh-memfd");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg));
    let dir = tempfile::tempdir().unwrap();
    // Fileless: the program lives in a memfd; a symlink with a trusted
    // name points at it through /proc/self/fd, and execve() gets that name.
    let disguise = dir.path().join("git");
    let py = format!(
        "import os\n\
         fd = os.memfd_create('payload/../usr/bin/git', 0)\n\
         os.write(fd, open('/bin/true', 'rb').read())\n\
         os.symlink('/proc/self/fd/%d' % fd, '{disguise}')\n\
         os.execv('{disguise}', ['git', 'status'])\n",
        disguise = disguise.display()
    );
    cg.python(&py);
    let execs = daemon.collect(1, WAIT, |r| {
        r["clawker.source"] == "exec" && r["event"] == "exec" && r["args"] == "git status"
    });
    let [exec] = execs.as_slice() else {
        panic!("the memfd program's exec record: {execs:#?}");
    };
    assert_eq!(
        exec["exec_filename"],
        disguise.to_str().unwrap(),
        "{exec:#}"
    );
    assert_eq!(
        exec["exe"], "/memfd:payload%2F..%2Fusr%2Fbin%2Fgit",
        "the file that ran is the memfd, as /proc/<pid>/exe names it ('/' in \
         the name the caller chose escaped): {exec:#}"
    );
}

/// Mask-check one command line run for real: exec records of the test
/// cgroup must not contain any of `secrets`.
fn assert_masked(daemon: &Daemon, secrets: &[&str]) -> Vec<Value> {
    let execs = daemon.collect(1, WAIT, |r| {
        r["clawker.source"] == "exec" && r["event"] == "exec"
    });
    let everything = format!("{:?}{:?}", daemon.records(), daemon.stderr_lines());
    for s in secrets {
        assert!(!everything.contains(s), "{s} left the daemon: {execs:#?}");
    }
    execs
}

#[test]
fn common_secret_shapes_on_a_command_line_never_leave_the_daemon() {
    require_root!();
    let cg = TestCgroup::new("exh-secrets");
    let daemon = Daemon::start(DaemonOptions::for_cgroup(&cg));
    // Each is a command line as people type it (argv, no shell). Every
    // program is a link to `true`, which ignores its arguments: only the
    // exec records see them.
    let bin = tempfile::tempdir().unwrap();
    let lines: &[(&str, &[&str], &str)] = &[
        (
            "sshpass",
            &["-p", "Sshpass0001", "ssh", "host"],
            "Sshpass0001",
        ),
        (
            "mysql",
            &["-u", "root", "-pMysqlPw0002", "db"],
            "MysqlPw0002",
        ),
        (
            "curl",
            &["--user=bob:CurlPw0003", "http://h/"],
            "CurlPw0003",
        ),
        ("curl", &["-ubob:CurlPw0004", "http://h/"], "CurlPw0004"),
        ("env", &["MYSQL_PWD=EnvPw0005", "mysql"], "EnvPw0005"),
        (
            "curl",
            &["https://api.example.test/v1?api_key=QueryKey0006&x=1"],
            "QueryKey0006",
        ),
        (
            "xdg-open",
            &["https://h.test/cb#access_token=Fragment0007"],
            "Fragment0007",
        ),
        (
            "curl",
            &["--oauth2-bearer", "Bearer0008", "http://h/"],
            "Bearer0008",
        ),
        (
            "curl",
            &["-d", "user=bob&password=Form0009", "http://h/"],
            "Form0009",
        ),
        (
            "curl",
            &["--data", "{\"password\":\"Json0010\"}", "http://h/"],
            "Json0010",
        ),
        (
            "curl",
            &["--data", "{\"password\": \"Json0011\"}", "http://h/"],
            "Json0011",
        ),
        (
            "docker",
            &["login", "-u", "me", "-p", "Docker0012", "r.test"],
            "Docker0012",
        ),
        // Session-5 review: shapes the rules did not know.
        ("zip", &["-P", "Zip0013", "a.zip", "f"], "Zip0013"),
        ("7z", &["a", "-pSeven0014", "a.7z"], "Seven0014"),
        ("ssh-keygen", &["-N", "Keygen0015", "-f", "k"], "Keygen0015"),
        ("smbclient", &["//h/s", "-U", "bob%Smb0016"], "Smb0016"),
        (
            "npm",
            &["config", "set", "//r.test/:_authToken", "Npm0017"],
            "Npm0017",
        ),
        ("gh", &["secret", "set", "N", "--body", "Gh0018"], "Gh0018"),
        ("vault", &["login", "Vault0019"], "Vault0019"),
        ("openssl", &["passwd", "-1", "Openssl0020"], "Openssl0020"),
        ("tool", &["--cred", "Cred0021"], "Cred0021"),
    ];
    for (program, args, _) in lines {
        let path = bin.path().join(program);
        if !path.exists() {
            std::os::unix::fs::symlink("/bin/true", &path).unwrap();
        }
        let out = cg
            .command(path.to_str().unwrap(), args)
            .output()
            .expect("run the command line");
        assert!(out.status.success(), "{out:?}");
    }
    let secrets: Vec<&str> = lines.iter().map(|(_, _, s)| *s).collect();
    // One exec record per line: `true` (the shell execs it once inside).
    let execs = daemon.collect(lines.len(), WAIT, |r| {
        r["clawker.source"] == "exec" && r["event"] == "exec"
    });
    assert_eq!(execs.len(), lines.len(), "every exec recorded: {execs:#?}");
    assert_masked(&daemon, &secrets);
}

/// An exec record takes ~9 times the ring space of a flow record; the
/// budget is charged by size (record units of 256 bytes), so a container
/// spending its budget on fork+exec loops fills no more of the ring than
/// one flooding flows. Budget: 100 units at once, one more per second; 40
/// fork + exec + exit cost 11 units each: about 9 of the exec records fit
/// (a budget that counted records let ~33 through).
#[test]
fn the_record_budget_is_charged_by_size() {
    require_root!();
    let cg = TestCgroup::new("exh-exec-budget");
    let daemon = Daemon::start(
        DaemonOptions::for_cgroup(&cg)
            .arg("--container-record-rate")
            .arg("1")
            .arg("--container-record-burst")
            .arg("99"),
    );
    let started = std::time::Instant::now();
    let loop_40 = "i=0; while [ $i -lt 40 ]; do /bin/true; i=$((i+1)); done";
    let status = cg.command("sh", &["-c", loop_40]).status().unwrap();
    assert!(status.success());
    let limited = "clawker_egress_events_dropped_total{reason=\"rate_limited\"}";
    let deadline = std::time::Instant::now() + WAIT;
    while daemon.metric(limited) == 0.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The records the budget let through come out after the drop was
    // counted (the sinks trail the metric): wait for the first, then give
    // the rest a second (more can only make the bound below stricter).
    let is_exec = |r: &Value| r["clawker.source"] == "exec" && r["event"] == "exec";
    daemon.collect(1, WAIT, is_exec);
    std::thread::sleep(Duration::from_secs(1));
    let execs: Vec<Value> = daemon.records().into_iter().filter(is_exec).collect();
    let units = 100 + started.elapsed().as_secs() + 1; // burst + refill
    eprintln!(
        "BUDGET: {} exec records, {} rate-limited records, budget {units} units",
        execs.len(),
        daemon.metric(limited)
    );
    assert!(daemon.metric(limited) > 0.0, "the loop spent its budget");
    assert!(
        !execs.is_empty(),
        "the budget let some exec records through"
    );
    assert!(
        execs.len() as u64 <= units / 7,
        "{} exec records in a budget of {units} units: each costs 9 (11 \
         with its fork and exit), so at most units / 7 fit, slack included",
        execs.len()
    );
}

/// Review finding (session 4): spend the record budget, exec at once (that
/// exec record is lost), wait for the budget to come back, connect. The
/// flow carries the image id of a program no exec record named: it gets
/// no `exe`, not python's (what the process was forked with).
#[test]
fn a_lost_exec_record_does_not_make_a_flow_carry_the_previous_program() {
    require_root!();
    let cg = TestCgroup::new("exh-exec-lost");
    let daemon = Daemon::start(
        DaemonOptions::for_cgroup(&cg)
            .arg("--container-record-rate")
            .arg("20")
            .arg("--container-record-burst")
            .arg("20"),
    );
    let server = TcpServer::spawn("127.0.0.1:0", None, 0);
    let py = format!(
        "import os\n\
         for _ in range(100):\n\
         \x20   pid = os.fork()\n\
         \x20   if pid == 0: os._exit(0)\n\
         \x20   os.waitpid(pid, 0)\n\
         os.execv('/usr/bin/bash', ['bash', '-c', 'sleep 3; exec 3<>/dev/tcp/127.0.0.1/{}; echo hi >&3'])\n",
        server.port
    );
    // The interpreter itself, not a wrapper script (pyenv's shim runs
    // bash, which would blur which exec record is which).
    let python = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .unwrap();
    let python = String::from_utf8(python.stdout).unwrap().trim().to_owned();
    let status = cg.command(&python, &["-c", &py]).status().unwrap();
    assert!(status.success());
    let flows = daemon.collect(1, WAIT, |r| {
        support::is_egress(r) && r["dst_port"] == server.port
    });
    let [flow] = flows.as_slice() else {
        panic!("one flow: {flows:#?}");
    };
    let bash = exe_of("/usr/bin/bash");
    let execs: Vec<Value> = daemon
        .records()
        .into_iter()
        .filter(|r| r["clawker.source"] == "exec" && r["pid"] == flow["pid"])
        .collect();
    let exec_seen = execs.iter().any(|r| {
        r["event"] == "exec"
            && r["exe"] == bash.as_str()
            && r["args"]
                .as_str()
                .is_some_and(|a| a.starts_with("bash -c sleep 3"))
    });
    eprintln!(
        "LOST-EXEC: flow exe {} (bash's exec record seen: {exec_seen})",
        flow["exe"]
    );
    assert!(
        flow["exe"].is_null() || flow["exe"] == bash.as_str(),
        "the flow names bash or nothing, never the program before the exec: {flow:#}"
    );
    // With bash's exec record the flow names bash; without it, the
    // daemon's /proc fallback (checked against the process's start time)
    // may still find bash while the process lives, or name nothing.
    assert!(
        !exec_seen || flow["exe"] == bash.as_str(),
        "bash's exec record came, so the flow names bash: {flow:#}"
    );
}
