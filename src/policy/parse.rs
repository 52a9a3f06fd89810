//! Our own policy file (schema in docs/POLICY.md). Unknown keys are errors
//! that name the key: a typo in a firewall file must not silently widen or
//! narrow what is allowed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;

use super::clawker;
use super::model::{Policy, ProjectPolicy, Rule, RuleSet};
use super::rules::{parse_rule_list, RuleDefaults, Warnings};
use super::values::{parse_action, parse_mode};
use super::yaml::{get, Src};
use super::PolicyError;

const TOP_KEYS: &[&str] = &["mode", "raw_sockets", "default", "projects"];
const RULESET_KEYS: &[&str] = &["default_action", "rules", "inbound"];
const PROJECT_KEYS: &[&str] = &[
    "default_action",
    "inbound",
    "rules",
    "agents",
    "clawker",
    "clawker_file",
];
const OWN_DEFAULTS: RuleDefaults = RuleDefaults { proto: "any" };

/// Whether `text` is our policy file (its top level has one of our keys)
/// rather than a bare `.clawker.yaml`.
pub fn is_policy_text(text: &str, file: &str) -> Result<bool, PolicyError> {
    let top = Src::new(file).parse(text)?;
    Ok(TOP_KEYS.iter().any(|k| get(&top, k).is_some()))
}

/// Parse a policy file's text. `file` names it in messages; relative
/// `clawker_file` paths are taken from `base_dir`.
pub fn parse_policy(text: &str, file: &str, base_dir: &Path) -> Result<Policy, PolicyError> {
    let src = Src::new(file);
    let top = src.parse(text)?;
    src.known_keys(&top, TOP_KEYS, "the policy file")?;
    let mut warnings = Warnings::new();
    let mut policy = Policy::default();
    if let Some((_, v)) = get(&top, "mode") {
        policy.mode = src.value(v, "mode", parse_mode)?;
    }
    if let Some((_, v)) = get(&top, "raw_sockets") {
        policy.raw_sockets = src.value(v, "raw_sockets", parse_action)?;
    }
    if let Some((_, v)) = get(&top, "default") {
        let map = src.mapping(v, "default")?;
        src.known_keys(map, RULESET_KEYS, "default")?;
        policy.default = rule_set(&src, map, "default", &mut warnings)?;
    }
    if let Some((_, v)) = get(&top, "projects") {
        let ctx = Ctx {
            src: &src,
            base_dir,
        };
        policy.projects = projects(&ctx, v, &mut warnings)?;
    }
    if policy.default.rules.is_empty() && policy.projects.is_empty() {
        warnings.push(format!(
            "{file}:1:1: no rules at all: every connection gets the default action"
        ));
    }
    policy.warnings = warnings;
    Ok(policy)
}

struct Ctx<'a> {
    src: &'a Src,
    base_dir: &'a Path,
}

/// `default_action`, `rules` and `inbound` of any section.
fn rule_set(
    src: &Src,
    map: &MarkedMappingNode,
    scope: &str,
    warnings: &mut Warnings,
) -> Result<RuleSet, PolicyError> {
    let default_action = match get(map, "default_action") {
        Some((_, v)) => Some(src.value(v, "default_action", parse_action)?),
        None => None,
    };
    let rules = match get(map, "rules") {
        Some((_, v)) => parse_rule_list(src, v, scope, "rule", OWN_DEFAULTS, warnings)?,
        None => Vec::new(),
    };
    let inbound = match get(map, "inbound") {
        Some((_, v)) => Some(src.value(v, "inbound", parse_action)?),
        None => None,
    };
    Ok(RuleSet {
        default_action,
        rules,
        inbound,
    })
}

fn projects(
    ctx: &Ctx,
    node: &Node,
    warnings: &mut Warnings,
) -> Result<BTreeMap<String, ProjectPolicy>, PolicyError> {
    let map = ctx.src.mapping(node, "projects")?;
    let mut out = BTreeMap::new();
    for (name, body) in map.iter() {
        let name_s = label_name(ctx.src, name, "project")?;
        let scope = format!("project {name_s}");
        out.insert(name_s, project(ctx, body, &scope, warnings)?);
    }
    Ok(out)
}

/// Names are the raw Docker label values (D17): kept verbatim, only an
/// empty name is refused (no container can be matched by it).
fn label_name(src: &Src, key: &MarkedScalarNode, what: &str) -> Result<String, PolicyError> {
    if key.as_str().is_empty() {
        return Err(src.err_scalar(key, format!("{what} name is empty")));
    }
    Ok(key.as_str().to_string())
}

fn project(
    ctx: &Ctx,
    node: &Node,
    scope: &str,
    warnings: &mut Warnings,
) -> Result<ProjectPolicy, PolicyError> {
    let src = ctx.src;
    let map = src.mapping(node, scope)?;
    src.known_keys(map, PROJECT_KEYS, scope)?;
    let mut rules = rule_set(src, map, scope, warnings)?;
    rules
        .rules
        .extend(clawker_rules(ctx, map, scope, warnings)?);
    let mut agents = BTreeMap::new();
    if let Some((_, v)) = get(map, "agents") {
        for (name, body) in src.mapping(v, &format!("{scope}: agents"))?.iter() {
            let name_s = label_name(src, name, "agent")?;
            let a_scope = format!("{scope}, agent {name_s}");
            let a_map = src.mapping(body, &a_scope)?;
            src.known_keys(a_map, RULESET_KEYS, &a_scope)?;
            agents.insert(name_s, rule_set(src, a_map, &a_scope, warnings)?);
        }
    }
    Ok(ProjectPolicy { rules, agents })
}

/// `clawker:` (the document inline) or `clawker_file:` (a path, relative to
/// the policy file), never both: which would come first is a guess.
fn clawker_rules(
    ctx: &Ctx,
    map: &MarkedMappingNode,
    scope: &str,
    warnings: &mut Warnings,
) -> Result<Vec<Rule>, PolicyError> {
    let src = ctx.src;
    match (get(map, "clawker"), get(map, "clawker_file")) {
        (Some(_), Some((k, _))) => Err(src.err_scalar(
            k,
            format!("{scope}: give clawker or clawker_file, not both"),
        )),
        (Some((_, doc)), None) => {
            let doc = src.mapping(
                doc,
                &format!("{scope}: clawker (the .clawker.yaml document)"),
            )?;
            clawker::firewall_rules(src, doc, scope, warnings)
        }
        (None, Some((_, path))) => {
            let path = src.scalar(path, "clawker_file")?;
            let full: PathBuf = ctx.base_dir.join(path.as_str());
            clawker::firewall_rules_from_file(&full, scope, warnings).map_err(|e| match e {
                PolicyError::Read { file, reason } => {
                    src.err_scalar(path, format!("clawker_file: cannot read {file}: {reason}"))
                }
                other => other,
            })
        }
        (None, None) => Ok(Vec::new()),
    }
}
