//! `record_id`: one stable identifier per record, assigned where the record
//! is made ([`super::Record::new`]) and carried unchanged through every
//! queue, retry and spool replay. The collector uses it as the OpenSearch
//! document `_id`, so delivering a record twice stores it once (a second
//! `create` answers 409, which counts as delivered).
//!
//! Shape: `<boot>-<run>-<seq>`, all lowercase hex:
//! - `boot`: the first 16 hex digits of the kernel's boot id
//!   (`/proc/sys/kernel/random/boot_id`, random per boot): hosts and boots
//!   never share ids;
//! - `run`: CLOCK_BOOTTIME in nanoseconds when this daemon process made its
//!   first record: a restarted daemon (same boot) never reuses an id of the
//!   previous run, and two daemons on one host do not collide;
//! - `seq`: a per-run counter, in the order records are made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use nix::time::{clock_gettime, ClockId};

static PREFIX: OnceLock<String> = OnceLock::new();
static SEQ: AtomicU64 = AtomicU64::new(0);

fn prefix() -> &'static str {
    PREFIX.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().replace('-', ""))
            .unwrap_or_default();
        let boot: String = boot.chars().filter(|c| c.is_ascii_hexdigit()).take(16).collect();
        // Without a boot id (not Linux, no /proc) the run stamp alone still
        // separates runs on one host; the pid separates two daemons started
        // in the same nanosecond.
        let boot = if boot.is_empty() {
            format!("p{:x}", std::process::id())
        } else {
            boot
        };
        let run = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        format!("{boot}-{run:x}")
    })
}

/// The next id of this run.
pub fn next() -> String {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{}-{seq:x}", prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_share_the_run_prefix() {
        let a = next();
        let b = next();
        assert_ne!(a, b);
        let pa = a.rsplit_once('-').unwrap().0;
        let pb = b.rsplit_once('-').unwrap().0;
        assert_eq!(pa, pb);
        // boot (16 hex) - run (hex) - seq (hex)
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 3, "{a}");
        assert_eq!(parts[0].len(), 16, "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{a}");
    }
}
