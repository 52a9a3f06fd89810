//! `record_id`: one stable identifier per record, assigned where the record
//! is made ([`super::Record::new`]) and carried unchanged through every
//! queue, retry and spool replay. The collector uses it as the OpenSearch
//! document `_id`, so delivering a record twice stores it once (a second
//! `create` answers 409, which counts as delivered).
//!
//! Shape: `<run>-<seq>`, lowercase hex:
//! - `run`: 64 random bits drawn once per daemon process (`/dev/urandom`):
//!   hosts, boots and restarts never share ids, and nobody can PREDICT an
//!   id. That matters: a document created first under a future id would
//!   make the real record's `create` answer 409 (= "delivered"), i.e.
//!   suppress it. A boot id + sequence would be guessable from inside a
//!   container (`/proc/sys/kernel/random/boot_id` is not namespaced);
//! - `seq`: a per-run counter, in the order records are made.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use compact_str::CompactString;
use nix::time::{clock_gettime, ClockId};

static PREFIX: OnceLock<String> = OnceLock::new();
static SEQ: AtomicU64 = AtomicU64::new(0);

fn prefix() -> &'static str {
    PREFIX.get_or_init(|| {
        let mut buf = [0u8; 8];
        let random = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut buf))
            .is_ok();
        let run = if random {
            u64::from_le_bytes(buf)
        } else {
            // No /dev/urandom: still unique per run (not unpredictable).
            let t = clock_gettime(ClockId::CLOCK_BOOTTIME)
                .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
                .unwrap_or(0);
            t ^ (u64::from(std::process::id()) << 40)
        };
        format!("{run:016x}")
    })
}

/// The next id of this run (22 bytes until 2^20 records, held inline).
pub fn next() -> CompactString {
    format_id(prefix(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// `{prefix}-{seq:x}`, written by hand (no formatter per record).
fn format_id(prefix: &str, seq: u64) -> CompactString {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = seq;
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let mut id = CompactString::with_capacity(prefix.len() + 1 + hex.len() - i);
    id.push_str(prefix);
    id.push('-');
    // ASCII hex digits.
    id.push_str(std::str::from_utf8(&hex[i..]).unwrap_or_default());
    id
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
        // run (16 hex) - seq (hex)
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 2, "{a}");
        assert_eq!(parts[0].len(), 16, "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{a}");
    }

    #[test]
    fn the_sequence_is_lowercase_hex_without_padding() {
        for seq in [0u64, 1, 0xf, 0x10, 0xdead_beef, u64::MAX] {
            let id = format_id(prefix(), seq);
            assert_eq!(id, format!("{}-{seq:x}", prefix()));
        }
    }
}
