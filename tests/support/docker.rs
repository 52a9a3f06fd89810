//! Docker for the attribution tests: a real engine brought up by
//! `scripts/docker-env` (packages, containerd, dockerd with --live-restore,
//! the busybox test image), containers removed when their guard drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::unique;

/// Built by scripts/docker-env from the static busybox.
pub const IMAGE: &str = "clawker-egress-test/busybox:1";

/// Tests share one engine; the one that restarts it takes it alone.
static ENGINE: RwLock<()> = RwLock::new(());
static READY: OnceLock<()> = OnceLock::new();
static SETUP: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Bring the engine and the image up (once per test binary, and again
/// after a test stopped dockerd).
pub fn docker_env() {
    let _one_at_a_time = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("bash")
        .arg(repo().join("scripts/docker-env"))
        .output()
        .expect("run scripts/docker-env");
    assert!(
        out.status.success(),
        "scripts/docker-env failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Use the engine alongside other tests.
pub fn engine() -> RwLockReadGuard<'static, ()> {
    READY.get_or_init(docker_env);
    ENGINE.read().unwrap_or_else(|e| e.into_inner())
}

/// Use the engine alone (to stop and restart it).
pub fn engine_exclusive() -> RwLockWriteGuard<'static, ()> {
    READY.get_or_init(docker_env);
    ENGINE.write().unwrap_or_else(|e| e.into_inner())
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

/// `docker <args>`, which must succeed; its trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A container, force-removed on drop.
pub struct Container {
    pub id: String,
    pub name: String,
}

impl Container {
    pub fn pid(&self) -> u32 {
        docker_ok(&["inspect", "-f", "{{.State.Pid}}", &self.id])
            .parse()
            .expect("a pid")
    }

    /// The container's own cgroup v2 directory, from its init process
    /// (`/docker/<id>` with cgroupfs, `/system.slice/docker-<id>.scope`
    /// with systemd).
    pub fn cgroup_dir(&self, v2_root: &Path) -> PathBuf {
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid())).unwrap();
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 path");
        v2_root.join(rel.trim_start_matches('/'))
    }

    pub fn remove(&self) {
        let _ = docker(&["rm", "-f", &self.id]);
    }

    /// Let a [`Spec::gated`] container's script go on.
    pub fn release(&self) {
        docker_ok(&["exec", &self.id, "touch", "/tmp/clawker-test-go"]);
    }

    /// Once `daemon` knows this container (its `container_start` record is
    /// out: labels cached, policy installed), let its script go on. What a
    /// fixed `sleep` at the top of a script only hoped for on a loaded host.
    pub fn release_when_known(&self, daemon: &super::Daemon) {
        daemon.wait_for(
            &format!("container_start of {}", self.name),
            Duration::from_secs(30),
            |r| {
                r.iter().any(|x| {
                    x["event"] == "container_start" && x["container_id"] == self.id.as_str()
                })
            },
        );
        self.release();
    }

    /// Block until it exits; its exit code.
    pub fn wait(&self) -> i64 {
        docker_ok(&["wait", &self.id]).parse().unwrap_or(-1)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What to run: `sh -c script` in the test image.
pub struct Spec<'a> {
    pub name_prefix: &'a str,
    pub labels: Vec<(String, String)>,
    /// `host` (the test's loopback listeners) or a test network.
    pub network: &'a str,
    pub script: String,
    /// `--cgroup-parent`, when not Docker's default.
    pub cgroup_parent: Option<String>,
}

impl<'a> Spec<'a> {
    pub fn new(name_prefix: &'a str, script: impl Into<String>) -> Self {
        Spec {
            name_prefix,
            labels: Vec::new(),
            network: "host",
            script: script.into(),
            cgroup_parent: None,
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }

    pub fn cgroup_parent(mut self, p: &str) -> Self {
        self.cgroup_parent = Some(p.into());
        self
    }

    /// The script waits for [`Container::release`] before it starts.
    pub fn gated(mut self) -> Self {
        self.script = format!(
            "until [ -e /tmp/clawker-test-go ]; do sleep 0.1; done; {}",
            self.script
        );
        self
    }

    pub fn network(mut self, n: &'a str) -> Self {
        self.network = n;
        self
    }

    /// `docker run -d`: returns once the container has started.
    pub fn run(self) -> Container {
        let name = unique(self.name_prefix);
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
        args.extend(["--network".into(), self.network.into()]);
        if let Some(p) = &self.cgroup_parent {
            args.extend(["--cgroup-parent".into(), p.clone()]);
        }
        for (k, v) in &self.labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        args.extend([IMAGE.into(), "sh".into(), "-c".into(), self.script]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = docker_ok(&args);
        Container { id, name }
    }
}

/// A user-defined bridge network, removed on drop.
pub struct Network {
    pub name: String,
}

impl Network {
    pub fn create(prefix: &str) -> Network {
        let name = unique(prefix);
        docker_ok(&["network", "create", &name]);
        Network { name }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// The container's address on a network.
pub fn ip_on(c: &Container, network: &str) -> String {
    let fmt = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    docker_ok(&["inspect", "-f", &fmt, &c.id])
}

fn dockerd_pid() -> Option<i32> {
    std::fs::read_to_string("/var/run/docker.pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Stop dockerd (containers live on: --live-restore) and wait until its
/// API is gone. Call with [`engine_exclusive`] held.
pub fn stop_dockerd() {
    assert_eq!(
        docker_ok(&["info", "--format", "{{.LiveRestoreEnabled}}"]),
        "true",
        "the engine must run with --live-restore (scripts/docker-env starts it so)"
    );
    let pid = dockerd_pid().expect("dockerd pid file");
    // SAFETY: plain kill(2) on the engine this test suite started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    // SAFETY: signal 0 only checks the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start dockerd again (scripts/docker-env).
pub fn start_dockerd() {
    docker_env();
}

/// Wait until a daemon follows Docker (its first resync is logged): from
/// then on every new container is enrolled as its cgroup appears.
pub fn wait_attribution_ready(daemon: &super::Daemon) {
    // The first resync lists and inspects every container on the engine:
    // a busy engine (hundreds of containers, a loaded host) took over 20 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !daemon
        .stderr_lines()
        .iter()
        .any(|l| l.contains("containers_synced"))
    {
        assert!(
            Instant::now() < deadline,
            "daemon never synced with Docker: {:?}",
            daemon.stderr_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
