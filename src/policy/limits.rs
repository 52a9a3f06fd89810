//! What the enforcing side can hold: rules per rule set and distinct rule
//! sets. A policy beyond either is rejected (at `policy check`, at start-up
//! and at reload) instead of being cut down in silence: a dropped rule is a
//! different policy from the one `policy explain` shows.
//!
//! The numbers come from the enforcing side (`enforce::KERNEL_LIMITS`); this
//! module only counts.

use std::collections::HashSet;

use super::model::{Action, Dst, Policy, Proto, Resolved, Rule};
use super::PolicyError;

/// Capacity of the enforcing side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rules one container's rule set may have (agent + project rules).
    pub rules_per_set: usize,
    /// Distinct non-empty rule sets the whole policy may compile to.
    pub rule_sets: usize,
}

/// What a compiled rule set is made of: equal keys compile to equal kernel
/// rule sets (where a rule was written does not matter).
pub type ContentKey = Vec<(Dst, Proto, Option<(u16, u16)>, Action)>;

/// The content of one resolved rule list.
pub fn content_key(rules: &[Rule]) -> ContentKey {
    rules
        .iter()
        .map(|r| (r.dst.clone(), r.proto, r.ports, r.action))
        .collect()
}

impl Policy {
    /// Every rule list a container can be given, with the labels that
    /// select it: the default section, each project alone (agent unlisted
    /// or unlabelled) and each listed agent of each project.
    pub fn every_rule_set(&self) -> Vec<(Option<&str>, Option<&str>, Resolved)> {
        let mut out = vec![(None, None, self.rules_for(None, None))];
        for (project, pp) in &self.projects {
            out.push((
                None,
                Some(project.as_str()),
                self.rules_for(None, Some(project)),
            ));
            for agent in pp.agents.keys() {
                out.push((
                    Some(agent.as_str()),
                    Some(project.as_str()),
                    self.rules_for(Some(agent), Some(project)),
                ));
            }
        }
        out
    }

    /// Does the whole policy fit `limits`? The first excess is the error,
    /// pointing at the first rule that does not fit.
    pub fn check_limits(&self, file: &str, limits: &Limits) -> Result<(), PolicyError> {
        let mut distinct: HashSet<ContentKey> = HashSet::new();
        for (_, _, resolved) in self.every_rule_set() {
            if let Some(over) = resolved.rules.get(limits.rules_per_set) {
                return Err(PolicyError::At {
                    file: over.origin.file.clone(),
                    line: over.origin.line,
                    column: over.origin.column,
                    reason: format!(
                        "the rule set of {} has {} rules; the kernel holds at most {} per rule set \
                         (this is rule {})",
                        resolved.scope,
                        resolved.rules.len(),
                        limits.rules_per_set,
                        limits.rules_per_set + 1
                    ),
                });
            }
            if !resolved.rules.is_empty() {
                distinct.insert(content_key(&resolved.rules));
            }
        }
        if distinct.len() > limits.rule_sets {
            return Err(PolicyError::Limit {
                file: file.to_string(),
                reason: format!(
                    "{} distinct rule sets (default section, projects, agents); the kernel holds \
                     at most {}",
                    distinct.len(),
                    limits.rule_sets
                ),
            });
        }
        Ok(())
    }
}
