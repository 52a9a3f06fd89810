//! Keeps the kernel's policy in step with the policy file and with the
//! containers in scope. A reload (SIGHUP or a changed file) parses the
//! whole file first and checks it against the kernel's limits: an invalid
//! or oversized file changes nothing in the kernel and is reported (log +
//! `policy_rejected` overseer record); a valid one is installed container
//! by container, each swap a single map update, and then open sockets are
//! decided again (`Reapply`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::Signal;
use tokio::sync::{mpsc, watch};

use super::compile::{compile, load_policy};
use super::reapply::Reapply;
use super::rules::{KernelRuleSet, Placed, RuleSetWriter};
use crate::detect::PolicyModes;
use crate::metrics::Metrics;
use crate::policy::{Mode, Policy};
use crate::record::{key, Record, Source};

/// Who is in scope, with the labels their policy is chosen by.
pub trait Directory: Send + Sync + 'static {
    /// (scope cgroup id, agent, project) of every container in scope.
    fn containers(&self) -> Vec<(u64, Option<String>, Option<String>)>;
}

/// Where rules apply: one rule set for everything under an explicit
/// cgroup root (the default section), or one per container.
pub enum Targets {
    Everything,
    Containers(Box<dyn Directory>),
}

pub struct PolicyController {
    path: PathBuf,
    writer: RuleSetWriter,
    targets: Targets,
    policy: Policy,
    stamp: Option<(SystemTime, u64)>,
    /// What each cgroup has now, to reinstall only on change.
    installed: HashMap<u64, (Option<String>, Option<String>)>,
    /// The mode of each installed rule set, for the enforcement gauge.
    modes: HashMap<u64, Mode>,
    /// Cgroups denied everything because their rules found no slot (or
    /// could not be compiled), since start.
    failed_closed: u64,
    reapply: Option<Reapply>,
    metrics: Arc<Metrics>,
    out: mpsc::Sender<Record>,
}

impl PolicyController {
    /// Install `policy` (loaded from `path` before anything was attached:
    /// an invalid file is a start-up error that changes nothing).
    pub fn start(
        path: PathBuf,
        policy: Policy,
        writer: RuleSetWriter,
        targets: Targets,
        reapply: Option<Reapply>,
        metrics: Arc<Metrics>,
        out: mpsc::Sender<Record>,
    ) -> Self {
        let stamp = file_stamp(&path);
        let mut c = PolicyController {
            path,
            writer,
            targets,
            policy,
            stamp,
            installed: HashMap::new(),
            modes: HashMap::new(),
            failed_closed: 0,
            reapply,
            metrics,
            out,
        };
        c.install_all(true);
        c
    }

    /// Follow SIGHUP, file changes and container changes until shutdown.
    /// `hup`: the daemon's SIGHUP stream, installed at start (a SIGHUP
    /// before its handler would kill the daemon).
    pub async fn run(mut self, mut hup: Signal, mut containers_changed: watch::Receiver<u64>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut watching = true;
        loop {
            tokio::select! {
                _ = hup.recv() => self.reload("SIGHUP").await,
                _ = tick.tick() => {
                    if file_stamp(&self.path) != self.stamp {
                        self.reload("file changed").await;
                    }
                }
                changed = containers_changed.changed(), if watching => {
                    watching = changed.is_ok();
                    self.install_all(false);
                }
            }
        }
    }

    async fn reload(&mut self, why: &str) {
        self.stamp = file_stamp(&self.path);
        match load_policy(&self.path) {
            Ok(policy) => {
                self.policy = policy;
                self.install_all(true);
                tracing::info!(event = "policy_loaded", file = %self.path.display(), why, "policy reloaded");
                self.audit(
                    "policy_loaded",
                    format!("policy {} loaded ({why})", self.path.display()),
                    None,
                )
                .await;
                if let Some(reapply) = &self.reapply {
                    reapply.run("policy reload", &self.out).await;
                }
            }
            Err(e) => {
                self.metrics.policy("rejected", 1);
                tracing::error!(event = "policy_rejected", error = %e, "invalid policy file; the previous policy stays in force");
                self.audit(
                    "policy_rejected",
                    format!("policy rejected, previous policy stays: {e}"),
                    Some(e.to_string()),
                )
                .await;
            }
        }
    }

    async fn audit(&self, event: &'static str, body: String, error: Option<String>) {
        let mut r = Record::new(SystemTime::now(), Source::Overseer).with_body(body);
        r.set(key::EVENT, event);
        r.set(key::POLICY_FILE, self.path.display().to_string());
        if let Some(e) = error {
            r.set(key::ERROR, e);
        }
        let _ = self.out.send(r).await;
    }

    /// Install every target's rules; `all` forces a reinstall (new policy).
    fn install_all(&mut self, all: bool) {
        let targets: Vec<(u64, Option<String>, Option<String>)> = match &self.targets {
            Targets::Everything => vec![(0, None, None)],
            // Key 0 holds the default section: the kernel falls back to it
            // for a container whose labels are not known yet.
            Targets::Containers(dir) => std::iter::once((0, None, None))
                .chain(dir.containers())
                .collect(),
        };
        let live: HashSet<u64> = targets.iter().map(|t| t.0).collect();
        let mut sets: Vec<(u64, KernelRuleSet)> = Vec::new();
        let mut labels_of = HashMap::new();
        let mut modes_of = HashMap::new();
        for (id, agent, project) in targets {
            let labels = (agent, project);
            if !all && self.installed.get(&id) == Some(&labels) {
                continue;
            }
            let resolved = self
                .policy
                .rules_for(labels.0.as_deref(), labels.1.as_deref());
            match compile(&resolved) {
                Ok((set, notes)) => {
                    if !notes.hash_collisions.is_empty() {
                        tracing::warn!(
                            event = "policy_hash_collision",
                            cgroup_id = id,
                            names = ?notes.hash_collisions,
                            "domain rules whose name hash collides with another rule's never match in the kernel"
                        );
                    }
                    sets.push((id, set));
                    labels_of.insert(id, labels);
                    modes_of.insert(id, resolved.mode);
                }
                Err(e) => {
                    // Checked at load: only a bug gets here. Never a cut-down set.
                    self.failed_closed += 1;
                    self.metrics.policy("fail_closed", 1);
                    tracing::error!(event = "policy_fail_closed", cgroup_id = id, error = %e, total = self.failed_closed, "rules not compiled: this cgroup denies everything");
                    if self.writer.fail_closed(id).is_ok() {
                        self.installed.insert(id, labels);
                    }
                }
            }
        }
        for (id, placed) in self.writer.install_many(&sets) {
            match placed {
                Ok(Placed::Installed) => {
                    if let Some(labels) = labels_of.remove(&id) {
                        self.installed.insert(id, labels);
                    }
                    if let Some(mode) = modes_of.remove(&id) {
                        self.modes.insert(id, mode);
                    }
                }
                Ok(Placed::FailedClosed) => {
                    self.failed_closed += 1;
                    self.metrics.policy("fail_closed", 1);
                    tracing::error!(
                        event = "policy_fail_closed",
                        cgroup_id = id,
                        slots_in_use = self.writer.slots_in_use(),
                        total = self.failed_closed,
                        "no kernel rule-set slot for this cgroup's rules: it denies everything"
                    );
                    if let Some(labels) = labels_of.remove(&id) {
                        self.installed.insert(id, labels);
                    }
                }
                Err(e) => {
                    tracing::error!(event = "policy_install_failed", cgroup_id = id, error = %e, "policy not installed for this cgroup")
                }
            }
        }
        let gone: Vec<u64> = self
            .installed
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.writer.remove(id);
            self.installed.remove(&id);
            self.modes.remove(&id);
        }
        self.report_modes();
    }

    /// Rule sets by mode. Per container, key 0 (the fallback for labels not
    /// yet known) is left out; with one rule set for everything it is all.
    fn report_modes(&self) {
        let per_container = matches!(self.targets, Targets::Containers(_));
        let mut m = PolicyModes::default();
        for (id, mode) in &self.modes {
            if per_container && *id == 0 {
                continue;
            }
            match mode {
                Mode::Enforce => m.enforce += 1,
                Mode::Audit => m.audit += 1,
            }
        }
        self.metrics.agents().enforcement().policy_modes(m);
    }
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
