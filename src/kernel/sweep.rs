//! Re-decide open sockets (bpf/iter.bpf.c): after a policy reload or a
//! bypass end, run the TCP and UDP socket iterators once in every network
//! namespace a process lives in. The programs decide each in-scope socket
//! again and end the ones the policy now denies (`bpf_sock_destroy`); this
//! side only runs them and counts what they report.
//!
//! The iterator programs are loaded once (verifying them takes seconds on
//! a busy host) and reuse the daemon's pinned maps: the same rule sets,
//! bypasses, DNS answers and per-socket owners the decision hooks use. A
//! sweep only opens the iterators and reads them.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Iter, IterOpts, Link, MapCore, MapHandle};

use super::abi;
use super::attach::PinLayout;
use super::error::{bpf_err, KernelError};
use super::iter_skel::IterSkelBuilder;
use super::pod::from_bytes;

/// What one sweep found, summed over every namespace.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Network namespaces walked.
    pub namespaces: u64,
    /// Namespaces that could not be entered (the process went away, ...).
    pub namespaces_failed: u64,
    /// In-scope sockets decided again.
    pub decided: u64,
    /// Denied and ended.
    pub ended: u64,
    /// Denied in audit mode: left open.
    pub audit: u64,
    /// Denied, but the kernel refused to end them (in the last pass).
    pub failed: u64,
    /// Most passes one namespace needed.
    pub passes: u32,
}

impl SweepReport {
    fn add(&mut self, rec: &abi::sweep_record) {
        use abi::sweep_outcome as o;
        match u32::from(rec.outcome) {
            o::SWEEP_KEPT => self.decided += 1,
            o::SWEEP_ENDED => {
                self.decided += 1;
                self.ended += 1;
            }
            o::SWEEP_AUDIT => {
                self.decided += 1;
                self.audit += 1;
            }
            // The correction of the socket's SWEEP_ENDED record.
            o::SWEEP_FAILED => {
                self.ended = self.ended.saturating_sub(1);
                self.failed += 1;
                tracing::warn!(
                    event = "policy_sweep_end_failed",
                    cgroup_id = rec.scope_cgroup_id,
                    port = rec.remote_port,
                    protocol = rec.protocol,
                    errno = -rec.err,
                    "a socket the policy now denies could not be ended"
                );
            }
            _ => {}
        }
    }
}

/// The loaded socket iterators of one attachment. The links keep the
/// programs (and, through them, the pinned maps) alive.
#[derive(Debug)]
pub struct SocketSweeper {
    tcp: Link,
    udp: Link,
}

impl SocketSweeper {
    /// Load the iterator programs against `pins`' maps (blocking, slow).
    pub fn load(pins: &PinLayout) -> Result<Self, KernelError> {
        let mut storage = MaybeUninit::uninit();
        let mut open = IterSkelBuilder::default()
            .open(&mut storage)
            .map_err(bpf_err("open iter BPF object"))?;
        reuse_pinned_maps(open.open_object_mut(), pins)?;
        let skel = open.load().map_err(bpf_err(
            "load socket iterators (bpf_sock_destroy needs kernel >= 6.5)",
        ))?;
        let tcp = skel
            .progs
            .sweep_tcp
            .attach_iter_with_opts(IterOpts::None)
            .map_err(bpf_err("attach TCP socket iterator"))?;
        let udp = skel
            .progs
            .sweep_udp
            .attach_iter_with_opts(IterOpts::None)
            .map_err(bpf_err("attach UDP socket iterator"))?;
        Ok(SocketSweeper { tcp, udp })
    }

    /// Decide every in-scope TCP and connected UDP socket again, in every
    /// network namespace; end the ones now denied. Blocking: call it off
    /// the async runtime.
    pub fn sweep(&self) -> Result<SweepReport, KernelError> {
        let (tcp, udp) = (&self.tcp, &self.udp);
        // Our own namespace first, in this thread.
        let mut report = walk([tcp, udp])?;
        report.namespaces += 1;
        for ns in other_namespaces() {
            let walked = std::thread::scope(|s| {
                s.spawn(|| -> Result<SweepReport, KernelError> {
                    // A thread of its own: setns moves only this thread.
                    enter(&ns).map_err(|source| KernelError::Io {
                        what: "enter network namespace".into(),
                        source,
                    })?;
                    walk([tcp, udp])
                })
                .join()
            });
            match walked {
                Ok(Ok(r)) => {
                    report.namespaces += 1;
                    report.decided += r.decided;
                    report.ended += r.ended;
                    report.audit += r.audit;
                    report.failed += r.failed;
                    report.passes = report.passes.max(r.passes);
                }
                Ok(Err(e)) => {
                    report.namespaces_failed += 1;
                    tracing::debug!(event = "policy_sweep_netns_failed", error = %e, "network namespace not swept");
                }
                Err(_) => report.namespaces_failed += 1,
            }
        }
        Ok(report)
    }
}

/// Point every map of an opened (not yet loaded) BPF object at the
/// daemon's pinned map of the same name, so a program loaded after the
/// attachment shares its maps.
pub(super) fn reuse_pinned_maps(
    object: &mut libbpf_rs::OpenObject,
    pins: &PinLayout,
) -> Result<(), KernelError> {
    let maps_dir = pins.maps();
    for mut map in object.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        let path = maps_dir.join(&name);
        // Reuse the pinned maps whatever size the daemon gave them
        // (ring buffer: ringbuf_bytes; flows: flow_table_size).
        if path.exists() {
            let pinned = MapHandle::from_pinned_path(&path)
                .map_err(bpf_err(format!("open pinned map {name}")))?;
            let size = pinned
                .info()
                .map_err(bpf_err(format!("info of pinned map {name}")))?
                .info
                .max_entries;
            map.set_max_entries(size)
                .map_err(bpf_err(format!("size {name} as pinned")))?;
        }
        map.set_pin_path(&path)
            .map_err(bpf_err(format!("pin path for map {name}")))?;
    }
    Ok(())
}

/// Passes over one namespace at most: see `walk`.
const MAX_PASSES: u32 = 4;

/// Every socket of the calling thread's namespace. Ending sockets while the
/// kernel walks its socket hash can make a pass skip one (measured: 1 of
/// 4,000), so a pass that ended something is followed by another, until
/// one ends nothing (at most MAX_PASSES).
fn walk(links: [&Link; 2]) -> Result<SweepReport, KernelError> {
    let mut total = SweepReport::default();
    for pass in 0..MAX_PASSES {
        let mut r = SweepReport::default();
        for link in links {
            read_records(link, &mut r)?;
        }
        total.passes += 1;
        if pass == 0 {
            total.decided = r.decided;
            total.audit = r.audit;
        } else {
            // Sockets a former pass missed (or that it could not end).
            total.decided += r.ended;
        }
        total.ended += r.ended;
        total.failed = r.failed;
        if r.ended == 0 {
            break;
        }
    }
    Ok(total)
}

/// Run one iterator to its end in the calling thread's namespace.
fn read_records(link: &Link, report: &mut SweepReport) -> Result<(), KernelError> {
    let mut iter = Iter::new(link).map_err(bpf_err("create socket iterator"))?;
    let mut buf = Vec::new();
    iter.read_to_end(&mut buf)
        .map_err(|source| KernelError::Io {
            what: "read socket iterator".into(),
            source,
        })?;
    let size = std::mem::size_of::<abi::sweep_record>();
    for chunk in buf.chunks_exact(size) {
        if let Some(rec) = from_bytes::<abi::sweep_record>(chunk) {
            report.add(&rec);
        }
    }
    Ok(())
}

fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns on a file descriptor we own; affects the calling thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One open handle per network namespace any process is in, other than
/// ours. Processes that exit meanwhile are skipped.
fn other_namespaces() -> Vec<File> {
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    if let Ok(m) = std::fs::metadata("/proc/thread-self/ns/net") {
        seen.insert(id(m));
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in procs.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("ns/net");
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if seen.insert(id(meta)) {
            out.push(file);
        }
    }
    out
}
