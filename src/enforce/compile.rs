//! Policy model -> kernel rule sets, and what the kernel can hold.

use std::path::Path;

use crate::policy::{Action, Dst, Limits, Mode, Policy, PolicyError, Proto, Resolved};

use super::rules::{any_rule, cidr_rule, domain_rule, name_hash, DomainEntry, KernelRuleSet};
use crate::kernel::abi;

/// Rule-set slots kept free so a reload can write a new rule set while
/// the old one is still deciding (see `RuleSetWriter`).
pub const RESERVED_SLOTS: u32 = 1;

/// What the kernel holds: `EGRESS_MAX_RULES` rules per set, and
/// `EGRESS_MAX_POLICIES` slots minus the reserved one for distinct
/// non-empty rule sets (containers with equal rules share a slot; an empty
/// rule set needs none).
pub const KERNEL_LIMITS: Limits = Limits {
    rules_per_set: abi::EGRESS_MAX_RULES as usize,
    rule_sets: (abi::EGRESS_MAX_POLICIES - RESERVED_SLOTS) as usize,
};

/// Read, validate and check a policy file against the kernel's limits:
/// what `policy check`, start-up and every reload accept.
pub fn load_policy(path: &Path) -> Result<Policy, PolicyError> {
    let policy = Policy::load(path)?;
    policy.check_limits(&path.display().to_string(), &KERNEL_LIMITS)?;
    Ok(policy)
}

/// A rule list the kernel cannot hold: never installed cut down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rules} rules in the rule set of {scope}; the kernel holds at most {max}")]
pub struct TooManyRules {
    pub scope: String,
    pub rules: usize,
    pub max: usize,
}

/// What a compile noticed without refusing the set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompileNotes {
    /// Domain rules compiled (matched against DNS answers in the kernel).
    pub domain_rules: usize,
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
/// Every rule is kept or the whole set is refused.
pub fn compile(resolved: &Resolved) -> Result<(KernelRuleSet, CompileNotes), TooManyRules> {
    let max = KERNEL_LIMITS.rules_per_set;
    if resolved.rules.len() > max {
        return Err(TooManyRules {
            scope: resolved.scope.clone(),
            rules: resolved.rules.len(),
            max,
        });
    }
    let mut notes = CompileNotes::default();
    let mut rules = Vec::with_capacity(resolved.rules.len());
    let mut domains: Vec<DomainEntry> = Vec::new();
    for rule in &resolved.rules {
        let allow = rule.action == Action::Allow;
        let proto = protocol(rule.proto);
        let compiled = match &rule.dst {
            Dst::Any => any_rule(proto, rule.ports, allow),
            Dst::Cidr(net) => cidr_rule(net.network(), net.prefix_len(), proto, rule.ports, allow),
            Dst::Domain(name) | Dst::Wildcard(name) => {
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
                domain_rule(proto, rule.ports, allow)
            }
        };
        rules.push(compiled);
    }
    let set = KernelRuleSet {
        audit: resolved.mode == Mode::Audit,
        default_allow: resolved.default_action == Action::Allow,
        raw_allow: resolved.raw_sockets == Action::Allow,
        inbound_deny: resolved.inbound == Action::Deny,
        rules,
        domains,
    };
    Ok((set, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: usize) -> String {
        let mut s = String::from("default:\n  default_action: allow\n  rules:\n");
        for i in 0..rules {
            s.push_str(&format!(
                "    - {{dst: 10.{}.{}.0/24, action: allow}}\n",
                i / 256,
                i % 256
            ));
        }
        s
    }

    #[test]
    fn every_rule_keeps_its_place_fields_and_action() {
        let p = Policy::parse_str(
            "mode: audit\nraw_sockets: allow\ndefault:\n  default_action: allow\n  rules:\n\
             \x20   - {dst: 10.1.0.0/16, proto: tcp, port: 443, action: deny}\n\
             \x20   - {dst: \"2001:db8::/32\", proto: udp, port: \"1000-2000\"}\n\
             \x20   - {dst: \"*\", proto: icmp, action: deny}\n\
             \x20   - {dst: Example.COM., proto: tcp}\n\
             \x20   - {dst: \"*.example.com\", action: deny}\n\
             \x20   - {dst: example.com, proto: udp, action: deny}\n",
            "p.yaml",
        )
        .unwrap();
        let (set, notes) = compile(&p.rules_for(None, None)).unwrap();
        assert!(set.audit && set.default_allow && set.raw_allow);
        use abi::rule_kind::{RULE_ANY, RULE_CIDR, RULE_DOMAIN};
        let allow = abi::egress_verdict::VERDICT_ALLOW as u8;
        let deny = abi::egress_verdict::VERDICT_DENY as u8;
        let got: Vec<(u8, u8, u8, u8, u16, u16, u8)> = set
            .rules
            .iter()
            .map(|r| {
                let r = *r;
                (
                    r.kind,
                    r.family,
                    r.prefix_len,
                    r.protocol,
                    r.port_lo,
                    r.port_hi,
                    r.action,
                )
            })
            .collect();
        let (tcp, udp, icmp) = (6, 17, 1);
        let (v4, v6) = (libc::AF_INET as u8, libc::AF_INET6 as u8);
        assert_eq!(
            got,
            [
                (RULE_CIDR as u8, v4, 16, tcp, 443, 443, deny),
                (RULE_CIDR as u8, v6, 32, udp, 1000, 2000, allow),
                (RULE_ANY as u8, 0, 0, icmp, 0, 0, deny),
                (RULE_DOMAIN as u8, 0, 0, tcp, 0, 0, allow),
                (RULE_DOMAIN as u8, 0, 0, 0, 0, 0, deny),
                (RULE_DOMAIN as u8, 0, 0, udp, 0, 0, deny),
            ]
        );
        assert_eq!(set.rules[0].addr[..4], [10, 1, 0, 0]);
        assert_eq!(set.rules[1].addr[..4], [0x20, 0x01, 0x0d, 0xb8]);
        // One entry per (name, wildcard): bit i is rule i.
        let domains: Vec<(bool, &str, u64)> = set
            .domains
            .iter()
            .map(|d| (d.wildcard, d.name.as_str(), d.mask))
            .collect();
        assert_eq!(
            domains,
            [
                (false, "example.com", 0b10_1000),
                (true, "example.com", 0b1_0000)
            ]
        );
        assert_eq!(notes.domain_rules, 3);
        assert!(notes.hash_collisions.is_empty());
    }

    #[test]
    fn enforce_mode_and_deny_defaults_compile_to_their_flags() {
        let p = Policy::parse_str("default:\n  default_action: deny\n", "p.yaml").unwrap();
        let (set, notes) = compile(&p.rules_for(None, None)).unwrap();
        assert!(!set.audit && !set.default_allow && !set.raw_allow);
        assert!(!set.inbound_deny, "inbound unsaid: allowed");
        assert!(set.rules.is_empty() && set.domains.is_empty());
        let p = Policy::parse_str("default:\n  inbound: deny\n", "p.yaml").unwrap();
        let (set, _) = compile(&p.rules_for(None, None)).unwrap();
        assert!(set.inbound_deny);
        assert!(
            set.content().is_empty(),
            "inbound lives in the header, not a slot"
        );
        assert_eq!(notes, CompileNotes::default());
        assert!(set.content().is_empty(), "an empty set needs no slot");
    }

    #[test]
    fn a_full_rule_set_compiles_whole() {
        let p = Policy::parse_str(&policy(64), "p.yaml").unwrap();
        p.check_limits("p.yaml", &KERNEL_LIMITS).unwrap();
        let (set, _) = compile(&p.rules_for(None, None)).unwrap();
        assert_eq!(set.rules.len(), 64, "the 64th rule is kept");
    }

    #[test]
    fn one_rule_too_many_is_an_error_not_a_cut() {
        let p = Policy::parse_str(&policy(65), "p.yaml").unwrap();
        let e = p.check_limits("p.yaml", &KERNEL_LIMITS).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("p.yaml:"), "{msg}");
        assert!(msg.contains("at most 64"), "{msg}");
        assert!(msg.contains("rule 65"), "{msg}");
        let err = compile(&p.rules_for(None, None)).unwrap_err();
        assert_eq!(err.rules, 65);
    }

    #[test]
    fn agent_plus_project_rules_count_together() {
        let mut s = String::from("projects:\n  web:\n    rules:\n");
        for i in 0..40 {
            s.push_str(&format!("      - {{dst: 10.0.{i}.0/24, action: allow}}\n"));
        }
        s.push_str("    agents:\n      bot:\n        rules:\n");
        for i in 0..25 {
            s.push_str(&format!(
                "          - {{dst: 10.1.{i}.0/24, action: deny}}\n"
            ));
        }
        let p = Policy::parse_str(&s, "p.yaml").unwrap();
        let e = p.check_limits("p.yaml", &KERNEL_LIMITS).unwrap_err();
        assert!(e.to_string().contains("agent bot"), "{e}");
    }

    fn projects(n: usize, same_rules: bool) -> String {
        let mut s = String::from("projects:\n");
        for i in 0..n {
            let net = if same_rules { 0 } else { i };
            s.push_str(&format!(
                "  p{i}:\n    rules:\n      - {{dst: 10.{}.{}.0/24, action: allow}}\n",
                net / 256,
                net % 256
            ));
        }
        s
    }

    #[test]
    fn more_distinct_rule_sets_than_slots_is_an_error() {
        let fits = Policy::parse_str(&projects(255, false), "p.yaml").unwrap();
        fits.check_limits("p.yaml", &KERNEL_LIMITS).unwrap();
        let over = Policy::parse_str(&projects(256, false), "p.yaml").unwrap();
        let e = over.check_limits("p.yaml", &KERNEL_LIMITS).unwrap_err();
        assert!(matches!(e, PolicyError::Limit { .. }), "{e}");
        assert!(e.to_string().contains("256 distinct rule sets"), "{e}");
    }

    #[test]
    fn equal_rule_sets_count_once() {
        let p = Policy::parse_str(&projects(400, true), "p.yaml").unwrap();
        p.check_limits("p.yaml", &KERNEL_LIMITS).unwrap();
    }
}

#[cfg(test)]
mod collision_tests {
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
        let (set, notes) = compile(&p.rules_for(None, None)).unwrap();
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
