//! The egress record shapes: a flow, an attempt that never became one,
//! and a DNS exchange.

use std::net::IpAddr;

use compact_str::ToCompactString;

use super::{key, printable, Record, Source};
use crate::capture::{CloseReason, Counters, Hook, SockEvent, Verdict};
use crate::flow::{community_id, DnsExchange, FlowRecord, FlowState};

/// The fields every egress record starts with, in wire order. Optional
/// parts are left out of the record when `None`.
struct Header<'a> {
    time: std::time::SystemTime,
    verdict: Verdict,
    /// Only on records of one socket event (`from_sock`).
    hook: Option<Hook>,
    /// Only on a denied flow (audit mode let it through).
    enforced: Option<bool>,
    l4_proto: String,
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
    fn record(self) -> Record {
        let mut r = Record::new(self.time, Source::Egress);
        r.set(key::VERDICT, self.verdict.name());
        if let Some(hook) = self.hook {
            r.set(key::HOOK, hook.name());
        }
        if let Some(enforced) = self.enforced {
            r.set(key::ENFORCED, enforced);
        }
        r.set(key::L4_PROTO, self.l4_proto);
        r.set(key::L7_PROTO, self.l7_proto);
        if let Some(v) = self.ip_version {
            r.set(key::IP_VERSION, v);
        }
        if let Some(ip) = self.src_ip {
            r.set(key::SRC_IP, ip.to_compact_string());
        }
        if let Some(port) = self.src_port {
            r.set(key::SRC_PORT, port);
        }
        if let Some(ip) = self.dst_ip {
            r.set(key::DST_IP, ip.to_compact_string());
        }
        if let Some(port) = self.dst_port {
            r.set(key::DST_PORT, port);
        }
        r.set(key::DST_HOST, self.dst_host);
        r.set(key::CGROUP_ID, self.cgroup_id);
        r.set(key::PID, self.pid);
        r.set(key::COMM, self.comm);
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
        if ev.verdict == Verdict::Denied {
            r.set(key::ENFORCED, !ev.audit);
            r.set_counters(Counters::default());
            r.set(key::DURATION_MS, 0u64);
            r.set(key::FLOW_STATE, FlowState::Ended.name());
            r.set(key::CLOSE_REASON, CloseReason::Denied.name());
        }
        r
    }

    /// One flow: at its end, or an interim report of a long one.
    pub fn from_flow(f: &FlowRecord) -> Self {
        let flow = &f.flow;
        let v4 = flow.remote.0.is_ipv4();
        let family = if v4 { libc::AF_INET } else { libc::AF_INET6 };
        let mut r = Header {
            time: f.time,
            verdict: flow.verdict,
            hook: None,
            // Only audit mode lets a denied flow through.
            enforced: (flow.verdict == Verdict::Denied).then_some(!flow.audit),
            l4_proto: l4_proto(family as u16, 0, u16::from(flow.protocol)),
            l7_proto: "unknown",
            ip_version: Some(if v4 { 4 } else { 6 }),
            src_ip: flow.local.map(|(ip, _)| ip),
            src_port: flow.local.map(|(_, port)| port).filter(|&port| port != 0),
            dst_ip: Some(flow.remote.0),
            dst_port: Some(flow.remote.1).filter(|&port| port != 0),
            dst_host: f.dst_host.clone().unwrap_or_default(),
            cgroup_id: flow.cgroup_id,
            pid: flow.tgid,
            comm: &flow.comm,
        }
        .record();
        r.set_counters(f.delta);
        r.set(
            key::DURATION_MS,
            u64::try_from(f.duration.as_millis()).unwrap_or(u64::MAX),
        );
        r.set(key::FLOW_STATE, f.state.name());
        if let Some(reason) = f.close_reason {
            r.set(key::CLOSE_REASON, reason.name());
        }
        if f.errno != 0 {
            r.set(key::ERRNO, i64::from(f.errno));
        }
        if let Some(id) = community_id(flow) {
            r.set(key::COMMUNITY_ID, id);
        }
        r
    }

    /// One DNS exchange: a query (recorded even when no answer comes, so a
    /// tunnelling agent is visible by its query names), its answer, or an
    /// answer the kernel rejected (`dns_rejected`: it changed nothing).
    pub fn from_dns(x: &DnsExchange) -> Self {
        let d = x.first();
        let tcp = i32::from(d.protocol) == libc::IPPROTO_TCP;
        let mut r = Header {
            time: d.time,
            verdict: Verdict::Allowed,
            hook: None,
            enforced: None,
            l4_proto: if tcp { "tcp" } else { "udp" }.into(),
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
        r.set(key::QNAME, d.qname.as_str());
        r.set(key::QTYPE, qtype_name(d.qtype));
        r.set(key::DNS_ANSWERED, x.answer.is_some());
        let Some(a) = &x.answer else {
            return r.with_body(format!(
                "DNS {} {} -> (no answer)",
                qtype_name(d.qtype),
                printable(&d.qname)
            ));
        };
        if let Some(q) = &x.query {
            let ms = a.ts_ns.saturating_sub(q.ts_ns) / 1_000_000;
            r.set(key::DURATION_MS, ms);
        }
        r.set(key::RCODE, rcode_name(a.rcode));
        let answers: Vec<String> = a.answers.iter().map(|(ip, _)| ip.to_string()).collect();
        r.set(key::ANSWERS, answers.join(","));
        if let Some(ttl) = a.answers.iter().map(|(_, t)| *t).min() {
            r.set(key::TTL, ttl);
        }
        let rejected = match a.rejected {
            Some(why) => {
                r.set(key::DNS_REJECTED, why.name());
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
        self.set(key::BYTES_OUT, c.bytes_out);
        self.set(key::BYTES_IN, c.bytes_in);
        self.set(key::PACKETS_OUT, c.packets_out);
        self.set(key::PACKETS_IN, c.packets_in);
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
pub fn l4_proto(family: u16, sock_type: u16, protocol: u16) -> String {
    match i32::from(family) {
        libc::AF_PACKET => return "packet".into(),
        0 | libc::AF_INET | libc::AF_INET6 => {}
        f => return format!("family:{f}"),
    }
    if i32::from(sock_type) == libc::SOCK_RAW {
        return "raw".into();
    }
    match i32::from(protocol) {
        libc::IPPROTO_TCP => "tcp".into(),
        libc::IPPROTO_UDP => "udp".into(),
        libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6 => "icmp".into(),
        n => format!("other:{n}"),
    }
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
