//! `ringsqd`: flags → config → start the cores.

use std::process::ExitCode;

use ringsq::config::{ConfigError, Options, NSQD_COMPAT_VERSION};
use ringsq::storage::nsqd_export::{self, ExportConfig};

/// Huge pages for blocks of 2 MiB and more (see the module).
#[global_allocator]
static ALLOCATOR: ringsq::hugepages::HugeBlocks = ringsq::hugepages::HugeBlocks;

/// The subcommand word; only as the first argument, so that no nsqd
/// command line (flags only) can be taken for it.
const EXPORT_NSQD: &str = "export-nsqd";

/// A clap error (or --help) printed; the exit code it calls for.
fn config_failure(e: ConfigError, prefix: &str) -> ExitCode {
    match e {
        ConfigError::Clap(e) => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        e => {
            eprintln!("{prefix}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == EXPORT_NSQD) {
        args.remove(1);
        return export_nsqd(args);
    }
    let opts = match Options::parse_from_args(args) {
        Ok(o) => o,
        Err(e) => return config_failure(e, "ringsqd"),
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
    match ringsq::server::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // nsqd's FATAL line, with the prefix (C5).
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `ringsqd export-nsqd`: the way back to nsqd (storage::nsqd_export).
fn export_nsqd(args: Vec<std::ffi::OsString>) -> ExitCode {
    const PREFIX: &str = "ringsqd export-nsqd";
    let opts = match Options::parse_export_args(args) {
        Ok(o) => o,
        Err(e) => return config_failure(e, PREFIX),
    };
    if opts.version {
        println!(
            "nsqd v{NSQD_COMPAT_VERSION} (built w/ringsq {})",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    // The summary is the output; the log only says what went wrong.
    let level = if opts.log_level == "info" {
        "warn"
    } else {
        opts.log_level.as_str()
    };
    ringsq::logging::init(level, &opts.log_prefix, opts.log_format);
    let cfg = ExportConfig {
        dir: opts.effective_data_path(),
        max_bytes_per_file: opts.max_bytes_per_file.max(0) as u64,
        max_msg_size: opts.max_msg_size.max(0) as u64,
    };
    match nsqd_export::export(&cfg) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{PREFIX}: {e}");
            ExitCode::FAILURE
        }
    }
}
