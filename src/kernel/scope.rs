//! The set of container cgroups in scope (`scoped_cgroups`), written by the
//! attribution stage as containers start and die. In SCOPE_ENROLLED mode the
//! kernel records and enforces only tasks under an enrolled cgroup.

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::error::{bpf_err, dup_handle, KernelError};

pub struct ScopedCgroups {
    map: MapHandle,
}

impl ScopedCgroups {
    pub(super) fn new(map: &MapHandle) -> Result<Self, KernelError> {
        Ok(ScopedCgroups {
            map: dup_handle(map, "scoped_cgroups")?,
        })
    }

    pub fn enroll(&self, cgroup_id: u64) -> Result<(), KernelError> {
        self.map
            .update(&cgroup_id.to_ne_bytes(), &[1u8], MapFlags::ANY)
            .map_err(bpf_err(format!("enroll cgroup {cgroup_id}")))
    }

    /// Removing an id that is not there is not an error.
    pub fn remove(&self, cgroup_id: u64) {
        let _ = self.map.delete(&cgroup_id.to_ne_bytes());
    }

    /// Every enrolled id (for resynchronisation after a restart).
    pub fn ids(&self) -> Vec<u64> {
        self.map
            .keys()
            .filter_map(|k| {
                k.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_ne_bytes)
            })
            .collect()
    }
}
