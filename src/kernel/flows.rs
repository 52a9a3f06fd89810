//! The flow table as user space sees it: read every open flow, take (read
//! and delete, atomically) a flow that ended, and keep the per-flow
//! baseline of what interim records already reported.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::abi;
use super::error::{bpf_err, dup_handle, KernelError};
use super::pod::{bytes_of, from_bytes};
use super::usage::ScopeUsage;

pub struct FlowMaps {
    flows: MapHandle,
    reported: MapHandle,
    /// Keys that have a baseline in `reported` (only this daemon writes
    /// it): most flows never get an interim record, and this saves them two
    /// syscalls each at their end.
    baselined: RefCell<HashSet<Vec<u8>>>,
    /// Entries taken per scope cgroup since the last `flush_released`.
    taken: RefCell<HashMap<u64, (u64, u64)>>,
    usage: Arc<ScopeUsage>,
}

impl FlowMaps {
    pub(super) fn new(
        flows: &MapHandle,
        reported: &MapHandle,
        usage: Arc<ScopeUsage>,
    ) -> Result<Self, KernelError> {
        let reported = dup_handle(reported, "flow_reported")?;
        // Baselines a previous daemon left (a restart) are still valid.
        let baselined = RefCell::new(reported.keys().collect());
        Ok(FlowMaps {
            flows: dup_handle(flows, "flows")?,
            reported,
            baselined,
            taken: RefCell::default(),
            usage,
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
        let value: abi::flow_value = from_bytes(&value)?;
        self.taken
            .borrow_mut()
            .entry(value.scope_cgroup_id)
            .or_default()
            .0 += 1;
        Some(value)
    }

    /// Give the containers whose flows were taken their table share back.
    pub fn flush_released(&self) {
        let taken = std::mem::take(&mut *self.taken.borrow_mut());
        self.usage.release(&taken);
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
            .map_err(bpf_err("update flow_reported"))?;
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
