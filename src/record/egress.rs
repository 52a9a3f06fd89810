//! The egress record shapes: a flow, an attempt that never became one,
//! and a DNS exchange.

use std::net::IpAddr;

use compact_str::{CompactString, ToCompactString};

use super::{key, printable, Record, Source};
use crate::capture::{CloseReason, Counters, Hook, SockEvent, Verdict};
use crate::flow::{community_id, DnsExchange, FlowRecord, FlowState};

/// `direction` of a listen and of an accepted connection. Outbound records
/// carry no `direction` (it would cost every record a field for nothing).
pub const INBOUND: &str = "inbound";

/// The fields every egress record starts with, in wire order. Optional
/// parts are left out of the record when `None`.
struct Header<'a> {
    time: std::time::SystemTime,
    verdict: Verdict,
    /// Only on records of one socket event (`from_sock`).
    hook: Option<Hook>,
    /// Only on a denied flow (audit mode let it through).
    enforced: Option<bool>,
    l4_proto: CompactString,
    l7_proto: &'static str,
    ip_version: Option<u32>,
    src_ip: Option<IpAddr>,
    src_port: Option<u16>,
    dst_ip: Option<IpAddr>,
    dst_port: Option<u16>,
    /// Empty until DNS attribution names the destination.
    dst_host: String,
    cgroup_id: u64,
    pid: u32,
    comm: &'a str,
}

impl Header<'_> {
    /// Every shape below adds each of its fields once, to a record that
    /// holds only its id: `push`, not `set` (no search per field).
    fn record(self) -> Record {
        let mut r = Record::new(self.time, Source::Egress);
        r.push(key::VERDICT, self.verdict.name());
        if let Some(hook) = self.hook {
            r.push(key::HOOK, hook.name());
        }
        if let Some(enforced) = self.enforced {
            r.push(key::ENFORCED, enforced);
        }
        r.push(key::L4_PROTO, self.l4_proto);
        r.push(key::L7_PROTO, self.l7_proto);
        if let Some(v) = self.ip_version {
            r.push(key::IP_VERSION, v);
        }
        if let Some(ip) = self.src_ip {
            r.push(key::SRC_IP, ip_text(ip));
        }
        if let Some(port) = self.src_port {
            r.push(key::SRC_PORT, port);
        }
        if let Some(ip) = self.dst_ip {
            r.push(key::DST_IP, ip_text(ip));
        }
        if let Some(port) = self.dst_port {
            r.push(key::DST_PORT, port);
        }
        r.push(key::DST_HOST, self.dst_host);
        r.push(key::CGROUP_ID, self.cgroup_id);
        r.push(key::PID, self.pid);
        r.push(key::COMM, self.comm);
        r
    }
}

impl Record {
    /// An attempt that never became a flow: denied (one record, nothing
    /// flowed, P18) or a raw/packet socket's creation.
    pub fn from_sock(ev: &SockEvent) -> Self {
        // The source is partly known before the kernel binds the socket:
        // a port without an address (unbound UDP) or neither (connect).
        let src = ev.src;
        let mut r = Header {
            time: ev.time,
            verdict: ev.verdict,
            hook: Some(ev.hook),
            enforced: None,
            l4_proto: l4_proto(ev.family, ev.sock_type, ev.protocol),
            // BPF alone cannot tell the application protocol (P17).
            l7_proto: "unknown",
            ip_version: ip_version(ev.family),
            src_ip: src.map(|(ip, _)| ip).filter(|ip| !ip.is_unspecified()),
            src_port: src.map(|(_, port)| port).filter(|&port| port != 0),
            dst_ip: ev.dst.map(|(ip, _)| ip),
            dst_port: ev.dst.map(|(_, port)| port),
            dst_host: String::new(),
            cgroup_id: ev.cgroup_id,
            pid: ev.tgid,
            comm: &ev.comm,
        }
        .record();
        if ev.inbound {
            r.set(key::DIRECTION, INBOUND);
        }
        if ev.verdict == Verdict::Denied {
            r.push(key::ENFORCED, !ev.audit);
            r.set_counters(Counters::default());
            r.push(key::DURATION_MS, 0u64);
            r.push(key::FLOW_STATE, FlowState::Ended.name());
            r.push(key::CLOSE_REASON, CloseReason::Denied.name());
        }
        r
    }

    /// One flow: at its end, or an interim report of a long one. An
    /// inbound flow names the peer that connected as its source.
    pub fn from_flow(f: &FlowRecord) -> Self {
        let flow = &f.flow;
        let v4 = flow.remote.0.is_ipv4();
        let family = if v4 { libc::AF_INET } else { libc::AF_INET6 };
        let remote = Some(flow.remote);
        let (src, dst) = if flow.inbound {
            (remote, flow.local)
        } else {
            (flow.local, remote)
        };
        let mut r = Header {
            time: f.time,
            verdict: flow.verdict,
            hook: None,
            // Only audit mode lets a denied flow through.
            enforced: (flow.verdict == Verdict::Denied).then_some(!flow.audit),
            l4_proto: l4_proto(family as u16, 0, u16::from(flow.protocol)),
            l7_proto: "unknown",
            ip_version: Some(if v4 { 4 } else { 6 }),
            src_ip: src.map(|(ip, _)| ip),
            src_port: src.map(|(_, port)| port).filter(|&port| port != 0),
            dst_ip: dst.map(|(ip, _)| ip),
            dst_port: dst.map(|(_, port)| port).filter(|&port| port != 0),
            // a name the container resolved names a remote end it called
            dst_host: match flow.inbound {
                true => String::new(),
                false => f.dst_host.clone().unwrap_or_default(),
            },
            cgroup_id: flow.cgroup_id,
            pid: flow.tgid,
            comm: &flow.comm,
        }
        .record();
        if flow.inbound {
            r.set(key::DIRECTION, INBOUND);
        }
        r.set_counters(f.delta);
        r.push(
            key::DURATION_MS,
            u64::try_from(f.duration.as_millis()).unwrap_or(u64::MAX),
        );
        r.push(key::FLOW_STATE, f.state.name());
        if let Some(reason) = f.close_reason {
            r.push(key::CLOSE_REASON, reason.name());
        }
        if f.errno != 0 {
            r.push(key::ERRNO, i64::from(f.errno));
        }
        if let Some(id) = community_id(flow) {
            r.push(key::COMMUNITY_ID, id);
        }
        r
    }

    /// One DNS exchange: a query (recorded even when no answer comes, so a
    /// tunnelling agent is visible by its query names), its answer, or an
    /// answer the kernel rejected (`dns_rejected`: it changed nothing).
    pub fn from_dns(x: &DnsExchange) -> Self {
        let d = x.first();
        let tcp = i32::from(d.protocol) == libc::IPPROTO_TCP;
        // A query the kernel dropped (segmented): the only denied DNS record.
        let dropped = x.query.as_ref().and_then(|q| q.rejected);
        let mut r = Header {
            time: d.time,
            verdict: if dropped.is_some() {
                Verdict::Denied
            } else {
                Verdict::Allowed
            },
            hook: None,
            enforced: dropped.map(|_| true),
            l4_proto: CompactString::const_new(if tcp { "tcp" } else { "udp" }),
            l7_proto: "dns",
            ip_version: Some(if d.resolver.0.is_ipv4() { 4 } else { 6 }),
            src_ip: None,
            src_port: Some(d.local_port),
            dst_ip: Some(d.resolver.0),
            dst_port: Some(d.resolver.1),
            dst_host: String::new(),
            cgroup_id: d.cgroup_id,
            pid: d.pid,
            comm: &d.comm,
        }
        .record();
        r.push(key::QNAME, d.qname.as_str());
        r.push(key::QTYPE, qtype_name(d.qtype));
        r.push(key::DNS_ANSWERED, x.answer.is_some());
        let Some(a) = &x.answer else {
            let outcome = match dropped {
                Some(why) => {
                    r.push(key::DNS_REJECTED, why.name());
                    format!("(dropped: {})", why.name())
                }
                None => "(no answer)".into(),
            };
            return r.with_body(format!(
                "DNS {} {} -> {outcome}",
                qtype_name(d.qtype),
                printable(&d.qname)
            ));
        };
        if let Some(q) = &x.query {
            let ms = a.ts_ns.saturating_sub(q.ts_ns) / 1_000_000;
            r.push(key::DURATION_MS, ms);
        }
        r.push(key::RCODE, rcode_name(a.rcode));
        let answers: Vec<String> = a.answers.iter().map(|(ip, _)| ip.to_string()).collect();
        r.push(key::ANSWERS, answers.join(","));
        if let Some(ttl) = a.answers.iter().map(|(_, t)| *t).min() {
            r.push(key::TTL, ttl);
        }
        let rejected = match a.rejected {
            Some(why) => {
                r.push(key::DNS_REJECTED, why.name());
                format!(" (rejected: {})", why.name())
            }
            None => String::new(),
        };
        r.with_body(format!(
            "DNS {} {} -> {}{rejected}",
            qtype_name(d.qtype),
            printable(&d.qname),
            answers.join(",")
        ))
    }

    fn set_counters(&mut self, c: Counters) {
        self.push(key::BYTES_OUT, c.bytes_out);
        self.push(key::BYTES_IN, c.bytes_in);
        self.push(key::PACKETS_OUT, c.packets_out);
        self.push(key::PACKETS_IN, c.packets_in);
    }
}

fn qtype_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        n => format!("TYPE{n}"),
    }
}

fn rcode_name(c: u8) -> String {
    match c {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

fn ip_version(family: u16) -> Option<u32> {
    match i32::from(family) {
        libc::AF_INET => Some(4),
        libc::AF_INET6 => Some(6),
        _ => None,
    }
}

/// tcp | udp | icmp | raw | packet | family:<n> | other:<n>. A raw inet
/// socket is `raw` (its packets' flows carry the protocol on the wire), an
/// AF_PACKET socket `packet`, any other non-inet family `family:<n>`;
/// `sock_type` 0 means "a flow".
pub fn l4_proto(family: u16, sock_type: u16, protocol: u16) -> CompactString {
    let name = |s: &'static str| CompactString::const_new(s);
    match i32::from(family) {
        libc::AF_PACKET => return name("packet"),
        0 | libc::AF_INET | libc::AF_INET6 => {}
        f => return compact_str::format_compact!("family:{f}"),
    }
    if i32::from(sock_type) == libc::SOCK_RAW {
        return name("raw");
    }
    match i32::from(protocol) {
        libc::IPPROTO_TCP => name("tcp"),
        libc::IPPROTO_UDP => name("udp"),
        libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6 => name("icmp"),
        n => compact_str::format_compact!("other:{n}"),
    }
}

/// An address as `Display` writes it; IPv4 (most records) without the
/// formatter.
fn ip_text(ip: IpAddr) -> CompactString {
    let IpAddr::V4(v4) = ip else {
        return ip.to_compact_string();
    };
    let mut out = CompactString::const_new("");
    let mut num = itoa::Buffer::new();
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(num.format(octet));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn sock(hook: Hook, family: i32, sock_type: i32, protocol: i32) -> SockEvent {
        SockEvent {
            hook,
            time: UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789),
            cgroup_id: 7,
            scope_cgroup_id: 0,
            sock_cookie: 1,
            pid: 10,
            tgid: 9,
            family: family as u16,
            sock_type: sock_type as u16,
            protocol: protocol as u16,
            src: None,
            dst: Some(("::1".parse().unwrap(), 443)),
            verdict: Verdict::Allowed,
            audit: false,
            inbound: false,
            comm: "curl\nx".into(),
            proc: Default::default(),
        }
    }

    #[test]
    fn json_line_has_the_schema_keys() {
        let ev = sock(
            Hook::Connect6,
            libc::AF_INET6,
            libc::SOCK_STREAM,
            libc::IPPROTO_TCP,
        );
        let json: serde_json::Value = serde_json::to_value(Record::from_sock(&ev)).unwrap();
        assert_eq!(json["@timestamp"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(json["clawker.source"], "egress");
        assert_eq!(json["verdict"], "ALLOWED");
        assert_eq!(json["l4_proto"], "tcp");
        assert_eq!(json["l7_proto"], "unknown");
        assert_eq!(json["ip_version"], 6);
        assert_eq!(json["dst_ip"], "::1");
        assert_eq!(json["dst_port"], 443);
        assert_eq!(json["dst_host"], "");
        assert_eq!(json["pid"], 9);
        assert_eq!(json["cgroup_id"], 7);
        assert!(json.get("src_port").is_none());
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.3.40",
            "::1",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for n in (0..=u32::MAX).step_by(65_521) {
            let ip = IpAddr::from(n.to_be_bytes());
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn l4_proto_names() {
        let p = |t: i32, p: i32| l4_proto(libc::AF_INET as u16, t as u16, p as u16);
        assert_eq!(p(libc::SOCK_DGRAM, libc::IPPROTO_UDP), "udp");
        assert_eq!(p(libc::SOCK_RAW, libc::IPPROTO_ICMP), "raw");
        assert_eq!(p(libc::SOCK_DGRAM, libc::IPPROTO_ICMP), "icmp");
        assert_eq!(p(libc::SOCK_STREAM, 132), "other:132");
        assert_eq!(
            l4_proto(libc::AF_PACKET as u16, libc::SOCK_DGRAM as u16, 0),
            "packet"
        );
        assert_eq!(
            l4_proto(libc::AF_VSOCK as u16, libc::SOCK_STREAM as u16, 0),
            format!("family:{}", libc::AF_VSOCK)
        );
    }

    #[test]
    fn body_is_one_printable_line() {
        let ev = sock(
            Hook::Connect6,
            libc::AF_INET6,
            libc::SOCK_STREAM,
            libc::IPPROTO_TCP,
        );
        let body = Record::from_sock(&ev).body();
        assert_eq!(body, "ALLOWED tcp curl\u{fffd}x[9] -> [::1]:443");
    }
}
