//! The kernel's DNS cache as user space keeps it: expired answers are
//! deleted here (the map is a plain hash, so nothing is evicted silently).

use std::collections::HashMap;
use std::sync::Arc;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::abi;
use super::attach::KernelError;
use super::pod::from_bytes;
use super::usage::ScopeUsage;

pub struct DnsCache {
    map: MapHandle,
    usage: Arc<ScopeUsage>,
}

impl DnsCache {
    pub fn new(map: &MapHandle, usage: Arc<ScopeUsage>) -> Result<Self, KernelError> {
        let map = MapHandle::try_from(map).map_err(|source| KernelError::Bpf {
            what: "dns_cache handle".into(),
            source,
        })?;
        Ok(DnsCache { map, usage })
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
}
