//! `policy check FILE`, `policy explain` and `policy suggest`: offline, no
//! root, no kernel. `check` and `explain` refuse a file the kernel could not
//! hold (more rules per rule set or more distinct rule sets than it has room
//! for), exactly as the daemon does at start-up and reload.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::opensearch::{OpenSearch, OpenSearchAuth};
use crate::policy::{Mode, Policy, Proto, Resolved, RuleSet, Target};

#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file, or a bare `.clawker.yaml` with --project: a
    /// summary and warnings, or one `file:line:column: reason` line and a
    /// non-zero exit.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// FILE is a bare `.clawker.yaml`: load it as this project's rules.
        #[arg(long, value_name = "NAME")]
        project: Option<String>,
    },
    /// Say which rule decides a connection and why.
    Explain(ExplainArgs),
    /// Write the smallest `.clawker.yaml` firewall section that would have
    /// allowed what an agent or project did (from its records).
    Suggest(SuggestArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SuggestArgs {
    /// Records as JSON lines (the daemon's stdout output); `-`: stdin.
    #[arg(long, value_name = "FILE", required_unless_present = "from_opensearch")]
    pub records: Option<PathBuf>,
    /// Read the records from this OpenSearch (the `clawker-egress` data
    /// stream) instead, over --since/--until or the last --last.
    #[arg(long, value_name = "URL", conflicts_with = "records")]
    pub from_opensearch: Option<String>,
    #[command(flatten)]
    pub access: OpenSearchAuth,
    /// Window length when --since is not given ("24h", "15m"); with
    /// --from-opensearch it defaults to 24h, with --records to every record.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub last: Option<std::time::Duration>,
    /// Only this agent's records.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only this project's records.
    #[arg(long)]
    pub project: Option<String>,
    /// Only records at or after this time (RFC 3339, e.g. 2026-11-30T08:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<std::time::SystemTime>,
    /// Only records at or before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<std::time::SystemTime>,
    /// Also allow connections an enforced policy denied (by default only
    /// what flowed: allowed, bypassed, and audit-mode denials).
    #[arg(long)]
    pub include_denied: bool,
    /// Write the file here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Policy file, or a bare `.clawker.yaml` (then --project names the
    /// project it is loaded as).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// The container's agent label value (omit for none).
    #[arg(long)]
    pub agent: Option<String>,
    /// The container's project label value (omit for none; required with a
    /// bare `.clawker.yaml`).
    #[arg(long)]
    pub project: Option<String>,
    /// Destination: host:port, ipv4:port or [ipv6]:port (port optional for icmp).
    #[arg(long, value_name = "HOST:PORT")]
    pub dst: String,
    /// The address a host name resolved to, so CIDR rules are checked too.
    #[arg(long, value_name = "IP")]
    pub ip: Option<IpAddr>,
    /// L4 protocol of the attempt.
    #[arg(long, default_value = "tcp", value_parser = parse_proto)]
    pub proto: Proto,
}

pub fn policy(args: &PolicyArgs) -> Result<()> {
    match &args.command {
        PolicyCommand::Check { file, project } => check(file, project.as_deref()),
        PolicyCommand::Explain(a) => explain(a),
        PolicyCommand::Suggest(a) => suggest(a),
    }
}

/// A rejected file is one `file:line:column: reason` line on stderr, with no
/// prefix, so editors and CI annotators can jump to it.
fn load_or_exit(file: &Path, project: Option<&str>) -> (Policy, bool) {
    let loaded = Policy::load_any(file, project).and_then(|(p, bare)| {
        p.check_limits(&file.display().to_string(), &crate::enforce::KERNEL_LIMITS)?;
        Ok((p, bare))
    });
    match loaded {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

fn check(file: &Path, project: Option<&str>) -> Result<()> {
    let (policy, clawker) = load_or_exit(file, project);
    if let (false, Some(p)) = (clawker, project) {
        bail!(
            "{}: a policy file, not a bare .clawker.yaml: --project {p} does not apply",
            file.display()
        );
    }
    if let (true, Some(p)) = (clawker, project) {
        println!(
            "{}: a bare .clawker.yaml, loaded as project {p}",
            file.display()
        );
    }
    for line in summary(file, &policy) {
        println!("{line}");
    }
    for w in &policy.warnings {
        println!("warning: {w}");
    }
    for w in collisions(&policy) {
        println!("warning: {w}");
    }
    Ok(())
}

/// Domain rules the kernel cannot tell apart: their names have one hash
/// in one rule set (only a policy crafted to collide). The kernel confirms
/// every match on the whole name, so such a rule never matches there while
/// `explain` says it does: say so here.
fn collisions(p: &Policy) -> Vec<String> {
    let mut sets = vec![(String::from("default"), p.rules_for(None, None))];
    for (name, proj) in &p.projects {
        sets.push((format!("project {name}"), p.rules_for(None, Some(name))));
        for agent in proj.agents.keys() {
            sets.push((
                format!("project {name}, agent {agent}"),
                p.rules_for(Some(agent), Some(name)),
            ));
        }
    }
    let mut out = Vec::new();
    for (scope, resolved) in sets {
        // Limits were checked at load: compile() does not refuse here.
        let collisions = crate::enforce::compile(&resolved)
            .map(|(_, notes)| notes.hash_collisions)
            .unwrap_or_default();
        for name in collisions {
            out.push(format!(
                "{scope}: domain {name} has the same kernel hash as another domain rule; the kernel will never match it"
            ));
        }
    }
    out
}

fn summary(file: &Path, p: &Policy) -> Vec<String> {
    let mut out = vec![format!(
        "{}: ok (mode {}, raw_sockets {}, {} project(s))",
        file.display(),
        p.mode,
        p.raw_sockets,
        p.projects.len()
    )];
    out.push(format!("default: {}", set_summary(&p.default)));
    for (name, proj) in &p.projects {
        out.push(format!("project {name}: {}", set_summary(&proj.rules)));
        for (agent, set) in &proj.agents {
            out.push(format!("  agent {agent}: {}", set_summary(set)));
        }
    }
    out
}

fn set_summary(set: &RuleSet) -> String {
    let default = set
        .default_action
        .map_or("inherited".to_string(), |a| a.to_string());
    let inbound = set
        .inbound
        .map_or(String::new(), |a| format!(", inbound {a}"));
    format!(
        "{} rule(s), default_action {default}{inbound}",
        set.rules.len()
    )
}

fn explain(a: &ExplainArgs) -> Result<()> {
    let (policy, _) = load_or_exit(&a.file, a.project.as_deref());
    let target = target(&a.dst, a.ip, a.proto)?;
    let resolved = policy.rules_for(a.agent.as_deref(), a.project.as_deref());
    print_explanation(&resolved, &target, &a.dst);
    Ok(())
}

fn print_explanation(r: &Resolved, t: &Target, dst: &str) {
    let d = r.decide(t);
    println!(
        "scope:    {} ({} rule(s), mode {})",
        r.scope,
        r.rules.len(),
        r.mode
    );
    println!("target:   {dst} {}", t.proto);
    println!("decision: {}", d.action);
    match &d.rule {
        Some(origin) => println!("rule:     {origin}"),
        None => println!("rule:     none ({})", r.default_from),
    }
    println!("reason:   {}", d.reason);
    if r.inbound == crate::policy::Action::Deny {
        println!(
            "inbound:  deny (connections from outside the container to its listeners are dropped)"
        );
    }
    if r.mode == Mode::Audit {
        println!("note:     audit mode: a deny is recorded (enforced=false), never blocked");
    }
}

fn suggest(a: &SuggestArgs) -> Result<()> {
    use crate::policy::suggest::{observe, observe_records, render, verify, Selection};
    let mut sel = Selection {
        agent: a.agent.clone(),
        project: a.project.clone(),
        since: a.since,
        until: a.until,
        include_denied: a.include_denied,
    };
    let (seen, t, from) = match (&a.records, &a.from_opensearch) {
        (_, Some(url)) => {
            let until = a.until.unwrap_or_else(std::time::SystemTime::now);
            let since = a
                .since
                .unwrap_or(until - a.last.unwrap_or(std::time::Duration::from_secs(86_400)));
            if since > until {
                bail!("--since is after --until");
            }
            (sel.since, sel.until) = (Some(since), Some(until));
            let os = OpenSearch::new(url, &a.access)?;
            let rfc = |t| humantime::format_rfc3339(t).to_string();
            let records = super::suggest_source::fetch(
                &os,
                &rfc(since),
                &rfc(until),
                a.agent.as_deref(),
                a.project.as_deref(),
            )?;
            // The window was the query's: the aggregated records carry no time.
            let (seen, t) = observe_records(
                records,
                &Selection {
                    since: None,
                    until: None,
                    ..sel.clone()
                },
            );
            (seen, t, "record(s) in OpenSearch")
        }
        (Some(path), None) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("read records from stdin")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("read records {}", path.display()))?
            };
            if let (None, Some(last)) = (sel.since, a.last) {
                sel.since = Some(sel.until.unwrap_or_else(std::time::SystemTime::now) - last);
            }
            let (seen, t) = observe(&text, &sel);
            (seen, t, "line(s)")
        }
        (None, None) => bail!("--records FILE or --from-opensearch URL"),
    };
    let who = match (&a.agent, &a.project) {
        (Some(ag), Some(p)) => format!("agent {ag}, project {p}"),
        (Some(ag), None) => format!("agent {ag}"),
        (None, Some(p)) => format!("project {p}"),
        (None, None) => "every agent".into(),
    };
    let when = |t: Option<std::time::SystemTime>| {
        t.map_or("-".to_string(), |t| {
            humantime::format_rfc3339(t).to_string()
        })
    };
    let header = format!(
        "Suggested by `clawker-egress policy suggest` for {who}, {} to {}:\n\
         {} destination(s) from {} record(s) of {} {from}.\n\
         Left out: {} enforced denial(s) (--include-denied), {} raw/packet socket(s) \
         (raw_sockets in a policy file), {} without a destination, {} not JSON.",
        when(sel.since),
        when(sel.until),
        seen.len(),
        t.used,
        t.lines,
        t.enforced_denials,
        t.raw_or_packet,
        t.no_destination,
        t.not_json
    );
    let yaml = render(&seen, &header);
    let project = a.project.as_deref().unwrap_or("suggested");
    let missed = verify(&yaml, project, &seen).context("the suggested file does not load")?;
    if !missed.is_empty() {
        bail!(
            "the suggested file would not allow {} observed flow(s): {missed:?}",
            missed.len()
        );
    }
    eprintln!("{}", header.replace('\n', " "));
    match &a.out {
        Some(path) => {
            std::fs::write(path, &yaml).with_context(|| format!("write {}", path.display()))?
        }
        None => print!("{yaml}"),
    }
    Ok(())
}

fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (RFC 3339, e.g. 2026-11-30T08:00:00Z)"))
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        "icmp" | "icmpv6" => Ok(Proto::Icmp),
        _ => Err(format!("{s:?}: expected tcp, udp or icmp")),
    }
}

/// `host:port`, `1.2.3.4:port`, `[2001:db8::1]:port`; a bare address or
/// host only for ICMP (port 0).
fn target(dst: &str, ip: Option<IpAddr>, proto: Proto) -> Result<Target> {
    let (host, port) = split_host_port(dst)?;
    let port = match (port, proto) {
        (Some(p), _) => p,
        (None, Proto::Icmp) => 0,
        (None, _) => bail!("--dst {dst:?}: missing :port"),
    };
    let parsed_ip = host.parse::<IpAddr>().ok();
    Ok(Target {
        host: parsed_ip.is_none().then(|| host.to_string()),
        ip: parsed_ip.or(ip),
        port,
        proto,
    })
}

fn split_host_port(dst: &str) -> Result<(&str, Option<u16>)> {
    if let Some(rest) = dst.strip_prefix('[') {
        let Some((addr, tail)) = rest.split_once(']') else {
            bail!("--dst {dst:?}: missing ']'");
        };
        return Ok((addr, port_suffix(dst, tail)?));
    }
    if dst.parse::<IpAddr>().is_ok() {
        return Ok((dst, None));
    }
    match dst.rsplit_once(':') {
        Some((host, p)) => Ok((host, Some(port_number(dst, p)?))),
        None => Ok((dst, None)),
    }
}

fn port_suffix(dst: &str, tail: &str) -> Result<Option<u16>> {
    match tail.strip_prefix(':') {
        Some(p) => Ok(Some(port_number(dst, p)?)),
        None if tail.is_empty() => Ok(None),
        None => bail!("--dst {dst:?}: expected ]:port"),
    }
}

fn port_number(dst: &str, p: &str) -> Result<u16> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("--dst {dst:?}: port {p:?} is not within 1-65535"),
    }
}
