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
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, Object, OpenObject};

use super::abi;
use super::dns_skel::DnsSkelBuilder;
use super::error::{bpf_err, dup_handle, KernelError};
use super::exec_skel::ExecSkelBuilder;
use super::flow_skel::FlowSkelBuilder;
use super::lsm_skel::LsmSkelBuilder;
use super::packet_skel::PacketSkelBuilder;
use super::skel::EgressSkelBuilder;
use super::sockopt_skel::SockoptSkelBuilder;
use super::{
    DnsCache, EventSource, FlowMaps, KernelCounters, PolicyMaps, ScopeUsage, ScopedCgroups,
};

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
    /// Entries of the `flows` table (and of `flow_reported` beside it):
    /// set at load, preallocated by the kernel ([`FLOW_TABLE_SIZES`]).
    pub flow_table_size: u32,
    pub scope_mode: u32,
    /// Every child of `cgroup` is a container (Docker's cgroupfs parent):
    /// the kernel puts one that is not enrolled yet in scope by itself.
    pub children_in_scope: bool,
    pub fairness: Fairness,
}

/// Bounds of `flow_table_size`; the default is the map definition's
/// `EGRESS_MAX_FLOWS`. Memory per entry: docs/SCALE.md "Flow table".
pub const FLOW_TABLE_SIZES: std::ops::RangeInclusive<u32> = 1024..=4 * 1024 * 1024;

/// Per-container limits in the kernel (P14): a record budget and shares of
/// the shared tables, so one flooding container cannot starve the others.
#[derive(Debug, Clone)]
pub struct Fairness {
    /// Sustained records per second per container (0: no limit).
    pub records_per_sec: u32,
    /// Records a container may write in a burst above its rate.
    pub record_burst: u32,
    /// `flows` entries one container may hold (0: no quota).
    pub max_flows_per_container: u32,
    /// `dns_cache` entries one container may hold (0: no quota).
    pub max_dns_per_container: u32,
    /// DNS queries one container may have waiting for an answer
    /// (`dns_pending`; 0: no quota).
    pub max_dns_pending_per_container: u32,
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness {
            records_per_sec: 10_000,
            record_burst: 20_000,
            // 8,192 whatever the table size (flow_table_size).
            max_flows_per_container: 8192,
            max_dns_per_container: abi::EGRESS_MAX_DNS_ENTRIES / 8,
            max_dns_pending_per_container: abi::EGRESS_MAX_DNS_PENDING / 8,
        }
    }
}

impl Fairness {
    fn record_interval_ns(&self) -> u64 {
        match self.records_per_sec {
            0 => 0,
            rate => 1_000_000_000 / u64::from(rate),
        }
    }

    fn record_burst_ns(&self) -> u64 {
        self.record_interval_ns() * u64::from(self.record_burst)
    }
}

/// What a running daemon keeps of the kernel side. The programs live on
/// through their pinned links; the maps are private here and handed out only
/// as typed groups (`flow_maps`, `policy_maps`, ...), each owning its handles.
#[derive(Debug)]
pub struct Attached {
    pub cgroup_id: u64,
    pub pins: PinLayout,
    /// The every-family socket program (BPF LSM) is attached.
    pub lsm: bool,
    /// Links that already existed and were updated in place (a restart).
    pub links_reused: usize,
    pub links_created: usize,
    ringbuf_bytes: u32,
    maps: AttachedMaps,
    /// Loaded with the programs: a daemon that is up can read open flows.
    /// `None` where the kernel refuses map iterators: TCP flows are then
    /// tabled at connect (`tcp_table_at_connect`).
    promoter: Option<Arc<super::promote::Promoter>>,
}

#[derive(Debug)]
struct AttachedMaps {
    events: MapHandle,
    drops: MapHandle,
    config: MapHandle,
    scoped_cgroups: MapHandle,
    flows: MapHandle,
    flow_reported: MapHandle,
    container_policy: MapHandle,
    policy_rules: MapHandle,
    bypass: MapHandle,
    domain_rules: MapHandle,
    dns_cache: MapHandle,
    dns_pending: MapHandle,
    scope_usage: MapHandle,
    scope_released: MapHandle,
}

impl Attached {
    /// The per-container usage counters and the daemon's releases (P14).
    pub fn scope_usage(&self) -> Result<ScopeUsage, KernelError> {
        ScopeUsage::new(&self.maps.scope_usage, &self.maps.scope_released)
    }

    /// Open flows and their reported baselines.
    pub fn flow_maps(&self, usage: Arc<ScopeUsage>) -> Result<FlowMaps, KernelError> {
        FlowMaps::new(
            &self.maps.flows,
            &self.maps.flow_reported,
            self.promoter.clone(),
            usage,
        )
    }

    /// The kernel's DNS answers and pending queries.
    pub fn dns_cache(&self, usage: Arc<ScopeUsage>) -> Result<DnsCache, KernelError> {
        DnsCache::new(&self.maps.dns_cache, &self.maps.dns_pending, usage)
    }

    /// The container cgroups in scope (`--scope containers`).
    pub fn scoped_cgroups(&self) -> Result<ScopedCgroups, KernelError> {
        ScopedCgroups::new(&self.maps.scoped_cgroups)
    }

    /// Rule sets, their assignment to containers, bypasses and domain rules.
    pub fn policy_maps(&self) -> Result<PolicyMaps, KernelError> {
        PolicyMaps::new(
            &self.maps.container_policy,
            &self.maps.policy_rules,
            &self.maps.bypass,
        )?
        .with_domains(&self.maps.domain_rules)
    }

    /// The event ring buffer, for the one thread that drains it.
    pub fn event_source(&self) -> Result<EventSource, KernelError> {
        Ok(EventSource::new(dup_handle(&self.maps.events, "events")?))
    }

    /// The kernel's own counters: drops per reason and ring-buffer fill.
    pub fn counters(&self) -> Result<KernelCounters, KernelError> {
        KernelCounters::new(&self.maps.drops, &self.maps.events, self.ringbuf_bytes)
    }

    /// The daemon stops: no process keeps its exemption (the programs stay
    /// attached, and its pid may be handed to anyone).
    pub fn forget_self(&self) -> Result<(), KernelError> {
        let key = 0u32.to_ne_bytes();
        let config = &self.maps.config;
        let mut value: abi::egress_config = config
            .lookup(&key, MapFlags::ANY)
            .map_err(bpf_err("read egress_config"))?
            .and_then(|b| super::pod::from_bytes(&b))
            .unwrap_or_default();
        value.self_tgid = 0;
        value.self_start_ticks = 0;
        config
            .update(&key, super::pod::bytes_of(&value), MapFlags::ANY)
            .map_err(bpf_err("clear the daemon's exemption"))
    }
}

/// Load the programs and attach them to `opts.cgroup`, reusing whatever a
/// previous daemon left pinned. The BPF objects (decisions, flow accounting,
/// DNS, packet sockets, and BPF LSM where it loads) share their maps through
/// the pins: the first creates them, the others reuse them.
pub fn load_and_attach(opts: &AttachOptions) -> Result<Attached, KernelError> {
    validate_ringbuf_size(opts.ringbuf_bytes)?;
    if !FLOW_TABLE_SIZES.contains(&opts.flow_table_size) {
        return Err(KernelError::FlowTableSize(opts.flow_table_size));
    }
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

    // One line per BPF object; each keeps its storage in this scope, which
    // its skeleton borrows.
    macro_rules! load_object {
        ($name:ident = $builder:ident) => {
            let mut storage = MaybeUninit::uninit();
            let $name = load(
                $builder::default(),
                &mut storage,
                stringify!($name),
                opts,
                &pins,
            )?;
        };
    }
    load_object!(egress = EgressSkelBuilder);
    load_object!(flow = FlowSkelBuilder);
    load_object!(dns = DnsSkelBuilder);
    load_object!(packet = PacketSkelBuilder);
    // AF_XDP sockets at their setup (setsockopt SOL_XDP): an XSK sends
    // without sendmsg, unseen by the packet tracepoint. Attached with or
    // without BPF LSM (a socket made before a reload to deny stays closed).
    load_object!(sockopt = SockoptSkelBuilder);
    // Process context (exec, fork, exit): global tracepoints.
    load_object!(exec = ExecSkelBuilder);
    // Every socket family at creation: only where BPF LSM programs load
    // (BPF LSM active, trampolines allowed; see `check`). Elsewhere
    // packet.bpf.c records and stops packet sockets at their first send.
    let mut lsm_storage = MaybeUninit::uninit();
    let lsm = if lsm_supported() {
        match load(
            LsmSkelBuilder::default(),
            &mut lsm_storage,
            "lsm",
            opts,
            &pins,
        ) {
            Ok(skel) => Some(skel),
            Err(e) => {
                tracing::warn!(event = "lsm_unavailable", error = %e, "BPF LSM programs cannot load here: packet sockets are stopped at their first send instead of at creation, AF_XDP sockets at their setup (not for 32-bit syscalls); `--cap-drop NET_RAW` on agent containers closes AF_PACKET and AF_XDP at the source");
                None
            }
        }
    } else {
        tracing::warn!(
            event = "lsm_unavailable",
            "BPF LSM is not active: packet sockets are stopped at their first send instead of at creation, AF_XDP sockets at their setup (not for 32-bit syscalls); `--cap-drop NET_RAW` on agent containers closes AF_PACKET and AF_XDP at the source"
        );
        None
    };
    // Young TCP flows live in their socket's storage until the promoter (a
    // map iterator) tables them; a kernel that refuses map iterators gets
    // them tabled at connect instead (one insert per connection more).
    let promoter = match super::promote::Promoter::load(&pins) {
        Ok(p) => Some(Arc::new(p)),
        Err(e) => {
            tracing::warn!(event = "tcp_promoter_unavailable", error = %e, "this kernel refuses BPF map iterators: TCP flows get their flow-table entry at connect (same records, one map insert more per connection; docs/ARCHITECTURE.md)");
            None
        }
    };
    // The daemon's own traffic is exempt: written before any program runs
    // for it, matched by tgid and start time.
    let config = abi::egress_config {
        self_tgid: std::process::id(),
        scope_mode: opts.scope_mode,
        self_start_ticks: self_start_ticks(),
        record_interval_ns: opts.fairness.record_interval_ns(),
        record_burst_ns: opts.fairness.record_burst_ns(),
        max_flows_per_scope: opts.fairness.max_flows_per_container,
        max_dns_per_scope: opts.fairness.max_dns_per_container,
        attach_cgroup_id: cgroup_id,
        attach_level: cgroup_level(&opts.cgroup),
        max_dns_pending_per_scope: opts.fairness.max_dns_pending_per_container,
        tcp_table_at_connect: u32::from(promoter.is_none()),
        children_in_scope: u32::from(opts.children_in_scope),
    };
    write_config(&egress.maps.egress_config, &config)?;

    // Decisions first: flow accounting only follows sockets they admitted.
    remove_stale_versions(&opts.pin_root, cgroup_id)?;
    remove_retired_links(&pins)?;
    let mut objects = vec![
        egress.object(),
        flow.object(),
        dns.object(),
        sockopt.object(),
    ];
    if let Some(lsm) = &lsm {
        objects.push(lsm.object());
    }
    let (mut reused, mut created) = (0, 0);
    for object in objects {
        let (r, c) = attach_all(object, cgroup.as_raw_fd(), &pins)?;
        reused += r;
        created += c;
    }
    // Global hooks (tracepoints) keep to the attach cgroup's subtree.
    if lsm.is_none() {
        created += attach_tracing(packet.object(), &pins)?;
    }
    created += attach_tracing(exec.object(), &pins)?;

    let handle = |m: &libbpf_rs::MapMut, name: &str| {
        MapHandle::try_from(m).map_err(bpf_err(format!("map handle for {name}")))
    };
    let maps = AttachedMaps {
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
        dns_pending: handle(&dns.maps.dns_pending, "dns_pending")?,
        scope_usage: handle(&egress.maps.scope_usage, "scope_usage")?,
        scope_released: handle(&egress.maps.scope_released, "scope_released")?,
    };
    Ok(Attached {
        promoter,
        cgroup_id,
        ringbuf_bytes: opts.ringbuf_bytes,
        lsm: lsm.is_some(),
        pins,
        links_reused: reused,
        links_created: created,
        maps,
    })
}

/// libbpf's own messages (verifier logs of a program that fails to load,
/// e.g. the optional LSM one) go to the daemon's log at debug level, not
/// raw to stderr: every failure that matters is returned with context.
fn route_libbpf_messages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, |_, msg| {
            tracing::debug!(target: "libbpf", "{}", msg.trim_end());
        })));
    });
}

/// Open one BPF object, point its maps at the pins and load it.
fn load<'obj, B: SkelBuilder<'obj>>(
    builder: B,
    storage: &'obj mut MaybeUninit<OpenObject>,
    what: &str,
    opts: &AttachOptions,
    pins: &PinLayout,
) -> Result<<B::Output as OpenSkel<'obj>>::Output, KernelError> {
    route_libbpf_messages();
    let mut open = builder
        .open(storage)
        .map_err(bpf_err(format!("open {what} BPF object")))?;
    prepare(open.open_object_mut(), opts, pins)?;
    open.load().map_err(bpf_err(format!(
        "load {what} programs (see `clawker-egress check`)"
    )))
}

/// Can this host run the every-family socket program (BPF LSM active and
/// its programs load)? `Err` says why not. Loads nothing it keeps.
pub fn lsm_programs_load() -> Result<(), String> {
    if !lsm_supported() {
        return Err("BPF LSM is not active (`bpf` missing from /sys/kernel/security/lsm)".into());
    }
    route_libbpf_messages();
    let mut storage = MaybeUninit::uninit();
    let open = LsmSkelBuilder::default()
        .open(&mut storage)
        .map_err(|e| format!("open: {e}"))?;
    open.load().map(drop).map_err(|e| {
        format!("BPF LSM is active but its programs do not load here ({e}); trampolines may be forbidden")
    })
}

/// Is BPF LSM active (`bpf` in the kernel's LSM list)?
pub fn lsm_supported() -> bool {
    super::mounts::active_lsms().iter().any(|l| l == "bpf")
}

/// Our start time as /proc/self/stat says it (clock ticks since boot).
fn self_start_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // comm may hold spaces and parentheses: fields start after the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            rest.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(0)
}

/// A daemon of another ABI version left its links on this cgroup: unpin
/// them (detaching its programs) and its maps, so an upgrade never runs two
/// generations of programs on one cgroup.
fn remove_stale_versions(pin_root: &Path, cgroup_id: u64) -> Result<(), KernelError> {
    let Ok(entries) = fs::read_dir(pin_root) else {
        return Ok(());
    };
    let ours = format!("v{}", abi::EGRESS_ABI_VERSION);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == ours || !name.starts_with('v') || name[1..].parse::<u32>().is_err() {
            continue;
        }
        let dir = entry.path().join(format!("cg-{cgroup_id}"));
        if dir.is_dir() {
            tracing::info!(event = "stale_pins_removed", path = %dir.display(), "removing another ABI version's programs from this cgroup");
            for sub in ["links", "maps"] {
                let sub = dir.join(sub);
                if sub.is_dir() {
                    remove_dir_files(&sub)?;
                }
            }
            fs::remove_dir_all(&dir).map_err(|source| KernelError::PinDir { path: dir, source })?;
        }
    }
    Ok(())
}

/// Programs earlier builds attached that this one no longer has (their
/// work moved into another program): a restart must not leave them running
/// beside their successor. `dns_egress`/`dns_ingress` became part of
/// `flow_egress`/`flow_ingress` (one program per hook).
const RETIRED_PROGRAMS: &[&str] = &["dns_egress", "dns_ingress"];

fn remove_retired_links(pins: &PinLayout) -> Result<(), KernelError> {
    for name in RETIRED_PROGRAMS {
        let path = pins.links().join(name);
        if path.exists() {
            tracing::info!(
                event = "retired_program_detached",
                program = name,
                "detaching a program this build no longer has"
            );
            fs::remove_file(&path).map_err(|source| KernelError::PinDir { path, source })?;
        }
    }
    Ok(())
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
        if name == "flows" || name == "flow_reported" {
            map.set_max_entries(opts.flow_table_size)
                .map_err(bpf_err(format!("size {name}")))?;
        }
        let path = pins.maps().join(&name);
        unpin_if_incompatible(&path, &map)?;
        map.set_pin_path(&path)
            .map_err(bpf_err(format!("pin path for map {name}")))?;
    }
    Ok(())
}

/// A pinned map whose definition differs from ours (another ring buffer or
/// flow table size, other flags: libbpf compares them all) cannot be reused: unpin it so a fresh one is created. The programs
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
        && info.info.max_entries == ours.max_entries()
        && info.info.map_flags == ours.map_flags();
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

/// Attach tracepoint programs. A tracing link cannot be updated in place:
/// the new program is attached first and the pinned old one removed after,
/// so there is no instant without one.
fn attach_tracing(object: &Object, pins: &PinLayout) -> Result<usize, KernelError> {
    let mut created = 0;
    for prog in object.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let path = pins.links().join(&name);
        let mut link = prog.attach().map_err(bpf_err(format!("attach {name}")))?;
        if path.exists() {
            fs::remove_file(&path).map_err(|source| KernelError::PinDir {
                path: path.clone(),
                source,
            })?;
        }
        link.pin(&path)
            .map_err(bpf_err(format!("pin link {name}")))?;
        created += 1;
    }
    Ok(created)
}

/// How deep a cgroup sits below the v2 root (the root is level 0).
fn cgroup_level(cgroup: &Path) -> u32 {
    let root = super::mounts::cgroup2_root().ok();
    let rel = root
        .as_deref()
        .and_then(|root| cgroup.strip_prefix(root).ok())
        .map(|rel| rel.components().count())
        .unwrap_or(0);
    u32::try_from(rel).unwrap_or(0)
}

fn write_config(map: &libbpf_rs::MapMut, config: &abi::egress_config) -> Result<(), KernelError> {
    map.update(
        &0u32.to_ne_bytes(),
        super::pod::bytes_of(config),
        MapFlags::ANY,
    )
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
