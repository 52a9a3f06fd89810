//! A thin layer over marked-yaml: every node keeps its line and column, so
//! every error (and every rule's origin) can say `file:line:column`. We
//! walk the tree by hand instead of using serde so that unknown keys, wrong
//! types and bad values all point at the offending node.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{LoadError, LoaderOptions, Marker, Node};

use super::PolicyError;

/// Larger inputs are refused before parsing: a policy is a few KiB, and the
/// YAML tree is built in memory.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// One source file being read: its name for messages.
#[derive(Debug, Clone)]
pub struct Src {
    pub file: String,
}

impl Src {
    pub fn new(file: impl Into<String>) -> Self {
        Src { file: file.into() }
    }

    pub fn err_at(&self, m: Option<&Marker>, reason: impl Into<String>) -> PolicyError {
        let (line, column) = m.map_or((1, 1), |m| (m.line(), m.column()));
        PolicyError::At {
            file: self.file.clone(),
            line,
            column,
            reason: reason.into(),
        }
    }

    pub fn err(&self, node: &Node, reason: impl Into<String>) -> PolicyError {
        self.err_at(start(node), reason)
    }

    pub fn err_scalar(&self, s: &MarkedScalarNode, reason: impl Into<String>) -> PolicyError {
        self.err_at(s.span().start(), reason)
    }

    /// Parse text into a top-level mapping; duplicate keys are errors (a
    /// second `rules:` silently replacing the first is a policy bug).
    pub fn parse(&self, text: &str) -> Result<MarkedMappingNode, PolicyError> {
        if text.len() > MAX_FILE_BYTES {
            return Err(self.err_at(None, format!("file is larger than {MAX_FILE_BYTES} bytes")));
        }
        let opts = LoaderOptions::default().error_on_duplicate_keys(true);
        match marked_yaml::parse_yaml_with_options(0, text, opts) {
            Ok(Node::Mapping(m)) => Ok(m),
            Ok(other) => Err(self.err(&other, "expected a mapping at the top level")),
            Err(e) => Err(self.load_error(e)),
        }
    }

    fn load_error(&self, e: LoadError) -> PolicyError {
        match e {
            LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => {
                self.err_at(Some(&m), "expected a mapping at the top level")
            }
            LoadError::UnexpectedAnchor(m) => {
                self.err_at(Some(&m), "YAML anchors and aliases are not supported")
            }
            LoadError::UnexpectedTag(m) => self.err_at(Some(&m), "YAML tags are not supported"),
            LoadError::MappingKeyMustBeScalar(m) => {
                self.err_at(Some(&m), "mapping keys must be plain strings")
            }
            LoadError::ScanError(m, se) => self.err_at(Some(&m), se.info().to_string()),
            LoadError::DuplicateKey(d) => {
                let prev = d.prev_key.span().start().map_or(0, |m| m.line());
                self.err_scalar(
                    &d.key,
                    format!("duplicate key {:?} (first at line {prev})", d.key.as_str()),
                )
            }
        }
    }

    pub fn mapping<'a>(
        &self,
        node: &'a Node,
        what: &str,
    ) -> Result<&'a MarkedMappingNode, PolicyError> {
        node.as_mapping().ok_or_else(|| {
            self.err(
                node,
                format!("{what}: expected a mapping, found {}", kind(node)),
            )
        })
    }

    pub fn sequence<'a>(
        &self,
        node: &'a Node,
        what: &str,
    ) -> Result<&'a MarkedSequenceNode, PolicyError> {
        node.as_sequence().ok_or_else(|| {
            self.err(
                node,
                format!("{what}: expected a list, found {}", kind(node)),
            )
        })
    }

    pub fn scalar<'a>(
        &self,
        node: &'a Node,
        what: &str,
    ) -> Result<&'a MarkedScalarNode, PolicyError> {
        node.as_scalar().ok_or_else(|| {
            self.err(
                node,
                format!("{what}: expected a value, found {}", kind(node)),
            )
        })
    }

    /// Reject keys outside `allowed`, naming the key and the allowed set.
    pub fn known_keys(
        &self,
        map: &MarkedMappingNode,
        allowed: &[&str],
        what: &str,
    ) -> Result<(), PolicyError> {
        match map.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(self.err_scalar(
                k,
                format!(
                    "unknown key {:?} in {what} (expected one of: {})",
                    k.as_str(),
                    allowed.join(", ")
                ),
            )),
        }
    }

    /// A scalar value parsed with `f`; the reason gets the value's position.
    pub fn value<T>(
        &self,
        node: &Node,
        what: &str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, PolicyError> {
        let s = self.scalar(node, what)?;
        // The parsers name the value themselves ("port 0: …").
        f(s.as_str()).map_err(|reason| self.err_scalar(s, reason))
    }
}

/// Key and value of `key` in `map`, if present and not null.
pub fn get<'a>(map: &'a MarkedMappingNode, key: &str) -> Option<(&'a MarkedScalarNode, &'a Node)> {
    map.iter()
        .find(|(k, _)| k.as_str() == key)
        .filter(|(_, v)| !is_null(v))
}

/// `key:`, `key: ~` and `key: null` mean "not given".
pub fn is_null(node: &Node) -> bool {
    node.as_scalar()
        .is_some_and(|s| matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
}

/// Where a node starts. A mapping's own start marker is unreliable in
/// marked-yaml (it points past the first key), so a mapping is placed at
/// its first key: that is where a reader's eye goes for "rule 3".
pub fn start(node: &Node) -> Option<&Marker> {
    match node {
        Node::Mapping(m) => m
            .keys()
            .filter_map(|k| k.span().start())
            .min_by_key(|m| m.character())
            .or_else(|| m.span().start()),
        other => other.span().start(),
    }
}

fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a value",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}
