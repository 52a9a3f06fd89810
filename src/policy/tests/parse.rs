//! Our own schema: shapes, values, defaults.

use ipnet::IpNet;

use super::ok;
use crate::policy::{Action, Dst, Mode, Proto};

#[test]
fn empty_file_is_deny_everything_with_a_warning() {
    let p = ok("");
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.raw_sockets, Action::Deny);
    assert!(p.projects.is_empty());
    assert!(
        p.warnings[0].contains("no rules at all"),
        "{:?}",
        p.warnings
    );
    assert_eq!(p.rules_for(None, None).default_action, Action::Deny);
}

#[test]
fn full_shape_parses() {
    let p = ok(r#"
mode: audit
raw_sockets: allow
default:
  default_action: deny
  rules:
    - {dst: "*", proto: dns}
projects:
  web:
    default_action: allow
    rules:
      - dst: 10.0.0.0/8
        action: deny
    agents:
      claude:
        default_action: deny
        rules:
          - dst: github.com
            proto: https
"#);
    assert_eq!(p.mode, Mode::Audit);
    assert_eq!(p.raw_sockets, Action::Allow);
    // dns is two rules (udp and tcp), same origin.
    assert_eq!(p.default.rules.len(), 2);
    assert_eq!(p.default.rules[0].proto, Proto::Udp);
    assert_eq!(p.default.rules[1].proto, Proto::Tcp);
    assert_eq!(p.default.rules[0].ports, Some((53, 53)));
    assert_eq!(p.default.rules[0].origin, p.default.rules[1].origin);
    let web = &p.projects["web"];
    assert_eq!(web.rules.default_action, Some(Action::Allow));
    assert_eq!(web.rules.rules[0].action, Action::Deny);
    assert_eq!(web.rules.rules[0].proto, Proto::Any);
    assert_eq!(web.rules.rules[0].ports, None);
    let claude = &web.agents["claude"];
    assert_eq!(claude.rules[0].dst, Dst::Domain("github.com".into()));
    assert_eq!(claude.rules[0].ports, Some((443, 443)));
    assert_eq!(
        claude.rules[0].action,
        Action::Allow,
        "action defaults to allow"
    );
}

#[test]
fn origins_carry_file_line_column_and_scope() {
    let p = ok("projects:\n  web:\n    agents:\n      claude:\n        rules:\n          - dst: a.com\n          - dst: b.com\n            port: 22\n");
    let o = &p.projects["web"].agents["claude"].rules[1].origin;
    assert_eq!((o.file.as_str(), o.line, o.column), ("p.yaml", 7, 13));
    assert_eq!(o.scope, "project web, agent claude, rule 2");
}

#[test]
fn domains_are_normalised() {
    let p = ok("default:\n  rules:\n    - dst: GitHub.COM.\n    - dst: .DataDogHQ.com\n    - dst: '*.example.org'\n    - dst: otel-collector\n    - dst: _acme.example.com\n");
    let d: Vec<_> = p.default.rules.iter().map(|r| r.dst.clone()).collect();
    assert_eq!(
        d,
        vec![
            Dst::Domain("github.com".into()),
            Dst::Wildcard("datadoghq.com".into()),
            Dst::Wildcard("example.org".into()),
            Dst::Domain("otel-collector".into()),
            Dst::Domain("_acme.example.com".into()),
        ]
    );
}

#[test]
fn cidrs_v4_v6_and_bare_addresses() {
    let p = ok("default:\n  rules:\n    - dst: 10.0.0.0/8\n    - dst: 192.0.2.7\n    - dst: 2001:db8::/32\n    - dst: '::1'\n    - dst: 0.0.0.0/0\n");
    let nets: Vec<String> = p
        .default
        .rules
        .iter()
        .map(|r| match &r.dst {
            Dst::Cidr(n) => n.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        nets,
        [
            "10.0.0.0/8",
            "192.0.2.7/32",
            "2001:db8::/32",
            "::1/128",
            "0.0.0.0/0"
        ]
    );
    assert!(matches!(&p.default.rules[2].dst, Dst::Cidr(IpNet::V6(_))));
}

#[test]
fn ports_single_range_number_and_named_default_override() {
    let p = ok("default:\n  rules:\n    - {dst: a.com, port: 443}\n    - {dst: a.com, port: \"9000-9100\"}\n    - {dst: a.com, port: \" 1 - 65535 \"}\n    - {dst: a.com, proto: https, port: 8443}\n    - {dst: a.com, proto: ssh}\n");
    let ports: Vec<_> = p.default.rules.iter().map(|r| r.ports).collect();
    assert_eq!(
        ports,
        [
            Some((443, 443)),
            Some((9000, 9100)),
            Some((1, 65535)),
            Some((8443, 8443)),
            Some((22, 22))
        ]
    );
}

#[test]
fn null_values_mean_not_given() {
    let p = ok("mode:\ndefault:\n  default_action: ~\n  rules:\n    - {dst: a.com, port: null, action: deny}\n");
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.default.default_action, None);
    assert_eq!(p.default.rules[0].ports, None);
}

#[test]
fn icmp_rules_have_no_ports() {
    let p = ok("default:\n  rules:\n    - {dst: 192.0.2.0/24, proto: icmp}\n");
    assert_eq!(p.default.rules[0].proto, Proto::Icmp);
    assert_eq!(p.default.rules[0].ports, None);
}

#[test]
fn l7_keys_are_listed_and_warned() {
    let p = ok("default:\n  rules:\n    - dst: api.example.com\n      path_rules: [{path: /v1, action: allow}]\n      path_default: deny\n");
    assert_eq!(
        p.default.rules[0].not_enforced,
        ["path_rules", "path_default"]
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.starts_with("p.yaml:4:7: path_rules")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn label_names_are_verbatim() {
    let p =
        ok("projects:\n  'My Project/ü':\n    agents:\n      'Claude Code':\n        rules: []\n");
    assert!(p.projects.contains_key("My Project/ü"));
    assert!(p.projects["My Project/ü"]
        .agents
        .contains_key("Claude Code"));
}
