//! Community ID v1 (the flow hash Zeek, Suricata and Elastic share), so
//! records join with other tools' records on one string.

use community_id::calculate_community_id;

use crate::capture::FlowSnapshot;

const SEED: u16 = 0;

/// The flow's Community ID, when both ends are known.
pub fn community_id(flow: &FlowSnapshot) -> Option<String> {
    let (src, src_port) = flow.local?;
    let (dst, dst_port) = flow.remote;
    if src.is_ipv4() != dst.is_ipv4() {
        return None;
    }
    let ported = matches!(
        i32::from(flow.protocol),
        libc::IPPROTO_TCP | libc::IPPROTO_UDP | libc::IPPROTO_SCTP
    );
    let (sp, dp) = if ported {
        (Some(src_port), Some(dst_port))
    } else {
        (None, None)
    };
    calculate_community_id(SEED, src, dst, sp, dp, flow.protocol, false).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Counters, Verdict};
    use std::net::IpAddr;

    fn flow(src: &str, sp: u16, dst: &str, dp: u16, proto: i32) -> FlowSnapshot {
        FlowSnapshot {
            sock_cookie: 1,
            remote: (dst.parse::<IpAddr>().unwrap(), dp),
            local: Some((src.parse().unwrap(), sp)),
            protocol: proto as u8,
            start_ns: 0,
            last_seen_ns: 0,
            cgroup_id: 0,
            scope_cgroup_id: 0,
            pid: 0,
            tgid: 0,
            comm: String::new(),
            proc: Default::default(),
            verdict: Verdict::Allowed,
            syn_sent: false,
            policy_end: false,
            inbound: false,
            audit: false,
            counters: Counters::default(),
        }
    }

    /// Vectors computed with the reference implementation (PyPI
    /// `communityid`, Corelight): `CommunityID().calc(FlowTuple.make_tcp(...))`.
    #[test]
    fn matches_the_reference_implementation() {
        let tcp = flow(
            "128.232.110.120",
            34855,
            "66.35.250.204",
            80,
            libc::IPPROTO_TCP,
        );
        assert_eq!(
            community_id(&tcp).unwrap(),
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
        );
        let udp = flow("192.168.1.52", 54585, "8.8.8.8", 53, libc::IPPROTO_UDP);
        assert_eq!(
            community_id(&udp).unwrap(),
            "1:d/FP5EW3wiY1vCndhwleRRKHowQ="
        );
        let v6 = flow("::1", 40000, "::1", 8080, libc::IPPROTO_TCP);
        assert_eq!(community_id(&v6).unwrap(), "1:L5IA2hF0v0/k9gpmt0QLdE5kiAI=");
    }

    /// An accepted connection (the server's side: local = the listener,
    /// remote = the client) has the client's Community ID: both records of
    /// one connection join.
    #[test]
    fn an_inbound_flow_joins_the_peers_record() {
        let mut served = flow(
            "66.35.250.204",
            80,
            "128.232.110.120",
            34855,
            libc::IPPROTO_TCP,
        );
        served.inbound = true;
        assert_eq!(
            community_id(&served).unwrap(),
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
        );
        let r = crate::record::Record::from_flow(&crate::flow::FlowRecord {
            flow: served,
            state: crate::flow::FlowState::Ended,
            time: std::time::SystemTime::UNIX_EPOCH,
            duration: std::time::Duration::ZERO,
            delta: Counters::default(),
            close_reason: None,
            errno: 0,
            dst_host: Some("client.example".into()),
            exe: None,
        });
        use crate::record::key;
        assert_eq!(r.get_str(key::DIRECTION), Some("inbound"));
        assert_eq!(r.get_str(key::SRC_IP), Some("128.232.110.120"));
        assert_eq!(r.get_int(key::SRC_PORT), Some(34855));
        assert_eq!(r.get_str(key::DST_IP), Some("66.35.250.204"));
        assert_eq!(r.get_int(key::DST_PORT), Some(80));
        assert_eq!(
            r.get_str(key::DST_HOST),
            Some(""),
            "no name for the container itself"
        );
    }

    #[test]
    fn unknown_source_has_no_id() {
        let mut f = flow("10.0.0.1", 1, "10.0.0.2", 2, libc::IPPROTO_TCP);
        f.local = None;
        assert_eq!(community_id(&f), None);
    }
}
