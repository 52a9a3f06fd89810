//! Which rules apply to a container, and what they decide for one target.
//!
//! Resolution (agent and project are the raw Docker label values, D17):
//! - project labelled and listed: the agent's rules (if the agent is
//!   listed under that project) then the project's rules; `default_action`
//!   is the agent's, else the project's, else the default section's, else
//!   deny.
//! - project unlabelled (clawker's global agents) or not listed: the
//!   default section alone; the agent label is not consulted, since agents
//!   are only declared under a project.

use super::model::{Action, Decision, Dst, Policy, Proto, Resolved, Rule, RuleSet, Target};
use super::values::normalize_host;

impl Policy {
    pub fn rules_for(&self, agent: Option<&str>, project: Option<&str>) -> Resolved {
        let listed = project.and_then(|p| self.projects.get(p).map(|pp| (p, pp)));
        let Some((pname, pp)) = listed else {
            let mut r = self.resolved(
                self.default.rules.clone(),
                self.default.default_action,
                "default section",
                "default section".into(),
            );
            r.inbound = self.default.inbound.unwrap_or(Action::Allow);
            return r;
        };
        let agent_set = agent.and_then(|a| pp.agents.get(a).map(|s| (a, s)));
        let mut rules = Vec::new();
        let mut scope = format!("project {pname}");
        let mut chain: Vec<(Option<Action>, String)> = Vec::new();
        if let Some((aname, set)) = agent_set {
            rules.extend(set.rules.iter().cloned());
            scope = format!("project {pname}, agent {aname}");
            chain.push((
                set.default_action,
                format!("agent {aname} of project {pname}"),
            ));
        }
        rules.extend(pp.rules.rules.iter().cloned());
        chain.push((pp.rules.default_action, format!("project {pname}")));
        chain.push((self.default.default_action, "default section".into()));
        // `inbound` inherits like default_action: agent, project, default
        // section; nowhere said: allow (recorded, as before the switch).
        let inbound = agent_set
            .and_then(|(_, s)| s.inbound)
            .or(pp.rules.inbound)
            .or(self.default.inbound)
            .unwrap_or(Action::Allow);
        let mut r = match chain.into_iter().find_map(|(a, from)| a.map(|a| (a, from))) {
            Some((action, from)) => self.resolved(rules, Some(action), &from, scope),
            None => self.resolved(rules, None, "", scope),
        };
        r.inbound = inbound;
        r
    }

    fn resolved(
        &self,
        rules: Vec<Rule>,
        action: Option<Action>,
        from: &str,
        scope: String,
    ) -> Resolved {
        let (default_action, default_from) = match action {
            Some(a) => (a, format!("default_action of {from}")),
            None => (
                Action::Deny,
                "built-in default (no default_action anywhere): deny".into(),
            ),
        };
        Resolved {
            mode: self.mode,
            raw_sockets: self.raw_sockets,
            rules,
            default_action,
            inbound: Action::Allow,
            default_from,
            scope,
        }
    }
}

impl Resolved {
    /// First matching rule wins, else the default action.
    pub fn decide(&self, dst: &Target) -> Decision {
        let host = dst.host.as_deref().and_then(normalize_host);
        for rule in &self.rules {
            if let Some(why) = matches(rule, host.as_deref(), dst) {
                return Decision {
                    action: rule.action,
                    rule: Some(rule.origin.clone()),
                    reason: format!("rule `{rule}` matched: {why}"),
                };
            }
        }
        Decision {
            action: self.default_action,
            rule: None,
            reason: format!("no rule of {} matched; {}", self.scope, self.default_from),
        }
    }
}

impl RuleSet {
    pub fn is_empty(&self) -> bool {
        self.default_action.is_none() && self.rules.is_empty() && self.inbound.is_none()
    }
}

/// `Some(explanation)` when `rule` covers the target.
fn matches(rule: &Rule, host: Option<&str>, t: &Target) -> Option<String> {
    if !proto_matches(rule.proto, t.proto) {
        return None;
    }
    if let Some((lo, hi)) = rule.ports {
        if t.port < lo || t.port > hi {
            return None;
        }
    }
    dst_matches(&rule.dst, host, t)
}

/// A rule for `any` covers every protocol; otherwise the protocols must be
/// equal (a target of `any` only meets `any` rules).
fn proto_matches(rule: Proto, target: Proto) -> bool {
    rule == Proto::Any || rule == target
}

fn dst_matches(dst: &Dst, host: Option<&str>, t: &Target) -> Option<String> {
    match dst {
        Dst::Any => Some("every destination".into()),
        Dst::Domain(d) => (host? == d).then(|| format!("host {d}")),
        Dst::Wildcard(suffix) => {
            let h = host?;
            let under = h
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.ends_with('.'));
            (h == suffix || under).then(|| format!("host {h} is {suffix} or under it"))
        }
        Dst::Cidr(net) => {
            // An IPv4-mapped destination is decided as IPv4, as the
            // kernel decides it (see values::v4_mapped_as_v4).
            let ip = t.ip?.to_canonical();
            net.contains(&ip)
                .then(|| format!("address {ip} is in {net}"))
        }
    }
}
