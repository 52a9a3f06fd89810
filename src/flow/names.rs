//! Which name each container resolved each address from, learned from the
//! DNS answers the kernel parsed: the `dst_host` of later records.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::capture::{DnsKind, DnsMessage};

/// Names outlive their TTL here (a flow that ends hours after the lookup
/// still names its destination); the table is bounded instead.
const KEEP: Duration = Duration::from_secs(24 * 3600);
const MAX_NAMES: usize = 65_536;

#[derive(Default)]
pub struct Names {
    by_addr: HashMap<(u64, IpAddr), (String, Instant)>,
}

impl Names {
    /// Only answers the kernel let count: a rejected (forged) answer
    /// names nothing.
    pub fn learn(&mut self, answer: &DnsMessage) {
        if answer.kind != DnsKind::Answer || answer.rejected.is_some() || answer.qname.is_empty() {
            return;
        }
        let now = Instant::now();
        if self.by_addr.len() + answer.answers.len() > MAX_NAMES {
            self.by_addr.retain(|_, (_, until)| *until > now);
            if self.by_addr.len() + answer.answers.len() > MAX_NAMES {
                // Still full: forget everything rather than grow without bound.
                tracing::warn!(
                    event = "dns_names_reset",
                    "name table full; dst_host resets"
                );
                self.by_addr.clear();
            }
        }
        for (ip, _) in &answer.answers {
            self.by_addr.insert(
                (answer.scope_cgroup_id, *ip),
                (answer.qname.clone(), now + KEEP),
            );
        }
    }

    /// The name `scope` resolved `ip` from, if it did.
    pub fn name_of(&self, scope: u64, ip: IpAddr) -> Option<String> {
        self.by_addr
            .get(&(scope, ip))
            .filter(|(_, until)| *until > Instant::now())
            .map(|(name, _)| name.clone())
    }
}
