//! The local API (docs/API.md): a unix socket served by the running daemon
//! for `observe` (a filtered live stream, with history) and `top` (per-agent
//! aggregates). The daemon side is one more sink ([`ApiSink`]); records on
//! the wire are the stdout JSON lines.
//!
//! ```text
//! pipeline -> ApiSink -> Hub (history ring, per-agent aggregates,
//!                             one bounded queue per subscriber)
//!                       server: unix socket, one request per connection
//! observe / top -> client -> socket
//! ```

mod agents;
pub mod client;
pub mod filter;
mod history;
mod hub;
pub mod render;
mod server;
pub mod wire;

use std::path::PathBuf;

pub use hub::{ApiSink, Hub, HubOptions};
pub use server::{bind, serve, Listener, OpenFlows};

/// Where the daemon listens unless configured otherwise (`api_socket`).
pub const DEFAULT_SOCKET: &str = "/run/clawker-egress/api.sock";

/// The socket clients use: `--socket`, else the environment, else the default.
pub fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
