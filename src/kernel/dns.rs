//! The kernel's DNS cache as user space keeps it: expired answers are
//! deleted here (the map is a plain hash, so nothing is evicted silently).

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::abi;
use super::attach::KernelError;
use super::pod::from_bytes;

pub struct DnsCache {
    map: MapHandle,
}

impl DnsCache {
    pub fn new(map: &MapHandle) -> Result<Self, KernelError> {
        let map = MapHandle::try_from(map).map_err(|source| KernelError::Bpf {
            what: "dns_cache handle".into(),
            source,
        })?;
        Ok(DnsCache { map })
    }

    /// Delete every answer that expired before `now_ns` (boot time);
    /// returns how many.
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
        expired
            .iter()
            .filter(|k| self.map.delete(k).is_ok())
            .count()
    }
}
