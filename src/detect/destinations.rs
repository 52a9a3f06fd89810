//! First-seen destinations of one agent, in bounded memory: two
//! generations of 64-bit hashes, each at most [`GENERATION`] entries. When
//! the current one fills it becomes the previous one and the oldest is
//! forgotten, so an agent reaching more than ~2×GENERATION destinations
//! sees some counted again: an over-count, never a miss (an agent that
//! spreads over that many destinations is what the alert is for).

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// The sets hold outputs of the caller's keyed hasher: already uniform and
/// unknown to an agent, so they index the table as they are (hashing them
/// again with SipHash would cost a second hash per record for nothing).
#[derive(Default)]
struct AsIs(u64);

impl Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64s are hashed here (write_u64); fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Hashes = HashSet<u64, BuildHasherDefault<AsIs>>;

/// Hashes one generation holds (8 bytes each plus the set's overhead).
pub const GENERATION: usize = 512;

#[derive(Default)]
pub struct Destinations {
    current: Hashes,
    previous: Hashes,
}

impl Destinations {
    /// Remember `dest`; true when it was not seen (as far as is remembered).
    /// `hasher` is the caller's keyed hasher: an agent cannot aim
    /// collisions at it without knowing the daemon's random key.
    pub fn first_seen(&mut self, hasher: &RandomState, dest: &str) -> bool {
        let h = hasher.hash_one(dest);
        if self.current.contains(&h) {
            return false;
        }
        let known = self.previous.contains(&h);
        if self.current.len() >= GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(h);
        !known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_destination_once_and_stays_bounded() {
        let hasher = RandomState::new();
        let mut d = Destinations::default();
        assert!(d.first_seen(&hasher, "github.com"));
        assert!(!d.first_seen(&hasher, "github.com"));
        assert!(d.first_seen(&hasher, "10.0.0.1"));
        let mut new = 0;
        for i in 0..10 * GENERATION {
            new += usize::from(d.first_seen(&hasher, &format!("h{i}")));
        }
        assert_eq!(new, 10 * GENERATION);
        assert!(d.current.len() + d.previous.len() <= 2 * GENERATION);
        // The most recent ones are still remembered.
        assert!(!d.first_seen(&hasher, &format!("h{}", 10 * GENERATION - 1)));
    }
}
