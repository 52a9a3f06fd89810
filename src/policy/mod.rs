//! Egress policy: the model, its YAML formats (our own file and clawker's
//! `.clawker.yaml` firewall section) and rule resolution. Pure user space:
//! the kernel side compiles [`Resolved`] into BPF maps. See docs/POLICY.md.

mod clawker;
mod limits;
pub mod model;
mod parse;
mod resolve;
mod rules;
pub mod suggest;
pub mod values;
mod yaml;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use limits::{content_key, ContentKey, Limits};
pub use model::{
    Action, Decision, Dst, Mode, Origin, Policy, ProjectPolicy, Proto, Resolved, Rule, RuleSet,
    Target,
};
pub use rules::L7_KEYS;
pub use yaml::MAX_FILE_BYTES;

/// Why a policy file was rejected. `At` is one line,
/// `file:line:column: reason`, as `policy check` prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}:{line}:{column}: {reason}")]
    At {
        file: String,
        line: usize,
        column: usize,
        reason: String,
    },
    /// The file is valid but more than the kernel can hold.
    #[error("{file}: {reason}")]
    Limit { file: String, reason: String },
}

impl Policy {
    /// Read and validate a policy file (and the `clawker_file`s it names).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = read_text(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        parse::parse_policy(&text, &path.display().to_string(), base)
    }

    /// Parse policy text; `file` names it in messages, and relative
    /// `clawker_file` paths are resolved from its directory.
    pub fn parse_str(text: &str, file: &str) -> Result<Policy, PolicyError> {
        let base = Path::new(file).parent().unwrap_or(Path::new("."));
        parse::parse_policy(text, file, base)
    }

    /// A policy file, or a bare `.clawker.yaml` (a file whose top level has
    /// none of the policy file's keys) loaded as project `project`, which
    /// it then requires. The bool says which it was (true: `.clawker.yaml`).
    pub fn load_any(path: &Path, project: Option<&str>) -> Result<(Policy, bool), PolicyError> {
        let text = read_text(path)?;
        let file = path.display().to_string();
        if parse::is_policy_text(&text, &file)? {
            return Policy::load(path).map(|p| (p, false));
        }
        let Some(project) = project else {
            return Err(PolicyError::Read {
                file,
                reason: "not a policy file (no mode, raw_sockets, default or projects key): \
                         as a bare .clawker.yaml it needs --project NAME"
                    .into(),
            });
        };
        Policy::from_clawker_file(path, project).map(|p| (p, true))
    }

    /// A policy made of one `.clawker.yaml` as project `project`, nothing
    /// else (default section empty: deny).
    pub fn from_clawker_file(path: &Path, project: &str) -> Result<Policy, PolicyError> {
        let text = read_text(path)?;
        Policy::from_clawker_str(&text, &path.display().to_string(), project)
    }

    /// [`Policy::from_clawker_file`] of text; `file` names it in messages.
    pub fn from_clawker_str(text: &str, file: &str, project: &str) -> Result<Policy, PolicyError> {
        let mut warnings = Vec::new();
        let scope = format!("project {project}");
        let rules = clawker::firewall_rules_from_str(text, file, &scope, &mut warnings)?;
        let mut policy = Policy {
            warnings,
            ..Policy::default()
        };
        let rules = RuleSet {
            default_action: None,
            rules,
            inbound: None,
        };
        policy.projects.insert(
            project.to_string(),
            ProjectPolicy {
                rules,
                agents: Default::default(),
            },
        );
        Ok(policy)
    }
}

/// A file's text, refusing oversized and non-UTF-8 files with a reason.
fn read_text(path: &Path) -> Result<String, PolicyError> {
    let fail = |reason: String| PolicyError::Read {
        file: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES as u64 {
        return Err(fail(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| fail(format!("not UTF-8 text ({e})")))
}
