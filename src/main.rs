//! `ringsqd`: flags → config → start the cores.

use std::process::ExitCode;

use ringsq::config::{ConfigError, Options, NSQD_COMPAT_VERSION};
use tracing_subscriber::EnvFilter;

fn init_logging(level: &str) {
    let level = match level.to_ascii_lowercase().as_str() {
        "debug" => "debug",
        "warn" | "warning" => "warn",
        "error" | "fatal" => "error",
        _ => "info",
    };
    let filter = EnvFilter::try_from_env("RINGSQ_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let opts = match Options::from_env() {
        Ok(o) => o,
        Err(ConfigError::Clap(e)) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(e) => {
            eprintln!("ringsqd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if opts.version {
        println!(
            "nsqd v{NSQD_COMPAT_VERSION} (built w/ringsq {})",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    init_logging(&opts.log_level);
    match ringsq::runtime::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringsqd: {e}");
            ExitCode::FAILURE
        }
    }
}
