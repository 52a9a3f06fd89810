//! Attribution stage: who sent it. Adds identity fields to a record before
//! any sink sees it; sinks never look anything up.

mod cgroup;

pub use cgroup::{container_id_from_path, CgroupIndex};

use crate::record::{key, Record};

/// Attributes egress records by the cgroup the kernel reported.
pub struct Attributor {
    cgroups: CgroupIndex,
}

impl Attributor {
    pub fn new(cgroups: CgroupIndex) -> Self {
        Attributor { cgroups }
    }

    /// `scope_cgroup_id` (the enrolled container cgroup) wins over the leaf:
    /// a container's own sub-cgroups are the container.
    pub fn attribute(&mut self, record: &mut Record, cgroup_id: u64, scope_cgroup_id: u64) {
        let id = if scope_cgroup_id != 0 {
            scope_cgroup_id
        } else {
            cgroup_id
        };
        if let Some(container) = self
            .cgroups
            .path_of(id)
            .and_then(|p| container_id_from_path(&p.to_string_lossy()))
        {
            record.set(key::CONTAINER_ID, container);
        }
    }
}
