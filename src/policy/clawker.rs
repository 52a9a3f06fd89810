//! clawker's `.clawker.yaml`, loaded unchanged as one project's rules.
//!
//! Only `security.firewall` is read; every other section (`build:`,
//! `agent:`, …) is clawker's business and ignored. Inside the firewall
//! section, `rules` and `add_domains` become rules (in that order: explicit
//! rules, which may deny, come before the blanket allows); other keys are
//! ignored with a warning, so a newer clawker file still loads.

use std::path::Path;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use super::model::Rule;
use super::rules::{domain_rule, origin, parse_rule_list, RuleDefaults, Warnings};
use super::yaml::{get, Src};
use super::PolicyError;

/// clawker's firewall is an HTTPS allowlist: an `add_domains` entry, or a
/// rule without `proto`, means HTTPS (tcp/443 unless `port` says otherwise).
pub const CLAWKER_DEFAULTS: RuleDefaults = RuleDefaults { proto: "https" };

/// Rules of a `.clawker.yaml` document (its top-level mapping). `scope`
/// names the project, e.g. "project web".
pub fn firewall_rules(
    src: &Src,
    doc: &MarkedMappingNode,
    scope: &str,
    warnings: &mut Warnings,
) -> Result<Vec<Rule>, PolicyError> {
    let Some(fw) = firewall_section(src, doc)? else {
        warnings.push(format!(
            "{}:1:1: no security.firewall section: {scope} gets no clawker rules",
            src.file
        ));
        return Ok(Vec::new());
    };
    warn_unknown(src, fw, warnings);
    let mut rules = Vec::new();
    if let Some((_, node)) = get(fw, "rules") {
        let s = format!("{scope}, clawker");
        rules.extend(parse_rule_list(
            src,
            node,
            &s,
            "rule",
            CLAWKER_DEFAULTS,
            warnings,
        )?);
    }
    if let Some((_, node)) = get(fw, "add_domains") {
        rules.extend(add_domains(src, node, scope)?);
    }
    Ok(rules)
}

/// Read and parse a `.clawker.yaml` file (errors carry its own path).
pub fn firewall_rules_from_file(
    path: &Path,
    scope: &str,
    warnings: &mut Warnings,
) -> Result<Vec<Rule>, PolicyError> {
    let text = super::read_text(path)?;
    firewall_rules_from_str(&text, &path.display().to_string(), scope, warnings)
}

/// Parse a `.clawker.yaml` document's text; `file` names it in errors.
pub fn firewall_rules_from_str(
    text: &str,
    file: &str,
    scope: &str,
    warnings: &mut Warnings,
) -> Result<Vec<Rule>, PolicyError> {
    let src = Src::new(file);
    let doc = src.parse(text)?;
    firewall_rules(&src, &doc, scope, warnings)
}

fn firewall_section<'a>(
    src: &Src,
    doc: &'a MarkedMappingNode,
) -> Result<Option<&'a MarkedMappingNode>, PolicyError> {
    let Some((_, security)) = get(doc, "security") else {
        return Ok(None);
    };
    let security = src.mapping(security, "security")?;
    match get(security, "firewall") {
        Some((_, fw)) => src.mapping(fw, "security.firewall").map(Some),
        None => Ok(None),
    }
}

fn warn_unknown(src: &Src, fw: &MarkedMappingNode, warnings: &mut Warnings) {
    for k in fw
        .keys()
        .filter(|k| !matches!(k.as_str(), "rules" | "add_domains"))
    {
        let (line, col) = k.span().start().map_or((1, 1), |m| (m.line(), m.column()));
        warnings.push(format!(
            "{}:{line}:{col}: security.firewall.{} is not used by clawker-egress (ignored)",
            src.file,
            k.as_str()
        ));
    }
}

fn add_domains(src: &Src, node: &Node, scope: &str) -> Result<Vec<Rule>, PolicyError> {
    let items = src.sequence(node, "security.firewall.add_domains")?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let o = origin(src, item, format!("{scope}, clawker add_domains {}", i + 1));
        out.extend(domain_rule(src, item, o, CLAWKER_DEFAULTS)?);
    }
    Ok(out)
}
