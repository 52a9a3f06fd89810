//! `clawker-egress run`: wire the stages together and run until a signal.
//!
//! ```text
//! kernel (attach) -> capture (drain thread) -> pipeline (record, attribute)
//!                                            -> export (one task per sink)
//! metrics: every stage counts into one registry, served over HTTP
//! ```

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::check::{cgroup_dir, every_child_is_a_container, require_privileges};
use super::RunArgs;
use crate::api;
use crate::attribute::{Attribution, AttributionOptions, ContainerCache, DockerSource, Enroller};
use crate::capture::{spawn_drain, BootClock, DnsReject, Hook, LossReporter};
use crate::config::{Config, Output, Scope};
use crate::enforce::{BypassWatcher, Directory, PolicyController, Reapply, RuleSetWriter, Targets};
use crate::export::{
    control_plane_logs, run_sink, Batch, FileOptions, FileSink, MetricsPush, OtlpOptions, OtlpSink,
    OtlpTransport, Spool, SpoolOptions, StdoutSink,
};
use crate::flow::FlowStage;
use crate::kernel::{self, abi, AttachOptions, Attached, DnsCache};
use crate::metrics::{self, KernelReading, Metrics};
use crate::pipeline::Pipeline;
use crate::policy::Policy;
use crate::record::Record;

use crate::stage_queue::{EVENT_BATCHES, OBSERVATION_BATCHES, RECORD_BATCHES};

pub async fn run(args: &RunArgs) -> Result<()> {
    // First: a SIGTERM, SIGINT or SIGHUP that comes before its handler would
    // kill the daemon (the default action), also once /readyz says ready.
    let signals = Signals::install()?;
    let config = Config::load(args.common.config.as_deref(), &args.overrides())?;
    // With OTLP output the daemon's own logs also go out, as `cp` records.
    let (control_plane_layer, control_plane_rx) = if config.output.has(&Output::Otlp) {
        let (layer, rx) = control_plane_logs::channel(control_plane_logs::QUEUE_RECORDS);
        (Some(layer), Some(rx))
    } else {
        (None, None)
    };
    crate::logging::init_with(&config.log_level, control_plane_layer);
    // TLS material and credentials are read and checked before anything
    // touches the kernel: a broken transport is a start-up error.
    let transport = if config.output.has(&Output::Otlp) {
        Some(otlp_transport(&config)?)
    } else {
        None
    };
    require_privileges()?;
    let cgroup = cgroup_dir(&config)?;
    let cgroup2_root = kernel::cgroup2_root()?;
    if config.pin_root.starts_with(kernel::bpffs_root()) {
        kernel::ensure_bpffs(&kernel::bpffs_root())?;
    }
    let scope = config.effective_scope();
    // Validate the policy (and that the kernel can hold it) before
    // touching the kernel.
    let policy = match &config.policy_file {
        Some(path) => Some(crate::enforce::load_policy(path)?),
        None => None,
    };
    let attached = kernel::load_and_attach(&AttachOptions {
        cgroup: cgroup.clone(),
        pin_root: config.pin_root.clone(),
        ringbuf_bytes: config.ringbuf_bytes,
        flow_table_size: config.flow_table_size,
        scope_mode: match scope {
            Scope::Containers => abi::egress_scope_mode::SCOPE_ENROLLED,
            _ => abi::egress_scope_mode::SCOPE_ALL,
        },
        children_in_scope: scope == Scope::Containers
            && every_child_is_a_container(&cgroup, &cgroup2_root),
        fairness: config.fairness(),
    })
    .with_context(|| format!("attach to {}", cgroup.display()))?;
    tracing::info!(
        event = "attached",
        cgroup = %cgroup.display(),
        cgroup_id = attached.cgroup_id,
        pins = %attached.pins.dir.display(),
        links_created = attached.links_created,
        links_reused = attached.links_reused,
        scope = ?scope,
        "BPF programs attached"
    );

    let metrics = Arc::new(Metrics::with_agent_limits(config.agent_limits()));
    let refresh = kernel_refresher(&attached, metrics.clone())?;
    let listener = metrics::bind(config.metrics_listen)
        .await
        .with_context(|| format!("metrics endpoint {}", config.metrics_listen))?;
    tracing::info!(event = "metrics_listening", addr = %listener.local_addr()?, "Prometheus endpoint up");
    let ready = metrics::Ready::default();
    tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        refresh.clone(),
        ready.clone(),
    ));
    tokio::spawn(refresh_periodically(refresh.clone()));
    tokio::spawn(return_freed_memory());
    // Self-metrics also over OTLP (off by default: a Prometheus that
    // scrapes both would see every series twice).
    let metrics_push = match (&transport, config.otlp_metrics_interval.is_zero()) {
        (Some(t), false) => Some(MetricsPush::start(
            &config.otlp_endpoint,
            t,
            config.otlp_metrics_interval,
            metrics.clone(),
            refresh.clone(),
        )?),
        _ => None,
    };
    let usage = Arc::new(attached.scope_usage()?);
    tokio::spawn(expire_dns_answers(attached.dns_cache(usage.clone())?));

    let (mut sink_tx, mut sinks) =
        start_sinks(&config, transport.as_ref(), metrics.clone()).await?;
    // The local API (observe, top): one more sink, never a slow one.
    let api_flows = attached.flow_maps(usage.clone())?;
    let mut api_hub = None;
    let _api_socket = match api::bind(&config.api_socket, config.api_group.as_deref()) {
        Ok(listener) => {
            let hub = api::Hub::new(&config.api_options(), metrics.clone());
            api_hub = Some(hub.clone());
            let (tx, rx) = mpsc::channel(RECORD_BATCHES);
            sink_tx.push(tx);
            sinks.push(tokio::spawn(run_sink(api::ApiSink(hub.clone()), rx)));
            tracing::info!(event = "api_listening", socket = %config.api_socket.display(), "local API up");
            Some(tokio::spawn(api::serve(
                listener,
                hub,
                Some(api::OpenFlows::new(api_flows)),
            )))
        }
        Err(e) => {
            tracing::warn!(event = "api_unavailable", error = %format!("{e:#}"), "local API not served (observe/top will not work)");
            None
        }
    };
    let control_plane_logs = control_plane_rx
        .zip(transport.as_ref())
        .map(|(rx, t)| start_control_plane_logs(&config, t, rx, metrics.clone()))
        .transpose()?;
    // Bounded in items (crate::stage_queue): a burst waits in the ring.
    let (event_tx, event_rx) = mpsc::channel(EVENT_BATCHES);
    let (flow_tx, flow_rx) = mpsc::channel(OBSERVATION_BATCHES);
    let clock = BootClock::calibrate();
    let flows = FlowStage::new(
        attached.flow_maps(usage.clone())?,
        clock,
        config.flow_options(),
        metrics.clone(),
    );
    let losses = LossReporter::new(
        usage.clone(),
        match scope {
            Scope::Containers => Some(attached.scoped_cgroups()?),
            _ => None,
        },
        config.loss_report_interval,
    );
    let loss_task = tokio::spawn(losses.run::<crate::flow::Observation>(flow_tx.clone()));
    let flow_stage = tokio::spawn(flows.run(event_rx, flow_tx));
    let drain = spawn_drain(attached.event_source()?, clock, event_tx, metrics.clone())?;
    let attribution = start_attribution(&config, &attached, scope, cgroup2_root, metrics.clone())?;
    let container_cache = attribution.cache.clone();
    tokio::spawn(scan_resources(
        container_cache.clone(),
        metrics.clone(),
        api_hub,
    ));
    if scope == Scope::Containers {
        tokio::spawn(report_unwatched(
            container_cache.clone(),
            cgroup.clone(),
            metrics.clone(),
        ));
    }
    let (attributor, lifecycle, attribution) = attribution.split();
    // Control-path records (lifecycle, bypass audit) share one channel.
    let (control_tx, control_rx) = mpsc::channel(1024);
    tokio::spawn(forward(lifecycle, control_tx.clone()));
    let policy_maps = attached.policy_maps()?;
    // Policy changes (reload, bypass end) reach sockets already open.
    let reapply = Reapply::new(attached.pins.clone(), metrics.clone());
    reapply.preload();
    tokio::spawn(
        BypassWatcher::new(policy_maps, clock)
            .with_reapply(reapply.clone())
            .run(control_tx.clone()),
    );
    if let (Some(path), Some(policy)) = (&config.policy_file, policy) {
        let targets = match scope {
            Scope::Containers => Some(container_cache),
            _ => None,
        };
        start_policy(
            path,
            policy,
            &attached,
            targets,
            reapply,
            metrics.clone(),
            control_tx,
        )?(signals.hup);
    } else {
        tokio::spawn(ignore_hangups(signals.hup));
    }
    let pipeline =
        tokio::spawn(Pipeline::new(attributor, metrics.clone(), sink_tx).run(flow_rx, control_rx));
    ready.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(event = "ready", "pipeline running (/readyz answers 200)");

    wait_for_shutdown(signals.term, signals.int).await;
    tracing::info!(
        event = "shutting_down",
        "draining the ring buffer and flushing sinks; programs stay attached"
    );
    tokio::task::spawn_blocking(move || drain.stop_and_join()).await?;
    flow_stage.await?;
    loss_task.abort();
    pipeline.await?;
    drop(attribution);
    for sink in sinks {
        sink.await?;
    }
    if let Some(control_plane) = control_plane_logs {
        control_plane.finish().await;
    }
    refresh();
    if let Some(push) = metrics_push {
        push.shutdown().await;
    }
    // Last: until the sinks are flushed the daemon's own traffic stays exempt.
    if let Err(e) = attached.forget_self() {
        tracing::warn!(event = "self_exemption_kept", error = %e, "could not clear the daemon's exemption");
    }
    tracing::info!(event = "stopped", "clawker-egress stopped");
    Ok(())
}

/// Enforce the policy (already validated before attaching); the returned
/// call starts following reloads on the daemon's SIGHUP stream.
fn start_policy(
    path: &std::path::Path,
    policy: Policy,
    attached: &Attached,
    containers: Option<Arc<ContainerCache>>,
    reapply: Reapply,
    metrics: Arc<Metrics>,
    out: mpsc::Sender<Record>,
) -> Result<impl FnOnce(Signal)> {
    let maps = attached.policy_maps()?;
    // Containers scope: one rule set per container, chosen by its labels
    // and kept current as identities arrive; else the default section.
    let (keep, changes) = tokio::sync::watch::channel(0u64);
    let (targets, changes) = match containers {
        Some(cache) => {
            let changes = cache.subscribe();
            (
                Targets::Containers(Box::new(ContainerDirectory(cache))),
                changes,
            )
        }
        None => (Targets::Everything, changes),
    };
    let writer = RuleSetWriter::new(maps);
    let controller = PolicyController::start(
        path.to_path_buf(),
        policy,
        writer,
        targets,
        Some(reapply),
        metrics,
        out,
    );
    tracing::info!(event = "policy_loaded", file = %path.display(), "policy in force");
    Ok(move |hup| {
        tokio::spawn(async move {
            let _keep = keep;
            controller.run(hup, changes).await
        });
    })
}

/// Per-container policy targets, from the container cache.
struct ContainerDirectory(Arc<ContainerCache>);

impl Directory for ContainerDirectory {
    fn containers(&self) -> Vec<(u64, Option<String>, Option<String>)> {
        self.0
            .enrolled()
            .into_iter()
            .map(|(id, identity)| match identity {
                Some(i) => (id, i.agent.clone(), i.project.clone()),
                None => (id, None, None),
            })
            .collect()
    }
}

/// A container whose cgroup lies outside the attached one (a custom
/// `--cgroup-parent` while the programs sit at `docker/`) runs no program:
/// nothing it sends is recorded or enforced. Said at once, once per
/// container, and counted (`containers_unwatched`), never silent.
async fn report_unwatched(
    cache: Arc<ContainerCache>,
    attached_at: std::path::PathBuf,
    metrics: Arc<Metrics>,
) {
    let mut changes = cache.subscribe();
    let mut said = std::collections::HashSet::new();
    loop {
        let mut unwatched = std::collections::HashSet::new();
        for (dir, identity) in cache.enrolled_dirs() {
            if dir.starts_with(&attached_at) {
                continue;
            }
            unwatched.insert(dir.clone());
            if said.insert(dir.clone()) {
                let (name, agent) = identity
                    .map(|i| (i.name.clone(), i.agent.clone().unwrap_or_default()))
                    .unwrap_or_default();
                tracing::warn!(
                    event = "container_unwatched",
                    container = %name,
                    agent = %agent,
                    cgroup = %dir.display(),
                    attached = %attached_at.display(),
                    "a container runs outside the attached cgroup: its traffic is neither recorded nor enforced (attach higher: containers_cgroup = \"/\" or a common parent)"
                );
            }
        }
        // Bounded: a container that ended is forgotten.
        said.retain(|d| unwatched.contains(d));
        metrics.containers_unwatched(unwatched.len());
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
    }
}

/// Per-container cgroup usage every 10 s: per-agent series, and `top`.
async fn scan_resources(
    cache: Arc<ContainerCache>,
    metrics: Arc<Metrics>,
    hub: Option<Arc<api::Hub>>,
) {
    use crate::detect::resources::{read_usage_with, V1Fallback};
    let v1 = kernel::cgroup2_root()
        .ok()
        .and_then(|root| V1Fallback::detect(&root))
        .map(Arc::new);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tick.tick().await;
        let dirs = cache.enrolled_dirs();
        let v1 = v1.clone();
        let read = tokio::task::spawn_blocking(move || {
            dirs.into_iter()
                .filter_map(|(dir, identity)| {
                    let usage = read_usage_with(&dir, v1.as_deref())?;
                    Some((identity, usage))
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(read) = read else { continue };
        if let Some(hub) = &hub {
            let by_container = read
                .iter()
                .filter_map(|(i, u)| Some((i.as_ref()?.container_id.clone(), *u)))
                .collect();
            hub.resources(&by_container);
        }
        let per_agent: Vec<_> = read
            .into_iter()
            .map(|(identity, usage)| {
                let (agent, project) = identity
                    .map(|i| (i.agent.clone(), i.project.clone()))
                    .unwrap_or_default();
                (agent, project, usage)
            })
            .collect();
        metrics.agents().resources(&per_agent);
    }
}

async fn forward(mut from: mpsc::Receiver<Record>, to: mpsc::Sender<Record>) {
    while let Some(r) = from.recv().await {
        if to.send(r).await.is_err() {
            return;
        }
    }
}

/// Follow Docker for identities; in `containers` scope, container cgroups
/// are enrolled in the kernel's scope map as they appear.
fn start_attribution(
    config: &Config,
    attached: &Attached,
    scope: Scope,
    cgroup2_root: std::path::PathBuf,
    metrics: Arc<Metrics>,
) -> Result<Attribution> {
    let enroller: Option<Box<dyn Enroller>> = match scope {
        Scope::Containers => Some(Box::new(
            attached.scoped_cgroups().context("scoped_cgroups handle")?,
        )),
        _ => None,
    };
    let source = DockerSource::new(
        config.docker_socket.to_string_lossy(),
        config.label_policy(),
    );
    Ok(Attribution::start(
        source,
        AttributionOptions {
            cgroup2_root,
            enroller,
            wait: config.attribution_wait,
        },
        metrics,
    ))
}

/// The OTLP transport (TLS, credentials, headers, compression), loaded and
/// checked: files, PEM, permissions, and the TLS set-up itself.
fn otlp_transport(config: &Config) -> Result<OtlpTransport> {
    let transport = OtlpTransport::load(&config.otlp_endpoint, &config.otlp_transport())
        .with_context(|| format!("otlp endpoint {}", config.otlp_endpoint))?;
    transport
        .endpoint(&config.otlp_endpoint)
        .with_context(|| format!("otlp endpoint {}", config.otlp_endpoint))?;
    tracing::info!(
        event = "otlp_transport",
        endpoint = %config.otlp_endpoint,
        transport = %transport.summary(),
        "OTLP transport configured"
    );
    Ok(transport)
}

/// The pipeline's side of each sink (`senders`) and the sink tasks.
type Sinks = (Vec<mpsc::Sender<Batch>>, Vec<JoinHandle<()>>);

/// One channel and one task per output: each sink queues, retries and
/// counts its losses on its own (`sink` label).
async fn start_sinks(
    config: &Config,
    transport: Option<&OtlpTransport>,
    metrics: Arc<Metrics>,
) -> Result<Sinks> {
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for output in config.output.iter() {
        let (tx, rx) = mpsc::channel(RECORD_BATCHES);
        let task = match output {
            Output::Stdout => tokio::spawn(run_sink(StdoutSink::new(metrics.clone()), rx)),
            Output::Otlp => {
                let mut opts = OtlpOptions::new(&config.otlp_endpoint);
                opts.queue_records = config.otlp_queue_records;
                opts.loss_interval = config.loss_report_interval;
                if let Some(transport) = transport {
                    opts.transport = transport.clone();
                }
                let mut sink = OtlpSink::new(opts, metrics.clone())
                    .with_context(|| format!("otlp endpoint {}", config.otlp_endpoint))?;
                if config.spool_bytes > 0 {
                    sink = sink.with_spool(open_spool(config, "otlp", config.spool_bytes)?);
                }
                tokio::spawn(run_sink(sink, rx))
            }
            Output::File(path) => {
                let opts = FileOptions {
                    path: path.clone(),
                    rotate_bytes: config.file_rotate_bytes,
                    keep: config.file_rotate_keep,
                };
                let sink = FileSink::open(opts, metrics.clone())
                    .await
                    .with_context(|| format!("output file {}", path.display()))?;
                tokio::spawn(run_sink(sink, rx))
            }
        };
        senders.push(tx);
        tasks.push(task);
    }
    Ok((senders, tasks))
}

/// The daemon's own logs: a second OTLP sink instance, fed by the layer.
fn start_control_plane_logs(
    config: &Config,
    transport: &OtlpTransport,
    rx: control_plane_logs::ControlPlaneLogReceiver,
    metrics: Arc<Metrics>,
) -> Result<control_plane_logs::ControlPlaneLogs> {
    let mut opts = OtlpOptions::new(&config.otlp_endpoint);
    opts.name = control_plane_logs::CONTROL_PLANE_SINK;
    opts.transport = transport.clone();
    opts.queue_records = 10_000;
    let mut sink = OtlpSink::new(opts, metrics.clone())
        .with_context(|| format!("otlp endpoint {}", config.otlp_endpoint))?;
    if config.spool_bytes > 0 {
        // The daemon's own logs get an eighth of the budget, beside the flows'.
        sink = sink.with_spool(open_spool(
            config,
            "cp",
            (config.spool_bytes / 8).max(1 << 20),
        )?);
    }
    Ok(control_plane_logs::spawn(rx, sink, metrics))
}

/// One OTLP sink's disk spool: `<spool_dir>/<name>`, locked by this daemon.
fn open_spool(config: &Config, name: &str, max_bytes: u64) -> Result<Spool> {
    let dir = config.spool_dir.join(name);
    Spool::open(SpoolOptions {
        dir: dir.clone(),
        max_bytes,
        segment_bytes: (max_bytes / 64).clamp(1 << 16, 16 << 20),
    })
    .with_context(|| format!("OTLP disk spool {}", dir.display()))
}

/// Reads the kernel counters into the metrics registry.
fn kernel_refresher(attached: &Attached, metrics: Arc<Metrics>) -> Result<metrics::Refresh> {
    let counters = attached.counters().context("kernel counters")?;
    Ok(Arc::new(move || {
        let totals = counters.drops();
        let mut reading = KernelReading {
            ringbuf_used_bytes: counters.ring_used_bytes(),
            ringbuf_size_bytes: counters.ring_size_bytes(),
            ..Default::default()
        };
        let slot = |i: u32| totals.get(i as usize).copied().unwrap_or(0);
        for hook in Hook::ALL {
            reading.ringbuf_drops[hook.raw() as usize] = slot(hook.raw());
        }
        reading.datagram_flows_untracked = slot(abi::egress_drop::DROP_FLOW_TABLE_FULL);
        reading.tcp_flows_untracked = slot(abi::egress_drop::MAP_FULL_FLOWS_TCP);
        reading.dns_cache_full = slot(abi::egress_drop::MAP_FULL_DNS_CACHE);
        reading.rate_limited = slot(abi::egress_drop::DROP_RATE_LIMITED);
        reading.dns_pending_full = slot(abi::egress_drop::MAP_FULL_DNS_PENDING);
        reading.dns_unrecorded = slot(abi::egress_drop::DNS_ANSWERS_UNRECORDED);
        for (i, reason) in DnsReject::ALL.into_iter().enumerate() {
            reading.dns_rejected[i] = slot(abi::egress_drop::DNS_REJECTED_FIRST + reason.raw());
        }
        metrics.observe_kernel(&reading);
    }))
}

/// Kernel drops also surface between scrapes, with a warning when they grow.
async fn refresh_periodically(refresh: metrics::Refresh) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        refresh();
    }
}

/// Give the heap a burst freed back to the system every 10 s: glibc keeps
/// it in its arenas otherwise (after 200,000 records, 7.6 of the daemon's
/// 44 MiB; docs/SCALE.md). One walk of the arenas' free lists each time.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim has no preconditions (it takes the arenas' locks).
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Expired DNS answers leave the kernel cache every few seconds.
async fn expire_dns_answers(cache: DnsCache) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tick.tick().await;
        let now = BootClock::now_boot_ns();
        let n = cache.expire(now);
        if n > 0 {
            tracing::debug!(expired = n, "DNS answers expired");
        }
        let n = cache.expire_pending(now);
        if n > 0 {
            tracing::debug!(expired = n, "DNS queries without an answer expired");
        }
    }
}

/// The signals the daemon answers, installed before anything else.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("install the {name} handler"))
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

async fn wait_for_shutdown(mut term: Signal, mut int: Signal) {
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Without a policy there is nothing to reload: SIGHUP is logged, not fatal.
async fn ignore_hangups(mut hup: Signal) {
    while hup.recv().await.is_some() {
        tracing::info!(event = "sighup_ignored", "SIGHUP: no policy file to reload");
    }
}
