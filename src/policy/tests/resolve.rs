//! Resolution (agent refines project, fallbacks) and first-match decisions.

use super::{err, host, ip, ok};
use crate::policy::{Action, Proto, Target};

const POLICY: &str = r#"
default:
  default_action: deny
  rules:
    - {dst: "*", proto: dns}
projects:
  web:
    default_action: deny
    rules:
      - {dst: github.com, proto: https}
      - {dst: .internal.example, action: deny}
      - {dst: 10.0.0.0/8, port: "5432"}
      - {dst: "2001:db8::/32", proto: tcp}
    agents:
      claude:
        rules:
          - {dst: github.com, action: deny}
          - {dst: api.internal.example, proto: https}
      codex:
        default_action: allow
  open:
    default_action: allow
  inherit: {}
"#;

#[test]
fn agent_rules_come_first_then_project_rules() {
    let p = ok(POLICY);
    let r = p.rules_for(Some("claude"), Some("web"));
    assert_eq!(r.rules.len(), 6);
    assert_eq!(r.scope, "project web, agent claude");
    assert_eq!(r.rules[0].origin.scope, "project web, agent claude, rule 1");
    assert_eq!(r.rules[2].origin.scope, "project web, rule 1");
    // The agent's deny shadows the project's allow.
    let d = r.decide(&host("github.com", 443));
    assert_eq!(d.action, Action::Deny);
    assert_eq!(d.rule.unwrap().scope, "project web, agent claude, rule 1");
    // The agent's allow shadows the project's wildcard deny.
    assert_eq!(
        r.decide(&host("api.internal.example", 443)).action,
        Action::Allow
    );
    assert_eq!(
        r.decide(&host("db.internal.example", 443)).action,
        Action::Deny
    );
    // Another agent of the project gets the project's rules.
    let other = p.rules_for(Some("aider"), Some("web"));
    assert_eq!(other.decide(&host("github.com", 443)).action, Action::Allow);
}

#[test]
fn default_action_inherits_agent_project_default_builtin() {
    let p = ok(POLICY);
    let d = |a, pr| p.rules_for(a, pr);
    assert_eq!(d(Some("codex"), Some("web")).default_action, Action::Allow);
    assert_eq!(
        d(Some("codex"), Some("web")).default_from,
        "default_action of agent codex of project web"
    );
    assert_eq!(
        d(Some("claude"), Some("web")).default_from,
        "default_action of project web"
    );
    assert_eq!(d(None, Some("open")).default_action, Action::Allow);
    assert_eq!(
        d(None, Some("inherit")).default_from,
        "default_action of default section"
    );
    let bare = ok("projects: {x: {}}\n");
    let r = bare.rules_for(None, Some("x"));
    assert_eq!(r.default_action, Action::Deny);
    assert!(r.default_from.starts_with("built-in"), "{}", r.default_from);
    let decision = r.decide(&host("a.com", 1));
    assert_eq!(decision.rule, None);
    assert!(decision.reason.contains("built-in"), "{}", decision.reason);
}

#[test]
fn unknown_or_missing_labels_fall_back_to_the_default_section() {
    let p = ok(POLICY);
    for (agent, project) in [
        (None, None),
        (Some("claude"), None),
        (Some("claude"), Some("nope")),
        (None, Some("")),
        (None, Some("Web")),
    ] {
        let r = p.rules_for(agent, project);
        assert_eq!(r.scope, "default section", "{agent:?} {project:?}");
        assert_eq!(r.rules.len(), 2);
        assert_eq!(r.decide(&host("github.com", 443)).action, Action::Deny);
        assert_eq!(
            r.decide(&ip("8.8.8.8", 53, Proto::Udp)).action,
            Action::Allow
        );
    }
}

#[test]
fn wildcard_matches_apex_and_subdomains_only_on_label_boundaries() {
    let p = ok("default:\n  rules:\n    - {dst: .example.com}\n    - {dst: '*.corp.test'}\n");
    let r = p.rules_for(None, None);
    let allow = |h: &str| r.decide(&host(h, 443)).action == Action::Allow;
    assert!(allow("example.com"), "apex");
    assert!(allow("a.example.com") && allow("a.b.example.com"));
    assert!(allow("A.Example.COM."), "case and trailing dot");
    assert!(!allow("badexample.com"), "not a label boundary");
    assert!(!allow("example.com.evil.net"));
    assert!(allow("corp.test") && allow("x.corp.test"));
    assert!(!allow("xcorp.test"));
}

#[test]
fn exact_domain_does_not_match_subdomains() {
    let p = ok("default:\n  rules:\n    - {dst: github.com}\n");
    let r = p.rules_for(None, None);
    assert_eq!(r.decide(&host("github.com", 1)).action, Action::Allow);
    assert_eq!(r.decide(&host("api.github.com", 1)).action, Action::Deny);
}

#[test]
fn domain_rules_need_a_host_and_cidr_rules_need_an_address() {
    let p = ok(
        "default:\n  rules:\n    - {dst: github.com}\n    - {dst: 140.82.112.0/20, action: deny}\n",
    );
    let r = p.rules_for(None, None);
    assert_eq!(
        r.decide(&ip("140.82.112.3", 443, Proto::Tcp)).action,
        Action::Deny
    );
    let both = Target {
        host: Some("github.com".into()),
        ip: Some("140.82.112.3".parse().unwrap()),
        port: 443,
        proto: Proto::Tcp,
    };
    assert_eq!(
        r.decide(&both).action,
        Action::Allow,
        "first match: the domain rule"
    );
}

#[test]
fn cidr_v4_and_v6_ports_and_protocols() {
    let p = ok(POLICY);
    let r = p.rules_for(None, Some("web"));
    assert_eq!(
        r.decide(&ip("10.9.8.7", 5432, Proto::Tcp)).action,
        Action::Allow
    );
    assert_eq!(
        r.decide(&ip("10.9.8.7", 5432, Proto::Udp)).action,
        Action::Allow,
        "any proto"
    );
    assert_eq!(
        r.decide(&ip("10.9.8.7", 5433, Proto::Tcp)).action,
        Action::Deny
    );
    assert_eq!(
        r.decide(&ip("11.0.0.1", 5432, Proto::Tcp)).action,
        Action::Deny
    );
    assert_eq!(
        r.decide(&ip("2001:db8::1", 8080, Proto::Tcp)).action,
        Action::Allow
    );
    assert_eq!(
        r.decide(&ip("2001:db8::1", 8080, Proto::Udp)).action,
        Action::Deny
    );
    assert_eq!(
        r.decide(&ip("2001:db9::1", 8080, Proto::Tcp)).action,
        Action::Deny
    );
    // A v4-mapped destination is the v4 address, as the kernel decides it
    // (see `ipv4_mapped_rules_and_destinations_are_ipv4`).
    assert_eq!(
        r.decide(&ip("::ffff:10.0.0.1", 5432, Proto::Tcp)).action,
        r.decide(&ip("10.0.0.1", 5432, Proto::Tcp)).action,
    );
    assert_eq!(
        r.decide(&ip("::ffff:10.0.0.1", 5432, Proto::Tcp)).action,
        Action::Allow
    );
}

#[test]
fn port_range_bounds_are_inclusive() {
    let p = ok("default:\n  rules:\n    - {dst: '*', proto: tcp, port: 9000-9100}\n");
    let r = p.rules_for(None, None);
    let at = |port| r.decide(&ip("192.0.2.1", port, Proto::Tcp)).action;
    assert_eq!(
        [at(8999), at(9000), at(9100), at(9101)],
        [Action::Deny, Action::Allow, Action::Allow, Action::Deny]
    );
}

#[test]
fn resolved_carries_mode_and_raw_sockets() {
    let p = ok("mode: audit\nraw_sockets: allow\n");
    let r = p.rules_for(Some("a"), Some("b"));
    assert_eq!(r.mode, crate::policy::Mode::Audit);
    assert_eq!(r.raw_sockets, Action::Allow);
}

#[test]
fn decision_reason_names_the_rule() {
    let p = ok(POLICY);
    let d = p
        .rules_for(None, Some("web"))
        .decide(&host("x.internal.example", 80));
    assert_eq!(d.action, Action::Deny);
    assert!(
        d.reason.contains("deny .internal.example any/*"),
        "{}",
        d.reason
    );
    assert_eq!(d.rule.unwrap().line, 11);
}

#[test]
fn inbound_inherits_agent_project_default_and_else_allows() {
    let p = ok("default:\n  inbound: deny\n\
         projects:\n  web:\n    inbound: allow\n    agents:\n      locked:\n        inbound: deny\n      free: {}\n\
         \x20 ops:\n    default_action: allow\n");
    assert_eq!(
        p.rules_for(Some("locked"), Some("web")).inbound,
        Action::Deny
    );
    assert_eq!(
        p.rules_for(Some("free"), Some("web")).inbound,
        Action::Allow,
        "the project's"
    );
    assert_eq!(
        p.rules_for(None, Some("ops")).inbound,
        Action::Deny,
        "the default section's"
    );
    assert_eq!(p.rules_for(None, None).inbound, Action::Deny);
    let nothing = ok("default:\n  default_action: deny\n");
    assert_eq!(
        nothing.rules_for(None, None).inbound,
        Action::Allow,
        "unsaid: allow"
    );
    let (line, _, reason) = err("default:\n  inbound: maybe\n");
    assert_eq!(line, 2, "{reason}");
}

/// The kernel decides a connect to `::ffff:a.b.c.d` as IPv4: a rule written
/// in the mapped range is the IPv4 rule, and an IPv4 rule covers the mapped
/// destination, in `explain` exactly as in the kernel (review finding: a
/// `::ffff:127.0.0.0/104` deny never matched in the kernel while explain
/// said it did).
#[test]
fn ipv4_mapped_rules_and_destinations_are_ipv4() {
    let p = ok(r#"
default:
  default_action: allow
  rules:
    - {dst: "::ffff:127.0.0.0/104", action: deny}
    - {dst: "::ffff:10.1.2.3", action: deny}
    - {dst: 192.168.0.0/16, action: deny}
    - {dst: "::/0", proto: udp, action: deny}
"#);
    let r = p.rules_for(None, None);
    let rule = |i: usize| format!("{}", r.rules[i].dst);
    assert_eq!(rule(0), "127.0.0.0/8");
    assert_eq!(rule(1), "10.1.2.3/32");
    let deny = |a: &str, proto| r.decide(&ip(a, 80, proto)).action == Action::Deny;
    assert!(deny("127.0.0.1", Proto::Tcp));
    assert!(deny("::ffff:127.0.0.1", Proto::Tcp));
    assert!(deny("10.1.2.3", Proto::Tcp));
    assert!(deny("::ffff:192.168.1.1", Proto::Tcp));
    // `::/0` is all of IPv6: an IPv4 destination, mapped or not, is not in it.
    assert!(deny("2001:db8::1", Proto::Udp));
    assert!(!deny("::ffff:8.8.8.8", Proto::Udp));
    assert!(!deny("8.8.8.8", Proto::Udp));
}
