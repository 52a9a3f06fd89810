//! Rejections: each names the problem at file:line:column.

use super::{err, parse, FIXTURES};
use crate::policy::{Policy, PolicyError};

#[test]
fn unknown_keys_are_named_everywhere() {
    let (l, c, r) = err("mode: audit\nmodes: enforce\n");
    assert_eq!((l, c), (2, 1));
    assert!(
        r.contains("\"modes\"") && r.contains("expected one of"),
        "{r}"
    );
    let (l, c, r) = err("projects:\n  web:\n    agent:\n      x: {}\n");
    assert_eq!((l, c), (3, 5));
    assert!(r.contains("\"agent\"") && r.contains("project web"), "{r}");
    let (l, c, r) = err("default:\n  rules:\n    - dst: a.com\n      ports: 443\n");
    assert_eq!((l, c), (4, 7));
    assert!(
        r.contains("\"ports\"") && r.contains("default, rule 1"),
        "{r}"
    );
    let (_, _, r) = err("projects:\n  web:\n    agents:\n      a:\n        agents: {}\n");
    assert!(r.contains("project web, agent a"), "{r}");
}

#[test]
fn bad_values_point_at_the_value() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        ("mode: loud\n", (1, 7), "expected enforce or audit"),
        ("raw_sockets: maybe\n", (1, 14), "expected allow or deny"),
        (
            "default:\n  default_action: permit\n",
            (2, 19),
            "expected allow or deny",
        ),
        (
            "default:\n  rules:\n    - {dst: a.com, port: 0}\n",
            (3, 26),
            "1-65535",
        ),
        (
            "default:\n  rules:\n    - {dst: a.com, port: 65536}\n",
            (3, 26),
            "1-65535",
        ),
        (
            "default:\n  rules:\n    - {dst: a.com, port: 9100-9000}\n",
            (3, 26),
            "start is above end",
        ),
        (
            "default:\n  rules:\n    - {dst: a.com, port: https}\n",
            (3, 26),
            "expected a number",
        ),
        (
            "default:\n  rules:\n    - {dst: a.com, proto: gopher}\n",
            (3, 27),
            "unknown protocol",
        ),
        (
            "default:\n  rules:\n    - {dst: 10.0.0.1/8}\n",
            (3, 13),
            "host bits set",
        ),
        (
            "default:\n  rules:\n    - {dst: 10.0.0.0/33}\n",
            (3, 13),
            "CIDR",
        ),
        (
            "default:\n  rules:\n    - {dst: 10.0.0}\n",
            (3, 13),
            "not a valid IP address",
        ),
        (
            "default:\n  rules:\n    - {dst: 'a..com'}\n",
            (3, 13),
            "empty label",
        ),
        (
            "default:\n  rules:\n    - {dst: -a.com}\n",
            (3, 13),
            "starts or ends with '-'",
        ),
        (
            "default:\n  rules:\n    - {dst: 'ex ample.com'}\n",
            (3, 13),
            "not allowed",
        ),
        (
            "default:\n  rules:\n    - {dst: 'a*.com'}\n",
            (3, 13),
            "not allowed",
        ),
        (
            "default:\n  rules:\n    - {dst: bücher.de}\n",
            (3, 13),
            "punycode",
        ),
        ("default:\n  rules:\n    - {dst: '.'}\n", (3, 13), "empty"),
        (
            "default:\n  rules:\n    - {dst: 192.0.2.0/24, proto: icmp, port: 1}\n",
            (3, 40),
            "ICMP has no ports",
        ),
        (
            "default:\n  rules:\n    - {proto: tcp}\n",
            (3, 8),
            "missing key \"dst\"",
        ),
        (
            "default:\n  rules: {dst: a.com}\n",
            (2, 11),
            "expected a list",
        ),
        (
            "default:\n  rules:\n    - a.com\n",
            (3, 7),
            "expected a mapping",
        ),
        ("projects: [web]\n", (1, 11), "expected a mapping"),
        (
            "projects:\n  '':\n    rules: []\n",
            (2, 3),
            "project name is empty",
        ),
        ("mode: [audit]\n", (1, 7), "expected a value"),
    ];
    let mut wrong = Vec::new();
    for (text, pos, needle) in cases {
        let (l, c, r) = err(text);
        if !r.contains(needle) || (l, c) != *pos {
            wrong.push(format!("{text:?}: {l}:{c}: {r}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn long_names_are_refused() {
    let label = "a".repeat(64);
    let (_, _, r) = err(&format!("default:\n  rules:\n    - dst: {label}.com\n"));
    assert!(r.contains("longer than 63"), "{r}");
    let name = ["abcdefghi"; 26].join(".");
    let (_, _, r) = err(&format!("default:\n  rules:\n    - dst: {name}.com\n"));
    assert!(r.contains("at most 253"), "{r}");
}

#[test]
fn yaml_level_errors_have_positions() {
    let (l, _, r) = err("mode: audit\nmode: enforce\n");
    assert_eq!(l, 2);
    assert!(
        r.contains("duplicate key \"mode\" (first at line 1)"),
        "{r}"
    );
    let (l, _, _) = err("default:\n  rules: [\n");
    assert!(l >= 2);
    let (_, _, r) = err("- 1\n");
    assert!(r.contains("mapping at the top level"), "{r}");
    let (l, _, r) = err("default: &d {}\n");
    assert_eq!(l, 1);
    assert!(r.contains("anchors"), "{r}");
}

#[test]
fn display_is_one_line_file_line_column_reason() {
    let e = parse("mode: x\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "p.yaml:1:7: mode \"x\": expected enforce or audit"
    );
}

#[test]
fn clawker_and_clawker_file_together_are_refused() {
    let (_, _, r) = err("projects:\n  web:\n    clawker: {}\n    clawker_file: x.yaml\n");
    assert!(r.contains("not both"), "{r}");
}

#[test]
fn missing_clawker_file_points_at_the_key_value() {
    let (l, c, r) = err("projects:\n  web:\n    clawker_file: nope.yaml\n");
    assert_eq!((l, c), (3, 19));
    assert!(r.contains("cannot read") && r.contains("nope.yaml"), "{r}");
}

#[test]
fn unreadable_and_oversized_files() {
    let e = Policy::load(std::path::Path::new("/nonexistent/p.yaml")).unwrap_err();
    assert!(matches!(e, PolicyError::Read { .. }), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, "#".repeat(crate::policy::MAX_FILE_BYTES + 1)).unwrap();
    assert!(Policy::load(&big)
        .unwrap_err()
        .to_string()
        .contains("larger than"));
    let bin = dir.path().join("bin.yaml");
    std::fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
    assert!(Policy::load(&bin)
        .unwrap_err()
        .to_string()
        .contains("UTF-8"));
    assert!(
        Policy::load(std::path::Path::new(FIXTURES)).is_err(),
        "a directory"
    );
}
