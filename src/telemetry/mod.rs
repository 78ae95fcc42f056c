//! Logging setup and metrics. Logs are structured `tracing` events on stderr (stdout stays for
//! command output), filtered by `RUST_LOG` (default `info`).

mod metrics;

pub use metrics::{
    CONTENT_TYPE, CloseLabels, LineLabels, Metrics, ModelLabels, ModelStateLabels, OutcomeLabels, PipelineLabels,
    ReasonLabels, ServiceLabels, StageLabels, ZoneLabels,
};

use tracing_subscriber::EnvFilter;

/// Colours only on a terminal (not into journald, Docker logs or files), and never with `NO_COLOR`.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        // A log pipe that closes (collector restarted, `| head`) must not take the server down: the
        // default reports write errors with `eprintln!`, which panics on that same broken stderr.
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .try_init();
}
