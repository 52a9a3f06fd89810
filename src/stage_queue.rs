//! The queues between the daemon's stages (ring drain → flow stage →
//! pipeline → each sink), bounded in items, not only in batches: a batch
//! handed on holds at most [`CHUNK`] items, and a queue holds at most its
//! capacity in batches. A burst the stages cannot keep up with waits in the
//! kernel's ring buffer (its compact form), and what the ring cannot hold
//! is counted there (`ringbuf_full`, in-band per container): memory stays
//! bounded, no loss is silent.
//!
//! Why: the queues were 256 batches each, and a batch was whatever one
//! drain window read (up to a whole ring); 100,000 flow ends at once
//! (1,000 containers) were ~100,000 records in memory at ~1.7 KB each.

use tokio::sync::mpsc;

/// Most items in one batch handed from a stage to the next.
pub const CHUNK: usize = 1024;
/// Batches queued from the ring drain to the flow stage (≤ 16,384 events,
/// ~0.3 KB each; an exec with its argv ~1.3 KB).
pub const EVENT_BATCHES: usize = 16;
/// Batches queued from the flow stage to the pipeline (≤ 8,192).
pub const OBSERVATION_BATCHES: usize = 8;
/// Batches queued from the pipeline to each sink (≤ 4,096 records,
/// ~1.7 KB each in memory; the sinks share them).
pub const RECORD_BATCHES: usize = 4;

/// `batch` in batches of at most [`CHUNK`] items, in order (each item is
/// moved once; a batch within the bound is passed on as it is; an empty
/// one yields nothing).
pub fn chunked<T>(batch: Vec<T>) -> impl Iterator<Item = Vec<T>> {
    let (mut whole, mut rest) = if batch.len() <= CHUNK {
        ((!batch.is_empty()).then_some(batch), Vec::new().into_iter())
    } else {
        (None, batch.into_iter())
    };
    std::iter::from_fn(move || {
        whole.take().or_else(|| {
            let next: Vec<T> = rest.by_ref().take(CHUNK).collect();
            (!next.is_empty()).then_some(next)
        })
    })
}

/// The receiving stage is gone (shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Send `batch` in chunks, waiting for room (back-pressure).
pub async fn send<T>(tx: &mpsc::Sender<Vec<T>>, batch: Vec<T>) -> Result<(), Closed> {
    for chunk in chunked(batch) {
        tx.send(chunk).await.map_err(|_| Closed)?;
    }
    Ok(())
}

/// [`send`] from a thread outside the runtime (the ring drain).
pub fn blocking_send<T>(tx: &mpsc::Sender<Vec<T>>, batch: Vec<T>) -> Result<(), Closed> {
    for chunk in chunked(batch) {
        tx.blocking_send(chunk).map_err(|_| Closed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_order_and_the_bound() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 10 * CHUNK + 7] {
            let chunks: Vec<Vec<usize>> = chunked((0..n).collect()).collect();
            assert!(
                chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK),
                "{n}"
            );
            let flat: Vec<usize> = chunks.into_iter().flatten().collect();
            assert_eq!(flat, (0..n).collect::<Vec<_>>(), "{n}");
        }
    }

    /// A stage that stops reading holds at most capacity × CHUNK items in
    /// its queue, however large the batches sent to it: the sender waits
    /// (and upstream, the ring buffer fills and counts what it drops).
    #[tokio::test]
    async fn a_stalled_stage_holds_at_most_its_bound() {
        let (tx, mut rx) = mpsc::channel::<Vec<u32>>(EVENT_BATCHES);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        let sender = tokio::spawn(async move {
            // One drain window of a burst: far more than the bound.
            for _ in 0..4 {
                let batch: Vec<u32> = (0..(EVENT_BATCHES * CHUNK) as u32).collect();
                let n = batch.len();
                send(&tx, batch).await.unwrap();
                counter.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            }
        });
        // Wait (no timing assumption) until the sender is blocked on a full queue.
        while rx.len() < EVENT_BATCHES {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        // Everything queued now (the sender cannot run between these
        // calls: one-thread runtime, no await).
        let mut queued = 0;
        while let Ok(b) = rx.try_recv() {
            queued += b.len();
        }
        assert!(queued <= EVENT_BATCHES * CHUNK, "{queued}");
        assert!(!sender.is_finished(), "the sender must be waiting for room");
        // Reading again lets every item through, in order, none lost.
        let mut total = queued;
        while let Some(b) = rx.recv().await {
            assert!(b.len() <= CHUNK);
            total += b.len();
        }
        sender.await.unwrap();
        assert_eq!(total, 4 * EVENT_BATCHES * CHUNK);
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), total);
    }
}
