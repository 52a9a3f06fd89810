//! Policy changes reach open sockets (issue 9, item 7): after a reload and
//! at a bypass end, every in-scope TCP connection and connected UDP socket
//! is decided again in the kernel and the ones now denied are ended (their
//! flow records say close_reason=policy). One overseer record per sweep
//! says what happened.

use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::kernel::{SocketSweeper, SweepReport};
use crate::record::{key, Record, Source};

/// Runs the kernel's socket re-decision and reports it.
#[derive(Debug, Clone)]
pub struct Reapply {
    sweeper: SocketSweeper,
}

impl Reapply {
    pub fn new(sweeper: SocketSweeper) -> Self {
        Reapply { sweeper }
    }

    /// Sweep now; `why` names the trigger ("reload", "bypass end").
    pub async fn run(&self, why: &str, out: &mpsc::Sender<Record>) -> Option<SweepReport> {
        let sweeper = self.sweeper.clone();
        let result = tokio::task::spawn_blocking(move || sweeper.sweep()).await;
        let (event, body, report) = match result {
            Ok(Ok(r)) => {
                tracing::info!(
                    event = "policy_reapplied",
                    why,
                    namespaces = r.namespaces,
                    namespaces_failed = r.namespaces_failed,
                    decided = r.decided,
                    ended = r.ended,
                    audit = r.audit,
                    failed = r.failed,
                    "open sockets decided again"
                );
                let body = format!(
                    "open sockets decided again after {why}: {} decided, {} ended by policy, \
                     {} denied in audit mode (left open), {} could not be ended; {} network \
                     namespace(s), {} not entered",
                    r.decided, r.ended, r.audit, r.failed, r.namespaces, r.namespaces_failed
                );
                ("policy_reapplied", body, Some(r))
            }
            Ok(Err(e)) => {
                tracing::error!(event = "policy_reapply_failed", why, error = %e, "open sockets were not decided again");
                let body = format!("open sockets were NOT decided again after {why}: {e}");
                ("policy_reapply_failed", body, None)
            }
            Err(e) => {
                tracing::error!(event = "policy_reapply_failed", why, error = %e, "socket sweep task failed");
                let body = format!("open sockets were NOT decided again after {why}: {e}");
                ("policy_reapply_failed", body, None)
            }
        };
        let mut r = Record::new(SystemTime::now(), Source::Overseer).with_body(body);
        r.set(key::EVENT, event);
        let _ = out.send(r).await;
        report
    }
}
