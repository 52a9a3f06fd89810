//! The recent past for `observe --since/--last`: a bounded ring of the
//! batches the pipeline sent, by record count and by age. Batches are
//! shared with the sinks (no copy); whole batches leave the front.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::export::Batch;
use crate::record::Record;

pub struct History {
    batches: VecDeque<(Instant, Batch)>,
    records: usize,
    max_records: usize,
    max_age: Duration,
}

impl History {
    pub fn new(max_records: usize, max_age: Duration) -> Self {
        History {
            batches: VecDeque::new(),
            records: 0,
            max_records,
            max_age,
        }
    }

    pub fn push(&mut self, batch: Batch, now: Instant) {
        if batch.is_empty() {
            return;
        }
        self.records += batch.len();
        self.batches.push_back((now, batch));
        self.trim(now);
    }

    fn trim(&mut self, now: Instant) {
        while let Some((at, front)) = self.batches.front() {
            // Keep at least `max_records` while whole batches allow it.
            let too_many = self.records - front.len() >= self.max_records;
            let too_old = now.duration_since(*at) > self.max_age;
            if !(too_many || too_old) {
                break;
            }
            self.records -= front.len();
            self.batches.pop_front();
        }
    }

    /// Records held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.records
    }

    /// The newest `n` records `pick` accepts, oldest first.
    pub fn newest(&self, n: usize, pick: impl Fn(&Record) -> bool) -> Vec<&Record> {
        let mut out: Vec<&Record> = self
            .batches
            .iter()
            .rev()
            .flat_map(|(_, b)| b.iter().rev())
            .filter(|r| pick(r))
            .take(n)
            .collect();
        out.reverse();
        out
    }

    /// Every batch held, oldest first (cheap: shared batches).
    pub fn snapshot(&mut self, now: Instant) -> Vec<Batch> {
        self.trim(now);
        self.batches.iter().map(|(_, b)| b.clone()).collect()
    }
}

/// The records of `batches` that `pick` accepts and that are newer than
/// `since` before `now`, at most the `last` newest, oldest first.
pub fn select(
    batches: &[Batch],
    now: SystemTime,
    since: Option<Duration>,
    last: Option<usize>,
    pick: impl Fn(&Record) -> bool,
) -> Vec<&Record> {
    let cutoff = since.and_then(|s| now.checked_sub(s));
    let mut out: Vec<&Record> = batches
        .iter()
        .flat_map(|b| b.iter())
        .filter(|r| cutoff.is_none_or(|c| r.time >= c))
        .filter(|r| pick(r))
        .collect();
    if let Some(n) = last {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Source;
    use std::sync::Arc;

    fn batch(n: usize, at: SystemTime) -> Batch {
        Arc::new((0..n).map(|_| Record::new(at, Source::Egress)).collect())
    }

    #[test]
    fn bounded_by_records_keeping_the_newest() {
        let mut h = History::new(10, Duration::from_secs(300));
        let t = Instant::now();
        for _ in 0..7 {
            h.push(batch(3, SystemTime::now()), t);
        }
        assert!(h.len() <= 12 && h.len() >= 10, "{}", h.len());
        assert!(h.snapshot(t).len() <= 4);
    }

    #[test]
    fn bounded_by_age() {
        let mut h = History::new(1000, Duration::from_secs(5));
        let t = Instant::now();
        h.push(batch(4, SystemTime::now()), t);
        h.push(batch(2, SystemTime::now()), t + Duration::from_secs(4));
        assert_eq!(h.len(), 6);
        assert_eq!(h.snapshot(t + Duration::from_secs(6)).len(), 1);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn select_since_and_last() {
        let now = SystemTime::now();
        let old = batch(3, now - Duration::from_secs(600));
        let new = batch(2, now - Duration::from_secs(10));
        let all = vec![old.clone(), new.clone()];
        assert_eq!(select(&all, now, None, None, |_| true).len(), 5);
        assert_eq!(
            select(&all, now, Some(Duration::from_secs(60)), None, |_| true).len(),
            2
        );
        let last = select(&all, now, None, Some(4), |_| true);
        assert_eq!(last.len(), 4);
        assert!(std::ptr::eq(last[3], &new[1]));
        assert!(std::ptr::eq(last[0], &old[1]));
        assert_eq!(select(&all, now, None, None, |_| false).len(), 0);
    }
}
