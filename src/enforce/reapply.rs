//! Policy changes reach open sockets (issue 9, item 7): after a reload and
//! at a bypass end, every in-scope TCP connection and connected UDP socket
//! is decided again in the kernel and the ones now denied are ended (their
//! flow records say close_reason=policy). One overseer record per sweep
//! says what happened.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, Mutex, OnceCell};

use crate::kernel::{KernelError, PinLayout, SocketSweeper, SweepReport};
use crate::metrics::Metrics;
use crate::record::{key, Record, Source};

/// Runs the kernel's socket re-decision and reports it. The iterators are
/// loaded once, in the background (`preload`), on first use at the latest.
#[derive(Clone)]
pub struct Reapply {
    pins: PinLayout,
    sweeper: Arc<OnceCell<Result<Arc<SocketSweeper>, String>>>,
    /// One sweep at a time (a reload and a bypass end may coincide).
    running: Arc<Mutex<()>>,
    metrics: Arc<Metrics>,
}

impl Reapply {
    pub fn new(pins: PinLayout, metrics: Arc<Metrics>) -> Self {
        Reapply {
            pins,
            sweeper: Arc::new(OnceCell::new()),
            running: Arc::new(Mutex::new(())),
            metrics,
        }
    }

    /// Load the iterators now, without waiting for them.
    pub fn preload(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.sweeper().await {
                tracing::error!(event = "policy_reapply_unavailable", error = %e, "open sockets will not be decided again after reloads and bypass ends");
            }
        });
    }

    async fn sweeper(&self) -> Result<Arc<SocketSweeper>, String> {
        let pins = self.pins.clone();
        self.sweeper
            .get_or_init(|| async move {
                match tokio::task::spawn_blocking(move || SocketSweeper::load(&pins)).await {
                    Ok(Ok(s)) => Ok(Arc::new(s)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .clone()
    }

    /// Sweep now; `why` names the trigger ("policy reload", "bypass end").
    pub async fn run(&self, why: &str, out: &mpsc::Sender<Record>) -> Option<SweepReport> {
        let _one = self.running.lock().await;
        let started = std::time::Instant::now();
        let result = match self.sweeper().await {
            Ok(sweeper) => tokio::task::spawn_blocking(move || sweeper.sweep())
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e: KernelError| e.to_string())),
            Err(e) => Err(e),
        };
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut body_error = None;
        let (event, body, report) = match result {
            Ok(r) => {
                self.metrics.policy("sockets_ended", r.ended);
                self.metrics.policy("sockets_end_failed", r.failed);
                tracing::info!(
                    event = "policy_reapplied",
                    why,
                    namespaces = r.namespaces,
                    namespaces_failed = r.namespaces_failed,
                    decided = r.decided,
                    ended = r.ended,
                    audit = r.audit,
                    failed = r.failed,
                    passes = r.passes,
                    elapsed_ms,
                    "open sockets decided again"
                );
                let body = format!(
                    "open sockets decided again after {why}: {} decided, {} ended by policy, \
                     {} denied in audit mode (left open), {} could not be ended; {} network \
                     namespace(s), {} not entered; {elapsed_ms:.1} ms",
                    r.decided, r.ended, r.audit, r.failed, r.namespaces, r.namespaces_failed
                );
                ("policy_reapplied", body, Some(r))
            }
            Err(e) => {
                self.metrics.policy("reapply_failed", 1);
                tracing::error!(event = "policy_reapply_failed", why, error = %e, "open sockets were not decided again");
                let body = format!("open sockets were NOT decided again after {why}: {e}");
                body_error = Some(e);
                ("policy_reapply_failed", body, None)
            }
        };
        let mut r = Record::new(SystemTime::now(), Source::Overseer).with_body(body);
        r.set(key::EVENT, event);
        r.set(key::DURATION_MS, elapsed_ms.round() as u64);
        match &report {
            Some(rep) => {
                r.set(key::SOCKETS_DECIDED, rep.decided);
                r.set(key::SOCKETS_ENDED, rep.ended);
                r.set(key::SOCKETS_AUDIT, rep.audit);
                r.set(key::SOCKETS_END_FAILED, rep.failed);
            }
            None => r.set(key::ERROR, body_error.unwrap_or_default()),
        }
        let _ = out.send(r).await;
        report
    }
}
