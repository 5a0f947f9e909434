//! `ringsqd`: flags → config → start the cores.

use std::process::ExitCode;

use ringsq::config::{ConfigError, Options, NSQD_COMPAT_VERSION};

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
    ringsq::logging::init(&opts.log_level, &opts.log_prefix, opts.log_format);
    let inert = opts.inert_flags_set();
    if !inert.is_empty() {
        tracing::warn!(
            "accepted but not yet in effect, ignored: {}",
            inert.join(", ")
        );
    }
    match ringsq::runtime::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // nsqd's FATAL line, with the prefix (C5).
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
