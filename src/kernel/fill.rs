//! How full the ring buffer is, read from its consumer and producer position
//! pages (the layout libbpf itself maps). Read-only mappings: this never moves
//! the consumer, it only reports `producer - consumer`.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use libbpf_rs::MapHandle;

pub struct RingbufFill {
    consumer: NonNull<libc::c_void>,
    producer: NonNull<libc::c_void>,
    page: usize,
    size: u64,
}

// SAFETY: the mappings are read-only, owned by this struct, and only read
// through atomics.
unsafe impl Send for RingbufFill {}
unsafe impl Sync for RingbufFill {}

impl RingbufFill {
    pub(super) fn new(events: &MapHandle, size: u32) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = events.as_fd().as_raw_fd();
        let consumer = map_page(fd, 0, page)?;
        let producer = match map_page(fd, page, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: consumer was mapped above with this length.
                unsafe { libc::munmap(consumer.as_ptr(), page) };
                return Err(e);
            }
        };
        Ok(RingbufFill {
            consumer,
            producer,
            page,
            size: u64::from(size),
        })
    }

    /// Bytes written by the kernel and not yet consumed.
    pub fn used_bytes(&self) -> u64 {
        let load = |p: NonNull<libc::c_void>| {
            // SAFETY: the page is mapped for our lifetime and the kernel
            // updates the first u64 atomically.
            unsafe { (*p.as_ptr().cast::<AtomicU64>()).load(Ordering::Acquire) }
        };
        load(self.producer)
            .saturating_sub(load(self.consumer))
            .min(self.size)
    }

    pub fn size_bytes(&self) -> u64 {
        self.size
    }
}

impl Drop for RingbufFill {
    fn drop(&mut self) {
        // SAFETY: both pages were mapped in new() with this length.
        unsafe {
            libc::munmap(self.consumer.as_ptr(), self.page);
            libc::munmap(self.producer.as_ptr(), self.page);
        }
    }
}

fn map_page(fd: i32, offset: usize, len: usize) -> io::Result<NonNull<libc::c_void>> {
    // SAFETY: a fresh shared read-only mapping of a BPF ring buffer fd.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr).ok_or_else(|| io::Error::other("mmap returned null"))
}
