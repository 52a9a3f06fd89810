//! Thin wrappers over the maps user space reads: the event ring buffer
//! (epoll-driven, no busy polling), the per-CPU drop counters and the ring's
//! fill level.

use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBuffer, RingBufferBuilder};

use super::abi;
use super::error::{bpf_err, dup_handle, KernelError};
use super::RingbufFill;

/// The event ring buffer, owned by the thread that drains it.
pub struct EventSource {
    events: MapHandle,
}

impl EventSource {
    pub(super) fn new(events: MapHandle) -> Self {
        EventSource { events }
    }

    /// A reader calling `callback` once per record.
    pub fn reader<'cb>(
        &'cb self,
        callback: impl FnMut(&[u8]) + 'cb,
    ) -> Result<EventRing<'cb>, KernelError> {
        EventRing::new(&self.events, callback)
    }
}

/// The event ring buffer, read through a callback per record.
pub struct EventRing<'cb> {
    ring: RingBuffer<'cb>,
}

impl<'cb> EventRing<'cb> {
    fn new(events: &'cb MapHandle, callback: impl FnMut(&[u8]) + 'cb) -> Result<Self, KernelError> {
        let mut callback = callback;
        let mut builder = RingBufferBuilder::new();
        builder
            .add(events, move |bytes: &[u8]| {
                callback(bytes);
                0
            })
            .map_err(bpf_err("ring buffer reader"))?;
        let ring = builder.build().map_err(bpf_err("ring buffer reader"))?;
        Ok(EventRing { ring })
    }

    /// Wait up to `timeout` for records and consume all that are there.
    /// An interrupted wait (a signal) is not an error.
    pub fn poll(&self, timeout: Duration) -> Result<(), KernelError> {
        match self.ring.poll(timeout) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::Interrupted => {
                Err(bpf_err("ring buffer poll")(e))
            }
            _ => Ok(()),
        }
    }

    /// Consume whatever is in the ring right now, without waiting.
    pub fn consume(&self) -> Result<(), KernelError> {
        self.ring.consume().map_err(bpf_err("ring buffer consume"))
    }
}

/// The kernel's own counters: what it could not record, per reason, and
/// how full the ring buffer is.
pub struct KernelCounters {
    drops: MapHandle,
    fill: RingbufFill,
}

impl KernelCounters {
    pub(super) fn new(
        drops: &MapHandle,
        events: &MapHandle,
        size: u32,
    ) -> Result<Self, KernelError> {
        let fill = RingbufFill::new(events, size).map_err(|source| KernelError::Io {
            what: "map ring buffer positions".into(),
            source,
        })?;
        Ok(KernelCounters {
            drops: dup_handle(drops, "egress_drops")?,
            fill,
        })
    }

    /// Sum the per-CPU drop counters: one total per slot of `enum egress_drop`.
    pub fn drops(&self) -> Vec<u64> {
        read_drops(&self.drops)
    }

    /// Bytes written to the ring and not yet consumed.
    pub fn ring_used_bytes(&self) -> u64 {
        self.fill.used_bytes()
    }

    pub fn ring_size_bytes(&self) -> u64 {
        self.fill.size_bytes()
    }
}

fn read_drops(drops: &MapHandle) -> Vec<u64> {
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
