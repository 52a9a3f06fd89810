//! Kernel timestamps (CLOCK_BOOTTIME, which keeps counting across suspend)
//! to wall-clock time. The offset is measured once, at start-up, by
//! bracketing one BOOTTIME read between two REALTIME reads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{clock_gettime, ClockId};

#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Wall-clock nanoseconds at boot-time zero.
    offset_ns: i128,
}

fn now_ns(clock: ClockId) -> i128 {
    clock_gettime(clock)
        .map(|ts| i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()))
        .unwrap_or(0)
}

impl BootClock {
    pub fn calibrate() -> Self {
        // The tightest bracket of a few tries wins: it bounds the error.
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..5 {
            let before = now_ns(ClockId::CLOCK_REALTIME);
            let boot = now_ns(ClockId::CLOCK_BOOTTIME);
            let after = now_ns(ClockId::CLOCK_REALTIME);
            let width = after - before;
            let offset = before + width / 2 - boot;
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        BootClock {
            offset_ns: best.map(|(_, o)| o).unwrap_or(0),
        }
    }

    pub fn to_wall(self, boot_ns: u64) -> SystemTime {
        let wall = self.offset_ns + i128::from(boot_ns);
        let wall = u64::try_from(wall.max(0)).unwrap_or(u64::MAX);
        UNIX_EPOCH + Duration::from_nanos(wall)
    }

    /// The current boot-time, for tests and the bench.
    pub fn now_boot_ns() -> u64 {
        u64::try_from(now_ns(ClockId::CLOCK_BOOTTIME)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_timestamp_taken_now_maps_to_now() {
        let clock = BootClock::calibrate();
        let wall = clock.to_wall(BootClock::now_boot_ns());
        let skew = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(50), "skew {skew:?}");
    }

    #[test]
    fn zero_is_boot_time_not_the_epoch() {
        let clock = BootClock::calibrate();
        assert!(clock.to_wall(0) > UNIX_EPOCH + Duration::from_secs(1_000_000_000));
    }
}
