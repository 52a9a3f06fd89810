//! (e) Kernel ns per exec (issue 15): the exec/fork/exit tracepoint
//! programs' own statistics (`kernel.bpf_stats_enabled`) over a shell loop
//! of fork + exec(/bin/true) + exit, in scope (a watched cgroup) and out
//! of scope (a host process while the daemon watches containers at the
//! host root: what every exec on the host pays). Prints figures only.
//! `cargo bench --bench capture -- exec` runs this part alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{print_cost, prog_stats, start_daemon, start_host_daemon, stop_daemon};

const EXECS: usize = 5_000;
const PROGRAMS: [&str; 3] = ["process_exec", "process_fork", "process_exit"];

pub fn run() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED exec-cost bench: needs root (BPF attach, cgroups)");
        return;
    }
    let root = clawker_egress::kernel::cgroup2_root().expect("cgroup2 mount");
    let me = std::process::id();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let cg = root.join(format!("clawker-bench-exec-{me}"));
    std::fs::create_dir_all(&cg).expect("bench cgroup");
    let pins = PathBuf::from(format!("/sys/fs/bpf/clawker-bench-exec-{me}"));
    let daemon = start_daemon(&root, &cg, &pins);
    let before = prog_stats(&pins);
    exec_loop(&cg);
    let after = prog_stats(&pins);
    stop_daemon(daemon, &cg, &pins);
    let _ = std::fs::remove_dir(&cg);
    print("in scope (watched cgroup)", &before, &after);
    let pins = PathBuf::from(format!("/sys/fs/bpf/clawker-bench-exec-host-{me}"));
    let daemon = start_host_daemon(&root, &pins);
    let before = prog_stats(&pins);
    exec_loop(&root);
    let after = prog_stats(&pins);
    stop_daemon(daemon, &root, &pins);
    print("out of scope (host process)", &before, &after);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
}

/// EXECS fork + exec(/bin/true) + exit from a shell in `cgroup`.
fn exec_loop(cgroup: &Path) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && i=0 && while [ $i -lt {EXECS} ]; do /bin/true; i=$((i+1)); done",
            cgroup.display()
        ))
        .status()
        .expect("sh");
    assert!(status.success(), "exec loop failed");
}

fn print(what: &str, before: &[(String, u64, u64)], after: &[(String, u64, u64)]) {
    print_cost(
        &format!("kernel ns per exec, {what} ({EXECS} fork+exec+exit of /bin/true)"),
        ("exec", EXECS),
        &PROGRAMS,
        before,
        after,
    );
}
