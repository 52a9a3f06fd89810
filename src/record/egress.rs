//! The egress record shapes: a flow, an attempt that never became one,
//! and a DNS exchange.

use super::{key, printable, Record, Source};
use crate::capture::{CloseReason, Counters, SockEvent, Verdict};
use crate::flow::{community_id, DnsExchange, FlowRecord, FlowState};

impl Record {
    /// An attempt that never became a flow: denied (one record, nothing
    /// flowed, P18) or a raw/packet socket's creation.
    pub fn from_sock(ev: &SockEvent) -> Self {
        let mut r = Record::new(ev.time, Source::Egress);
        r.set(key::VERDICT, ev.verdict.name());
        r.set(key::HOOK, ev.hook.name());
        r.set(
            key::L4_PROTO,
            l4_proto(ev.family, ev.sock_type, ev.protocol),
        );
        // BPF alone cannot tell the application protocol (P17).
        r.set(key::L7_PROTO, "unknown");
        if let Some(v) = ip_version(ev.family) {
            r.set(key::IP_VERSION, v);
        }
        // The source is partly known before the kernel binds the socket:
        // a port without an address (unbound UDP) or neither (connect).
        if let Some((ip, port)) = ev.src {
            if !ip.is_unspecified() {
                r.set(key::SRC_IP, ip.to_string());
            }
            if port != 0 {
                r.set(key::SRC_PORT, port);
            }
        }
        if let Some((ip, port)) = ev.dst {
            r.set(key::DST_IP, ip.to_string());
            r.set(key::DST_PORT, port);
        }
        // Empty until DNS attribution names the destination.
        r.set(key::DST_HOST, "");
        r.set(key::CGROUP_ID, ev.cgroup_id);
        r.set(key::PID, ev.tgid);
        r.set(key::COMM, ev.comm.as_str());
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
        let mut r = Record::new(f.time, Source::Egress);
        r.set(key::VERDICT, flow.verdict.name());
        if flow.verdict == Verdict::Denied {
            // Only audit mode lets a denied flow through.
            r.set(key::ENFORCED, !flow.audit);
        }
        let family = if flow.remote.0.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        r.set(
            key::L4_PROTO,
            l4_proto(family as u16, 0, u16::from(flow.protocol)),
        );
        r.set(key::L7_PROTO, "unknown");
        r.set(
            key::IP_VERSION,
            if flow.remote.0.is_ipv4() { 4u32 } else { 6 },
        );
        if let Some((ip, port)) = flow.local {
            r.set(key::SRC_IP, ip.to_string());
            if port != 0 {
                r.set(key::SRC_PORT, port);
            }
        }
        r.set(key::DST_IP, flow.remote.0.to_string());
        if flow.remote.1 != 0 {
            r.set(key::DST_PORT, flow.remote.1);
        }
        r.set(key::DST_HOST, f.dst_host.clone().unwrap_or_default());
        r.set(key::CGROUP_ID, flow.cgroup_id);
        r.set(key::PID, flow.tgid);
        r.set(key::COMM, flow.comm.as_str());
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
        let mut r = Record::new(d.time, Source::Egress);
        r.set(key::VERDICT, Verdict::Allowed.name());
        let tcp = i32::from(d.protocol) == libc::IPPROTO_TCP;
        r.set(key::L4_PROTO, if tcp { "tcp" } else { "udp" });
        r.set(key::L7_PROTO, "dns");
        r.set(
            key::IP_VERSION,
            if d.resolver.0.is_ipv4() { 4u32 } else { 6 },
        );
        r.set(key::SRC_PORT, d.local_port);
        r.set(key::DST_IP, d.resolver.0.to_string());
        r.set(key::DST_PORT, d.resolver.1);
        r.set(key::DST_HOST, "");
        r.set(key::CGROUP_ID, d.cgroup_id);
        r.set(key::PID, d.pid);
        r.set(key::COMM, d.comm.as_str());
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
    use crate::capture::Hook;

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
