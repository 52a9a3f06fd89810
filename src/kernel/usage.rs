//! Per-container fairness and loss accounting (P14), as user space sees it.
//!
//! The kernel counts, per scope cgroup, the `flows` and `dns_cache` entries a
//! container made and the records it lost by reason (`scope_usage`, written
//! by the kernel only). User space tells it how many entries it removed
//! (`scope_released`, written here only): a container's share of a table is
//! `made - released`, and each counter has exactly one writer.

use std::collections::HashMap;
use std::sync::Mutex;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::abi;
use super::error::{dup_handle, KernelError};
use super::pod::{bytes_of, from_bytes};

/// What a container lost in the kernel (cumulative, or a difference).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses {
    /// Records lost, by reason (`abi::scope_loss` index).
    pub records: [u64; abi::scope_loss::SCOPE_LOSS_MAX as usize],
    /// Payload bytes of the TCP flow ends among them.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Full tables, by table (`abi::scope_full` index): no record lost,
    /// detail missing (a TCP flow's interim records, a domain verdict).
    pub full: [u64; abi::scope_full::SCOPE_FULL_MAX as usize],
}

impl Losses {
    /// What grew since `earlier` (counters are monotonic).
    pub fn since(&self, earlier: &Losses) -> Losses {
        let mut d = Losses {
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            ..Losses::default()
        };
        for (d, (now, was)) in d
            .records
            .iter_mut()
            .zip(self.records.iter().zip(earlier.records.iter()))
            .chain(
                d.full
                    .iter_mut()
                    .zip(self.full.iter().zip(earlier.full.iter())),
            )
        {
            *d = now.saturating_sub(*was);
        }
        d
    }

    pub fn is_empty(&self) -> bool {
        self.records.iter().chain(self.full.iter()).all(|n| *n == 0)
            && self.bytes_out == 0
            && self.bytes_in == 0
    }
}

pub struct ScopeUsage {
    usage: MapHandle,
    /// One writer at a time: the flow stage and the DNS expiry both release.
    released: Mutex<MapHandle>,
}

impl ScopeUsage {
    pub(super) fn new(usage: &MapHandle, released: &MapHandle) -> Result<Self, KernelError> {
        Ok(ScopeUsage {
            usage: dup_handle(usage, "scope_usage")?,
            released: Mutex::new(dup_handle(released, "scope_released")?),
        })
    }

    /// User space removed `flows` flow entries and `dns` cache entries of
    /// each scope cgroup: give the container its share back.
    pub fn release(&self, counts: &HashMap<u64, (u64, u64)>) {
        self.add_released(counts.iter().map(|(scope, &(flows, dns))| {
            (*scope, move |v: &mut abi::scope_released| {
                v.flows += flows;
                v.dns_entries += dns;
            })
        }));
    }

    /// User space expired `n` `dns_pending` entries of each scope cgroup.
    pub fn release_pending(&self, counts: &HashMap<u64, u64>) {
        self.add_released(counts.iter().map(|(scope, &n)| {
            (*scope, move |v: &mut abi::scope_released| {
                v.dns_pending += n
            })
        }));
    }

    /// Read-modify-write of `scope_released` entries, one writer at a time
    /// (user space is its only writer).
    fn add_released<F: FnOnce(&mut abi::scope_released)>(
        &self,
        changes: impl Iterator<Item = (u64, F)>,
    ) {
        let mut changes = changes.peekable();
        if changes.peek().is_none() {
            return;
        }
        let map = self.released.lock().unwrap_or_else(|p| p.into_inner());
        for (scope, change) in changes {
            let key = scope.to_ne_bytes();
            let mut v: abi::scope_released = map
                .lookup(&key, MapFlags::ANY)
                .ok()
                .flatten()
                .and_then(|b| from_bytes(&b))
                .unwrap_or_default();
            change(&mut v);
            if let Err(e) = map.update(&key, bytes_of(&v), MapFlags::ANY) {
                tracing::warn!(event = "scope_release_failed", scope_cgroup_id = scope, error = %e, "could not return a container's table share");
            }
        }
    }

    /// Every container's lost-record counters (cumulative).
    pub fn losses(&self) -> Vec<(u64, Losses)> {
        self.usage
            .keys()
            .filter_map(|k| {
                let scope = u64::from_ne_bytes(k.get(..8)?.try_into().ok()?);
                let v: abi::scope_usage = from_bytes(&self.usage.lookup(&k, MapFlags::ANY).ok()??)?;
                Some((
                    scope,
                    Losses {
                        records: v.lost,
                        bytes_out: v.lost_bytes_out,
                        bytes_in: v.lost_bytes_in,
                        full: v.full,
                    },
                ))
            })
            .collect()
    }

    /// A container is gone: forget its entries (after its last report).
    pub fn forget(&self, scope: u64) {
        let key = scope.to_ne_bytes();
        let _ = self.usage.delete(&key);
        let map = self.released.lock().unwrap_or_else(|p| p.into_inner());
        let _ = map.delete(&key);
    }
}
