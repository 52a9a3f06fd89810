//! Per-container fairness of the OTLP sink's buffer (memory queue + disk
//! spool) while the collector is away: one container that floods cannot
//! take the whole spool and leave every other container's records refused
//! (issue 11, docs/SECURITY.md "Spool fairness").
//!
//! The [`Ledger`] counts the bytes each [`Tenant`] holds in the buffer (one
//! hash map of counters, no disk scan per record). Admission of a record
//! going to the spool:
//! - the daemon's own records (`overseer`: loss reports, lifecycle, policy;
//!   `cp`) are admitted while the buffer has room at all, and containers may
//!   not use the last [`RESERVE_DIVISOR`]th of it: a flood never starves
//!   the records that report it;
//! - below half full, every container is admitted (no pressure);
//! - above half full, a container is admitted only within its fair share:
//!   (capacity − reserve) / (containers holding data + 1), at least
//!   [`FLOOR_BYTES`]. The "+ 1" keeps one share for a container not heard
//!   from yet, so a lone flooder stops near half and a quiet container that
//!   speaks up later still finds room.
//!
//! A refused record is lost, counted `spool_full` and attributed to its
//! container (the sink's in-band `records_lost` record, [`Pending`]).

use std::fmt::Write as _;
use std::hash::BuildHasher;

use prost::encoding::{decode_key, decode_varint, WireType};

use crate::fast_hash::HashMap;
use crate::record::{key, Record, Source, Value};

/// The daemon's class may use the whole buffer; containers all but this
/// fraction of it.
pub const RESERVE_DIVISOR: u64 = 16;
/// A container's share never falls below this (about a hundred records).
pub const FLOOR_BYTES: u64 = 64 << 10;

/// Who a record's buffer space is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// The daemon's own records: loss reports, audit, control plane.
    Daemon,
    /// A container, by a hash of its id (Docker's, not the container's
    /// choice; its sub-cgroups are the same container).
    Container(u64),
    /// A cgroup no container was found for (`--scope all`, a test cgroup).
    Cgroup(u64),
}

/// The id [`Ledger::snapshot`] hashes to tell its build's hashes apart.
const HASH_PROBE: &[u8] = b"clawker-egress ledger probe";

fn container_hash(id: &[u8]) -> u64 {
    // Fixed seed: the same id is the same tenant in every run (the ledger
    // is rebuilt from the spool's bytes on open).
    foldhash::fast::FixedState::with_seed(0x5eed_c1a3_e6e5_5001).hash_one(id)
}

impl Tenant {
    /// The tenant of a record about to be queued.
    pub fn of(r: &Record) -> Tenant {
        match r.source {
            Source::Overseer | Source::ControlPlane => Tenant::Daemon,
            Source::Egress | Source::Exec => match r.get_str(key::CONTAINER_ID) {
                Some(c) => Tenant::Container(container_hash(c.as_bytes())),
                None => Tenant::Cgroup(r.get_int(key::CGROUP_ID).unwrap_or(0) as u64),
            },
        }
    }

    /// The tenant of an encoded OTLP `LogRecord` (the spool's payload), by
    /// the same rule as [`Tenant::of`]: its `clawker.source`, `container_id`
    /// and `cgroup_id` attributes. Walks the bytes, allocates nothing.
    pub fn of_encoded(buf: &[u8]) -> Tenant {
        let mut daemon = false;
        let mut container = None;
        let mut cgroup = 0u64;
        each_attribute(buf, |k, v| match (k, v) {
            (b"clawker.source", Attr::Str(s)) => daemon = s == b"overseer" || s == b"cp",
            (b"container_id", Attr::Str(s)) => container = Some(container_hash(s)),
            (b"cgroup_id", Attr::Int(n)) => cgroup = n,
            _ => {}
        });
        match (daemon, container) {
            (true, _) => Tenant::Daemon,
            (false, Some(h)) => Tenant::Container(h),
            (false, None) => Tenant::Cgroup(cgroup),
        }
    }
}

enum Attr<'a> {
    Str(&'a [u8]),
    Int(u64),
    Other,
}

/// Calls `f` with each attribute (field 6, `KeyValue`) of a `LogRecord`;
/// stops quietly at bytes that do not parse (a corrupt frame is caught by
/// the replay's full decode).
fn each_attribute(mut buf: &[u8], mut f: impl FnMut(&[u8], Attr)) {
    while !buf.is_empty() {
        let Ok((tag, wt)) = decode_key(&mut buf) else {
            return;
        };
        let Some(field) = take(&mut buf, wt) else {
            return;
        };
        if tag == 6 {
            if let Some((k, v)) = key_value(field) {
                f(k, v);
            }
        }
    }
}

/// Skips one field of wire type `wt`; returns a length-delimited one's bytes
/// (empty for the others).
fn take<'a>(buf: &mut &'a [u8], wt: WireType) -> Option<&'a [u8]> {
    let n = match wt {
        WireType::Varint => {
            decode_varint(buf).ok()?;
            return Some(&[]);
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => usize::try_from(decode_varint(buf).ok()?).ok()?,
        WireType::StartGroup | WireType::EndGroup => return None,
    };
    if buf.len() < n {
        return None;
    }
    let (field, rest) = buf.split_at(n);
    *buf = rest;
    Some(field)
}

fn key_value(mut buf: &[u8]) -> Option<(&[u8], Attr<'_>)> {
    let mut k: &[u8] = &[];
    let mut v = Attr::Other;
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf).ok()?;
        let field = take(&mut buf, wt)?;
        match tag {
            1 => k = field,
            2 => v = any_value(field)?,
            _ => {}
        }
    }
    Some((k, v))
}

fn any_value(mut buf: &[u8]) -> Option<Attr<'_>> {
    let mut v = Attr::Other;
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf).ok()?;
        if tag == 3 && wt == WireType::Varint {
            v = Attr::Int(decode_varint(&mut buf).ok()?);
            continue;
        }
        let field = take(&mut buf, wt)?;
        if tag == 1 && wt == WireType::LengthDelimited {
            v = Attr::Str(field);
        }
    }
    Some(v)
}

/// Why a record was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The container already holds its fair share of a filling buffer.
    OverShare,
    /// No room left for containers (the daemon's reserve excepted).
    Full,
}

/// Without a spool, a container's share of the memory queue never falls
/// below this many records.
pub const FLOOR_RECORDS: u64 = 128;

/// What each tenant holds (spool frame bytes, or records of a memory queue
/// that is the whole buffer), and the decision to admit more.
#[derive(Debug)]
pub struct Ledger {
    /// The spool's bound (or the memory queue's, in records).
    spool_capacity: u64,
    /// A container's share never falls below this.
    floor: u64,
    /// Bytes held in the memory queue (counted in `held` too); they add to
    /// the capacity: the memory queue is bounded on its own, in records.
    mem: u64,
    total: u64,
    held: HashMap<Tenant, u64>,
    /// Containers (not the daemon) holding anything.
    holders: u64,
}

impl Ledger {
    /// Shares of a disk spool of `spool_capacity` bytes (and of the memory
    /// queue in front of it), in frame bytes.
    pub fn new(spool_capacity: u64) -> Self {
        Self::with_floor(spool_capacity, FLOOR_BYTES)
    }

    /// Shares of a memory queue of `queue_records` records that is the
    /// whole buffer (no spool), in records: each record costs 1, added
    /// with `mem = false` (the queue's bound is the capacity).
    pub fn records(queue_records: u64) -> Self {
        Self::with_floor(queue_records, FLOOR_RECORDS)
    }

    fn with_floor(spool_capacity: u64, floor: u64) -> Self {
        Ledger {
            spool_capacity,
            floor,
            mem: 0,
            total: 0,
            held: HashMap::default(),
            holders: 0,
        }
    }

    fn capacity(&self) -> u64 {
        self.spool_capacity + self.mem
    }

    fn reserve(&self) -> u64 {
        (self.spool_capacity / RESERVE_DIVISOR).max(1)
    }

    /// Bytes held in the memory queue.
    pub fn mem(&self) -> u64 {
        self.mem
    }

    /// Everything held (frame bytes, or records without a spool).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// What each tenant holds, as text for [`Ledger::restore`]: kept beside
    /// a cleanly closed spool, so that the next run need not read the whole
    /// spool to count it. First `h <probe>`: what this build's container
    /// hash makes of a fixed id (another build's hashes name other
    /// tenants); then one line per tenant: `d|c|g <id> <bytes>`.
    pub fn snapshot(&self) -> String {
        let mut out = format!("h {}\n", container_hash(HASH_PROBE));
        for (t, bytes) in &self.held {
            let (kind, id) = match t {
                Tenant::Daemon => ('d', 0),
                Tenant::Container(h) => ('c', *h),
                Tenant::Cgroup(id) => ('g', *id),
            };
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{kind} {id} {bytes}");
        }
        out
    }

    /// A ledger of a spool of `spool_capacity` bytes holding what
    /// [`Ledger::snapshot`] of this build wrote; `None` for any other text
    /// (another build's hashes, an entry of 0 bytes, a repeated tenant, a
    /// total past `u64`).
    pub fn restore(spool_capacity: u64, text: &str) -> Option<Ledger> {
        let mut ledger = Ledger::new(spool_capacity);
        let mut lines = text.lines();
        if lines.next()? != format!("h {}", container_hash(HASH_PROBE)) {
            return None;
        }
        for line in lines {
            let mut parts = line.split(' ');
            let (kind, id, bytes) = (parts.next()?, parts.next()?, parts.next()?);
            let (id, bytes) = (id.parse::<u64>().ok()?, bytes.parse::<u64>().ok()?);
            let t = match kind {
                "d" => Tenant::Daemon,
                "c" => Tenant::Container(id),
                "g" => Tenant::Cgroup(id),
                _ => return None,
            };
            if parts.next().is_some() || bytes == 0 || ledger.held(t) != 0 {
                return None;
            }
            ledger.total.checked_add(bytes)?;
            ledger.add(t, bytes, false);
        }
        Some(ledger)
    }

    pub fn held(&self, t: Tenant) -> u64 {
        self.held.get(&t).copied().unwrap_or(0)
    }

    /// Containers holding data now.
    pub fn holders(&self) -> u64 {
        self.holders
    }

    /// May `t` add `bytes` to the spool? (The spool's own bound is checked
    /// by the spool: this decides who gets the room, not whether there is.)
    pub fn admit(&self, t: Tenant, bytes: u64) -> Result<(), Refusal> {
        let capacity = self.capacity();
        let after = self.total + bytes;
        if t == Tenant::Daemon {
            return if after <= capacity {
                Ok(())
            } else {
                Err(Refusal::Full)
            };
        }
        let limit = capacity.saturating_sub(self.reserve());
        if after > limit {
            return Err(Refusal::Full);
        }
        if after <= capacity / 2 {
            return Ok(());
        }
        let mine = self.held(t);
        let holders = self.holders + u64::from(mine == 0);
        let share = (limit / (holders + 1)).max(self.floor.min(limit));
        if mine + bytes > share {
            return Err(Refusal::OverShare);
        }
        Ok(())
    }

    /// `t` now holds `bytes` more (in the memory queue when `mem`).
    pub fn add(&mut self, t: Tenant, bytes: u64, mem: bool) {
        let h = self.held.entry(t).or_insert(0);
        if *h == 0 && t != Tenant::Daemon {
            self.holders += 1;
        }
        *h += bytes;
        self.total += bytes;
        if mem {
            self.mem += bytes;
        }
    }

    /// `t`'s `bytes` left the buffer (delivered, or refused after all).
    /// Saturates: an entry that reaches 0 is removed.
    pub fn release(&mut self, t: Tenant, bytes: u64, mem: bool) {
        if let Some(h) = self.held.get_mut(&t) {
            let n = bytes.min(*h);
            *h -= n;
            self.total -= n;
            if *h == 0 {
                self.held.remove(&t);
                if t != Tenant::Daemon {
                    self.holders -= 1;
                }
            }
        }
        if mem {
            self.mem = self.mem.saturating_sub(bytes);
        }
    }

    /// The buffer is empty: start from zero (heals any drift, e.g. corrupt
    /// frames skipped on replay whose tenant was not known).
    pub fn clear(&mut self) {
        self.held.clear();
        self.total = 0;
        self.mem = 0;
        self.holders = 0;
    }
}

/// What one enqueue refused: every record, and the daemon's own among
/// them; a container's go to [`Pending`], to be reported for it.
#[derive(Debug, Default)]
pub struct Refused {
    pub total: u64,
    pub daemon: u64,
}

impl Refused {
    pub fn note(&mut self, pending: &mut Pending, t: Tenant, r: &Record) {
        self.total += 1;
        match t {
            Tenant::Daemon => self.daemon += 1,
            t => pending.refused(t, r),
        }
    }
}

/// The fields that name a container, as its records carry them.
pub type Identity = Vec<(&'static str, Value)>;

/// Records refused per tenant since the last loss report, with the
/// identity the report carries (taken from the first refused record).
#[derive(Debug, Default)]
pub struct Pending {
    lost: HashMap<Tenant, (u64, Identity)>,
}

/// The fields of a refused record that name its container.
static IDENTITY: [&str; 6] = [
    key::CGROUP_ID,
    key::CONTAINER_ID,
    key::CONTAINER_NAME,
    key::CONTAINER_IMAGE,
    key::AGENT,
    key::PROJECT,
];

impl Pending {
    pub fn refused(&mut self, t: Tenant, r: &Record) {
        let e = self.lost.entry(t).or_insert_with(|| {
            let id = IDENTITY
                .iter()
                .filter_map(|k| Some((*k, r.get(k)?.clone())))
                .collect();
            (0, id)
        });
        e.0 += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.lost.is_empty()
    }

    /// Everything pending, emptied.
    pub fn take(&mut self) -> Vec<(Tenant, u64, Identity)> {
        self.lost.drain().map(|(t, (n, id))| (t, n, id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::SystemTime;

    const C: u64 = 1 << 20;

    fn fill(l: &mut Ledger, t: Tenant, frame: u64) -> u64 {
        let mut n = 0;
        while l.admit(t, frame).is_ok() {
            l.add(t, frame, false);
            n += 1;
        }
        n
    }

    #[test]
    fn a_lone_flooder_stops_near_half_and_a_quiet_container_still_gets_in() {
        let mut l = Ledger::new(C);
        let flood = Tenant::Cgroup(1);
        let quiet = Tenant::Cgroup(2);
        fill(&mut l, flood, 600);
        let f = l.held(flood);
        assert!((C / 2 - 600..=C / 2 + 600).contains(&f), "{f}");
        assert_eq!(l.admit(flood, 600), Err(Refusal::OverShare));
        // The quiet one is admitted up to its share: a third of the rest.
        let n = fill(&mut l, quiet, 600);
        let share = (C - C / RESERVE_DIVISOR) / 3;
        assert_eq!(n, share / 600, "{n}");
        assert_eq!(l.admit(quiet, 600), Err(Refusal::OverShare));
        // A third container still finds room; the daemon always does.
        assert!(l.admit(Tenant::Cgroup(3), 600).is_ok());
        assert!(l.admit(Tenant::Daemon, 600).is_ok());
        // The flooder's records are delivered: it may send again.
        l.release(flood, f, false);
        assert!(l.admit(flood, 600).is_ok());
        assert_eq!(l.holders(), 1);
    }

    #[test]
    fn below_half_everyone_is_admitted_and_the_reserve_is_the_daemons() {
        let mut l = Ledger::new(C);
        for i in 0..(C / 2 / 1000) {
            assert!(l.admit(Tenant::Cgroup(i), 1000).is_ok());
            l.add(Tenant::Cgroup(i), 1000, false);
        }
        // Many small containers at their floor fill up to the reserve...
        for i in 0..10_000 {
            let t = Tenant::Container(i);
            if l.admit(t, 1000).is_err() {
                break;
            }
            l.add(t, 1000, false);
        }
        let limit = C - C / RESERVE_DIVISOR;
        assert!(
            l.total() <= limit && l.total() > limit - 1000,
            "{}",
            l.total()
        );
        assert_eq!(l.admit(Tenant::Container(99_999), 1000), Err(Refusal::Full));
        // ...and the daemon's loss reports still fit.
        assert!(fill(&mut l, Tenant::Daemon, 1000) >= (C - limit) / 1000 - 1);
        assert!(l.total() <= C && C - l.total() < 1000, "{}", l.total());
        assert_eq!(l.admit(Tenant::Daemon, 1000), Err(Refusal::Full));
    }

    #[test]
    fn memory_bytes_count_as_held_and_as_capacity() {
        let mut l = Ledger::new(C);
        l.add(Tenant::Cgroup(1), 100_000, true);
        assert_eq!(l.held(Tenant::Cgroup(1)), 100_000);
        // The memory queue's bytes are not spool pressure.
        let n = fill(&mut l, Tenant::Cgroup(1), 1000);
        assert!(l.total() >= (C + 100_000) / 2 - 1000, "{n}");
        l.release(Tenant::Cgroup(1), 100_000, true);
        l.clear();
        assert_eq!((l.total(), l.holders()), (0, 0));
    }

    #[test]
    fn a_memory_queue_without_a_spool_is_shared_in_records() {
        // The default queue (100,000 records): same rule, counted in records.
        let q = 100_000;
        let mut l = Ledger::records(q);
        let (flood, quiet) = (Tenant::Cgroup(1), Tenant::Cgroup(2));
        assert_eq!(
            fill(&mut l, flood, 1),
            q / 2,
            "a lone flooder stops at half"
        );
        let limit = q - q / RESERVE_DIVISOR;
        assert_eq!(
            fill(&mut l, quiet, 1),
            limit / 3,
            "the quiet one: its share"
        );
        assert!(
            l.admit(Tenant::Cgroup(3), 1).is_ok(),
            "a third still gets in"
        );
        for i in 3..1000 {
            fill(&mut l, Tenant::Cgroup(i), 1);
        }
        assert_eq!(l.total(), limit, "containers stop at the reserve");
        assert_eq!(fill(&mut l, Tenant::Daemon, 1), q - limit, "the reserve");
        // A small queue: a share never falls below FLOOR_RECORDS.
        let mut l = Ledger::records(1000);
        for i in 0..6 {
            l.add(Tenant::Cgroup(i), 100, false);
        }
        // (938 / 8 = 117 records each, but the floor is 128)
        assert!(l.admit(Tenant::Cgroup(9), FLOOR_RECORDS).is_ok());
        assert_eq!(
            l.admit(Tenant::Cgroup(9), FLOOR_RECORDS + 1),
            Err(Refusal::OverShare)
        );
    }

    fn record(source: Source, container: Option<&str>, cgroup: u64) -> Record {
        let mut r = Record::new(SystemTime::now(), source).with_body("x");
        r.set(key::CGROUP_ID, cgroup);
        if let Some(c) = container {
            r.set(key::CONTAINER_ID, c);
            r.set(key::AGENT, "ralph");
        }
        r.set(key::DST_PORT, 443u16);
        r
    }

    #[test]
    fn the_tenant_of_a_record_and_of_its_encoding_agree() {
        let mut enc = crate::export::otlp_wire::RecordEncoder::default();
        for (r, want) in [
            (record(Source::Egress, Some("c1"), 7), None),
            (record(Source::Exec, Some("c1"), 8), None),
            (record(Source::Egress, None, 7), Some(Tenant::Cgroup(7))),
            (
                record(Source::Overseer, Some("c1"), 7),
                Some(Tenant::Daemon),
            ),
            (record(Source::ControlPlane, None, 0), Some(Tenant::Daemon)),
        ] {
            let t = Tenant::of(&r);
            assert_eq!(Tenant::of_encoded(enc.log_record(&r, 1)), t, "{r:?}");
            if let Some(w) = want {
                assert_eq!(t, w);
            }
        }
        // One container, whatever cgroup its records come from.
        assert_eq!(
            Tenant::of(&record(Source::Egress, Some("c1"), 7)),
            Tenant::of(&record(Source::Exec, Some("c1"), 9))
        );
        assert_ne!(
            Tenant::of(&record(Source::Egress, Some("c1"), 7)),
            Tenant::of(&record(Source::Egress, Some("c2"), 7))
        );
        // Garbage is somebody's (a cgroup), never a panic.
        assert_eq!(Tenant::of_encoded(&[0xff, 0xff, 0x01]), Tenant::Cgroup(0));
    }

    #[test]
    fn pending_losses_keep_the_identity_of_the_first_refused_record() {
        let mut p = Pending::default();
        let r = record(Source::Egress, Some("c1"), 7);
        let t = Tenant::of(&r);
        p.refused(t, &r);
        p.refused(t, &r);
        let got = p.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, 2);
        assert!(got[0]
            .2
            .iter()
            .any(|(k, v)| *k == key::AGENT && *v == Value::from("ralph")));
        assert!(p.is_empty());
    }

    #[test]
    fn a_snapshot_restores_the_same_shares_and_odd_text_is_refused() {
        let mut l = Ledger::new(1 << 20);
        l.add(Tenant::Daemon, 10, false);
        l.add(Tenant::Container(u64::MAX), 700, false);
        l.add(Tenant::Cgroup(42), 30, false);
        let back = Ledger::restore(1 << 20, &l.snapshot()).unwrap();
        for t in [
            Tenant::Daemon,
            Tenant::Container(u64::MAX),
            Tenant::Cgroup(42),
        ] {
            assert_eq!(back.held(t), l.held(t));
        }
        assert_eq!((back.total(), back.holders()), (740, 2));
        let probe = Ledger::new(1).snapshot();
        assert_eq!(Ledger::restore(1 << 20, &probe).unwrap().total(), 0);
        assert!(Ledger::restore(1 << 20, "").is_none());
        // Another build's hashes: its container ids name other tenants.
        assert!(Ledger::restore(1 << 20, "h 1\nc 1 2\n").is_none());
        let max = u64::MAX;
        for odd in [
            "x 1 2",
            "c 1",
            "c 1 2 3",
            "c -1 2",
            "c 1 2\nc 1 3",
            "c 1 0\nc 1 5",
            "g 1 two",
            &format!("c 1 {max}\nc 2 1"),
        ] {
            let text = format!("{probe}{odd}\n");
            assert!(Ledger::restore(1 << 20, &text).is_none(), "{odd:?}");
        }
    }
}
