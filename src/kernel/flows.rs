//! The flow table as user space sees it: read every open flow, take (read
//! and delete, atomically) a flow that ended, and keep the per-flow
//! baseline of what interim records already reported.

use std::cell::RefCell;
use std::collections::HashSet;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::abi;
use super::attach::KernelError;
use super::pod::{bytes_of, from_bytes};

pub struct FlowMaps {
    flows: MapHandle,
    reported: MapHandle,
    /// Keys that have a baseline in `reported` (only this daemon writes
    /// it): most flows never get an interim record, and this saves them two
    /// syscalls each at their end.
    baselined: RefCell<HashSet<Vec<u8>>>,
}

impl FlowMaps {
    pub fn new(flows: &MapHandle, reported: &MapHandle) -> Result<Self, KernelError> {
        let dup = |m: &MapHandle, what: &str| {
            MapHandle::try_from(m).map_err(|source| KernelError::Bpf {
                what: format!("{what} handle"),
                source,
            })
        };
        let reported = dup(reported, "flow_reported")?;
        // Baselines a previous daemon left (a restart) are still valid.
        let baselined = RefCell::new(reported.keys().collect());
        Ok(FlowMaps {
            flows: dup(flows, "flows")?,
            reported,
            baselined,
        })
    }

    /// Every open flow. Entries that vanish while iterating are skipped.
    pub fn open_flows(&self) -> Vec<(abi::flow_key, abi::flow_value)> {
        self.flows
            .keys()
            .filter_map(|k| {
                let key: abi::flow_key = from_bytes(&k)?;
                let value = self.flows.lookup(&k, MapFlags::ANY).ok().flatten()?;
                Some((key, from_bytes(&value)?))
            })
            .collect()
    }

    /// Remove a flow and return its final state; `None` if another path
    /// (the kernel's TCP close) already ended it. Exactly one taker wins.
    pub fn take(&self, key: &abi::flow_key) -> Option<abi::flow_value> {
        let value = self.flows.lookup_and_delete(bytes_of(key)).ok().flatten()?;
        from_bytes(&value)
    }

    pub fn reported(&self, key: &abi::flow_key) -> Option<abi::flow_reported> {
        if !self.baselined.borrow().contains(bytes_of(key)) {
            return None;
        }
        let value = self
            .reported
            .lookup(bytes_of(key), MapFlags::ANY)
            .ok()
            .flatten()?;
        from_bytes(&value)
    }

    pub fn set_reported(
        &self,
        key: &abi::flow_key,
        value: &abi::flow_reported,
    ) -> Result<(), KernelError> {
        self.reported
            .update(bytes_of(key), bytes_of(value), MapFlags::ANY)
            .map_err(|source| KernelError::Bpf {
                what: "update flow_reported".into(),
                source,
            })?;
        self.baselined.borrow_mut().insert(bytes_of(key).to_vec());
        Ok(())
    }

    /// Drop the baseline of a flow that ended (absent is fine).
    pub fn forget_reported(&self, key: &abi::flow_key) {
        if self.baselined.borrow_mut().remove(bytes_of(key)) {
            let _ = self.reported.delete(bytes_of(key));
        }
    }
}
