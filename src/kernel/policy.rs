//! Policy maps: compiled rule sets, which set governs each scope cgroup,
//! and audited bypasses. Written by the daemon (policy) and by the `bypass`
//! command (through the pins); read by `decide()` in the kernel.

use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::abi;
use super::error::{bpf_err, dup_handle, KernelError};
use super::pod::{bytes_of, from_bytes};

pub struct PolicyMaps {
    container_policy: MapHandle,
    policy_rules: MapHandle,
    bypass: MapHandle,
    domain_rules: Option<MapHandle>,
}

impl PolicyMaps {
    pub(super) fn new(
        container_policy: &MapHandle,
        policy_rules: &MapHandle,
        bypass: &MapHandle,
    ) -> Result<Self, KernelError> {
        Ok(PolicyMaps {
            container_policy: dup_handle(container_policy, "container_policy")?,
            policy_rules: dup_handle(policy_rules, "policy_rules")?,
            bypass: dup_handle(bypass, "bypass")?,
            domain_rules: None,
        })
    }

    /// Also write domain rules (the daemon does; `bypass` needs none).
    pub(super) fn with_domains(mut self, domain_rules: &MapHandle) -> Result<Self, KernelError> {
        self.domain_rules = Some(dup_handle(domain_rules, "domain_rules")?);
        Ok(self)
    }

    /// Every domain entry in the kernel (read once, at start-up).
    pub fn domain_keys(&self) -> Vec<abi::domain_key> {
        let Some(map) = &self.domain_rules else {
            return Vec::new();
        };
        map.keys().filter_map(|k| from_bytes(&k)).collect()
    }

    /// Which of rule set `key.rule_set`'s domain rules (bits) a name
    /// matches, with the name (the kernel confirms every hash hit on it).
    pub fn put_domain(
        &self,
        key: &abi::domain_key,
        value: &abi::domain_value,
    ) -> Result<(), KernelError> {
        let Some(map) = &self.domain_rules else {
            return Ok(());
        };
        map.update(bytes_of(key), bytes_of(value), MapFlags::ANY)
            .map_err(bpf_err("write domain rule"))
    }

    /// Removing a key that is not there is not an error.
    pub fn delete_domain(&self, key: &abi::domain_key) {
        if let Some(map) = &self.domain_rules {
            let _ = map.delete(bytes_of(key));
        }
    }

    /// Open the maps a running (or stopped) daemon pinned: the `bypass`
    /// command writes through these.
    pub fn open_pinned(maps_dir: &Path) -> Result<Self, KernelError> {
        let open = |name: &str| {
            MapHandle::from_pinned_path(maps_dir.join(name)).map_err(bpf_err(format!(
                "open pinned map {name} (is the daemon attached?)"
            )))
        };
        Ok(PolicyMaps {
            container_policy: open("container_policy")?,
            policy_rules: open("policy_rules")?,
            bypass: open("bypass")?,
            domain_rules: None,
        })
    }

    /// Write a whole rule set into slot `set`, terminated by RULE_END
    /// unless it fills the slot (the kernel stops at EGRESS_MAX_RULES).
    pub fn write_rule_set(&self, set: u32, rules: &[abi::policy_rule]) -> Result<(), KernelError> {
        let max = abi::EGRESS_MAX_RULES as usize;
        if rules.len() > max || set >= abi::EGRESS_MAX_POLICIES {
            return Err(KernelError::Bpf {
                what: format!(
                    "rule set {set} with {} rules (max {} sets of {} rules)",
                    rules.len(),
                    abi::EGRESS_MAX_POLICIES,
                    max
                ),
                source: libbpf_rs::Error::from(std::io::Error::from(
                    std::io::ErrorKind::InvalidInput,
                )),
            });
        }
        let end = abi::policy_rule::default(); // kind RULE_END
        let terminator = (rules.len() < max).then_some(&end);
        for (i, rule) in rules.iter().chain(terminator).enumerate() {
            let key = set * abi::EGRESS_MAX_RULES + i as u32;
            self.policy_rules
                .update(&key.to_ne_bytes(), bytes_of(rule), MapFlags::ANY)
                .map_err(bpf_err("write policy rule"))?;
        }
        Ok(())
    }

    /// Point a scope cgroup at a rule set: one map update, so a decision
    /// sees the old policy or the new one, never a mix.
    pub fn assign(
        &self,
        scope_cgroup_id: u64,
        policy: &abi::container_policy,
    ) -> Result<(), KernelError> {
        self.container_policy
            .update(
                &scope_cgroup_id.to_ne_bytes(),
                bytes_of(policy),
                MapFlags::ANY,
            )
            .map_err(bpf_err(format!(
                "assign policy to cgroup {scope_cgroup_id}"
            )))
    }

    pub fn unassign(&self, scope_cgroup_id: u64) {
        let _ = self.container_policy.delete(&scope_cgroup_id.to_ne_bytes());
    }

    pub fn assignments(&self) -> Vec<(u64, abi::container_policy)> {
        by_cgroup(&self.container_policy)
    }

    pub fn set_bypass(
        &self,
        scope_cgroup_id: u64,
        entry: &abi::bypass_entry,
    ) -> Result<(), KernelError> {
        self.bypass
            .update(
                &scope_cgroup_id.to_ne_bytes(),
                bytes_of(entry),
                MapFlags::ANY,
            )
            .map_err(bpf_err(format!("bypass cgroup {scope_cgroup_id}")))
    }

    /// End a bypass; returns what it was, if there was one.
    pub fn clear_bypass(&self, scope_cgroup_id: u64) -> Option<abi::bypass_entry> {
        let v = self
            .bypass
            .lookup_and_delete(&scope_cgroup_id.to_ne_bytes())
            .ok()
            .flatten()?;
        from_bytes(&v)
    }

    pub fn bypasses(&self) -> Vec<(u64, abi::bypass_entry)> {
        by_cgroup(&self.bypass)
    }
}

/// Every entry of a map keyed by a scope cgroup id. Entries that vanish
/// while iterating are skipped.
fn by_cgroup<V: Copy>(map: &MapHandle) -> Vec<(u64, V)> {
    map.keys()
        .filter_map(|k| {
            let id = from_bytes::<u64>(&k)?;
            let v = map.lookup(&k, MapFlags::ANY).ok().flatten()?;
            Some((id, from_bytes(&v)?))
        })
        .collect()
}
