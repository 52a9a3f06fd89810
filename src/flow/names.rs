//! Which name each container resolved each address from, learned from the
//! DNS answers the kernel parsed: the `dst_host` of later records.
//!
//! Fair like the kernel tables (P14): each container keeps its own names,
//! at most `PER_CONTAINER` of them, forgetting its own oldest first. A
//! container that resolves a flood of names loses only its own `dst_host`s,
//! never another container's.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::capture::{DnsKind, DnsMessage};

/// Names outlive their TTL here (a flow that ends hours after the lookup
/// still names its destination); the table is bounded instead.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Names one container keeps (its oldest go first).
const PER_CONTAINER: usize = 8_192;

#[derive(Default)]
pub struct Names {
    /// By scope cgroup id: foldhash; the addresses inside come from DNS
    /// answers an agent controls and keep SipHash (docs/ARCHITECTURE.md
    /// "Hash maps").
    by_scope: crate::fast_hash::HashMap<u64, ScopeNames>,
}

#[derive(Default)]
struct ScopeNames {
    /// address -> (name, kept until, when it was learned).
    by_addr: HashMap<IpAddr, (String, Instant, u64)>,
    /// (address, when) in the order learned; an entry whose address was
    /// learned again since is stale and skipped.
    order: VecDeque<(IpAddr, u64)>,
    next: u64,
}

impl ScopeNames {
    fn learn(&mut self, ip: IpAddr, name: &str, until: Instant) {
        let seq = self.next;
        self.next += 1;
        self.by_addr.insert(ip, (name.to_owned(), until, seq));
        self.order.push_back((ip, seq));
        while self.by_addr.len() > PER_CONTAINER {
            let Some((old, when)) = self.order.pop_front() else {
                break;
            };
            if self.by_addr.get(&old).is_some_and(|(_, _, s)| *s == when) {
                self.by_addr.remove(&old);
            }
        }
        // Stale positions of re-learned addresses: drop them now and then.
        if self.order.len() > 2 * PER_CONTAINER {
            let live = &self.by_addr;
            self.order
                .retain(|(ip, when)| live.get(ip).is_some_and(|(_, _, s)| s == when));
        }
    }
}

impl Names {
    /// Only answers the kernel let count: a rejected (forged) answer
    /// names nothing.
    pub fn learn(&mut self, answer: &DnsMessage) {
        if answer.kind != DnsKind::Answer || answer.rejected.is_some() || answer.qname.is_empty() {
            return;
        }
        let until = Instant::now() + KEEP;
        let scope = self.by_scope.entry(answer.scope_cgroup_id).or_default();
        for (ip, _) in &answer.answers {
            scope.learn(*ip, &answer.qname, until);
        }
    }

    /// The name `scope` resolved `ip` from, if it did.
    pub fn name_of(&self, scope: u64, ip: IpAddr) -> Option<String> {
        self.by_scope
            .get(&scope)?
            .by_addr
            .get(&ip)
            .filter(|(_, until, _)| *until > Instant::now())
            .map(|(name, _, _)| name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_container_forgets_only_its_own_names() {
        let mut names = Names::default();
        let victim: IpAddr = "10.0.0.1".parse().unwrap();
        let until = Instant::now() + KEEP;
        names
            .by_scope
            .entry(1)
            .or_default()
            .learn(victim, "github.com", until);
        for i in 0..(PER_CONTAINER as u32 * 2) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            names
                .by_scope
                .entry(2)
                .or_default()
                .learn(ip, &format!("n{i}.evil.test"), until);
        }
        assert_eq!(names.name_of(1, victim).as_deref(), Some("github.com"));
        assert_eq!(names.by_scope[&2].by_addr.len(), PER_CONTAINER);
        // The flooder keeps its newest names.
        let newest = IpAddr::from(std::net::Ipv4Addr::from(
            0x0b00_0000 + PER_CONTAINER as u32 * 2 - 1,
        ));
        assert!(names.name_of(2, newest).is_some());
    }
}
