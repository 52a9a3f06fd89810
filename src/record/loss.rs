//! The in-band loss record: `clawker.source`=`overseer`,
//! `event`=`records_lost`, one per container per interval in which it lost
//! records in the kernel, with the counts by reason.

use super::{key, Record, Severity, Source};
use crate::capture::ContainerLoss;
use crate::kernel::abi::scope_loss as l;

/// Each per-reason field of a `records_lost` record and its metric reason.
pub const LOSS_FIELDS: [(&str, &str); 4] = [
    (key::LOST_RATE_LIMITED, "rate_limited"),
    (key::LOST_RINGBUF_FULL, "ringbuf_full"),
    (key::LOST_FLOW_NOT_TRACKED, "flow_not_tracked"),
    (key::LOST_DNS_NOT_CACHED, "dns_not_cached"),
];

/// The `event` value of a loss record.
pub const RECORDS_LOST: &str = "records_lost";

impl Record {
    pub fn from_loss(loss: &ContainerLoss) -> Self {
        let at = |i: u32| loss.lost.records.get(i as usize).copied().unwrap_or(0);
        let total: u64 = loss.lost.records.iter().sum();
        let mut r = Record::new(loss.time, Source::Overseer)
            .with_severity(Severity::Warn)
            .with_body(format!(
                "{total} records lost in the kernel over {} ms",
                loss.interval.as_millis()
            ));
        r.set(key::EVENT, RECORDS_LOST);
        r.set(key::CGROUP_ID, loss.scope_cgroup_id);
        r.set(key::LOST_TOTAL, total);
        r.set(key::LOST_RATE_LIMITED, at(l::SCOPE_LOSS_RATE_LIMITED));
        r.set(key::LOST_RINGBUF_FULL, at(l::SCOPE_LOSS_RINGBUF_FULL));
        r.set(key::LOST_FLOW_NOT_TRACKED, at(l::SCOPE_LOSS_FLOW_QUOTA));
        r.set(key::LOST_DNS_NOT_CACHED, at(l::SCOPE_LOSS_DNS_QUOTA));
        r.set(key::LOST_BYTES_OUT, loss.lost.bytes_out);
        r.set(key::LOST_BYTES_IN, loss.lost.bytes_in);
        r.set(
            key::INTERVAL_MS,
            u64::try_from(loss.interval.as_millis()).unwrap_or(u64::MAX),
        );
        r
    }
}
