//! Thin wrappers over the maps user space reads: the event ring buffer
//! (epoll-driven, no busy polling) and the per-CPU drop counters.

use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBuffer, RingBufferBuilder};

use super::abi;
use super::attach::KernelError;

/// The event ring buffer, read through a callback per record.
pub struct EventRing<'cb> {
    ring: RingBuffer<'cb>,
}

impl<'cb> EventRing<'cb> {
    pub fn new(
        events: &'cb MapHandle,
        callback: impl FnMut(&[u8]) + 'cb,
    ) -> Result<Self, KernelError> {
        let mut callback = callback;
        let mut builder = RingBufferBuilder::new();
        builder
            .add(events, move |bytes: &[u8]| {
                callback(bytes);
                0
            })
            .map_err(|source| KernelError::Bpf {
                what: "ring buffer reader".into(),
                source,
            })?;
        let ring = builder.build().map_err(|source| KernelError::Bpf {
            what: "ring buffer reader".into(),
            source,
        })?;
        Ok(EventRing { ring })
    }

    /// Wait up to `timeout` for records and consume all that are there.
    /// An interrupted wait (a signal) is not an error.
    pub fn poll(&self, timeout: Duration) -> Result<(), KernelError> {
        match self.ring.poll(timeout) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::Interrupted => Err(KernelError::Bpf {
                what: "ring buffer poll".into(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Consume whatever is in the ring right now, without waiting.
    pub fn consume(&self) -> Result<(), KernelError> {
        self.ring.consume().map_err(|source| KernelError::Bpf {
            what: "ring buffer consume".into(),
            source,
        })
    }
}

/// Sum the per-CPU drop counters: one total per slot of `enum egress_drop`.
pub fn read_drops(drops: &MapHandle) -> Vec<u64> {
    (0..abi::egress_drop::DROP_MAX)
        .map(|slot| {
            drops
                .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .map(|cpus| cpus.iter().map(|v| u64_at(v)).sum())
                .unwrap_or(0)
        })
        .collect()
}

fn u64_at(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}
