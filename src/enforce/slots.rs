//! Which kernel rule-set slot each scope cgroup uses: pure bookkeeping,
//! no kernel access (`RuleSetWriter` carries the plans out).
//!
//! - Containers whose compiled rules are byte-for-byte equal share a slot.
//! - A container is never pointed at a slot holding other rules: when no
//!   slot is free the plan says so, and the caller fails closed.
//! - A rule set with no rules needs no slot (`NO_RULES`).

use std::collections::HashMap;

use crate::kernel::abi;

/// `container_policy.rule_set` of a cgroup without rules (and of the
/// fail-closed deny-all): out of the rules map's range.
pub const NO_RULES: u32 = abi::EGRESS_NO_RULES;
const SLOTS: u32 = abi::EGRESS_MAX_POLICIES;

/// What one install must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Point the cgroup at this slot: it already holds these rules (or
    /// `NO_RULES` for an empty set).
    Point(u32),
    /// Write the rules into this free slot, then point the cgroup at it.
    Write(u32),
    /// No slot is free, but the cgroup is the only user of this one: deny
    /// everything for it, rewrite the slot, then point it back.
    Rewrite(u32),
    /// No slot can hold the rules now.
    NoSlot,
}

/// Slot use, kept in step with `container_policy`.
#[derive(Debug, Default)]
pub struct SlotTable {
    /// cgroup -> slot (or NO_RULES).
    assigned: HashMap<u64, u32>,
    /// slot -> cgroups pointing at it.
    users: HashMap<u32, usize>,
    /// Compiled content -> the slot holding it (only contents this daemon
    /// wrote: a previous daemon's slots are never shared).
    by_content: HashMap<Vec<u8>, u32>,
    content_of: HashMap<u32, Vec<u8>>,
    next: u32,
}

impl SlotTable {
    /// Start from the assignments a previous daemon left in the kernel.
    pub fn from_assignments(assignments: impl IntoIterator<Item = (u64, u32)>) -> Self {
        let mut t = SlotTable::default();
        for (id, slot) in assignments {
            t.point(id, slot);
        }
        // Hand out the slots after the ones in use first.
        t.next = t
            .users
            .keys()
            .filter(|s| **s < SLOTS)
            .map(|s| s + 1)
            .max()
            .unwrap_or(0)
            % SLOTS;
        t
    }

    pub fn slot_of(&self, id: u64) -> Option<u32> {
        self.assigned.get(&id).copied()
    }

    pub fn users(&self, slot: u32) -> usize {
        self.users.get(&slot).copied().unwrap_or(0)
    }

    /// Slots holding rules for at least one cgroup.
    pub fn slots_in_use(&self) -> usize {
        self.users.keys().filter(|s| **s < SLOTS).count()
    }

    /// How to give `id` the rules whose compiled form is `content` (empty:
    /// no rules).
    pub fn plan(&self, id: u64, content: &[u8]) -> Plan {
        if content.is_empty() {
            return Plan::Point(NO_RULES);
        }
        if let Some(&slot) = self.by_content.get(content) {
            return Plan::Point(slot);
        }
        if let Some(slot) = self.free_slot() {
            return Plan::Write(slot);
        }
        match self.slot_of(id) {
            Some(slot) if slot < SLOTS && self.users(slot) == 1 => Plan::Rewrite(slot),
            _ => Plan::NoSlot,
        }
    }

    /// The cgroup now uses `slot` (after the kernel map was updated).
    pub fn point(&mut self, id: u64, slot: u32) {
        if let Some(old) = self.assigned.insert(id, slot) {
            self.release(old);
        }
        *self.users.entry(slot).or_default() += 1;
    }

    /// `slot` now holds `content` (its previous content is gone).
    pub fn wrote(&mut self, slot: u32, content: Vec<u8>) {
        if let Some(old) = self.content_of.remove(&slot) {
            self.by_content.remove(&old);
        }
        self.by_content.insert(content.clone(), slot);
        self.content_of.insert(slot, content);
        self.next = (slot + 1) % SLOTS;
    }

    pub fn remove(&mut self, id: u64) {
        if let Some(old) = self.assigned.remove(&id) {
            self.release(old);
        }
    }

    fn release(&mut self, slot: u32) {
        if let Some(n) = self.users.get_mut(&slot) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(&slot);
            }
        }
    }

    /// The next slot no cgroup points at, round robin from the last
    /// written: a slot is rewritten as late as possible after its last
    /// user moved away.
    fn free_slot(&self) -> Option<u32> {
        (0..SLOTS)
            .map(|i| (self.next + i) % SLOTS)
            .find(|s| self.users(*s) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(t: &mut SlotTable, id: u64, content: &[u8]) -> Plan {
        let plan = t.plan(id, content);
        match plan {
            Plan::Point(s) => t.point(id, s),
            Plan::Write(s) | Plan::Rewrite(s) => {
                t.wrote(s, content.to_vec());
                t.point(id, s);
            }
            Plan::NoSlot => {}
        }
        plan
    }

    #[test]
    fn equal_rules_share_a_slot_and_different_rules_never_do() {
        let mut t = SlotTable::default();
        assert_eq!(install(&mut t, 1, b"allow-all"), Plan::Write(0));
        assert_eq!(install(&mut t, 2, b"allow-all"), Plan::Point(0));
        assert_eq!(install(&mut t, 3, b"deny-lo"), Plan::Write(1));
        assert_eq!(t.users(0), 2);
        assert_eq!(t.slots_in_use(), 2);
    }

    #[test]
    fn an_empty_rule_set_takes_no_slot() {
        let mut t = SlotTable::default();
        assert_eq!(install(&mut t, 1, b""), Plan::Point(NO_RULES));
        assert_eq!(t.slots_in_use(), 0);
    }

    #[test]
    fn when_every_slot_is_taken_a_new_rule_set_gets_no_slot() {
        let mut t = SlotTable::default();
        for id in 0..u64::from(SLOTS) {
            let plan = install(&mut t, id, format!("set {id}").as_bytes());
            assert_eq!(plan, Plan::Write(id as u32));
        }
        // A newcomer with its own rules: never another container's slot.
        assert_eq!(t.plan(10_000, b"restrictive"), Plan::NoSlot);
        // Equal rules still share.
        assert_eq!(t.plan(10_000, b"set 7"), Plan::Point(7));
        // A container alone on its slot may have it rewritten (fail-closed
        // while it is written).
        assert_eq!(t.plan(3, b"new rules of 3"), Plan::Rewrite(3));
        // Two containers on one slot: neither may rewrite it.
        install(&mut t, 10_001, b"set 9");
        assert_eq!(t.plan(9, b"new rules of 9"), Plan::NoSlot);
    }

    #[test]
    fn a_freed_slot_is_reused_and_loses_its_old_content() {
        let mut t = SlotTable::default();
        install(&mut t, 1, b"a");
        install(&mut t, 2, b"b");
        t.remove(1);
        assert_eq!(t.users(0), 0);
        // Slot 0 still holds "a": reused without a write...
        assert_eq!(t.plan(3, b"a"), Plan::Point(0));
        // ...until it is overwritten with something else.
        for id in 10..(10 + u64::from(SLOTS) - 1) {
            install(&mut t, id, format!("x{id}").as_bytes());
        }
        assert_ne!(t.plan(3, b"a"), Plan::Point(0));
    }

    #[test]
    fn moving_a_cgroup_releases_its_old_slot() {
        let mut t = SlotTable::default();
        install(&mut t, 1, b"a");
        install(&mut t, 2, b"a");
        assert_eq!(install(&mut t, 1, b"b"), Plan::Write(1));
        assert_eq!((t.users(0), t.users(1)), (1, 1));
        assert_eq!(t.slot_of(1), Some(1));
        install(&mut t, 2, b"");
        assert_eq!(t.users(0), 0);
        assert_eq!(t.slot_of(2), Some(NO_RULES));
        assert_eq!(t.slots_in_use(), 1);
        t.remove(1);
        t.remove(1);
        assert_eq!((t.users(1), t.slot_of(1)), (0, None));
    }

    #[test]
    fn free_slots_are_handed_out_round_robin_after_the_last_write() {
        let mut t = SlotTable::default();
        install(&mut t, 1, b"a");
        install(&mut t, 2, b"b");
        t.remove(1);
        // Slot 0 is free again, but the next write goes after slot 1.
        assert_eq!(install(&mut t, 3, b"c"), Plan::Write(2));
        // The round wraps at the end of the map.
        let mut t = SlotTable::from_assignments([(1, SLOTS - 1)]);
        assert_eq!(t.plan(2, b"x"), Plan::Write(0));
        install(&mut t, 2, b"x");
        assert_eq!(t.plan(3, b"y"), Plan::Write(1));
    }

    #[test]
    fn a_previous_daemons_slots_are_in_use_but_never_shared() {
        let t = SlotTable::from_assignments([(1, 0), (2, 5), (3, NO_RULES)]);
        assert_eq!(t.users(5), 1);
        assert_eq!(t.plan(4, b"anything"), Plan::Write(6));
    }
}
