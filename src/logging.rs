//! The daemon's own logs: structured, on stderr (stdout carries records);
//! with `--output otlp` also as `cp` records, through the OpenTelemetry
//! SDK's tracing appender (see [`crate::export::control_plane_logs`]).

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::export::control_plane_logs::ControlPlaneLogLayer;

pub fn init(level: &str) {
    init_with(level, None);
}

/// As [`init`], plus a layer that ships the same events as records.
pub fn init_with(level: &str, control_plane_logs: Option<ControlPlaneLogLayer>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(
            control_plane_logs
                .as_ref()
                .map(ControlPlaneLogLayer::bridge),
        )
        .try_init();
}
