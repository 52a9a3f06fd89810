//! Policy model -> kernel rule sets.

use crate::policy::{Action, Dst, Mode, Proto, Resolved};

use super::rules::{any_rule, cidr_rule, KernelRuleSet};
use crate::kernel::abi;

/// Rules the kernel cannot evaluate yet, said once per compile.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompileNotes {
    /// Domain rules: matched against DNS answers once DNS attribution is in
    /// the kernel; until then they never match (documented in POLICY.md).
    pub domain_rules: usize,
    /// Rules beyond the kernel's per-set limit (they are dropped: the
    /// default action decides instead).
    pub truncated: usize,
}

fn protocol(p: Proto) -> u8 {
    match p {
        Proto::Any => 0,
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
        Proto::Icmp => libc::IPPROTO_ICMP as u8,
    }
}

/// Compile one container's resolved rules, in order (first match wins).
pub fn compile(resolved: &Resolved) -> (KernelRuleSet, CompileNotes) {
    let mut notes = CompileNotes::default();
    let max = abi::EGRESS_MAX_RULES as usize - 1;
    let mut rules = Vec::new();
    for rule in &resolved.rules {
        let allow = rule.action == Action::Allow;
        let proto = protocol(rule.proto);
        let compiled = match &rule.dst {
            Dst::Any => any_rule(proto, rule.ports, allow),
            Dst::Cidr(net) => cidr_rule(net.network(), net.prefix_len(), proto, rule.ports, allow),
            Dst::Domain(_) | Dst::Wildcard(_) => {
                notes.domain_rules += 1;
                continue;
            }
        };
        if rules.len() == max {
            notes.truncated += 1;
            continue;
        }
        rules.push(compiled);
    }
    let set = KernelRuleSet {
        audit: resolved.mode == Mode::Audit,
        default_allow: resolved.default_action == Action::Allow,
        raw_allow: resolved.raw_sockets == Action::Allow,
        rules,
    };
    (set, notes)
}
