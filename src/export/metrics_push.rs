//! The daemon's self-metrics pushed over OTLP (`otlp_metrics_interval`),
//! beside `/metrics`, with the OpenTelemetry SDK: an `SdkMeterProvider`
//! with a `PeriodicReader` and `opentelemetry-otlp`'s gRPC metric exporter
//! on the OTLP sink's transport (TLS, bearer token, headers, gzip).
//!
//! No metric is defined twice: the one registry ([`Metrics`]) is the
//! source. The registry is encoded and every family gets one asynchronous
//! SDK instrument (at start, and each interval for families that got their
//! first label set since); each collection encodes the registry
//! again (after the kernel refresh, as a scrape does) and reports what it
//! holds, by family and label set ([`snapshot`]). Counters stay counters
//! (cumulative, `<name>_total` again once the collector's Prometheus
//! exporter names them), gauges gauges, an info family a gauge of 1;
//! histograms stay `/metrics`-only (the OTel metrics API has no
//! asynchronous histogram).
//!
//! A failed push loses no record and no count (the next push carries the
//! cumulative values): it is counted
//! (`clawker_egress_metrics_push_failures_total`) and logged once per
//! outage, never as a record loss.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::Resource;

use super::transport::OtlpTransport;
use crate::metrics::{Metrics, Refresh};

/// The sink label of the push's own failures and logs.
pub const METRICS_PUSH_SINK: &str = "otlp_metrics";

/// A sample's label pairs, in their order in the text.
pub type Labels = Vec<(String, String)>;

/// The registry as read at one moment: families by name.
pub type Snapshot = BTreeMap<String, Family>;

/// One encoded family: its type and samples (labels, value).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub kind: Kind,
    /// The `# HELP` text (the OTLP metric's description).
    pub help: String,
    pub samples: Vec<(Labels, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Info,
    /// Histograms, summaries, …: not pushed.
    Other,
}

/// The registry's text (OpenMetrics, as `/metrics` serves it) by family
/// name. Only the samples an instrument reports are kept: a counter's
/// `<family>_total`, a gauge's `<family>`, an info's `<family>_info`.
pub fn snapshot(text: &str) -> Snapshot {
    let mut out = Snapshot::new();
    let mut help: Option<(&str, &str)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ');
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" | "unknown" => Kind::Gauge,
                "info" => Kind::Info,
                _ => Kind::Other,
            };
            let help = match help.take() {
                Some((n, h)) if n == name => h.to_owned(),
                _ => String::new(),
            };
            out.insert(
                name.to_owned(),
                Family {
                    kind,
                    help,
                    samples: Vec::new(),
                },
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((sample, labels, value)) = parse_sample(line) else {
            continue;
        };
        let family = [
            ("_total", Kind::Counter),
            ("_info", Kind::Info),
            ("", Kind::Gauge),
        ]
        .iter()
        .find_map(|(suffix, kind)| {
            let name = sample.strip_suffix(suffix)?;
            out.get(name)
                .filter(|f| f.kind == *kind)
                .map(|_| name.to_owned())
        });
        if let Some(f) = family.and_then(|name| out.get_mut(&name)) {
            f.samples.push((labels, value));
        }
    }
    out
}

/// `name{a="x",b="y"} 1.5` (label values with `\\`, `\"`, `\n` escapes).
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &body[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    // A quoted value follows.
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// The registry, read at most once per collection (every instrument's
/// callback of one collection shares the reading).
struct Source {
    metrics: Arc<Metrics>,
    refresh: Refresh,
    last: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl Source {
    fn read(&self) -> Arc<Snapshot> {
        let Ok(mut last) = self.last.lock() else {
            return Arc::default();
        };
        if let Some((at, snap)) = last.as_ref() {
            if at.elapsed() < Duration::from_millis(500) {
                return snap.clone();
            }
        }
        (self.refresh)();
        let snap = Arc::new(snapshot(&self.metrics.encode()));
        *last = Some((Instant::now(), snap.clone()));
        snap
    }

    fn observe(&self, family: &str, mut report: impl FnMut(f64, &[KeyValue])) {
        let snap = self.read();
        let Some(f) = snap.get(family) else {
            return;
        };
        for (labels, value) in &f.samples {
            let attrs: Vec<KeyValue> = labels
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .collect();
            report(*value, &attrs);
        }
    }
}

/// One asynchronous instrument per family of the registry not yet in
/// `seen`. Called at start and then every interval: the text encoder
/// leaves out a labelled family until its first label set exists, so
/// families appear as the daemon runs (an instrument never goes away).
fn register_new(meter: &Meter, source: &Arc<Source>, seen: &mut HashSet<String>) -> usize {
    let mut n = 0;
    for (name, family) in source.read().iter() {
        if family.kind == Kind::Other || seen.contains(name) {
            continue;
        }
        seen.insert(name.clone());
        let s = source.clone();
        let family_name = name.clone();
        match family.kind {
            Kind::Counter => {
                meter
                    .f64_observable_counter(name.clone())
                    .with_description(family.help.clone())
                    .with_callback(move |o| s.observe(&family_name, |v, a| o.observe(v, a)))
                    .build();
            }
            Kind::Gauge => {
                meter
                    .f64_observable_gauge(name.clone())
                    .with_description(family.help.clone())
                    .with_callback(move |o| s.observe(&family_name, |v, a| o.observe(v, a)))
                    .build();
            }
            Kind::Info => {
                meter
                    .f64_observable_gauge(format!("{name}_info"))
                    .with_description(family.help.clone())
                    .with_callback(move |o| s.observe(&family_name, |v, a| o.observe(v, a)))
                    .build();
            }
            Kind::Other => continue,
        }
        n += 1;
    }
    n
}

/// The OTLP exporter, its failures counted (and logged once per outage).
struct CountingExporter {
    inner: MetricExporter,
    metrics: Arc<Metrics>,
    failing: AtomicBool,
}

impl PushMetricExporter for CountingExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        match &result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        event = "metrics_push_recovered",
                        sink = METRICS_PUSH_SINK,
                        "self-metrics reach the collector again"
                    );
                }
            }
            Err(e) => {
                self.metrics.metrics_push_failed();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        event = "metrics_push_failed",
                        sink = METRICS_PUSH_SINK,
                        error = %e,
                        "self-metrics push failed; retried at the next interval (cumulative values: nothing lost but resolution)"
                    );
                }
            }
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// The running push: shut it down to send a last collection.
pub struct MetricsPush {
    provider: SdkMeterProvider,
    discover: tokio::task::JoinHandle<()>,
}

impl MetricsPush {
    /// Start pushing every `interval` to `endpoint` (needs a Tokio runtime:
    /// the gRPC channel lives on it).
    pub fn start(
        endpoint: &str,
        transport: &OtlpTransport,
        interval: Duration,
        metrics: Arc<Metrics>,
        refresh: Refresh,
    ) -> Result<Self> {
        let mut builder = MetricExporter::builder()
            .with_tonic()
            .with_channel(transport.channel(endpoint)?)
            .with_interceptor(transport.headers())
            .with_timeout(Duration::from_secs(10));
        if transport.gzip() {
            builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
        }
        let exporter = builder.build().context("OTLP metric exporter")?;
        let reader = PeriodicReader::builder(CountingExporter {
            inner: exporter,
            metrics: metrics.clone(),
            failing: AtomicBool::new(false),
        })
        .with_interval(interval)
        .build();
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "clawker-egress"),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("host.name", host),
            ])
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        let meter = provider.meter("clawker-egress");
        let source = Arc::new(Source {
            metrics,
            refresh,
            last: Mutex::new(None),
        });
        let mut seen = HashSet::new();
        let families = register_new(&meter, &source, &mut seen);
        tracing::info!(
            event = "metrics_push_started",
            endpoint,
            interval = %humantime::format_duration(interval),
            families,
            "self-metrics pushed over OTLP"
        );
        // Families that appear later get their instrument before the next push.
        let discover = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                register_new(&meter, &source, &mut seen);
            }
        });
        Ok(Self { provider, discover })
    }

    /// Push a last collection and stop (blocks up to the export timeout).
    pub async fn shutdown(self) {
        self.discover.abort();
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_maps_to_families_by_type() {
        let m = Metrics::new();
        m.sink_failure("otlp", "rejected", 3);
        m.exported("stdout", 7);
        let snap = snapshot(&m.encode());
        let dropped = &snap["clawker_egress_events_dropped"];
        assert_eq!(dropped.kind, Kind::Counter);
        assert!(dropped.help.contains("lost anywhere"), "{}", dropped.help);
        assert!(dropped
            .samples
            .iter()
            .any(|(l, v)| l == &[("reason".into(), "sink_failure".into())] && *v == 3.0));
        let failures = &snap["clawker_egress_sink_failures"];
        assert_eq!(
            failures.samples,
            [(
                vec![
                    ("sink".to_owned(), "otlp".to_owned()),
                    ("cause".to_owned(), "rejected".to_owned())
                ],
                3.0
            )]
        );
        assert_eq!(snap["clawker_egress_ringbuf_used_bytes"].kind, Kind::Gauge);
        assert_eq!(
            snap["clawker_egress_attribution_wait_seconds"].kind,
            Kind::Other
        );
        // Every counter sample of the text is in a family: nothing skipped.
        let text = m.encode();
        let counted: usize = snap
            .values()
            .filter(|f| f.kind == Kind::Counter)
            .map(|f| f.samples.len())
            .sum();
        let total_lines = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                let name = l.split(['{', ' ']).next().unwrap_or_default();
                name.strip_suffix("_total")
                    .is_some_and(|f| snap.get(f).is_some_and(|f| f.kind == Kind::Counter))
            })
            .count();
        assert_eq!(counted, total_lines);
    }

    /// What the SDK would push: (metric, labels, value) per data point.
    #[derive(Clone, Default)]
    struct Recording(Arc<Mutex<Vec<(String, Labels, f64)>>>);

    impl PushMetricExporter for Recording {
        async fn export(&self, rm: &ResourceMetrics) -> OTelSdkResult {
            use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
            let mut out = self.0.lock().unwrap();
            out.clear();
            for sm in rm.scope_metrics() {
                for m in sm.metrics() {
                    let labels = |a: &mut dyn Iterator<Item = &KeyValue>| {
                        a.map(|kv| (kv.key.to_string(), kv.value.to_string()))
                            .collect::<Vec<_>>()
                    };
                    match m.data() {
                        AggregatedMetrics::F64(MetricData::Sum(sum)) => {
                            assert!(sum.is_monotonic(), "{}", m.name());
                            for p in sum.data_points() {
                                out.push((m.name().into(), labels(&mut p.attributes()), p.value()));
                            }
                        }
                        AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                            for p in g.data_points() {
                                out.push((m.name().into(), labels(&mut p.attributes()), p.value()));
                            }
                        }
                        _ => panic!("unexpected kind for {}", m.name()),
                    }
                }
            }
            Ok(())
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    #[test]
    fn the_sdk_pushes_every_counter_and_gauge_including_families_that_appear_later() {
        let metrics = Arc::new(Metrics::new());
        let rec = Recording::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(rec.clone())
                    .with_interval(Duration::from_secs(3600))
                    .build(),
            )
            .build();
        let meter = provider.meter("test");
        let refreshed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r = refreshed.clone();
        let source = Arc::new(Source {
            metrics: metrics.clone(),
            refresh: Arc::new(move || {
                r.fetch_add(1, Ordering::Relaxed);
            }),
            last: Mutex::new(None),
        });
        let mut seen = HashSet::new();
        assert!(register_new(&meter, &source, &mut seen) > 0);
        // records_exported has no label set yet: not in the text, no instrument.
        assert!(!seen.contains("clawker_egress_records_exported"));
        metrics.exported("otlp", 5);
        metrics.sink_failure("otlp", "rejected", 2);
        std::thread::sleep(Duration::from_millis(600)); // past the shared reading
        assert!(register_new(&meter, &source, &mut seen) >= 2);
        provider.force_flush().unwrap();
        let pushed = rec.0.lock().unwrap().clone();
        let find = |name: &str, labels: &[(&str, &str)]| {
            pushed
                .iter()
                .find(|(n, l, _)| {
                    n == name
                        && labels
                            .iter()
                            .all(|(k, v)| l.contains(&(k.to_string(), v.to_string())))
                })
                .map(|(_, _, v)| *v)
        };
        assert_eq!(
            find("clawker_egress_records_exported", &[("sink", "otlp")]),
            Some(5.0),
            "{pushed:?}"
        );
        assert_eq!(
            find(
                "clawker_egress_events_dropped",
                &[("reason", "sink_failure")]
            ),
            Some(2.0)
        );
        assert_eq!(find("clawker_egress_build_info", &[]), Some(1.0));
        assert!(find("clawker_egress_ringbuf_size_bytes", &[]).is_some());
        // Every counter and gauge sample of /metrics is pushed, nothing else.
        let text_samples: usize = snapshot(&metrics.encode())
            .values()
            .filter(|f| f.kind != Kind::Other)
            .map(|f| f.samples.len())
            .sum();
        assert_eq!(pushed.len(), text_samples, "{pushed:?}");
        // One collection read the registry once (kernel refresh included).
        assert!(refreshed.load(Ordering::Relaxed) <= 3);
        provider.shutdown().unwrap();
    }

    #[test]
    fn label_values_are_unescaped() {
        let text = "# TYPE x counter\nx_total{a=\"q\\\"u\\\\o\\nte\",b=\"\"} 2\n# EOF\n";
        let snap = snapshot(text);
        assert_eq!(
            snap["x"].samples,
            [(
                vec![
                    ("a".to_owned(), "q\"u\\o\nte".to_owned()),
                    ("b".to_owned(), String::new())
                ],
                2.0
            )]
        );
    }

    #[test]
    fn a_sample_that_does_not_parse_is_skipped() {
        let snap = snapshot("# TYPE x gauge\nx{a=b} 1\nx 2\nx{a=\"c\"} nope\n");
        assert_eq!(snap["x"].samples, [(vec![], 2.0)]);
    }
}
