//! The kernel's DNS tables as user space keeps them: expired answers
//! (`dns_cache`) and queries that never got an answer (`dns_pending`) are
//! deleted here (both are plain hashes, so nothing is evicted silently).

use std::collections::HashMap;
use std::sync::Arc;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::abi;
use super::error::{dup_handle, KernelError};
use super::pod::from_bytes;
use super::usage::ScopeUsage;

pub struct DnsCache {
    map: MapHandle,
    pending: MapHandle,
    usage: Arc<ScopeUsage>,
}

impl DnsCache {
    pub(super) fn new(
        map: &MapHandle,
        pending: &MapHandle,
        usage: Arc<ScopeUsage>,
    ) -> Result<Self, KernelError> {
        Ok(DnsCache {
            map: dup_handle(map, "dns_cache")?,
            pending: dup_handle(pending, "dns_pending")?,
            usage,
        })
    }

    /// Delete every answer that expired before `now_ns` (boot time) and
    /// give each container its cache share back; returns how many.
    pub fn expire(&self, now_ns: u64) -> usize {
        let expired: Vec<Vec<u8>> = self
            .map
            .keys()
            .filter(|k| {
                self.map
                    .lookup(k, MapFlags::ANY)
                    .ok()
                    .flatten()
                    .and_then(|v| from_bytes::<abi::dns_value>(&v))
                    .is_some_and(|v| v.expires_ns < now_ns)
            })
            .collect();
        let mut released: HashMap<u64, (u64, u64)> = HashMap::new();
        for k in &expired {
            if self.map.delete(k).is_ok() {
                if let Some(key) = from_bytes::<abi::dns_key>(k) {
                    released.entry(key.scope_cgroup_id).or_default().1 += 1;
                }
            }
        }
        self.usage.release(&released);
        released.values().map(|(_, n)| *n as usize).sum()
    }

    /// Delete every query that waited longer than DNS_PENDING_TIMEOUT_S
    /// (its answer, if one still comes, is unsolicited); returns how many.
    /// The kernel deletes the answered ones itself.
    pub fn expire_pending(&self, now_ns: u64) -> usize {
        let timeout = u64::from(abi::DNS_PENDING_TIMEOUT_S) * 1_000_000_000;
        let mut released: HashMap<u64, u64> = HashMap::new();
        let stale: Vec<(Vec<u8>, u64)> = self
            .pending
            .keys()
            .filter_map(|k| {
                let v = self.pending.lookup(&k, MapFlags::ANY).ok().flatten()?;
                let v = from_bytes::<abi::dns_pending_value>(&v)?;
                (v.sent_ns.saturating_add(timeout) < now_ns).then_some((k, v.scope_cgroup_id))
            })
            .collect();
        for (k, scope) in &stale {
            // The kernel may have deleted it meanwhile (a late answer):
            // only the deleter gives the share back.
            if self.pending.delete(k).is_ok() {
                *released.entry(*scope).or_default() += 1;
            }
        }
        self.usage.release_pending(&released);
        released.values().sum::<u64>() as usize
    }
}
