//! Property tests: no input makes the parser or `decide` panic.

use std::net::IpAddr;

use proptest::prelude::*;

use super::parse;
use crate::policy::{Policy, Proto, Target};

/// YAML-ish text: policy keywords, punctuation and indentation in random
/// order reach far deeper into the parser than uniform bytes.
fn yamlish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "mode: ",
        "audit",
        "raw_sockets: ",
        "default:",
        "projects:",
        "rules:",
        "agents:",
        "clawker:",
        "security:",
        "firewall:",
        "add_domains:",
        "- ",
        "dst: ",
        "proto: ",
        "port: ",
        "action: ",
        "allow",
        "deny",
        "default_action: ",
        "path_rules: ",
        "\n",
        "\n  ",
        "\n    ",
        "  ",
        "{",
        "}",
        "[",
        "]",
        ", ",
        ": ",
        "\"",
        "'",
        "*",
        ".",
        "*.",
        "10.0.0.0/8",
        "::/0",
        "9000-9100",
        "65535",
        "0",
        "-",
        "https",
        "dns",
        "icmp",
        "github.com",
        "&a",
        "*a",
        "!!str",
        "#",
        "~",
        "null",
        "ü",
        "\t",
        "%",
        "|",
        ">",
        "---",
        "...",
        "\u{0}",
    ]);
    prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
}

fn target() -> impl Strategy<Value = Target> {
    (
        prop::option::of("[a-zA-Z0-9.*_-]{0,40}"),
        prop::option::of(any::<[u8; 16]>()),
        any::<bool>(),
        any::<u16>(),
        prop::sample::select(vec![Proto::Any, Proto::Tcp, Proto::Udp, Proto::Icmp]),
    )
        .prop_map(|(host, raw, v4, port, proto)| Target {
            host,
            ip: raw.map(|b| {
                if v4 {
                    IpAddr::from([b[0], b[1], b[2], b[3]])
                } else {
                    IpAddr::from(b)
                }
            }),
            port,
            proto,
        })
}

const RICH: &str = "default:\n  default_action: allow\n  rules:\n    - {dst: '*', proto: dns}\n    - {dst: .a.com, action: deny}\n    - {dst: 10.0.0.0/8, port: 1-100}\n    - {dst: '::/0', proto: icmp}\nprojects:\n  p:\n    rules: [{dst: b.com, proto: https}]\n    agents:\n      a:\n        rules: [{dst: 0.0.0.0/0, action: deny}]\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text);
    }

    #[test]
    fn parser_never_panics_on_yamlish(text in yamlish()) {
        let _ = parse(&text);
    }

    #[test]
    fn errors_are_one_line(text in yamlish()) {
        if let Err(e) = parse(&text) {
            let s = e.to_string();
            prop_assert!(!s.contains('\n'), "{}", s);
        }
    }

    #[test]
    fn decide_never_panics(t in target(), agent in prop::option::of("[ap]"), project in prop::option::of("[ap]")) {
        let p = Policy::parse_str(RICH, "p.yaml").unwrap();
        let r = p.rules_for(agent.as_deref(), project.as_deref());
        let d = r.decide(&t);
        prop_assert!(!d.reason.is_empty());
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = "[".repeat(100_000);
    assert!(parse(&deep).is_err());
    let deep_map = format!("a: {}1{}", "{b: ".repeat(5_000), "}".repeat(5_000));
    assert!(parse(&deep_map).is_err());
}
