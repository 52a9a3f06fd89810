//! Compiled rule sets and their atomic installation.

use std::collections::{HashMap, HashSet};

use crate::kernel::{abi, KernelError, PolicyMaps};

/// One container's (or the default) policy, in kernel form.
#[derive(Debug, Clone, Default)]
pub struct KernelRuleSet {
    pub audit: bool,
    pub default_allow: bool,
    pub raw_allow: bool,
    /// First match wins; at most EGRESS_MAX_RULES - 1.
    pub rules: Vec<abi::policy_rule>,
    /// The names domain rules match, with the rules (bits) each matches.
    pub domains: Vec<DomainEntry>,
}

/// One name of a rule set's domain rules, as `domain_rules` holds it:
/// keyed by its hash, confirmed on the whole name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEntry {
    /// `.example.com`: the name and every name under it; else exact.
    pub wildcard: bool,
    /// Lowercase, no trailing dot (as `normalize_domain` leaves it).
    pub name: String,
    /// Bit i: rule i of the set matches this name.
    pub mask: u64,
}

impl DomainEntry {
    pub fn key(&self, rule_set: u32) -> abi::domain_key {
        abi::domain_key {
            rule_set,
            wildcard: u32::from(self.wildcard),
            hash: name_hash(&self.name),
        }
    }

    /// The kernel value: the mask and the name, right-aligned (see
    /// `dns_value.name` in bpf/egress.h). A name longer than the kernel's
    /// buffer cannot be a DNS name and is refused.
    pub fn value(&self) -> Option<abi::domain_value> {
        let bytes = self.name.as_bytes();
        let len = abi::DNS_NAME_LEN as usize;
        if bytes.is_empty() || bytes.len() > len {
            return None;
        }
        let mut v = abi::domain_value {
            mask: self.mask,
            name_len: bytes.len() as u16,
            _pad: [0; 6],
            name: [0; abi::DNS_NAME_LEN as usize],
        };
        for (d, s) in v.name[len - bytes.len()..].iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        Some(v)
    }
}

impl KernelRuleSet {
    fn header(&self, rule_set: u32) -> abi::container_policy {
        let action = |allow: bool| {
            (if allow {
                abi::egress_verdict::VERDICT_ALLOW
            } else {
                abi::egress_verdict::VERDICT_DENY
            }) as u8
        };
        abi::container_policy {
            rule_set,
            mode: (if self.audit {
                abi::policy_mode::POLICY_AUDIT
            } else {
                abi::policy_mode::POLICY_ENFORCE
            }) as u8,
            default_action: action(self.default_allow),
            raw_action: action(self.raw_allow),
            _pad: 0,
        }
    }
}

/// Installs rule sets: each install writes a slot no live decision uses,
/// then repoints the cgroup in a single map update.
///
/// The daemon is the only writer of `container_policy` and `domain_rules`,
/// so which slot each cgroup uses and which domain keys each slot holds are
/// read from the kernel once, at start-up, and kept here: an install costs
/// the syscalls for its own rules, not a scan of every container's.
pub struct RuleSetWriter {
    maps: PolicyMaps,
    next_slot: u32,
    /// scope cgroup id -> the slot its rules are in.
    assigned: HashMap<u64, u32>,
    /// slot -> the domain keys written for it.
    domains: HashMap<u32, Vec<abi::domain_key>>,
}

impl RuleSetWriter {
    pub fn new(maps: PolicyMaps) -> Self {
        let assigned: HashMap<u64, u32> = maps
            .assignments()
            .into_iter()
            .map(|(id, p)| (id, p.rule_set))
            .collect();
        let mut domains: HashMap<u32, Vec<abi::domain_key>> = HashMap::new();
        for key in maps.domain_keys() {
            domains.entry(key.rule_set).or_default().push(key);
        }
        // Start after every slot a previous daemon left in use.
        let used = assigned.values().map(|s| s + 1).max().unwrap_or(0);
        RuleSetWriter {
            maps,
            next_slot: used % abi::EGRESS_MAX_POLICIES,
            assigned,
            domains,
        }
    }

    /// Enforce `set` for `scope_cgroup_id` (0: everything in SCOPE_ALL mode).
    pub fn install(
        &mut self,
        scope_cgroup_id: u64,
        set: &KernelRuleSet,
    ) -> Result<(), KernelError> {
        let slot = self.take_slot();
        self.write_domains(slot, &set.domains)?;
        self.maps.write_rule_set(slot, &set.rules)?;
        self.maps.assign(scope_cgroup_id, &set.header(slot))?;
        self.assigned.insert(scope_cgroup_id, slot);
        Ok(())
    }

    pub fn remove(&mut self, scope_cgroup_id: u64) {
        self.maps.unassign(scope_cgroup_id);
        self.assigned.remove(&scope_cgroup_id);
    }

    /// Replace slot `slot`'s domain entries.
    fn write_domains(&mut self, slot: u32, entries: &[DomainEntry]) -> Result<(), KernelError> {
        for stale in self.domains.remove(&slot).unwrap_or_default() {
            self.maps.delete_domain(&stale);
        }
        let mut written = Vec::with_capacity(entries.len());
        for entry in entries {
            let key = entry.key(slot);
            let Some(value) = entry.value() else {
                continue; // compile() only passes names of 1..=253 bytes
            };
            self.maps.put_domain(&key, &value)?;
            written.push(key);
        }
        self.domains.insert(slot, written);
        Ok(())
    }

    /// The next slot not referenced by any assignment.
    fn take_slot(&mut self) -> u32 {
        let in_use: HashSet<u32> = self.assigned.values().copied().collect();
        for _ in 0..abi::EGRESS_MAX_POLICIES {
            let slot = self.next_slot;
            self.next_slot = (self.next_slot + 1) % abi::EGRESS_MAX_POLICIES;
            if !in_use.contains(&slot) {
                return slot;
            }
        }
        // Every slot in use: reuse the next one (a cgroup may briefly see a
        // mixed set; only possible beyond EGRESS_MAX_POLICIES containers).
        tracing::warn!(
            event = "policy_slots_exhausted",
            "all kernel rule-set slots are in use"
        );
        self.next_slot
    }
}

/// A CIDR rule in kernel form.
pub fn cidr_rule(
    net: std::net::IpAddr,
    prefix_len: u8,
    protocol: u8,
    ports: Option<(u16, u16)>,
    allow: bool,
) -> abi::policy_rule {
    let mut r = abi::policy_rule {
        kind: abi::rule_kind::RULE_CIDR as u8,
        prefix_len,
        protocol,
        action: if allow {
            abi::egress_verdict::VERDICT_ALLOW
        } else {
            abi::egress_verdict::VERDICT_DENY
        } as u8,
        ..Default::default()
    };
    if let Some((lo, hi)) = ports {
        r.port_lo = lo;
        r.port_hi = hi;
    }
    match net {
        std::net::IpAddr::V4(a) => {
            r.family = libc::AF_INET as u8;
            r.addr[..4].copy_from_slice(&a.octets());
        }
        std::net::IpAddr::V6(a) => {
            r.family = libc::AF_INET6 as u8;
            r.addr = a.octets();
        }
    }
    r
}

/// A domain rule's slot: it matches when `domain_rules` says the address's
/// name matches rule `index` (see `domains`).
pub fn domain_rule(protocol: u8, ports: Option<(u16, u16)>, allow: bool) -> abi::policy_rule {
    let mut r = any_rule(protocol, ports, allow);
    r.kind = abi::rule_kind::RULE_DOMAIN as u8;
    r
}

/// The hash the kernel computes for each suffix of a DNS name
/// (DNS_HASH_PRIME in bpf/egress.h): from the last byte to the first.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().rev().fold(0u64, |h, c| {
        u64::from(c).wrapping_add(abi::DNS_HASH_PRIME.wrapping_mul(h))
    })
}

/// A rule for any destination (protocol/port still apply).
pub fn any_rule(protocol: u8, ports: Option<(u16, u16)>, allow: bool) -> abi::policy_rule {
    let mut r = cidr_rule(
        std::net::Ipv4Addr::UNSPECIFIED.into(),
        0,
        protocol,
        ports,
        allow,
    );
    r.kind = abi::rule_kind::RULE_ANY as u8;
    r.family = 0;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tests/fixtures/dns_collision.py found it: a 45-byte name under a zone
    /// an attacker could hold, with github.com's hash (issue 9 item 3).
    const COLLIDER: &str = "aftkdtesaxvlafewbcokawpmanhicsfx.collide.test";

    #[test]
    fn the_collision_fixture_collides() {
        assert_eq!(name_hash(COLLIDER), name_hash("github.com"));
        assert_ne!(COLLIDER, "github.com");
    }

    #[test]
    fn domain_values_hold_the_name_right_aligned() {
        let e = DomainEntry {
            wildcard: true,
            name: "github.com".into(),
            mask: 5,
        };
        let v = e.value().unwrap();
        let len = abi::DNS_NAME_LEN as usize;
        let tail: Vec<u8> = v.name[len - 10..].iter().map(|&c| c as u8).collect();
        assert_eq!(tail, b"github.com");
        assert!(v.name[..len - 10].iter().all(|&c| c == 0));
        assert_eq!((v.mask, v.name_len), (5, 10));
        assert_eq!(e.key(3).hash, name_hash("github.com"));
        let long = DomainEntry {
            name: "a".repeat(257),
            ..e
        };
        assert!(long.value().is_none());
    }
}
