//! Unit tests of the policy module; fixtures under tests/fixtures/policy.

mod clawker;
mod errors;
mod parse;
mod props;
mod resolve;

use std::net::IpAddr;

use super::{Policy, PolicyError, Proto, Target};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/policy");

pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse_str(text, "p.yaml")
}

pub fn ok(text: &str) -> Policy {
    parse(text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

/// `(line, column, reason)` of a rejection.
pub fn err(text: &str) -> (usize, usize, String) {
    match parse(text) {
        Ok(p) => panic!("accepted: {p:?}\n---\n{text}"),
        Err(PolicyError::At {
            line,
            column,
            reason,
            ..
        }) => (line, column, reason),
        Err(e) => panic!("no position: {e}"),
    }
}

pub fn host(h: &str, port: u16) -> Target {
    Target {
        host: Some(h.into()),
        ip: None,
        port,
        proto: Proto::Tcp,
    }
}

pub fn ip(a: &str, port: u16, proto: Proto) -> Target {
    Target {
        host: None,
        ip: Some(a.parse::<IpAddr>().unwrap()),
        port,
        proto,
    }
}
