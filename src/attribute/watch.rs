//! Puts a container in scope the moment its cgroup exists. The runtime
//! creates the container's cgroup directory before the container's first
//! process runs; inotify on the runtime's cgroup parents (`/docker`,
//! `/system.slice`) sees the mkdir, and the directory is bound and enrolled
//! then. A start event would come too late: the container may already have
//! connected, and the kernel does not record what is not yet enrolled.
//!
//! Runs on its own thread so that a busy async runtime cannot delay it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::sync::mpsc;

use super::cache::ContainerCache;
use super::follower::Request;
use super::source::ContainerSource;

/// How often the thread looks at its stop flag.
const POLL_MS: u16 = 200;

pub struct CgroupWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    more: std::sync::mpsc::Sender<PathBuf>,
}

impl CgroupWatcher {
    /// Watch `source`'s cgroup parents under the v2 `root`. Existing
    /// container cgroups are bound before this returns.
    pub fn spawn<S: ContainerSource>(
        root: PathBuf,
        source: S,
        cache: Arc<ContainerCache>,
        hints: mpsc::Sender<Request>,
    ) -> io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        let parents = source
            .cgroup_parents()
            .iter()
            .map(|p| root.join(p))
            .collect();
        let (more, learned) = std::sync::mpsc::channel();
        let mut w = Watch {
            learned,
            inotify,
            root,
            parents,
            dirs: HashMap::new(),
            root_wd: None,
            source,
            cache,
            hints,
        };
        w.start()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cgroup-watch".into())
            .spawn(move || w.run(&flag))?;
        Ok(CgroupWatcher {
            stop,
            thread: Some(thread),
            more,
        })
    }

    /// Where to tell the watcher about another cgroup parent (a container
    /// started with a custom `--cgroup-parent`): its later siblings are then
    /// enrolled as their cgroups appear.
    pub fn parents(&self) -> std::sync::mpsc::Sender<PathBuf> {
        self.more.clone()
    }
}

impl Drop for CgroupWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Watch<S> {
    inotify: Inotify,
    learned: std::sync::mpsc::Receiver<PathBuf>,
    root: PathBuf,
    /// Absolute paths of the runtime's cgroup parents.
    parents: Vec<PathBuf>,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    root_wd: Option<WatchDescriptor>,
    source: S,
    cache: Arc<ContainerCache>,
    hints: mpsc::Sender<Request>,
}

impl<S: ContainerSource> Watch<S> {
    fn start(&mut self) -> io::Result<()> {
        // The root, to see a parent (`/docker`) appear after we start.
        let wd = self.inotify.add_watch(
            &self.root,
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ONLYDIR,
        )?;
        self.root_wd = Some(wd);
        for p in self.parents.clone() {
            self.watch_parent(&p);
        }
        Ok(())
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            while let Ok(parent) = self.learned.try_recv() {
                if !self.parents.contains(&parent) && parent.starts_with(&self.root) {
                    tracing::info!(event = "cgroup_parent_watched", dir = %parent.display(), "watching a custom container cgroup parent");
                    self.parents.push(parent.clone());
                    self.watch_parent(&parent);
                }
            }
            let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(POLL_MS)) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(event = "cgroup_watch_unavailable", error = %e, "cgroup watcher stopped: new containers are in scope only from their start event");
                    return;
                }
            }
            match self.inotify.read_events() {
                Ok(events) => events.into_iter().for_each(|ev| self.handle(ev)),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(event = "cgroup_watch_unavailable", error = %e, "cgroup watcher stopped");
                    return;
                }
            }
        }
    }

    fn handle(&mut self, ev: InotifyEvent) {
        if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            tracing::warn!(
                event = "cgroup_watch_overflow",
                "inotify queue overflowed; rescanning"
            );
            for p in self.parents.clone() {
                self.scan(&p);
            }
            return;
        }
        if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
            self.dirs.remove(&ev.wd); // the parent went away
            return;
        }
        let (Some(name), true) = (
            ev.name.as_deref(),
            ev.mask.contains(AddWatchFlags::IN_ISDIR),
        ) else {
            return;
        };
        if Some(ev.wd) == self.root_wd && ev.mask.contains(AddWatchFlags::IN_CREATE) {
            let dir = self.root.join(name);
            if self.parents.contains(&dir) {
                self.watch_parent(&dir);
                return;
            }
        }
        let Some(parent) = self.dirs.get(&ev.wd) else {
            return;
        };
        let dir = parent.join(name);
        if ev.mask.contains(AddWatchFlags::IN_CREATE) {
            self.found(&dir);
        } else if ev.mask.contains(AddWatchFlags::IN_DELETE) {
            self.cache.unbind_dir(&dir);
        }
    }

    fn watch_parent(&mut self, dir: &Path) {
        let flags = AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_ONLYDIR;
        match self.inotify.add_watch(dir, flags) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_path_buf());
                // After the watch: a directory made in between is seen twice,
                // never missed; binding is idempotent.
                self.scan(dir);
            }
            Err(Errno::ENOENT) => {} // not there (yet): the root watch will tell
            Err(e) => {
                tracing::warn!(event = "cgroup_watch_failed", dir = %dir.display(), error = %e, "cannot watch a container cgroup parent")
            }
        }
    }

    fn scan(&self, parent: &Path) {
        let Ok(entries) = fs::read_dir(parent) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.found(&e.path());
            }
        }
    }

    /// A new directory under a parent: bind and enroll it if it names a
    /// container, and start its lookup before its first record arrives.
    fn found(&self, dir: &Path) {
        let Ok(rel) = dir.strip_prefix(&self.root) else {
            return;
        };
        let rel = Path::new("/").join(rel);
        let Some(container) = self.source.container_of_cgroup(&rel.to_string_lossy()) else {
            return;
        };
        let Ok(meta) = fs::metadata(dir) else {
            return; // gone already
        };
        self.cache
            .bind(meta.ino(), &container, dir.to_path_buf(), true);
        if self.cache.identity(&container).is_none() {
            let _ = self
                .hints
                .try_send(Request::Resolve(container.as_str().into()));
        }
        tracing::debug!(container_id = container, cgroup_id = meta.ino(), dir = %dir.display(), name = ?dir.file_name().map(OsStr::to_string_lossy), "container cgroup enrolled");
    }
}
