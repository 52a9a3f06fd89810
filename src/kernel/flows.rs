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
use super::promote::Promoter;
use super::usage::ScopeUsage;

/// Entries per `BPF_MAP_LOOKUP_BATCH` of the flow table.
const OPEN_FLOWS_BATCH: u32 = 4096;

pub struct FlowMaps {
    flows: MapHandle,
    /// Gives TCP flows older than a second their `flows` entry; `None`
    /// where the kernel refuses it (the programs then table TCP flows at
    /// connect, `egress_config.tcp_table_at_connect`).
    promoter: Option<Arc<Promoter>>,
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
        promoter: Option<Arc<Promoter>>,
        usage: Arc<ScopeUsage>,
    ) -> Result<Self, KernelError> {
        let reported = dup_handle(reported, "flow_reported")?;
        // Baselines a previous daemon left (a restart) are still valid.
        let baselined = RefCell::new(reported.keys().collect());
        Ok(FlowMaps {
            flows: dup_handle(flows, "flows")?,
            promoter,
            reported,
            baselined,
            taken: RefCell::default(),
            usage,
        })
    }

    /// Every open flow (a TCP flow from its first second or two on: the
    /// kernel keeps younger ones in their socket's storage, and the
    /// promoter run first copies the older ones in). Entries that vanish
    /// while iterating are skipped. Read in batches (`BPF_MAP_LOOKUP_BATCH`,
    /// 4,096 entries a syscall; the kernel walks the buckets, so concurrent
    /// inserts and deletes are safe): the 1 s sweep of a full table was two
    /// syscalls per entry.
    pub fn open_flows(&self) -> Vec<(abi::flow_key, abi::flow_value)> {
        self.each_open_flow().collect()
    }

    /// [`Self::open_flows`] as they are read: one batch held at a time
    /// (4,096 entries, ~1 MiB), not the whole table (100,000 open flows
    /// were a 26 MiB vector every second). The caller may `take` what it
    /// has seen while iterating (the batch cursor is a bucket, and a taken
    /// entry's bucket has been read).
    pub fn each_open_flow(
        &self,
    ) -> Box<dyn Iterator<Item = (abi::flow_key, abi::flow_value)> + '_> {
        if let Some(Err(e)) = self.promoter.as_ref().map(|p| p.run()) {
            tracing::warn!(event = "flow_promote_failed", error = %e, "young TCP flows not read");
        }
        match self
            .flows
            .lookup_batch(OPEN_FLOWS_BATCH, MapFlags::ANY, MapFlags::ANY)
        {
            Ok(batches) => {
                Box::new(batches.filter_map(|(k, v)| Some((from_bytes(&k)?, from_bytes(&v)?))))
            }
            // A kernel without batch ops for hash maps: one entry at a time.
            Err(_) => Box::new(self.open_flows_one_by_one()),
        }
    }

    fn open_flows_one_by_one(&self) -> impl Iterator<Item = (abi::flow_key, abi::flow_value)> + '_ {
        self.flows.keys().filter_map(|k| {
            let key: abi::flow_key = from_bytes(&k)?;
            let value = self.flows.lookup(&k, MapFlags::ANY).ok().flatten()?;
            Some((key, from_bytes(&value)?))
        })
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
