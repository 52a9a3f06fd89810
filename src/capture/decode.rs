//! Ring buffer bytes -> [`Event`]. Every record is checked against the ABI
//! (kind, version, size) before its body is read; anything else is a
//! [`DecodeError`], counted by the caller, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use super::argv::parse_args;
use super::clock::BootClock;
use super::event::{
    CloseReason, Counters, DnsKind, DnsMessage, DnsReject, Event, FlowEnd, FlowSnapshot, Hook,
    SockEvent, Verdict,
};
use super::process::{ExecEvent, ExitEvent, ForkEvent, ProcIdent};
use crate::kernel::abi;
use crate::kernel::pod::c_str as comm;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Truncated(usize),
    #[error("record version {0} is not the ABI version {expected}", expected = abi::EGRESS_ABI_VERSION)]
    Version(u8),
    #[error("unknown record kind {0}")]
    Kind(u16),
    #[error("record kind {kind} declares {declared} bytes, expected {expected}, got {actual}")]
    Size {
        kind: u16,
        declared: u16,
        expected: usize,
        actual: usize,
    },
    #[error("unknown hook {0}")]
    Hook(u8),
    #[error("unknown verdict {0}")]
    Verdict(u8),
    #[error("unknown close reason {0}")]
    CloseReason(u8),
    #[error("flow key of unknown address family {0}")]
    Family(u8),
    #[error("unknown DNS message kind {0}")]
    DnsKind(u8),
    #[error("unknown DNS rejection reason {0}")]
    DnsReject(u8),
}

/// Read a `T` from the start of `bytes`; the caller has checked the length.
fn read<T: Copy>(bytes: &[u8]) -> T {
    debug_assert!(bytes.len() >= std::mem::size_of::<T>());
    // SAFETY: length checked by every caller; T is a plain bindgen struct
    // valid for any bit pattern; read_unaligned has no alignment needs.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

pub fn decode(bytes: &[u8], clock: BootClock) -> Result<Event, DecodeError> {
    let header_len = std::mem::size_of::<abi::event_header>();
    if bytes.len() < header_len {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    let header: abi::event_header = read(bytes);
    if u32::from(header.version) != abi::EGRESS_ABI_VERSION {
        return Err(DecodeError::Version(header.version));
    }
    match u32::from(header.kind) {
        abi::event_kind::EVENT_KIND_SOCK => {
            decode_sock(body(&header, bytes)?, clock).map(Event::Sock)
        }
        abi::event_kind::EVENT_KIND_FLOW_END => {
            decode_flow_end(body(&header, bytes)?).map(Event::FlowEnd)
        }
        abi::event_kind::EVENT_KIND_DNS => decode_dns(body(&header, bytes)?, clock).map(Event::Dns),
        abi::event_kind::EVENT_KIND_SOCK_RELEASE => {
            let raw: abi::sock_release_event = body(&header, bytes)?;
            Ok(Event::SockRelease {
                sock_cookie: raw.sock_cookie,
            })
        }
        abi::event_kind::EVENT_KIND_EXEC => Ok(Event::Exec(Box::new(decode_exec(
            body(&header, bytes)?,
            clock,
        )))),
        abi::event_kind::EVENT_KIND_FORK => {
            let raw: abi::fork_event = body(&header, bytes)?;
            Ok(Event::Fork(ForkEvent {
                scope_cgroup_id: raw.scope_cgroup_id,
                tgid: raw.tgid,
                proc: proc_ident(&raw.process),
                parent_start_ns: raw.parent_start_ns,
            }))
        }
        abi::event_kind::EVENT_KIND_EXIT => {
            let raw: abi::exit_event = body(&header, bytes)?;
            Ok(Event::Exit(ExitEvent {
                time: clock.to_wall(raw.hdr.ts_ns),
                ts_ns: raw.hdr.ts_ns,
                cgroup_id: raw.cgroup_id,
                scope_cgroup_id: raw.scope_cgroup_id,
                tgid: raw.tgid,
                proc: proc_ident(&raw.process),
                started: clock.to_wall(raw.process.start_ns),
                status: raw.exit_code,
                comm: comm(&raw.comm),
            }))
        }
        _ => Err(DecodeError::Kind(header.kind)),
    }
}

fn proc_ident(raw: &abi::proc_ident) -> ProcIdent {
    ProcIdent {
        start_ns: raw.start_ns,
        ppid: raw.ppid,
        exec_id: raw.exec_id,
    }
}

/// An exec record; argv is masked here, before anything else holds it.
fn decode_exec(raw: abi::exec_event, clock: BootClock) -> ExecEvent {
    let bytes = |s: &[libc::c_char], len: usize| -> Vec<u8> {
        s[..len.min(s.len())].iter().map(|&c| c as u8).collect()
    };
    let filename = bytes(&raw.filename, usize::from(raw.filename_len));
    let args = bytes(&raw.args, usize::from(raw.args_len));
    let flags = u32::from(raw.flags);
    let filename = String::from_utf8_lossy(&filename).into_owned();
    let exe = match raw.exe_depth {
        0 => filename.clone(),
        depth => walked(
            &raw.exe_parts,
            depth,
            flags & abi::EXEC_F_EXE_TRUNCATED != 0,
        ),
    };
    let cwd = (flags & abi::EXEC_F_CWD_KNOWN != 0).then(|| {
        walked(
            &raw.cwd_parts,
            raw.cwd_depth,
            flags & abi::EXEC_F_CWD_TRUNCATED != 0,
        )
    });
    ExecEvent {
        time: clock.to_wall(raw.hdr.ts_ns),
        ts_ns: raw.hdr.ts_ns,
        cgroup_id: raw.cgroup_id,
        scope_cgroup_id: raw.scope_cgroup_id,
        tgid: raw.tgid,
        proc: proc_ident(&raw.process),
        started: clock.to_wall(raw.process.start_ns),
        parent_start_ns: raw.parent_start_ns,
        uid: raw.uid,
        gid: raw.gid,
        euid: raw.euid,
        exe,
        filename,
        cwd,
        args: parse_args(&args),
        args_truncated: flags & (abi::EXEC_F_ARGS_TRUNCATED | abi::EXEC_F_ARGS_UNREAD) != 0,
        comm: comm(&raw.comm),
        parent_comm: comm(&raw.parent_comm),
    }
}

/// A path the kernel walked leaf first: `/` + the parts, root first (`/`
/// alone for none); `…` in front when it was deeper than the walk.
fn walked<const N: usize>(parts: &[[libc::c_char; N]], depth: u8, truncated: bool) -> String {
    let depth = usize::from(depth).min(parts.len());
    let mut path = String::new();
    if truncated {
        path.push('…');
    }
    for part in parts[..depth].iter().rev() {
        path.push('/');
        // Only a pseudo file's name (memfd_create's, chosen by the caller)
        // can hold a '/': escaped, so that `memfd:x/usr/bin/git` does not
        // end in `/git`.
        path.push_str(&comm(part).replace('/', "%2F"));
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

/// The record as a `T`, once its declared size and its length are a `T`'s.
fn body<T: Copy>(header: &abi::event_header, bytes: &[u8]) -> Result<T, DecodeError> {
    let expected = std::mem::size_of::<T>();
    if usize::from(header.size) != expected || bytes.len() < expected {
        return Err(DecodeError::Size {
            kind: header.kind,
            declared: header.size,
            expected,
            actual: bytes.len(),
        });
    }
    Ok(read(bytes))
}

fn decode_sock(raw: abi::sock_event, clock: BootClock) -> Result<SockEvent, DecodeError> {
    let hook = Hook::from_raw(u32::from(raw.hdr.hook)).ok_or(DecodeError::Hook(raw.hdr.hook))?;
    let verdict =
        Verdict::from_raw(u32::from(raw.verdict)).ok_or(DecodeError::Verdict(raw.verdict))?;
    let has_addresses = hook != Hook::SockCreate;
    let dst = has_addresses
        .then(|| ip(raw.family, &raw.dst_ip).map(|a| (a, raw.dst_port)))
        .flatten();
    // The source is only known once the socket is bound.
    let src = has_addresses
        .then(|| ip(raw.family, &raw.src_ip).map(|a| (a, raw.src_port)))
        .flatten()
        .filter(|(a, port)| *port != 0 || !a.is_unspecified());
    Ok(SockEvent {
        hook,
        time: clock.to_wall(raw.hdr.ts_ns),
        cgroup_id: raw.cgroup_id,
        scope_cgroup_id: raw.scope_cgroup_id,
        sock_cookie: raw.sock_cookie,
        pid: raw.pid,
        tgid: raw.tgid,
        family: raw.family,
        sock_type: raw.sock_type,
        protocol: raw.protocol,
        src,
        dst,
        verdict,
        audit: u32::from(raw.flags) & abi::EVENT_F_AUDIT != 0,
        inbound: u32::from(raw.flags) & abi::EVENT_F_INBOUND != 0,
        comm: comm(&raw.comm),
        proc: proc_ident(&raw.process),
    })
}

fn decode_flow_end(raw: abi::flow_end_event) -> Result<FlowEnd, DecodeError> {
    let reason = CloseReason::from_raw(u32::from(raw.close_reason))
        .ok_or(DecodeError::CloseReason(raw.close_reason))?;
    Ok(FlowEnd {
        flow: decode_flow(&raw.key, &raw.value)?,
        end_ns: raw.end_ns,
        reason,
        sk_err: raw.sk_err,
    })
}

fn decode_dns(raw: abi::dns_event, clock: BootClock) -> Result<DnsMessage, DecodeError> {
    let kind = match u32::from(raw.message) {
        abi::dns_message::DNS_MSG_QUERY => DnsKind::Query,
        abi::dns_message::DNS_MSG_ANSWER => DnsKind::Answer,
        _ => return Err(DecodeError::DnsKind(raw.message)),
    };
    let rejected =
        DnsReject::from_raw(u32::from(raw.rejected)).ok_or(DecodeError::DnsReject(raw.rejected))?;
    let name_len = usize::from(raw.name_len).min(raw.qname.len());
    let qname: Vec<u8> = raw.qname[..name_len].iter().map(|&c| c as u8).collect();
    let count = usize::from(raw.answer_count).min(raw.answers.len());
    let answers = raw.answers[..count]
        .iter()
        .filter_map(|a| Some((ip(u16::from(a.family), &a.addr)?, a.ttl)))
        .collect();
    let resolver =
        ip(u16::from(raw.family), &raw.resolver_ip).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    Ok(DnsMessage {
        kind,
        time: clock.to_wall(raw.hdr.ts_ns),
        ts_ns: raw.hdr.ts_ns,
        cgroup_id: raw.cgroup_id,
        scope_cgroup_id: raw.scope_cgroup_id,
        sock_cookie: raw.sock_cookie,
        pid: raw.pid,
        comm: comm(&raw.comm),
        qname: String::from_utf8_lossy(&qname).into_owned(),
        qtype: raw.qtype,
        txid: raw.txid,
        rcode: raw.rcode,
        rejected,
        resolver: (resolver, raw.resolver_port),
        local_port: raw.local_port,
        protocol: raw.protocol,
        answers,
        proc: proc_ident(&raw.process),
    })
}

/// A flow table entry (from a FLOW_END record or read from the map).
pub fn decode_flow(
    key: &abi::flow_key,
    value: &abi::flow_value,
) -> Result<FlowSnapshot, DecodeError> {
    let remote =
        ip(u16::from(key.family), &key.remote_ip).ok_or(DecodeError::Family(key.family))?;
    let verdict =
        Verdict::from_raw(u32::from(value.verdict)).ok_or(DecodeError::Verdict(value.verdict))?;
    let local = ip(u16::from(key.family), &value.local_ip)
        .filter(|a| !a.is_unspecified() || value.local_port != 0)
        .map(|a| (a, value.local_port));
    Ok(FlowSnapshot {
        sock_cookie: key.sock_cookie,
        remote: (remote, key.remote_port),
        local,
        protocol: key.protocol,
        start_ns: value.start_ns,
        last_seen_ns: value.last_seen_ns,
        cgroup_id: value.cgroup_id,
        scope_cgroup_id: value.scope_cgroup_id,
        pid: value.pid,
        tgid: value.tgid,
        comm: comm(&value.comm),
        verdict,
        syn_sent: u32::from(value.flags) & abi::FLOW_F_SYN_SENT != 0,
        audit: u32::from(value.flags) & abi::FLOW_F_AUDIT != 0,
        policy_end: u32::from(value.flags) & abi::FLOW_F_POLICY_END != 0,
        inbound: u32::from(value.flags) & abi::FLOW_F_INBOUND != 0,
        counters: Counters {
            bytes_out: value.bytes_out,
            bytes_in: value.bytes_in,
            packets_out: value.packets_out,
            packets_in: value.packets_in,
        },
        proc: proc_ident(&value.process),
    })
}

fn ip(family: u16, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    /// The header of a `T` record of `kind` from `hook`.
    fn header<T>(kind: u32, hook: u32) -> abi::event_header {
        abi::event_header {
            kind: kind as u16,
            size: std::mem::size_of::<T>() as u16,
            version: abi::EGRESS_ABI_VERSION as u8,
            hook: hook as u8,
            ..Default::default()
        }
    }

    fn sample() -> abi::sock_event {
        let mut ev = abi::sock_event {
            hdr: header::<abi::sock_event>(
                abi::event_kind::EVENT_KIND_SOCK,
                abi::egress_hook::HOOK_CONNECT4,
            ),
            ..Default::default()
        };
        ev.family = AF_INET;
        ev.dst_ip[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.dst_port = 8080;
        ev.pid = 42;
        ev.tgid = 42;
        for (d, s) in ev.comm.iter_mut().zip(b"curl\0") {
            *d = *s as libc::c_char;
        }
        ev
    }

    #[test]
    fn decodes_a_connect4_record() {
        let Ok(Event::Sock(ev)) = decode(&as_bytes(&sample()), BootClock::calibrate()) else {
            panic!("a sock event");
        };
        assert_eq!(ev.hook, Hook::Connect4);
        assert_eq!(ev.dst, Some(("127.0.0.1".parse().unwrap(), 8080)));
        assert_eq!(ev.src, None);
        assert_eq!(ev.comm, "curl");
        assert_eq!(ev.verdict, Verdict::Allowed);
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        let clock = BootClock::calibrate();
        let good = as_bytes(&sample());
        assert!(matches!(
            decode(&good[..8], clock),
            Err(DecodeError::Truncated(8))
        ));
        assert!(matches!(
            decode(&good[..40], clock),
            Err(DecodeError::Size { .. })
        ));
        let mut v = sample();
        v.hdr.version = 99;
        assert_eq!(decode(&as_bytes(&v), clock), Err(DecodeError::Version(99)));
        let mut k = sample();
        k.hdr.kind = 77;
        assert_eq!(decode(&as_bytes(&k), clock), Err(DecodeError::Kind(77)));
        let mut hk = sample();
        hk.hdr.hook = 200;
        assert_eq!(decode(&as_bytes(&hk), clock), Err(DecodeError::Hook(200)));
        let mut vd = sample();
        vd.verdict = 9;
        assert_eq!(decode(&as_bytes(&vd), clock), Err(DecodeError::Verdict(9)));
    }

    #[test]
    fn no_input_panics() {
        // Every prefix of a valid record and a sweep of byte patterns.
        let clock = BootClock::calibrate();
        let good = as_bytes(&sample());
        for len in 0..=good.len() {
            let _ = decode(&good[..len], clock);
        }
        for fill in 0..=255u8 {
            let _ = decode(&[fill; 200], clock);
        }
    }

    #[test]
    fn decodes_a_flow_end_record() {
        let mut ev = abi::flow_end_event {
            hdr: header::<abi::flow_end_event>(
                abi::event_kind::EVENT_KIND_FLOW_END,
                abi::egress_hook::HOOK_SOCK_OPS,
            ),
            ..Default::default()
        };
        ev.key.family = AF_INET as u8;
        ev.key.protocol = libc::IPPROTO_TCP as u8;
        ev.key.remote_ip[..4].copy_from_slice(&[10, 0, 0, 1]);
        ev.key.remote_port = 443;
        ev.value.bytes_out = 3 << 20;
        ev.value.flags = abi::FLOW_F_SYN_SENT as u8;
        ev.close_reason = abi::close_reason::CLOSE_REFUSED as u8;
        let Ok(Event::FlowEnd(end)) = decode(&as_bytes(&ev), BootClock::calibrate()) else {
            panic!("a flow end");
        };
        assert_eq!(end.reason, CloseReason::Refused);
        assert_eq!(end.flow.remote, ("10.0.0.1".parse().unwrap(), 443));
        assert_eq!(end.flow.counters.bytes_out, 3 << 20);
        assert!(end.flow.syn_sent);
        assert_eq!(end.flow.local, None);
        ev.close_reason = 99;
        assert_eq!(
            decode(&as_bytes(&ev), BootClock::calibrate()),
            Err(DecodeError::CloseReason(99))
        );
    }

    #[test]
    fn decodes_ipv6_and_non_utf8_comm() {
        let mut ev = sample();
        ev.hdr.hook = abi::egress_hook::HOOK_CONNECT6 as u8;
        ev.family = AF_INET6;
        ev.dst_ip = Ipv6Addr::LOCALHOST.octets();
        ev.comm[0] = 0xffu8 as libc::c_char;
        let Ok(Event::Sock(d)) = decode(&as_bytes(&ev), BootClock::calibrate()) else {
            panic!("a sock event");
        };
        assert_eq!(d.dst, Some((IpAddr::V6(Ipv6Addr::LOCALHOST), 8080)));
        assert!(d.comm.starts_with('\u{fffd}'));
    }
}
