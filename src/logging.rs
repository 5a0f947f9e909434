//! Logging through `tracing`, with nsqd's levels and a run-time change of
//! level (PUT /config/log_level, H21).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

type Reload = reload::Handle<EnvFilter, Registry>;

static RELOAD: OnceLock<Reload> = OnceLock::new();

/// nsqd's `lg.LogLevel` values, as /config/log_level reports them.
pub fn level_number(name: &str) -> Option<u8> {
    match name.to_ascii_lowercase().as_str() {
        "debug" => Some(1),
        "info" => Some(2),
        "warn" => Some(3),
        "error" => Some(4),
        "fatal" => Some(5),
        _ => None,
    }
}

fn directive(name: &str) -> &'static str {
    match level_number(name) {
        Some(1) => "debug",
        Some(3) => "warn",
        Some(4) | Some(5) => "error",
        _ => "info",
    }
}

/// Installs the subscriber; `RINGSQ_LOG` (a tracing filter) wins over the level.
pub fn init(level: &str) {
    let filter =
        EnvFilter::try_from_env("RINGSQ_LOG").unwrap_or_else(|_| EnvFilter::new(directive(level)));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = tracing_log::LogTracer::init();
    let installed = tracing_subscriber::registry()
        .with(filter)
        // Colours only on a terminal: log files and journald get plain text.
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
    if installed.is_ok() {
        let _ = RELOAD.set(handle);
    }
}

/// Changes the level at run time; false if the name is not a level.
pub fn set_level(name: &str) -> bool {
    if level_number(name).is_none() {
        return false;
    }
    if let Some(handle) = RELOAD.get() {
        let _ = handle.reload(EnvFilter::new(directive(name)));
    }
    true
}
