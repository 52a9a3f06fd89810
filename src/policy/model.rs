//! The policy as data: what a file says once parsed and validated. The
//! kernel side compiles [`Resolved`] rule lists into BPF maps; nothing here
//! touches the kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Enforce blocks denied connects; audit decides and records the same
/// verdicts but never blocks (records say `enforced`=false), so a policy
/// can be rolled out safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

/// L4 protocol of a rule or a target. Named protocols (https, ssh, …) are
/// mapped to one of these plus a default port when parsed: see
/// [`crate::policy::values::named_proto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    /// ICMP and ICMPv6: the address family comes from the address.
    Icmp,
}

/// Whom a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dst {
    /// `dst: "*"`: every destination.
    Any,
    /// Exact name: lowercase, no trailing dot. Matches that name only.
    Domain(String),
    /// `.example.com` or `*.example.com`: the stored suffix is
    /// `example.com`, and it matches `example.com` itself and every name
    /// under it (squid's leading-dot convention; an operator who writes
    /// `.datadoghq.com` means the apex too). To exclude the apex, put a deny
    /// rule for it first.
    Wildcard(String),
    /// A network; a bare address is parsed as a /32 or /128.
    Cidr(IpNet),
}

/// Where a rule was written, for `explain`, records and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// E.g. "project web, agent claude, rule 3".
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub dst: Dst,
    pub proto: Proto,
    /// Inclusive range; `None` means every port.
    pub ports: Option<(u16, u16)>,
    pub action: Action,
    pub origin: Origin,
    /// L7-only keys of the rule (e.g. `path_rules`): accepted, not enforced
    /// at L4; `policy check` warns about them.
    pub not_enforced: Vec<String>,
}

/// An ordered rule list: the first matching rule decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// `None`: inherit (agent -> project -> default section -> deny).
    pub default_action: Option<Action>,
    pub rules: Vec<Rule>,
    /// `inbound`: may connections from outside the container reach its
    /// listening sockets, and datagrams that are no reply its UDP
    /// sockets? `None`: inherit (agent -> project -> default section ->
    /// allow). Listens, UDP binds, accepted connections and inbound UDP
    /// flows are recorded either way.
    pub inbound: Option<Action>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectPolicy {
    pub rules: RuleSet,
    /// Keyed by the raw `dev.clawker.agent` label value (D17).
    pub agents: BTreeMap<String, RuleSet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Raw and packet sockets: denied unless the file says `allow`.
    pub raw_sockets: Action,
    /// Containers whose project is unlabelled or not listed.
    pub default: RuleSet,
    /// Keyed by the raw `dev.clawker.project` label value (D17).
    pub projects: BTreeMap<String, ProjectPolicy>,
    /// `file:line:column: message` lines for `policy check` (L7 keys not
    /// enforced, ignored clawker keys); never a reason to reject the file.
    pub warnings: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Enforce,
            raw_sockets: Action::Deny,
            default: RuleSet::default(),
            projects: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}

/// The rules that apply to one container, ready to compile or evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub mode: Mode,
    pub raw_sockets: Action,
    /// Agent rules first, then project rules; first match wins.
    pub rules: Vec<Rule>,
    pub default_action: Action,
    /// Connections from outside the container to its listeners.
    pub inbound: Action,
    /// Which section `default_action` came from, e.g. "project web" or
    /// "built-in (no default_action anywhere)".
    pub default_from: String,
    /// Which sections were used, e.g. "project web, agent claude".
    pub scope: String,
}

/// One connection attempt, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name the address was resolved from, if known.
    pub host: Option<String>,
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The deciding rule; `None` when the default action decided.
    pub rule: Option<Origin>,
    pub reason: String,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

impl fmt::Display for Dst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dst::Any => f.write_str("*"),
            Dst::Domain(d) => f.write_str(d),
            Dst::Wildcard(s) => write!(f, ".{s}"),
            Dst::Cidr(n) => write!(f, "{n}"),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{} ({})",
            self.file, self.line, self.column, self.scope
        )
    }
}

impl fmt::Display for Rule {
    /// `allow .github.com tcp/443`, `deny 10.0.0.0/8 any/*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.action, self.dst, self.proto)?;
        match self.ports {
            None if self.proto == Proto::Icmp => Ok(()),
            None => f.write_str("/*"),
            Some((lo, hi)) if lo == hi => write!(f, "/{lo}"),
            Some((lo, hi)) => write!(f, "/{lo}-{hi}"),
        }
    }
}
