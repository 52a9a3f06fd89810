//! The set of container cgroups in scope (`scoped_cgroups`), written by the
//! attribution stage as containers start and die. In SCOPE_ENROLLED mode the
//! kernel records and enforces only tasks under an enrolled cgroup.

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::attach::KernelError;

pub struct ScopedCgroups {
    map: MapHandle,
}

impl ScopedCgroups {
    pub fn new(map: &MapHandle) -> Result<Self, KernelError> {
        let map = MapHandle::try_from(map).map_err(|source| KernelError::Bpf {
            what: "scoped_cgroups handle".into(),
            source,
        })?;
        Ok(ScopedCgroups { map })
    }

    pub fn enroll(&self, cgroup_id: u64) -> Result<(), KernelError> {
        self.map
            .update(&cgroup_id.to_ne_bytes(), &[1u8], MapFlags::ANY)
            .map_err(|source| KernelError::Bpf {
                what: format!("enroll cgroup {cgroup_id}"),
                source,
            })
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
