//! Load the BPF object, reuse or create its pinned maps, and attach every
//! program to one cgroup through pinned bpf_links.
//!
//! Pin layout (versioned, so a pinned map is only ever reused by a daemon
//! that agrees on its definition):
//!
//! ```text
//! <pin_root>/v<ABI>/cg-<cgroup id>/maps/<map name>
//! <pin_root>/v<ABI>/cg-<cgroup id>/links/<program name>
//! ```
//!
//! Restart: maps are reused (the ring buffer keeps what was written while
//! the daemon was down) and each pinned link is *updated* in place to the
//! freshly loaded program (`BPF_LINK_UPDATE`): never two attachments per
//! hook, and never an instant with none.

use std::fs::{self, File};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, Object, OpenObject};
use thiserror::Error;

use super::abi;
use super::dns_skel::DnsSkelBuilder;
use super::flow_skel::FlowSkelBuilder;
use super::skel::EgressSkelBuilder;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("cgroup directory {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("ring buffer size {0} is not a power of two of at least 4096 bytes")]
    RingbufSize(u32),
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        source: libbpf_rs::Error,
    },
}

fn bpf_err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Bpf { what, source }
}

/// Where one attachment's maps and links live in bpffs.
#[derive(Debug, Clone)]
pub struct PinLayout {
    pub dir: PathBuf,
}

impl PinLayout {
    pub fn new(pin_root: &Path, cgroup_id: u64) -> Self {
        let dir = pin_root
            .join(format!("v{}", abi::EGRESS_ABI_VERSION))
            .join(format!("cg-{cgroup_id}"));
        PinLayout { dir }
    }

    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }
}

#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub cgroup: PathBuf,
    pub pin_root: PathBuf,
    pub ringbuf_bytes: u32,
    pub scope_mode: u32,
}

/// What a running daemon keeps of the kernel side: map handles only. The
/// programs live on through their pinned links.
#[derive(Debug)]
pub struct Attached {
    pub cgroup_id: u64,
    pub pins: PinLayout,
    pub events: MapHandle,
    pub drops: MapHandle,
    pub config: MapHandle,
    pub scoped_cgroups: MapHandle,
    pub flows: MapHandle,
    pub flow_reported: MapHandle,
    pub container_policy: MapHandle,
    pub policy_rules: MapHandle,
    pub bypass: MapHandle,
    pub domain_rules: MapHandle,
    pub dns_cache: MapHandle,
    pub ringbuf_bytes: u32,
    /// Links that already existed and were updated in place (a restart).
    pub links_reused: usize,
    pub links_created: usize,
}

/// Load the programs and attach them to `opts.cgroup`, reusing whatever a
/// previous daemon left pinned. Two BPF objects (decisions, flow
/// accounting) share their maps through the pins: the first creates them,
/// the second reuses them.
pub fn load_and_attach(opts: &AttachOptions) -> Result<Attached, KernelError> {
    validate_ringbuf_size(opts.ringbuf_bytes)?;
    let cgroup = File::open(&opts.cgroup).map_err(|source| KernelError::Cgroup {
        path: opts.cgroup.clone(),
        source,
    })?;
    let cgroup_id = cgroup
        .metadata()
        .map_err(|source| KernelError::Cgroup {
            path: opts.cgroup.clone(),
            source,
        })?
        .ino();
    let pins = PinLayout::new(&opts.pin_root, cgroup_id);
    for dir in [pins.maps(), pins.links()] {
        fs::create_dir_all(&dir).map_err(|source| KernelError::PinDir { path: dir, source })?;
    }

    let mut egress_storage = MaybeUninit::uninit();
    let mut open = EgressSkelBuilder::default()
        .open(&mut egress_storage)
        .map_err(bpf_err("open egress BPF object"))?;
    prepare(open.open_object_mut(), opts, &pins)?;
    let egress = open
        .load()
        .map_err(bpf_err("load egress programs (see `clawker-egress check`)"))?;

    let mut flow_storage = MaybeUninit::uninit();
    let mut open = FlowSkelBuilder::default()
        .open(&mut flow_storage)
        .map_err(bpf_err("open flow BPF object"))?;
    prepare(open.open_object_mut(), opts, &pins)?;
    let flow = open
        .load()
        .map_err(bpf_err("load flow programs (see `clawker-egress check`)"))?;

    let mut dns_storage = MaybeUninit::uninit();
    let mut open = DnsSkelBuilder::default()
        .open(&mut dns_storage)
        .map_err(bpf_err("open dns BPF object"))?;
    prepare(open.open_object_mut(), opts, &pins)?;
    let dns = open
        .load()
        .map_err(bpf_err("load dns programs (see `clawker-egress check`)"))?;

    // Decisions first: flow accounting only follows sockets they admitted.
    let (r1, c1) = attach_all(egress.object(), cgroup.as_raw_fd(), &pins)?;
    let (r2, c2) = attach_all(flow.object(), cgroup.as_raw_fd(), &pins)?;
    let (r3, c3) = attach_all(dns.object(), cgroup.as_raw_fd(), &pins)?;
    let config = abi::egress_config {
        self_tgid: std::process::id(),
        scope_mode: opts.scope_mode,
    };
    write_config(&egress.maps.egress_config, &config)?;

    let handle = |m: &libbpf_rs::MapMut, name: &str| {
        MapHandle::try_from(m).map_err(bpf_err(format!("map handle for {name}")))
    };
    Ok(Attached {
        cgroup_id,
        events: handle(&egress.maps.events, "events")?,
        drops: handle(&egress.maps.egress_drops, "egress_drops")?,
        config: handle(&egress.maps.egress_config, "egress_config")?,
        scoped_cgroups: handle(&egress.maps.scoped_cgroups, "scoped_cgroups")?,
        flows: handle(&egress.maps.flows, "flows")?,
        flow_reported: handle(&egress.maps.flow_reported, "flow_reported")?,
        container_policy: handle(&egress.maps.container_policy, "container_policy")?,
        policy_rules: handle(&egress.maps.policy_rules, "policy_rules")?,
        bypass: handle(&egress.maps.bypass, "bypass")?,
        domain_rules: handle(&egress.maps.domain_rules, "domain_rules")?,
        dns_cache: handle(&egress.maps.dns_cache, "dns_cache")?,
        ringbuf_bytes: opts.ringbuf_bytes,
        pins,
        links_reused: r1 + r2 + r3,
        links_created: c1 + c2 + c3,
    })
}

fn validate_ringbuf_size(bytes: u32) -> Result<(), KernelError> {
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(KernelError::RingbufSize(bytes));
    }
    Ok(())
}

/// Size the ring buffer and point every map at its pin: an existing
/// compatible pin is reused, a missing one is created and pinned on load.
fn prepare(
    open: &mut OpenObject,
    opts: &AttachOptions,
    pins: &PinLayout,
) -> Result<(), KernelError> {
    for mut map in open.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if name == "events" {
            map.set_max_entries(opts.ringbuf_bytes)
                .map_err(bpf_err("size ring buffer"))?;
        }
        let path = pins.maps().join(&name);
        unpin_if_incompatible(&path, &map)?;
        map.set_pin_path(&path)
            .map_err(bpf_err(format!("pin path for map {name}")))?;
    }
    Ok(())
}

/// A pinned map whose definition differs from ours (another ring buffer size,
/// say) cannot be reused: unpin it so a fresh one is created. The programs
/// still attached keep the old map until their links are updated.
fn unpin_if_incompatible(path: &Path, ours: &libbpf_rs::OpenMapMut) -> Result<(), KernelError> {
    let Ok(pinned) = MapHandle::from_pinned_path(path) else {
        return Ok(());
    };
    let Ok(info) = pinned.info() else {
        return Ok(());
    };
    let same = info.info.type_ == ours.map_type() as u32
        && info.info.key_size == ours.key_size()
        && info.info.value_size == ours.value_size()
        && info.info.max_entries == ours.max_entries();
    if !same {
        tracing::warn!(event = "pinned_map_replaced", path = %path.display(), "pinned map differs from this build; replacing it");
        fs::remove_file(path).map_err(|source| KernelError::PinDir {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Attach every program, or update its pinned link in place.
fn attach_all(
    object: &Object,
    cgroup_fd: i32,
    pins: &PinLayout,
) -> Result<(usize, usize), KernelError> {
    let (mut reused, mut created) = (0, 0);
    for prog in object.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let path = pins.links().join(&name);
        if path.exists() {
            let mut link =
                Link::open(&path).map_err(bpf_err(format!("open pinned link {name}")))?;
            link.update_prog(&prog)
                .map_err(bpf_err(format!("update link {name}")))?;
            reused += 1;
        } else {
            let mut link = prog
                .attach_cgroup(cgroup_fd)
                .map_err(bpf_err(format!("attach {name}")))?;
            link.pin(&path)
                .map_err(bpf_err(format!("pin link {name}")))?;
            created += 1;
        }
    }
    Ok((reused, created))
}

fn write_config(map: &libbpf_rs::MapMut, config: &abi::egress_config) -> Result<(), KernelError> {
    let key = 0u32.to_ne_bytes();
    // SAFETY: egress_config is a plain repr(C) struct generated by bindgen.
    let value = unsafe {
        std::slice::from_raw_parts(
            (config as *const abi::egress_config).cast::<u8>(),
            std::mem::size_of::<abi::egress_config>(),
        )
    };
    map.update(&key, value, MapFlags::ANY)
        .map_err(bpf_err("write egress_config"))
}

fn remove_dir_files(dir: &Path) -> Result<(), KernelError> {
    let pin_err = |source| KernelError::PinDir {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(pin_err)? {
        let entry = entry.map_err(pin_err)?;
        fs::remove_file(entry.path()).map_err(pin_err)?;
    }
    Ok(())
}

/// Remove this daemon's attachment from `cgroup`: unpinning the links
/// detaches the programs, unpinning the maps frees them. Returns how many
/// links were removed.
pub fn detach(cgroup: &Path, pin_root: &Path) -> Result<usize, KernelError> {
    let cgroup_id = fs::metadata(cgroup)
        .map_err(|source| KernelError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?
        .ino();
    let pins = PinLayout::new(pin_root, cgroup_id);
    if !pins.dir.exists() {
        return Ok(0);
    }
    let links = fs::read_dir(pins.links()).map(|d| d.count()).unwrap_or(0);
    remove_dir_files(&pins.links())?;
    remove_dir_files(&pins.maps())?;
    fs::remove_dir_all(&pins.dir).map_err(|source| KernelError::PinDir {
        path: pins.dir.clone(),
        source,
    })?;
    Ok(links)
}
