//! The TCP flow promoter (bpf/promote.bpf.c, issue 12): a TCP flow lives
//! in its socket's storage until it is a second old; running this iterator
//! over `sock_owners` gives every such flow its `flows` entry. `FlowMaps`
//! runs it before each read of the open flows.

use std::io::Read;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Iter, IterOpts, Link, MapHandle, MapIterOpts};

use super::attach::PinLayout;
use super::error::{bpf_err, KernelError};
use super::promote_skel::PromoteSkelBuilder;
use super::sweep::reuse_pinned_maps;

/// The loaded promoter; its link keeps the program alive.
#[derive(Debug)]
pub struct Promoter {
    link: Link,
}

impl Promoter {
    /// Load the promoter against `pins`' maps.
    pub fn load(pins: &PinLayout) -> Result<Self, KernelError> {
        let mut storage = MaybeUninit::uninit();
        let mut open = PromoteSkelBuilder::default()
            .open(&mut storage)
            .map_err(bpf_err("open promote BPF object"))?;
        reuse_pinned_maps(open.open_object_mut(), pins)?;
        let skel = open.load().map_err(bpf_err("load the TCP flow promoter"))?;
        let owners = MapHandle::from_pinned_path(pins.maps().join("sock_owners"))
            .map_err(bpf_err("open pinned map sock_owners"))?;
        let link = skel
            .progs
            .promote_tcp
            .attach_iter_with_opts(IterOpts::Map(MapIterOpts::from_fd(owners.as_fd())))
            .map_err(bpf_err("attach the TCP flow promoter"))?;
        Ok(Promoter { link })
    }

    /// Can this kernel load the promoter (a BPF map-element iterator)?
    /// `Err` says why not. Loads it against maps of its own, keeps nothing.
    pub fn probe() -> Result<(), String> {
        let mut storage = MaybeUninit::uninit();
        let open = PromoteSkelBuilder::default()
            .open(&mut storage)
            .map_err(|e| format!("open: {e}"))?;
        open.load().map(drop).map_err(|e| e.to_string())
    }

    /// Promote every TCP flow older than a second (one pass; blocking).
    pub fn run(&self) -> Result<(), KernelError> {
        let mut iter = Iter::new(&self.link).map_err(bpf_err("create the promoter iterator"))?;
        let mut sink = Vec::new();
        iter.read_to_end(&mut sink)
            .map_err(|source| KernelError::Io {
                what: "run the TCP flow promoter".into(),
                source,
            })?;
        Ok(())
    }
}
