//! The ring buffer reader thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::clock::BootClock;
use super::decode::decode;
use super::event::Event;
use crate::kernel::{EventSource, KernelError};
use crate::metrics::{DropReason, Metrics};

/// How long one epoll wait lasts: bounds how quickly a stop is noticed,
/// and how long a record waits when the ring is nearly empty.
const POLL: Duration = Duration::from_millis(20);
/// How long a batch may gather after its first event.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Initial capacity of a batch handed downstream.
const BATCH: usize = 1024;

pub struct DrainHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DrainHandle {
    /// Stop polling, drain what is left in the ring buffer, and wait.
    pub fn stop_and_join(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(
                    event = "egress_reader_unavailable",
                    "ring buffer reader thread panicked"
                );
            }
        }
    }
}

/// Start the reader thread. Batches go to `tx`; when `tx` is full the thread
/// waits, the ring buffer fills, and the kernel counts what it cannot store
/// (`ringbuf_full`): back-pressure is visible, never silent.
pub fn spawn_drain(
    events: EventSource,
    clock: BootClock,
    tx: mpsc::Sender<Vec<Event>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<DrainHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ringbuf-drain".into())
        .spawn(move || {
            if let Err(e) = drain_loop(&events, clock, &tx, &metrics, &thread_stop) {
                tracing::error!(event = "egress_reader_unavailable", error = %e, "ring buffer reader stopped");
            }
        })?;
    Ok(DrainHandle {
        stop,
        thread: Some(thread),
    })
}

fn drain_loop(
    events: &EventSource,
    clock: BootClock,
    tx: &mpsc::Sender<Vec<Event>>,
    metrics: &Metrics,
    stop: &AtomicBool,
) -> Result<(), KernelError> {
    let batch = RefCell::new(Vec::with_capacity(BATCH));
    let mut last_warn: Option<Instant> = None;
    let ring = events.reader(|bytes: &[u8]| match decode(bytes, clock) {
        Ok(ev) => batch.borrow_mut().push(ev),
        Err(e) => {
            metrics.dropped(DropReason::ParseFailure, 1);
            if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(event = "egress_parse_failure", error = %e, "undecodable ring buffer record (counted)");
                last_warn = Some(Instant::now());
            }
        }
    })?;

    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping {
            ring.consume()?; // what arrived before the stop request
        } else {
            ring.poll(POLL)?;
            // The kernel wakes this thread only as the ring fills past a
            // mark (bpf/lib/events.h): what came in below it is taken at
            // the end of each wait.
            ring.consume()?;
            if !batch.borrow().is_empty() {
                // Let a burst accumulate: one hand-off per window instead of
                // a wake-up of every stage per event (which cost ~70 us of
                // CPU per record at 10k records/s). Bounded latency, and the
                // ring still holds what arrives meanwhile.
                std::thread::sleep(BATCH_WINDOW);
                ring.consume()?;
            }
        }
        // A batch is bounded by what one ring buffer holds, and handed on
        // in chunks to a queue bounded in events (crate::stage_queue).
        let full = std::mem::replace(&mut *batch.borrow_mut(), Vec::with_capacity(BATCH));
        if crate::stage_queue::blocking_send(tx, full).is_err() {
            return Ok(()); // pipeline gone: shutting down
        }
        if stopping {
            return Ok(());
        }
    }
}
