//! Who a container is, as records name it: id, name, image and the two
//! clawker labels (D17: the label values themselves, never derived). Nothing
//! else from a container's configuration is ever kept: no environment (it
//! holds secrets), no command line.

use std::collections::HashMap;

use crate::record::{key, Record};

/// Longest identity value kept, in bytes (labels are user input: a 64 KiB
/// label must not make every record 64 KiB).
pub const MAX_VALUE_BYTES: usize = 256;
/// Ends a value that was cut, so a reader can tell it is not the label.
pub const TRUNCATION_MARK: char = '\u{2026}';

/// Docker puts these keys beside the labels in an event's attributes and
/// they win over a label of the same name; a label key equal to one of them
/// cannot be read from an event.
const EVENT_ATTRIBUTE_KEYS: &[&str] = &["name", "image", "exitCode", "signal", "container", "type"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub container_id: String,
    /// Without Docker's leading '/'.
    pub name: String,
    /// As the container was created from (`repo:tag`), not the image digest.
    pub image: String,
    pub agent: Option<String>,
    pub project: Option<String>,
}

impl Identity {
    /// Add the identity fields to a record; absent labels add no key.
    pub fn apply(&self, record: &mut Record) {
        record.set(key::CONTAINER_ID, self.container_id.as_str());
        record.set(key::CONTAINER_NAME, self.name.as_str());
        record.set(key::CONTAINER_IMAGE, self.image.as_str());
        if let Some(agent) = &self.agent {
            record.set(key::AGENT, agent.as_str());
        }
        if let Some(project) = &self.project {
            record.set(key::PROJECT, project.as_str());
        }
    }
}

/// Which labels name the agent and the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelPolicy {
    pub agent_key: String,
    pub project_key: String,
}

impl Default for LabelPolicy {
    fn default() -> Self {
        LabelPolicy {
            agent_key: "dev.clawker.agent".into(),
            project_key: "dev.clawker.project".into(),
        }
    }
}

impl LabelPolicy {
    /// Build an identity from what a runtime reports; every value bounded.
    pub fn identity(
        &self,
        container_id: &str,
        name: &str,
        image: &str,
        labels: Option<&HashMap<String, String>>,
    ) -> Identity {
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(|v| bounded(v));
        Identity {
            container_id: bounded(container_id),
            name: bounded(name.trim_start_matches('/')),
            image: bounded(image),
            agent: label(&self.agent_key),
            project: label(&self.project_key),
        }
    }

    /// Can the label keys be read from a Docker event's attributes?
    pub fn readable_from_events(&self) -> bool {
        ![&self.agent_key, &self.project_key]
            .iter()
            .any(|k| EVENT_ATTRIBUTE_KEYS.contains(&k.as_str()))
    }
}

/// `s` if it fits in [`MAX_VALUE_BYTES`]; else cut at a character boundary
/// and ended with [`TRUNCATION_MARK`], the whole still within the bound.
pub fn bounded(s: &str) -> String {
    if s.len() <= MAX_VALUE_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_VALUE_BYTES - TRUNCATION_MARK.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(MAX_VALUE_BYTES);
    out.push_str(&s[..end]);
    out.push(TRUNCATION_MARK);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Source;
    use std::time::UNIX_EPOCH;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_are_taken_verbatim_and_absent_labels_add_no_key() {
        let p = LabelPolicy::default();
        let l = labels(&[("dev.clawker.agent", "ralph \"x\"\nnext"), ("other", "y")]);
        let id = p.identity("abc", "/ce-1", "img:1", Some(&l));
        assert_eq!(id.name, "ce-1");
        assert_eq!(id.agent.as_deref(), Some("ralph \"x\"\nnext"));
        assert_eq!(id.project, None);
        let mut r = Record::new(UNIX_EPOCH, Source::Egress);
        id.apply(&mut r);
        assert_eq!(r.get_str(key::AGENT), Some("ralph \"x\"\nnext"));
        assert_eq!(r.get(key::PROJECT), None);
        assert_eq!(r.get_str(key::CONTAINER_IMAGE), Some("img:1"));
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary_and_marked() {
        let big = "é".repeat(40_000); // 80 000 bytes, two per char
        let b = bounded(&big);
        assert!(b.len() <= MAX_VALUE_BYTES, "{}", b.len());
        assert!(b.ends_with(TRUNCATION_MARK));
        assert!(big.starts_with(b.trim_end_matches(TRUNCATION_MARK)));
        let exact = "a".repeat(MAX_VALUE_BYTES);
        assert_eq!(bounded(&exact), exact, "a value at the bound is kept whole");
    }

    #[test]
    fn custom_keys_and_event_readability() {
        let p = LabelPolicy {
            agent_key: "a".into(),
            project_key: "name".into(),
        };
        assert!(!p.readable_from_events());
        assert!(LabelPolicy::default().readable_from_events());
    }
}
