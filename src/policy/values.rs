//! Scalar values of a policy file: destinations, ports, protocols, actions.
//! Each parser takes the text as written and returns the value or a reason
//! (the caller adds file:line:column).

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{Action, Dst, Mode, Proto};

/// Named protocols: what clawker's `proto` values mean at L4. A rule's own
/// `port` overrides the default port. `dns` is both UDP and TCP (TCP
/// fallback for large answers), so it becomes two rules.
/// One L4 meaning of a named protocol: the protocol and its default port.
pub type L4 = (Proto, Option<u16>);

const NAMED: &[(&str, &[L4])] = &[
    ("any", &[(Proto::Any, None)]),
    ("tcp", &[(Proto::Tcp, None)]),
    ("udp", &[(Proto::Udp, None)]),
    ("icmp", &[(Proto::Icmp, None)]),
    ("icmpv6", &[(Proto::Icmp, None)]),
    ("http", &[(Proto::Tcp, Some(80))]),
    ("https", &[(Proto::Tcp, Some(443))]),
    ("ssh", &[(Proto::Tcp, Some(22))]),
    ("git", &[(Proto::Tcp, Some(9418))]),
    ("dns", &[(Proto::Udp, Some(53)), (Proto::Tcp, Some(53))]),
    ("dot", &[(Proto::Tcp, Some(853))]),
    ("ntp", &[(Proto::Udp, Some(123))]),
    ("smtp", &[(Proto::Tcp, Some(25))]),
    ("smtps", &[(Proto::Tcp, Some(465))]),
    ("submission", &[(Proto::Tcp, Some(587))]),
    ("imaps", &[(Proto::Tcp, Some(993))]),
    ("ftp", &[(Proto::Tcp, Some(21))]),
    ("postgres", &[(Proto::Tcp, Some(5432))]),
    ("mysql", &[(Proto::Tcp, Some(3306))]),
    ("redis", &[(Proto::Tcp, Some(6379))]),
    ("quic", &[(Proto::Udp, Some(443))]),
];

/// The L4 protocol(s) and default port of a `proto` value
/// (case-insensitive).
pub fn named_proto(name: &str) -> Result<&'static [L4], String> {
    let lower = name.trim().to_ascii_lowercase();
    NAMED
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let known: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
            format!("unknown protocol {name:?} (known: {})", known.join(", "))
        })
}

pub fn parse_action(text: &str) -> Result<Action, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "allow" | "accept" => Ok(Action::Allow),
        "deny" | "block" | "drop" | "reject" => Ok(Action::Deny),
        _ => Err(format!("action {text:?}: expected allow or deny")),
    }
}

pub fn parse_mode(text: &str) -> Result<Mode, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "enforce" => Ok(Mode::Enforce),
        "audit" => Ok(Mode::Audit),
        _ => Err(format!("mode {text:?}: expected enforce or audit")),
    }
}

/// `"443"`, `443`, `"9000-9100"`: an inclusive range within 1..=65535.
pub fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let text = text.trim();
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (port(lo, text)?, port(hi, text)?),
        None => {
            let p = port(text, text)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("port range {text:?}: start is above end"));
    }
    Ok((lo, hi))
}

fn port(part: &str, whole: &str) -> Result<u16, String> {
    let part = part.trim();
    let n: u32 = part
        .parse()
        .map_err(|_| format!("port {whole:?}: expected a number or a range like 9000-9100"))?;
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("port {part}: must be within 1-65535")),
    }
}

/// A rule's `dst`: `*`, an IP address, a CIDR, a wildcard domain
/// (`.example.com`, `*.example.com`) or an exact domain.
pub fn parse_dst(text: &str) -> Result<Dst, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(Dst::Any);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Dst::Cidr(v4_mapped_as_v4(IpNet::from(ip))));
    }
    if text.contains('/') {
        return parse_cidr(text).map(v4_mapped_as_v4).map(Dst::Cidr);
    }
    if let Some(suffix) = text.strip_prefix("*.").or_else(|| text.strip_prefix('.')) {
        return normalize_domain(suffix)
            .map(Dst::Wildcard)
            .map_err(|e| format!("wildcard {text:?}: {e}"));
    }
    normalize_domain(text)
        .map(Dst::Domain)
        .map_err(|e| format!("dst {text:?}: {e}"))
}

/// The kernel decides a connect to an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, a dual-stack socket reaching IPv4) as the IPv4
/// address it carries, so a rule inside `::ffff:0:0/96` is that IPv4
/// rule (`::ffff:127.0.0.0/104` is `127.0.0.0/8`). A shorter IPv6 prefix
/// (`::/0`) stays IPv6 and never matches such a destination; so says
/// `policy explain`, which maps its target the same way.
pub fn v4_mapped_as_v4(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
                .expect("a prefix of 96..=128 less 96 is a valid IPv4 prefix"),
            None => net,
        },
        _ => net,
    }
}

/// Host bits set (`10.0.0.1/8`) are an error rather than silently
/// truncated: the writer may have meant a /32.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text.parse().map_err(|_| {
        format!("CIDR {text:?}: expected address/prefix, e.g. 10.0.0.0/8 or 2001:db8::/32")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "CIDR {text:?}: host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Lowercase, no trailing dot, RFC 1035 lengths (253 / 63), labels of
/// letters, digits, `-` and `_` (service names like `_acme`) that neither
/// start nor end with `-`. A numeric last label is a mistyped address.
pub fn normalize_domain(text: &str) -> Result<String, String> {
    let name = text.trim().strip_suffix('.').unwrap_or(text.trim());
    let name = name.to_ascii_lowercase();
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "name is {} characters long (at most 253)",
            name.len()
        ));
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a valid IP address, and a domain cannot end in a number".into());
    }
    Ok(name)
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label (two dots in a row?)".into());
    }
    if label.len() > 63 {
        return Err(format!("label {label:?} is longer than 63 characters"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "character {c:?} not allowed in a domain (use punycode for IDNs; `*` only as a leading `*.`)"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with '-'"));
    }
    Ok(())
}

/// A host as a client names it, normalised like rule domains so matching
/// is a plain comparison. `None` for something that cannot be a name.
pub fn normalize_host(host: &str) -> Option<String> {
    let h = host.trim().strip_suffix('.').unwrap_or(host.trim());
    (!h.is_empty()).then(|| h.to_ascii_lowercase())
}
