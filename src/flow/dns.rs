//! DNS exchanges: the kernel reports each query when it is sent and each
//! answer when it arrives; here they become one record per exchange.
//!
//! A query waits for its answer (same socket, transaction id and type) at
//! most [`ANSWER_WAIT`]; a query whose socket closes first, or that waits
//! longer, is recorded without an answer, so no query goes unrecorded. An
//! answer the kernel rejected (forged, unsolicited) is a record of its own
//! and never pairs with a query.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::capture::{DnsKind, DnsMessage};
use crate::kernel::abi;

/// As long as the kernel keeps a query pending.
pub const ANSWER_WAIT: Duration = Duration::from_secs(abi::DNS_PENDING_TIMEOUT_S as u64);

/// Queries waiting here at most; beyond, a query is recorded at once
/// (its answer then is a record of its own).
const MAX_WAITING: usize = 16_384;

/// One DNS record: a query with its answer, a query alone (no answer), or
/// an answer alone (rejected, or its query was not seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsExchange {
    pub query: Option<DnsMessage>,
    pub answer: Option<DnsMessage>,
}

impl DnsExchange {
    /// The message the record is about first (the query when there is one).
    pub fn first(&self) -> &DnsMessage {
        match (&self.query, &self.answer) {
            (Some(q), _) => q,
            (None, Some(a)) => a,
            (None, None) => unreachable!("an exchange has a query or an answer"),
        }
    }
}

type Key = (u64, u16, u16);

#[derive(Default)]
pub struct Exchanges {
    waiting: HashMap<Key, (DnsMessage, Instant)>,
}

fn key(m: &DnsMessage) -> Key {
    (m.sock_cookie, m.txid, m.qtype)
}

impl Exchanges {
    /// A message from the kernel; returns the records it completes.
    pub fn on_message(&mut self, m: DnsMessage, out: &mut Vec<DnsExchange>) {
        match m.kind {
            DnsKind::Query => {
                // Dropped by the kernel (segmented): no answer will come.
                if m.rejected.is_some() || self.waiting.len() >= MAX_WAITING {
                    out.push(alone(Some(m), None));
                    return;
                }
                // The same query again (a retry): the earlier one is over.
                if let Some((earlier, _)) = self.waiting.insert(key(&m), (m, Instant::now())) {
                    out.push(alone(Some(earlier), None));
                }
            }
            DnsKind::Answer => {
                let query = if m.rejected.is_none() {
                    self.waiting.remove(&key(&m)).map(|(q, _)| q)
                } else {
                    None
                };
                out.push(DnsExchange {
                    query,
                    answer: Some(m),
                });
            }
        }
    }

    /// A socket is gone: its queries will get no answer.
    pub fn socket_closed(&mut self, cookie: u64, out: &mut Vec<DnsExchange>) {
        if self.waiting.is_empty() {
            return;
        }
        let gone: Vec<Key> = self
            .waiting
            .keys()
            .filter(|k| k.0 == cookie)
            .copied()
            .collect();
        for k in gone {
            if let Some((q, _)) = self.waiting.remove(&k) {
                out.push(alone(Some(q), None));
            }
        }
    }

    /// Queries that waited too long: recorded without an answer.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<DnsExchange>) {
        let old: Vec<Key> = self
            .waiting
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) >= ANSWER_WAIT)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            if let Some((q, _)) = self.waiting.remove(&k) {
                out.push(alone(Some(q), None));
            }
        }
    }
}

fn alone(query: Option<DnsMessage>, answer: Option<DnsMessage>) -> DnsExchange {
    DnsExchange { query, answer }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::DnsReject;

    fn msg(kind: DnsKind, cookie: u64, txid: u16) -> DnsMessage {
        DnsMessage {
            kind,
            time: std::time::UNIX_EPOCH,
            ts_ns: 0,
            cgroup_id: 1,
            scope_cgroup_id: 1,
            sock_cookie: cookie,
            pid: 1,
            comm: "t".into(),
            proc: Default::default(),
            qname: "a.test".into(),
            qtype: 1,
            txid,
            rcode: 0,
            rejected: None,
            resolver: ("127.0.0.53".parse().unwrap(), 53),
            local_port: 4000,
            protocol: libc::IPPROTO_UDP as u8,
            answers: vec![],
        }
    }

    #[test]
    fn pairs_answers_and_records_the_unanswered() {
        let mut x = Exchanges::default();
        let mut out = Vec::new();
        x.on_message(msg(DnsKind::Query, 1, 7), &mut out);
        x.on_message(msg(DnsKind::Query, 2, 8), &mut out);
        x.on_message(msg(DnsKind::Query, 3, 9), &mut out);
        assert!(out.is_empty());
        x.on_message(msg(DnsKind::Answer, 1, 7), &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].query.is_some() && out[0].answer.is_some());
        // A rejected answer never completes the query it claims to answer.
        let mut forged = msg(DnsKind::Answer, 2, 8);
        forged.rejected = Some(DnsReject::Mismatch);
        x.on_message(forged, &mut out);
        assert!(out[1].query.is_none() && out[1].answer.is_some());
        x.socket_closed(2, &mut out);
        assert!(out[2].query.is_some() && out[2].answer.is_none());
        x.expire(Instant::now() + ANSWER_WAIT, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(out[3].first().sock_cookie, 3);
    }

    #[test]
    fn a_dropped_query_is_recorded_at_once() {
        let mut x = Exchanges::default();
        let mut out = Vec::new();
        let mut q = msg(DnsKind::Query, 1, 7);
        q.rejected = Some(DnsReject::Segmented);
        x.on_message(q, &mut out);
        assert_eq!(out.len(), 1, "no answer will come: not kept waiting");
        assert!(out[0].answer.is_none());
        assert!(x.waiting.is_empty());
    }
}
