//! The kernel module's one error type, and the helpers every file here uses
//! to give a libbpf error its context.

use std::io;
use std::path::PathBuf;

use libbpf_rs::MapHandle;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("cgroup directory {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("ring buffer size {0} is not a power of two of at least 4096 bytes")]
    RingbufSize(u32),
    #[error("flow table size {0} is outside 1024..=4194304 entries")]
    FlowTableSize(u32),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        source: libbpf_rs::Error,
    },
}

/// `map_err(bpf_err("what was being done"))`: a libbpf error with its context.
pub(super) fn bpf_err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Bpf { what, source }
}

/// Another handle on a map this module opened (each typed group owns its own).
pub(super) fn dup_handle(map: &MapHandle, what: &str) -> Result<MapHandle, KernelError> {
    MapHandle::try_from(map).map_err(bpf_err(format!("{what} handle")))
}
