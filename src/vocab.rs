//! The daemon's closed vocabularies, each defined once on the ground floor:
//! the variant, its kernel value (when the kernel has one) and the name that
//! records and metric labels carry. Every stage imports them from here, so
//! no stage depends on a later one for a word.

use crate::kernel::abi::{close_reason as c, egress_hook as h, egress_verdict as v};

/// An enum whose variants map to a kernel value and a name.
macro_rules! kernel_vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $raw:path => $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant, )* }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$( $name::$variant, )*];

            /// The variant of a kernel value; `None` for one this build does not know.
            pub fn from_raw(raw: u32) -> Option<$name> {
                match raw {
                    $( $raw => Some($name::$variant), )*
                    _ => None,
                }
            }

            /// The kernel value (`bpf/egress.h`).
            pub fn raw(self) -> u32 {
                match self { $( $name::$variant => $raw, )* }
            }

            /// The name records and metric labels carry.
            pub fn name(self) -> &'static str {
                match self { $( $name::$variant => $label, )* }
            }
        }
    };
}

/// An enum whose variants map to a name only (user-space words).
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant, )* }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$( $name::$variant, )*];

            /// The name records and metric labels carry.
            pub fn name(self) -> &'static str {
                match self { $( $name::$variant => $label, )* }
            }
        }
    };
}

kernel_vocabulary! {
    /// The hook that saw an operation (also the index of its ring drop counter).
    pub enum Hook {
        Connect4 = h::HOOK_CONNECT4 => "connect4",
        Connect6 = h::HOOK_CONNECT6 => "connect6",
        Sendmsg4 = h::HOOK_SENDMSG4 => "sendmsg4",
        Sendmsg6 = h::HOOK_SENDMSG6 => "sendmsg6",
        /// An AF_XDP socket's setup (setsockopt SOL_XDP).
        XskSetup = h::HOOK_XSK_SETUP => "xsk_setup",
        SockCreate = h::HOOK_SOCK_CREATE => "sock_create",
        SockOps = h::HOOK_SOCK_OPS => "sock_ops",
        SkbEgress = h::HOOK_SKB_EGRESS => "skb_egress",
        SkbIngress = h::HOOK_SKB_INGRESS => "skb_ingress",
        SockRelease = h::HOOK_SOCK_RELEASE => "sock_release",
        Dns = h::HOOK_DNS => "dns",
        LsmSocket = h::HOOK_LSM_SOCKET => "lsm_socket",
        PacketSend = h::HOOK_PACKET_SEND => "packet_send",
        Exec = h::HOOK_EXEC => "exec",
        Fork = h::HOOK_FORK => "fork",
        Exit = h::HOOK_EXIT => "exit",
        Listen = h::HOOK_LISTEN => "listen",
    }
}

kernel_vocabulary! {
    /// What the kernel-side policy decided (D3).
    pub enum Verdict {
        Allowed = v::VERDICT_ALLOW => "ALLOWED",
        Denied = v::VERDICT_DENY => "DENIED",
        Bypassed = v::VERDICT_BYPASS => "BYPASSED",
    }
}

kernel_vocabulary! {
    /// How a flow ended.
    pub enum CloseReason {
        Fin = c::CLOSE_FIN => "fin",
        Rst = c::CLOSE_RST => "rst",
        Timeout = c::CLOSE_TIMEOUT => "timeout",
        Refused = c::CLOSE_REFUSED => "refused",
        Unreachable = c::CLOSE_UNREACHABLE => "unreachable",
        /// A datagram or raw socket was closed.
        SocketClosed = c::CLOSE_SOCKET => "socket_closed",
        /// No packet for the idle timeout.
        Idle = c::CLOSE_IDLE => "idle",
        Denied = c::CLOSE_DENIED => "denied",
        /// Ended by a policy change (reload or bypass end) that denies it.
        Policy = c::CLOSE_POLICY => "policy",
    }
}

vocabulary! {
    /// Why records were lost: `clawker_egress_events_dropped_total{reason}`.
    pub enum DropReason {
        /// The kernel could not reserve ring buffer space.
        RingbufFull => "ringbuf_full",
        /// A ring buffer record user space could not decode.
        ParseFailure => "parse_failure",
        /// A sink gave up on a record (queue full, rejected, retries exhausted).
        SinkFailure => "sink_failure",
        /// A new datagram (UDP, ICMP, raw) flow found the kernel flow table
        /// (or its container's share) full: its packets go unrecorded,
        /// counted per packet (also reported for its container in-band,
        /// `records_lost`). A TCP flow loses no record there: see
        /// [`KernelMap::Flows`].
        FlowTableFull => "flow_table_full",
        /// A container spent its record budget (P14): its record was not
        /// written, so a flood costs only the flooder's own records.
        RateLimited => "rate_limited",
        /// The OTLP sink's memory queue and its disk spool were both full (a
        /// collector outage longer than the spool holds).
        SpoolFull => "spool_full",
    }
}

vocabulary! {
    /// A kernel map that had no room for a new entry (or whose container
    /// share was spent): `clawker_egress_kernel_map_full_total{map}`. A
    /// degradation, not a loss: what is lost with it, if anything, is
    /// counted as a [`DropReason`] too.
    pub enum KernelMap {
        /// `flows`: a new flow is not tracked. TCP: no interim records, its
        /// end is still one record with exact bytes. Datagram: unrecorded,
        /// also `events_dropped_total{reason="flow_table_full"}`.
        Flows => "flows",
        /// `dns_cache`: an answer's address gets no domain verdict (its name
        /// may still appear in the DNS record).
        DnsCache => "dns_cache",
        /// `dns_pending`: a query is recorded, but its answer will not count
        /// (the name gets no domain verdict).
        DnsPending => "dns_pending",
    }
}

/// Why the kernel did not let a DNS message count: an answer that changed
/// nothing, or a query it dropped (`Segmented`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsReject {
    /// No query of this socket with that id and type is waiting.
    Unsolicited,
    /// The server, protocol or question differ from the query's.
    Mismatch,
    /// A socket in scope sent it (a container answering itself).
    LocalSender,
    /// A query: one send carrying several messages (UDP GSO, TSO) to a DNS
    /// server, dropped (only its first message could be recorded).
    Segmented,
}

impl DnsReject {
    pub const ALL: [DnsReject; 4] = [
        DnsReject::Unsolicited,
        DnsReject::Mismatch,
        DnsReject::LocalSender,
        DnsReject::Segmented,
    ];

    pub fn from_raw(raw: u32) -> Option<Option<DnsReject>> {
        use crate::kernel::abi::dns_reject as r;
        Some(match raw {
            r::DNS_REJECT_NONE => None,
            r::DNS_REJECT_UNSOLICITED => Some(DnsReject::Unsolicited),
            r::DNS_REJECT_MISMATCH => Some(DnsReject::Mismatch),
            r::DNS_REJECT_LOCAL_SENDER => Some(DnsReject::LocalSender),
            r::DNS_REJECT_SEGMENTED => Some(DnsReject::Segmented),
            _ => return None,
        })
    }

    pub fn raw(self) -> u32 {
        use crate::kernel::abi::dns_reject as r;
        match self {
            DnsReject::Unsolicited => r::DNS_REJECT_UNSOLICITED,
            DnsReject::Mismatch => r::DNS_REJECT_MISMATCH,
            DnsReject::LocalSender => r::DNS_REJECT_LOCAL_SENDER,
            DnsReject::Segmented => r::DNS_REJECT_SEGMENTED,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DnsReject::Unsolicited => "unsolicited",
            DnsReject::Mismatch => "mismatch",
            DnsReject::LocalSender => "local_sender",
            DnsReject::Segmented => "segmented",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_values_round_trip_and_names_are_unique() {
        for h in Hook::ALL {
            assert_eq!(Hook::from_raw(h.raw()), Some(*h));
        }
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_raw(v.raw()), Some(*v));
        }
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_raw(r.raw()), Some(*r));
        }
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
        let maps: std::collections::HashSet<_> = KernelMap::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(maps.len(), KernelMap::ALL.len());
        assert_eq!(Hook::from_raw(4), None, "retired recvmsg4");
    }
}
