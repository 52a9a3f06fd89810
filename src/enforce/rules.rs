//! Compiled rule sets and their atomic installation.

use std::collections::HashMap;

use super::slots::{Plan, SlotTable, NO_RULES};
use crate::kernel::pod::bytes_of;
use crate::kernel::{abi, KernelError, PolicyMaps};

/// One container's (or the default) policy, in kernel form.
#[derive(Debug, Clone, Default)]
pub struct KernelRuleSet {
    pub audit: bool,
    pub default_allow: bool,
    pub raw_allow: bool,
    /// `inbound: deny`: connections from outside the container to its
    /// listeners are dropped (the default, false, lets them in).
    pub inbound_deny: bool,
    /// First match wins; at most EGRESS_MAX_RULES.
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
    /// What the slot holds, as bytes: equal bytes, equal decisions. Empty
    /// for a set without rules (it needs no slot).
    pub fn content(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for r in &self.rules {
            out.extend_from_slice(bytes_of(r));
        }
        for d in &self.domains {
            out.push(u8::from(d.wildcard));
            out.extend_from_slice(&(d.name.len() as u64).to_ne_bytes());
            out.extend_from_slice(d.name.as_bytes());
            out.extend_from_slice(&d.mask.to_ne_bytes());
        }
        out
    }

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
            inbound_action: action(!self.inbound_deny),
        }
    }
}

/// How one cgroup's install ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Its own rules are in force.
    Installed,
    /// No slot could hold its rules: it denies everything (fail closed).
    FailedClosed,
}

/// Installs rule sets: each install writes a slot no live decision uses,
/// then repoints the cgroup in a single map update. Equal rule sets share a
/// slot; a cgroup is never pointed at another set's rules (see `slots`).
///
/// The daemon is the only writer of `container_policy` and `domain_rules`,
/// so which slot each cgroup uses and which domain keys each slot holds are
/// read from the kernel once, at start-up, and kept here: an install costs
/// the syscalls for its own rules, not a scan of every container's.
pub struct RuleSetWriter<S: RuleStore = PolicyMaps> {
    maps: S,
    slots: SlotTable,
    /// slot -> the domain keys written for it.
    domains: HashMap<u32, Vec<abi::domain_key>>,
}

/// Where rule sets go: the kernel's policy maps (`PolicyMaps`), or an
/// in-memory model in unit tests.
pub trait RuleStore {
    fn assignments(&self) -> Vec<(u64, abi::container_policy)>;
    fn domain_keys(&self) -> Vec<abi::domain_key>;
    fn put_domain(
        &self,
        key: &abi::domain_key,
        value: &abi::domain_value,
    ) -> Result<(), KernelError>;
    fn delete_domain(&self, key: &abi::domain_key);
    fn write_rule_set(&self, set: u32, rules: &[abi::policy_rule]) -> Result<(), KernelError>;
    fn assign(
        &self,
        scope_cgroup_id: u64,
        policy: &abi::container_policy,
    ) -> Result<(), KernelError>;
    fn unassign(&self, scope_cgroup_id: u64);
}

impl RuleStore for PolicyMaps {
    fn assignments(&self) -> Vec<(u64, abi::container_policy)> {
        PolicyMaps::assignments(self)
    }
    fn domain_keys(&self) -> Vec<abi::domain_key> {
        PolicyMaps::domain_keys(self)
    }
    fn put_domain(
        &self,
        key: &abi::domain_key,
        value: &abi::domain_value,
    ) -> Result<(), KernelError> {
        PolicyMaps::put_domain(self, key, value)
    }
    fn delete_domain(&self, key: &abi::domain_key) {
        PolicyMaps::delete_domain(self, key)
    }
    fn write_rule_set(&self, set: u32, rules: &[abi::policy_rule]) -> Result<(), KernelError> {
        PolicyMaps::write_rule_set(self, set, rules)
    }
    fn assign(
        &self,
        scope_cgroup_id: u64,
        policy: &abi::container_policy,
    ) -> Result<(), KernelError> {
        PolicyMaps::assign(self, scope_cgroup_id, policy)
    }
    fn unassign(&self, scope_cgroup_id: u64) {
        PolicyMaps::unassign(self, scope_cgroup_id)
    }
}

impl<S: RuleStore> RuleSetWriter<S> {
    pub fn new(maps: S) -> Self {
        let slots = SlotTable::from_assignments(
            maps.assignments()
                .into_iter()
                .map(|(id, p)| (id, p.rule_set)),
        );
        let mut domains: HashMap<u32, Vec<abi::domain_key>> = HashMap::new();
        for key in maps.domain_keys() {
            domains.entry(key.rule_set).or_default().push(key);
        }
        RuleSetWriter {
            maps,
            slots,
            domains,
        }
    }

    /// Enforce `set` for `scope_cgroup_id` (0: everything in SCOPE_ALL
    /// mode). With no slot free it fails closed: deny-all for this cgroup.
    pub fn install(
        &mut self,
        scope_cgroup_id: u64,
        set: &KernelRuleSet,
    ) -> Result<Placed, KernelError> {
        if self.try_install(scope_cgroup_id, set)? {
            return Ok(Placed::Installed);
        }
        self.fail_closed(scope_cgroup_id)?;
        Ok(Placed::FailedClosed)
    }

    /// Install a whole policy. A cgroup whose new rules find no free slot
    /// waits until the others have moved off the old slots; if some still
    /// find none, the waiting cgroups fail closed (freeing their old
    /// slots) and are tried once more. Only more distinct rule sets than
    /// slots leaves one failed closed.
    pub fn install_many(
        &mut self,
        sets: &[(u64, KernelRuleSet)],
    ) -> Vec<(u64, Result<Placed, KernelError>)> {
        let mut out = Vec::with_capacity(sets.len());
        let mut waiting = Vec::new();
        for (id, set) in sets {
            match self.try_install(*id, set) {
                Ok(true) => out.push((*id, Ok(Placed::Installed))),
                Ok(false) => waiting.push((*id, set)),
                Err(e) => out.push((*id, Err(e))),
            }
        }
        let mut still = Vec::new();
        for (id, set) in waiting {
            match self.try_install(id, set) {
                Ok(true) => out.push((id, Ok(Placed::Installed))),
                Ok(false) => match self.fail_closed(id) {
                    Ok(()) => still.push((id, set)),
                    Err(e) => out.push((id, Err(e))),
                },
                Err(e) => out.push((id, Err(e))),
            }
        }
        for (id, set) in still {
            let placed = match self.try_install(id, set) {
                Ok(true) => Ok(Placed::Installed),
                Ok(false) => Ok(Placed::FailedClosed),
                Err(e) => Err(e),
            };
            out.push((id, placed));
        }
        out
    }

    /// Deny everything for this cgroup: no rules, default, raw and inbound deny,
    /// enforced. Needs no slot.
    pub fn fail_closed(&mut self, scope_cgroup_id: u64) -> Result<(), KernelError> {
        let deny = abi::container_policy {
            rule_set: NO_RULES,
            mode: abi::policy_mode::POLICY_ENFORCE as u8,
            default_action: abi::egress_verdict::VERDICT_DENY as u8,
            raw_action: abi::egress_verdict::VERDICT_DENY as u8,
            inbound_action: abi::egress_verdict::VERDICT_DENY as u8,
        };
        self.maps.assign(scope_cgroup_id, &deny)?;
        self.slots.point(scope_cgroup_id, NO_RULES);
        Ok(())
    }

    pub fn remove(&mut self, scope_cgroup_id: u64) {
        self.maps.unassign(scope_cgroup_id);
        self.slots.remove(scope_cgroup_id);
    }

    /// Slots holding rules now.
    pub fn slots_in_use(&self) -> usize {
        self.slots.slots_in_use()
    }

    /// `false`: no slot can hold `set` now (nothing was changed).
    fn try_install(&mut self, id: u64, set: &KernelRuleSet) -> Result<bool, KernelError> {
        let content = set.content();
        let slot = match self.slots.plan(id, &content) {
            Plan::Point(slot) => slot,
            Plan::Write(slot) => {
                self.write(slot, set, content)?;
                slot
            }
            Plan::Rewrite(slot) => {
                // Its only user denies everything while the slot changes.
                self.fail_closed(id)?;
                self.write(slot, set, content)?;
                slot
            }
            Plan::NoSlot => return Ok(false),
        };
        self.maps.assign(id, &set.header(slot))?;
        self.slots.point(id, slot);
        Ok(true)
    }

    fn write(
        &mut self,
        slot: u32,
        set: &KernelRuleSet,
        content: Vec<u8>,
    ) -> Result<(), KernelError> {
        self.write_domains(slot, &set.domains)?;
        self.maps.write_rule_set(slot, &set.rules)?;
        self.slots.wrote(slot, content);
        Ok(())
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
    //! The writer against an in-memory model of the policy maps: whatever
    //! the order of installs, every cgroup ends up with exactly its own
    //! rules, or denies everything.
    use std::cell::RefCell;

    use super::*;

    #[derive(Default)]
    struct Model {
        headers: RefCell<HashMap<u64, abi::container_policy>>,
        slots: RefCell<HashMap<u32, Vec<abi::policy_rule>>>,
    }

    impl RuleStore for Model {
        fn assignments(&self) -> Vec<(u64, abi::container_policy)> {
            self.headers
                .borrow()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect()
        }
        fn domain_keys(&self) -> Vec<abi::domain_key> {
            Vec::new()
        }
        fn put_domain(
            &self,
            _: &abi::domain_key,
            _: &abi::domain_value,
        ) -> Result<(), KernelError> {
            Ok(())
        }
        fn delete_domain(&self, _: &abi::domain_key) {}
        fn write_rule_set(&self, set: u32, rules: &[abi::policy_rule]) -> Result<(), KernelError> {
            assert!(set < abi::EGRESS_MAX_POLICIES, "slot {set} out of range");
            let in_use = self.headers.borrow().values().any(|h| h.rule_set == set);
            assert!(
                !in_use,
                "slot {set} rewritten while a cgroup decides with it"
            );
            self.slots.borrow_mut().insert(set, rules.to_vec());
            Ok(())
        }
        fn assign(&self, id: u64, policy: &abi::container_policy) -> Result<(), KernelError> {
            self.headers.borrow_mut().insert(id, *policy);
            Ok(())
        }
        fn unassign(&self, id: u64) {
            self.headers.borrow_mut().remove(&id);
        }
    }

    fn set(n: u32) -> KernelRuleSet {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + (n << 8));
        KernelRuleSet {
            rules: vec![cidr_rule(a.into(), 24, 0, None, n.is_multiple_of(2))],
            default_allow: true,
            ..Default::default()
        }
    }

    fn rules_bytes(rules: &[abi::policy_rule]) -> Vec<u8> {
        rules.iter().flat_map(|r| bytes_of(r).to_vec()).collect()
    }

    /// Own rules, or deny-all.
    fn check(w: &RuleSetWriter<Model>, expected: &[(u64, KernelRuleSet)]) -> usize {
        let headers = w.maps.headers.borrow();
        let slots = w.maps.slots.borrow();
        let mut closed = 0;
        for (id, want) in expected {
            let h = headers[id];
            if h.rule_set == NO_RULES {
                if want.rules.is_empty() {
                    continue;
                }
                assert_eq!(
                    (h.default_action, h.raw_action, h.mode),
                    (
                        abi::egress_verdict::VERDICT_DENY as u8,
                        abi::egress_verdict::VERDICT_DENY as u8,
                        abi::policy_mode::POLICY_ENFORCE as u8
                    ),
                    "cgroup {id} without a slot must deny everything"
                );
                closed += 1;
                continue;
            }
            assert_eq!(
                rules_bytes(&slots[&h.rule_set]),
                rules_bytes(&want.rules),
                "cgroup {id} was given slot {} with other rules",
                h.rule_set
            );
        }
        closed
    }

    #[test]
    fn equal_sets_share_and_every_cgroup_gets_its_own_rules() {
        let mut w = RuleSetWriter::new(Model::default());
        let sets: Vec<(u64, KernelRuleSet)> = (0..300).map(|id| (id, set(id as u32 % 3))).collect();
        assert!(w
            .install_many(&sets)
            .iter()
            .all(|(_, p)| matches!(p, Ok(Placed::Installed))));
        assert_eq!(check(&w, &sets), 0);
        assert_eq!(w.slots_in_use(), 3);
    }

    #[test]
    fn one_distinct_set_too_many_fails_closed_never_shares() {
        let mut w = RuleSetWriter::new(Model::default());
        let mut sets: Vec<(u64, KernelRuleSet)> = (0..u64::from(abi::EGRESS_MAX_POLICIES))
            .map(|id| (id, set(id as u32)))
            .collect();
        assert!(w
            .install_many(&sets)
            .iter()
            .all(|(_, p)| matches!(p, Ok(Placed::Installed))));
        // The 257th distinct rule set: no slot, so deny-all.
        let extra = (9_999, set(9_999));
        assert_eq!(w.install(extra.0, &extra.1).unwrap(), Placed::FailedClosed);
        sets.push(extra);
        assert_eq!(check(&w, &sets), 1);
    }

    #[test]
    fn a_reload_to_all_new_rules_finds_slots_even_when_old_slots_are_shared() {
        let mut w = RuleSetWriter::new(Model::default());
        // 255 slots in use; cgroups 0 and 1 share slot of set 0.
        let old: Vec<(u64, KernelRuleSet)> = (0..256u64)
            .map(|id| (id, set(if id == 1 { 0 } else { id as u32 })))
            .collect();
        w.install_many(&old);
        assert_eq!(check(&w, &old), 0);
        assert_eq!(w.slots_in_use(), 255);
        // New policy: every cgroup different rules, 256 distinct sets in all
        // (more than the 255 a checked policy may have: the worst case).
        let new: Vec<(u64, KernelRuleSet)> =
            (0..256u64).map(|id| (id, set(1_000 + id as u32))).collect();
        let placed = w.install_many(&new);
        assert!(
            placed
                .iter()
                .all(|(_, p)| matches!(p, Ok(Placed::Installed))),
            "{placed:?}"
        );
        assert_eq!(check(&w, &new), 0);
    }

    #[test]
    fn empty_sets_and_removed_cgroups_hold_no_slot() {
        let mut w = RuleSetWriter::new(Model::default());
        let empty = KernelRuleSet::default();
        assert_eq!(w.install(1, &empty).unwrap(), Placed::Installed);
        assert_eq!(w.slots_in_use(), 0);
        w.install(2, &set(5)).unwrap();
        assert_eq!(w.slots_in_use(), 1);
        w.remove(2);
        assert_eq!(w.slots_in_use(), 0);
        assert!(!w.maps.headers.borrow().contains_key(&2));
    }
}

#[cfg(test)]
mod domain_tests {
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
