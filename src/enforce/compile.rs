//! Policy model -> kernel rule sets.

use crate::policy::{Action, Dst, Mode, Proto, Resolved};

use super::rules::{any_rule, cidr_rule, domain_rule, name_hash, DomainEntry, KernelRuleSet};
use crate::kernel::abi;

/// What a compile could not fully honour.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompileNotes {
    /// Domain rules compiled (matched against DNS answers in the kernel).
    pub domain_rules: usize,
    /// Rules beyond the kernel's per-set limit (they are dropped: the
    /// default action decides instead).
    pub truncated: usize,
    /// Domain rules whose name has the same hash as another name of the
    /// set (only a policy crafted to collide): the kernel cannot index
    /// them, so they never match there (`policy check` warns).
    pub hash_collisions: Vec<String>,
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
    let mut domains: Vec<DomainEntry> = Vec::new();
    for rule in &resolved.rules {
        let allow = rule.action == Action::Allow;
        let proto = protocol(rule.proto);
        let compiled = match &rule.dst {
            Dst::Any => any_rule(proto, rule.ports, allow),
            Dst::Cidr(net) => cidr_rule(net.network(), net.prefix_len(), proto, rule.ports, allow),
            Dst::Domain(name) | Dst::Wildcard(name) => {
                if rules.len() < max {
                    let wildcard = matches!(rule.dst, Dst::Wildcard(_));
                    let bit = 1u64 << rules.len();
                    let hash = name_hash(name);
                    let same_key = domains
                        .iter_mut()
                        .find(|d| d.wildcard == wildcard && name_hash(&d.name) == hash);
                    match same_key {
                        Some(d) if d.name == *name => d.mask |= bit,
                        Some(_) => notes.hash_collisions.push(name.clone()),
                        None => domains.push(DomainEntry {
                            wildcard,
                            name: name.clone(),
                            mask: bit,
                        }),
                    }
                    notes.domain_rules += 1;
                }
                domain_rule(proto, rule.ports, allow)
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
        domains,
    };
    (set, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    #[test]
    fn names_with_one_hash_are_one_entry_only_when_equal() {
        // The collider has github.com's hash (see enforce::rules tests).
        let p = Policy::parse_str(
            "default:\n  rules:\n\
             \x20   - {dst: github.com, proto: tcp, action: allow}\n\
             \x20   - {dst: github.com, proto: udp, action: allow}\n\
             \x20   - {dst: aftkdtesaxvlafewbcokawpmanhicsfx.collide.test, proto: tcp, action: allow}\n\
             \x20   - {dst: .github.com, proto: tcp, action: allow}\n",
            "t.yaml",
        )
        .unwrap();
        let (set, notes) = compile(&p.rules_for(None, None));
        assert_eq!(
            notes.hash_collisions,
            ["aftkdtesaxvlafewbcokawpmanhicsfx.collide.test"]
        );
        let names: Vec<(bool, &str, u64)> = set
            .domains
            .iter()
            .map(|d| (d.wildcard, d.name.as_str(), d.mask))
            .collect();
        assert_eq!(
            names,
            [(false, "github.com", 0b11), (true, "github.com", 0b1000)]
        );
    }
}
