//! The in-band loss record: `clawker.source`=`overseer`,
//! `event`=`records_lost`, one per container per interval in which it lost
//! records in the kernel (`lost_*`, by reason, summed in `lost_total`) or
//! found a kernel table full (`map_full_*`: no record lost, detail missing).
//! The OTLP sink writes the same record for what its buffer refused of a
//! container during a collector outage (`lost_spool_full`,
//! [`Record::from_sink_loss`]).

use std::time::{Duration, SystemTime};

use super::{key, Record, Severity, Source, Value};
use crate::capture::ContainerLoss;
use crate::kernel::abi::scope_full as f;
use crate::kernel::abi::scope_loss as l;

/// Each per-reason field of a `records_lost` record and its metric reason.
pub const LOSS_FIELDS: [(&str, &str); 4] = [
    (key::LOST_RATE_LIMITED, "rate_limited"),
    (key::LOST_RINGBUF_FULL, "ringbuf_full"),
    (key::LOST_FLOW_NOT_TRACKED, "flow_not_tracked"),
    (key::LOST_SPOOL_FULL, "spool_full"),
];

/// The `event` value of a loss record.
pub const RECORDS_LOST: &str = "records_lost";

impl Record {
    pub fn from_loss(loss: &ContainerLoss) -> Self {
        let at = |i: u32| loss.lost.records.get(i as usize).copied().unwrap_or(0);
        let full = |i: u32| loss.lost.full.get(i as usize).copied().unwrap_or(0);
        let total: u64 = loss.lost.records.iter().sum();
        let body = match total {
            0 => format!(
                "no record lost; kernel tables full over {} ms (detail missing)",
                loss.interval.as_millis()
            ),
            _ => format!(
                "{total} records lost in the kernel over {} ms",
                loss.interval.as_millis()
            ),
        };
        let mut r = Record::new(loss.time, Source::Overseer)
            .with_severity(Severity::Warn)
            .with_body(body);
        r.set(key::EVENT, RECORDS_LOST);
        r.set(key::CGROUP_ID, loss.scope_cgroup_id);
        r.set(key::LOST_TOTAL, total);
        r.set(key::LOST_RATE_LIMITED, at(l::SCOPE_LOSS_RATE_LIMITED));
        r.set(key::LOST_RINGBUF_FULL, at(l::SCOPE_LOSS_RINGBUF_FULL));
        r.set(key::LOST_FLOW_NOT_TRACKED, at(l::SCOPE_LOSS_FLOW_QUOTA));
        r.set(key::MAP_FULL_FLOWS, full(f::SCOPE_FULL_FLOWS));
        r.set(key::MAP_FULL_DNS, full(f::SCOPE_FULL_DNS));
        r.set(key::LOST_BYTES_OUT, loss.lost.bytes_out);
        r.set(key::LOST_BYTES_IN, loss.lost.bytes_in);
        r.set(
            key::INTERVAL_MS,
            u64::try_from(loss.interval.as_millis()).unwrap_or(u64::MAX),
        );
        r
    }
}

impl Record {
    /// The OTLP sink's loss report for one container: `lost` of its
    /// records refused by the sink's buffer over `interval` (`spool_full`).
    /// `identity`: the container's fields (`cgroup_id`, `container_id`,
    /// `agent`, ...) as its refused records carried them.
    pub fn from_sink_loss(
        time: SystemTime,
        identity: &[(&'static str, Value)],
        lost: u64,
        interval: Duration,
    ) -> Self {
        let mut r = Record::new(time, Source::Overseer)
            .with_severity(Severity::Warn)
            .with_body(format!(
                "{lost} records lost in the OTLP sink's buffer (collector away, spool full or over this container's fair share) over {} ms",
                interval.as_millis()
            ));
        r.set(key::EVENT, RECORDS_LOST);
        for (k, v) in identity {
            r.set(k, v.clone());
        }
        r.set(key::LOST_TOTAL, lost);
        r.set(key::LOST_SPOOL_FULL, lost);
        r.set(
            key::INTERVAL_MS,
            u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        );
        r
    }
}
