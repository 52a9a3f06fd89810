//! clawker's `.clawker.yaml` loads unchanged as one project's rules.

use std::path::Path;

use super::{host, ip, ok, FIXTURES};
use crate::policy::{Action, Dst, Policy, Proto};

fn fixture_policy() -> Policy {
    Policy::load(&Path::new(FIXTURES).join("policy.yaml")).unwrap()
}

#[test]
fn realistic_clawker_file_loads_as_a_project() {
    let p = Policy::from_clawker_file(&Path::new(FIXTURES).join("clawker.yaml"), "web").unwrap();
    let rules = &p.projects["web"].rules.rules;
    // 4 explicit rules, then 3 add_domains.
    assert_eq!(rules.len(), 7);
    let r0 = &rules[0];
    assert_eq!(r0.dst, Dst::Cidr("10.20.0.0/16".parse().unwrap()));
    assert_eq!(
        (r0.proto, r0.ports, r0.action),
        (Proto::Tcp, Some((9000, 9100)), Action::Allow)
    );
    assert_eq!(
        (rules[1].proto, rules[1].ports),
        (Proto::Tcp, Some((22, 22))),
        "ssh"
    );
    assert_eq!(rules[2].not_enforced, ["path_rules", "path_default"]);
    assert_eq!(rules[3].action, Action::Deny);
    assert_eq!(
        (rules[3].proto, rules[3].ports),
        (Proto::Tcp, Some((443, 443))),
        "no proto: https"
    );
    assert_eq!(rules[4].dst, Dst::Domain("github.com".into()));
    assert_eq!(rules[5].dst, Dst::Wildcard("datadoghq.com".into()));
    assert_eq!(
        (rules[5].proto, rules[5].ports),
        (Proto::Tcp, Some((443, 443)))
    );
    assert_eq!(rules[5].origin.scope, "project web, clawker add_domains 2");
    assert!(rules[5].origin.file.ends_with("clawker.yaml"));
    assert_eq!(rules[0].origin.scope, "project web, clawker, rule 1");
}

#[test]
fn other_sections_are_ignored_and_unknown_firewall_keys_warned() {
    let p = Policy::from_clawker_file(&Path::new(FIXTURES).join("clawker.yaml"), "web").unwrap();
    let w = p.warnings.join("\n");
    assert!(w.contains("security.firewall.enable is not used"), "{w}");
    assert!(w.contains("path_rules is L7-only"), "{w}");
    assert!(!w.contains("build") && !w.contains("docker_socket"), "{w}");
}

#[test]
fn clawker_file_from_policy_follows_own_project_rules() {
    let p = fixture_policy();
    let web = &p.projects["web"].rules.rules;
    // Own rules (v6 CIDR, pypi) first, then the clawker file's 7.
    assert_eq!(web.len(), 9);
    assert!(web[0].origin.file.ends_with("policy.yaml"));
    assert!(web[2].origin.file.ends_with("clawker.yaml"));
}

#[test]
fn inline_clawker_document() {
    let p = ok("projects:\n  web:\n    clawker:\n      build: {image: x}\n      security:\n        firewall:\n          add_domains: [github.com, .npmjs.org]\n          rules:\n            - {dst: 10.0.0.0/8, proto: tcp, port: \"5432\", action: allow}\n");
    let r = p.rules_for(None, Some("web"));
    assert_eq!(
        r.decide(&host("registry.npmjs.org", 443)).action,
        Action::Allow
    );
    assert_eq!(
        r.decide(&host("github.com", 80)).action,
        Action::Deny,
        "add_domains is https only"
    );
    assert_eq!(
        r.decide(&ip("10.1.2.3", 5432, Proto::Tcp)).action,
        Action::Allow
    );
    let o = r.decide(&host("github.com", 443)).rule.unwrap();
    assert_eq!((o.file.as_str(), o.line), ("p.yaml", 7));
}

#[test]
fn clawker_without_firewall_section_is_empty_with_a_warning() {
    let p = ok("projects:\n  web:\n    clawker: {build: {image: x}}\n");
    assert!(p.projects["web"].rules.rules.is_empty());
    assert!(p
        .warnings
        .iter()
        .any(|w| w.contains("no security.firewall")));
}

#[test]
fn clawker_rule_typos_are_errors() {
    let e = Policy::parse_str(
        "projects:\n  web:\n    clawker:\n      security:\n        firewall:\n          rules:\n            - {dst: a.com, acton: deny}\n",
        "p.yaml",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("p.yaml:7:28: unknown key \"acton\""),
        "{e}"
    );
}

#[test]
fn errors_inside_a_clawker_file_name_that_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".clawker.yaml"),
        "agent: {}\nsecurity:\n  firewall:\n    add_domains: [github.com, 'bad domain']\n",
    )
    .unwrap();
    let pol = dir.path().join("policy.yaml");
    std::fs::write(&pol, "projects:\n  web:\n    clawker_file: .clawker.yaml\n").unwrap();
    let e = Policy::load(&pol).unwrap_err().to_string();
    assert!(e.contains(".clawker.yaml:4:31: dst \"bad domain\""), "{e}");
}
