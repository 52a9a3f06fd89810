//! One rule list item, shared by our own schema and clawker's
//! `security.firewall.rules[]`: `{dst, proto, port, action, path_rules,
//! path_default}`. One item can become several [`Rule`]s (`proto: dns` is
//! UDP and TCP); they share the item's origin.

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use super::model::{Action, Dst, Origin, Proto, Rule};
use super::values::{named_proto, parse_action, parse_dst, parse_ports, L4};
use super::yaml::{get, start, Src};
use super::PolicyError;

/// Keys of a rule item that only make sense at L7: accepted (clawker files
/// load unchanged) and reported, never enforced by an L4 policy.
pub const L7_KEYS: &[&str] = &["path_rules", "path_default"];

const RULE_KEYS: &[&str] = &[
    "dst",
    "proto",
    "port",
    "action",
    "path_rules",
    "path_default",
];

/// What a missing `proto` means: `any` in our schema; clawker's
/// firewall is about HTTPS egress, so there it means `https`.
#[derive(Debug, Clone, Copy)]
pub struct RuleDefaults {
    pub proto: &'static str,
}

/// Where warnings go while a file is read.
pub type Warnings = Vec<String>;

/// Parse `node` as a list of rule items. `scope` names the section
/// ("project web, agent claude"); `label` the list ("rule", "clawker rule").
pub fn parse_rule_list(
    src: &Src,
    node: &Node,
    scope: &str,
    label: &str,
    defaults: RuleDefaults,
    warnings: &mut Warnings,
) -> Result<Vec<Rule>, PolicyError> {
    let items = src.sequence(node, &format!("{scope}: rules"))?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let origin = origin(src, item, format!("{scope}, {label} {}", i + 1));
        out.extend(parse_rule(src, item, origin, defaults, warnings)?);
    }
    Ok(out)
}

pub fn origin(src: &Src, node: &Node, scope: String) -> Origin {
    let (line, column) = start(node).map_or((1, 1), |m| (m.line(), m.column()));
    Origin {
        file: src.file.clone(),
        line,
        column,
        scope,
    }
}

fn parse_rule(
    src: &Src,
    node: &Node,
    origin: Origin,
    defaults: RuleDefaults,
    warnings: &mut Warnings,
) -> Result<Vec<Rule>, PolicyError> {
    let what = origin.scope.clone();
    let map = src.mapping(node, &what)?;
    src.known_keys(map, RULE_KEYS, &what)?;
    let dst = match get(map, "dst") {
        Some((_, v)) => src.value(v, "dst", parse_dst)?,
        None => {
            return Err(src.err(
                node,
                format!("{what}: missing key \"dst\" (use \"*\" for any)"),
            ))
        }
    };
    let action = match get(map, "action") {
        Some((_, v)) => src.value(v, "action", parse_action)?,
        None => Action::Allow,
    };
    let ports = match get(map, "port") {
        Some((_, v)) => Some(src.value(v, "port", parse_ports)?),
        None => None,
    };
    let protos = match get(map, "proto") {
        Some((_, v)) => src.value(v, "proto", named_proto)?,
        None => named_proto(defaults.proto).map_err(|e| src.err(node, e))?,
    };
    check_icmp_ports(src, map, protos, ports)?;
    let not_enforced = l7_keys(src, map, &origin, warnings);
    Ok(protos
        .iter()
        .map(|&(proto, default_port)| Rule {
            dst: dst.clone(),
            proto,
            ports: ports.or(default_port.map(|p| (p, p))),
            action,
            origin: origin.clone(),
            not_enforced: not_enforced.clone(),
        })
        .collect())
}

/// ICMP has no ports: a port on an ICMP rule would never match, which is
/// surely not what the writer meant.
fn check_icmp_ports(
    src: &Src,
    map: &MarkedMappingNode,
    protos: &[L4],
    ports: Option<(u16, u16)>,
) -> Result<(), PolicyError> {
    let icmp = protos.iter().any(|(p, _)| *p == Proto::Icmp);
    match (icmp, ports, get(map, "port")) {
        (true, Some(_), Some((k, _))) => Err(src.err_scalar(k, "port: ICMP has no ports")),
        _ => Ok(()),
    }
}

fn l7_keys(
    src: &Src,
    map: &MarkedMappingNode,
    origin: &Origin,
    warnings: &mut Warnings,
) -> Vec<String> {
    let mut seen = Vec::new();
    for key in L7_KEYS {
        if let Some((k, _)) = map.iter().find(|(k, _)| k.as_str() == *key) {
            let at = k.span().start().map_or((1, 1), |m| (m.line(), m.column()));
            warnings.push(format!(
                "{}:{}:{}: {key} is L7-only and not enforced at L4 ({})",
                src.file, at.0, at.1, origin.scope
            ));
            seen.push((*key).to_string());
        }
    }
    seen
}

/// A domain list entry (clawker's `add_domains`) as an allow rule.
pub fn domain_rule(
    src: &Src,
    node: &Node,
    origin: Origin,
    defaults: RuleDefaults,
) -> Result<Vec<Rule>, PolicyError> {
    let dst: Dst = src.value(node, "add_domains", parse_dst)?;
    let protos = named_proto(defaults.proto).map_err(|e| src.err(node, e))?;
    Ok(protos
        .iter()
        .map(|&(proto, port)| Rule {
            dst: dst.clone(),
            proto,
            ports: port.map(|p| (p, p)),
            action: Action::Allow,
            origin: origin.clone(),
            not_enforced: Vec::new(),
        })
        .collect())
}
