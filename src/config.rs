//! nsqd's flags and config-file keys, in one place.
//!
//! A user swaps `nsqd` for `ringsqd` with the same command line and config
//! file, so this module accepts all 53 flags of nsqd 1.3.0 (section 4a of the
//! reference) with their names and defaults, Go's flag syntax (`-flag=value`
//! and `--flag value`) and Go durations (`250ms`, `1h30m`). Flags that a later
//! issue implements are accepted and kept here so that start-up never fails
//! on a valid nsqd command line.
//!
//! Precedence (C1): command line > config file (TOML) > default.

use std::ffi::OsString;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use thiserror::Error;

/// The version reported to clients (IDENTIFY, later /info). Clients and
/// nsqadmin parse it as semver and gate features on it, so it is nsqd's.
pub const NSQD_COMPAT_VERSION: &str = "1.3.0";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{0}")]
    Clap(#[from] clap::Error),
    #[error("failed to read config file {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to parse config file {path}: {source}")]
    ParseFile {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("config file key {key}: unsupported value {value}")]
    BadValue { key: String, value: String },
    #[error("{0}")]
    Invalid(String),
}

/// Parses a Go `time.Duration` string ("300ms", "1.5h", "2h45m", "0").
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("invalid duration \"{s}\"");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.starts_with('-') {
        return Err(format!("negative duration \"{s}\""));
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    if rest.is_empty() {
        return Err(err());
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total_ns += value * unit_ns;
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value \"{s}\"")),
    }
}

fn broadcast_port(configured: i64, real: Option<u16>) -> u16 {
    match configured {
        p if p > 0 => p as u16,
        _ => real.unwrap_or(0),
    }
}

/// The OS hostname ("" if it cannot be read).
pub fn hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn default_node_id() -> u16 {
    // nsqd: crc32(md5(hostname)) % 1024
    use md5::{Digest, Md5};
    let digest = Md5::digest(hostname().as_bytes());
    (crc32fast::hash(&digest) % 1024) as u16
}

fn default_cores() -> usize {
    crate::system::allowed_cpus().len().max(1)
}

/// Every nsqd 1.3.0 flag, plus ringsq's own (`--cores`).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ringsqd",
    about = "ringsq: a thread-per-core, io_uring drop-in replacement for nsqd",
    after_help = "Back to nsqd: with the broker stopped, `ringsqd export-nsqd [same flags]` rewrites the data path into nsqd 1.3's files (see `ringsqd export-nsqd --help`).",
    disable_version_flag = true
)]
pub struct Options {
    /// print version string
    #[arg(long, action = ArgAction::SetTrue)]
    pub version: bool,
    /// path to config file (TOML, nsqd's keys)
    #[arg(long, default_value = "")]
    pub config: String,
    /// set log level: debug, info, warn, error, or fatal
    #[arg(long = "log-level", default_value = "info")]
    pub log_level: String,
    /// log message prefix
    #[arg(long = "log-prefix", default_value = "[nsqd] ")]
    pub log_prefix: String,
    /// log line format: text (nsqd's layout) or json (one object per line; ringsq only)
    #[arg(long = "log-format", value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
    /// [deprecated] has no effect, use --log-level
    #[arg(long, default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true")]
    pub verbose: bool,
    /// unique part for message IDs, (int) in range [0,1024) (default is hash of hostname)
    #[arg(long = "node-id")]
    pub node_id: Option<i64>,
    /// [deprecated] use --node-id
    #[arg(long = "worker-id", hide = true)]
    pub worker_id: Option<i64>,
    /// <addr>:<port> to listen on for HTTPS clients
    #[arg(long = "https-address", default_value = "0.0.0.0:4152")]
    pub https_address: String,
    /// <addr>:<port> to listen on for HTTP clients
    #[arg(long = "http-address", default_value = "0.0.0.0:4151")]
    pub http_address: String,
    /// <addr>:<port> to listen on for TCP clients
    #[arg(long = "tcp-address", default_value = "0.0.0.0:4150")]
    pub tcp_address: String,
    /// <addr>:<port> or a full url of authd (may be given multiple times)
    #[arg(long = "auth-http-address")]
    pub auth_http_address: Vec<String>,
    /// address that will be registered with lookupd (defaults to the OS hostname)
    #[arg(long = "broadcast-address")]
    pub broadcast_address: Option<String>,
    /// TCP port that will be registered with lookupd (defaults to the TCP port)
    #[arg(long = "broadcast-tcp-port", default_value_t = 0)]
    pub broadcast_tcp_port: i64,
    /// HTTP port that will be registered with lookupd (defaults to the HTTP port)
    #[arg(long = "broadcast-http-port", default_value_t = 0)]
    pub broadcast_http_port: i64,
    /// lookupd TCP address (may be given multiple times)
    #[arg(long = "lookupd-tcp-address")]
    pub lookupd_tcp_address: Vec<String>,
    /// timeout for HTTP connect
    #[arg(long = "http-client-connect-timeout", default_value = "2s", value_parser = parse_go_duration)]
    pub http_client_connect_timeout: Duration,
    /// timeout for HTTP request
    #[arg(long = "http-client-request-timeout", default_value = "5s", value_parser = parse_go_duration)]
    pub http_client_request_timeout: Duration,
    /// path to store disk-backed messages
    #[arg(long = "data-path", default_value = "")]
    pub data_path: String,
    /// number of messages to keep in memory (per topic/channel)
    #[arg(long = "mem-queue-size", default_value_t = 10000)]
    pub mem_queue_size: i64,
    /// number of bytes per diskqueue file before rolling
    #[arg(long = "max-bytes-per-file", default_value_t = 104857600)]
    pub max_bytes_per_file: i64,
    /// number of messages per diskqueue fsync
    #[arg(long = "sync-every", default_value_t = 2500)]
    pub sync_every: i64,
    /// duration of time per diskqueue fsync
    #[arg(long = "sync-timeout", default_value = "2s", value_parser = parse_go_duration)]
    pub sync_timeout: Duration,
    /// max concurrency for checking in-flight and deferred message timeouts [accepted, not yet in effect]
    #[arg(long = "queue-scan-worker-pool-max", default_value_t = 4)]
    pub queue_scan_worker_pool_max: i64,
    /// number of channels to check per cycle (every 100ms) for in-flight and deferred timeouts [accepted, not yet in effect]
    #[arg(long = "queue-scan-selection-count", default_value_t = 20)]
    pub queue_scan_selection_count: i64,
    /// default duration to wait before auto-requeing a message
    #[arg(long = "msg-timeout", default_value = "60s", value_parser = parse_go_duration)]
    pub msg_timeout: Duration,
    /// maximum duration before a message will timeout
    #[arg(long = "max-msg-timeout", default_value = "15m", value_parser = parse_go_duration)]
    pub max_msg_timeout: Duration,
    /// maximum size of a single message in bytes
    #[arg(long = "max-msg-size", default_value_t = 1048576)]
    pub max_msg_size: i64,
    /// maximum requeuing timeout for a message
    #[arg(long = "max-req-timeout", default_value = "1h", value_parser = parse_go_duration)]
    pub max_req_timeout: Duration,
    /// maximum size of a single command body
    #[arg(long = "max-body-size", default_value_t = 5242880)]
    pub max_body_size: i64,
    /// maximum client configurable duration of time between client heartbeats
    #[arg(long = "max-heartbeat-interval", default_value = "60s", value_parser = parse_go_duration)]
    pub max_heartbeat_interval: Duration,
    /// maximum RDY count for a client
    #[arg(long = "max-rdy-count", default_value_t = 2500)]
    pub max_rdy_count: i64,
    /// maximum client configurable size (in bytes) for a client output buffer
    #[arg(long = "max-output-buffer-size", default_value_t = 65536)]
    pub max_output_buffer_size: i64,
    /// maximum client configurable duration of time between flushing to a client
    #[arg(long = "max-output-buffer-timeout", default_value = "30s", value_parser = parse_go_duration)]
    pub max_output_buffer_timeout: Duration,
    /// minimum client configurable duration of time between flushing to a client
    #[arg(long = "min-output-buffer-timeout", default_value = "25ms", value_parser = parse_go_duration)]
    pub min_output_buffer_timeout: Duration,
    /// default duration of time between flushing data to clients
    #[arg(long = "output-buffer-timeout", default_value = "250ms", value_parser = parse_go_duration)]
    pub output_buffer_timeout: Duration,
    /// maximum channel consumer connection count per nsqd instance (default 0, i.e., unlimited)
    #[arg(long = "max-channel-consumers", default_value_t = 0)]
    pub max_channel_consumers: i64,
    /// UDP <addr>:<port> of a statsd daemon for pushing stats
    #[arg(long = "statsd-address", default_value = "")]
    pub statsd_address: String,
    /// duration between pushing to statsd
    #[arg(long = "statsd-interval", default_value = "60s", value_parser = parse_go_duration)]
    pub statsd_interval: Duration,
    /// toggle sending memory and GC stats to statsd
    #[arg(long = "statsd-mem-stats", default_value = "true", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true")]
    pub statsd_mem_stats: bool,
    /// prefix used for keys sent to statsd (%s for host replacement)
    #[arg(long = "statsd-prefix", default_value = "nsq.%s")]
    pub statsd_prefix: String,
    /// the size in bytes of statsd UDP packets
    #[arg(long = "statsd-udp-packet-size", default_value_t = 508)]
    pub statsd_udp_packet_size: i64,
    /// skip ephemeral topics and channels when sending stats to statsd
    #[arg(long = "statsd-exclude-ephemeral", default_value = "false", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true")]
    pub statsd_exclude_ephemeral: bool,
    /// message processing time percentiles (as float (0, 1.0]) to track (can be specified multiple times or comma separated)
    #[arg(long = "e2e-processing-latency-percentile", value_delimiter = ',')]
    pub e2e_processing_latency_percentile: Vec<f64>,
    /// calculate end to end latency quantiles for this duration of time
    #[arg(long = "e2e-processing-latency-window-time", default_value = "10m", value_parser = parse_go_duration)]
    pub e2e_processing_latency_window_time: Duration,
    /// path to certificate file
    #[arg(long = "tls-cert", default_value = "")]
    pub tls_cert: String,
    /// path to key file
    #[arg(long = "tls-key", default_value = "")]
    pub tls_key: String,
    /// client certificate auth policy ('require' or 'require-verify')
    #[arg(long = "tls-client-auth-policy", default_value = "")]
    pub tls_client_auth_policy: String,
    /// path to certificate authority file
    #[arg(long = "tls-root-ca-file", default_value = "")]
    pub tls_root_ca_file: String,
    /// require TLS for client connections (true, false, tcp-https)
    #[arg(long = "tls-required", default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub tls_required: String,
    /// minimum SSL/TLS version acceptable ('ssl3.0', 'tls1.0', 'tls1.1', 'tls1.2' or 'tls1.3'; below 1.2 means 1.2)
    #[arg(long = "tls-min-version", default_value = "tls1.0")]
    pub tls_min_version: String,
    /// enable deflate feature negotiation (client compression)
    #[arg(long, default_value = "true", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true")]
    pub deflate: bool,
    /// max deflate compression level a client can negotiate (> values == > nsqd CPU usage)
    #[arg(long = "max-deflate-level", default_value_t = 6)]
    pub max_deflate_level: i64,
    /// enable snappy feature negotiation (client compression)
    #[arg(long, default_value = "true", value_parser = go_bool, num_args = 0..=1, default_missing_value = "true")]
    pub snappy: bool,

    // ---- ringsq's own flags ----
    /// how long an idle core spins before it sleeps (0: sleep at once); spinning
    /// cuts cross-core wake-up latency at the price of CPU time under light load
    #[arg(long = "spin-before-park", default_value = "0", value_parser = parse_go_duration)]
    pub spin_before_park: Duration,
    /// number of pinned executor threads (cores); default: every CPU this process may run on
    #[arg(long, default_value_t = default_cores())]
    pub cores: usize,
}

/// nsqd's TLSRequired levels (T20, H3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRequired {
    No,
    /// `tcp-https`: TCP clients must upgrade; plain HTTP stays open.
    ExceptHttp,
    Yes,
}

/// `--tls-min-version` values nsqd takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsMinVersion {
    Ssl30,
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

/// Flags accepted for nsqd's command lines that do nothing yet (their help
/// says "accepted, not yet in effect"); the security issue implements them.
pub const INERT_FLAGS: &[&str] = &["queue-scan-worker-pool-max", "queue-scan-selection-count"];

const EXPORT_ABOUT: &str =
    "Rewrites every queue of a stopped ringsqd's --data-path into nsqd 1.3's \
diskqueue files and nsqd.dat, so that nsqd 1.3 started on that data path delivers every message \
once (deferred messages without their timers, as nsqd's own shutdown leaves them). Takes the same \
flags and --config file as the broker; --data-path, --max-bytes-per-file and --max-msg-size are \
used. Refuses to run while a broker holds the data path.";

/// TOML keys whose flag name is not the key with `_` → `-` (nsqd's `cfg` tags).
const KEY_ALIASES: &[(&str, &str)] = &[
    ("id", "node-id"),
    ("nsqlookupd_tcp_addresses", "lookupd-tcp-address"),
    ("auth_http_addresses", "auth-http-address"),
    (
        "e2e_processing_latency_percentiles",
        "e2e-processing-latency-percentile",
    ),
];

/// Go's flag package takes `-name=value` as well as `--name=value`; clap only
/// takes the latter for long names, so single-dash long flags are rewritten.
fn normalize_go_flags<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    for (i, arg) in args.into_iter().enumerate() {
        let s = arg.to_string_lossy();
        let is_single_dash_long = i > 0
            && s.starts_with('-')
            && !s.starts_with("--")
            && s.len() > 2
            && s.as_bytes()[1].is_ascii_alphabetic();
        if is_single_dash_long {
            out.push(OsString::from(format!("-{s}")));
        } else {
            out.push(arg);
        }
    }
    out
}

fn toml_scalar(key: &str, v: &toml::Value) -> Result<String, ConfigError> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(ConfigError::BadValue {
            key: key.to_string(),
            value: other.to_string(),
        }),
    }
}

impl Options {
    /// Parses the process's command line (and `--config` file, if any).
    pub fn from_env() -> Result<Options, ConfigError> {
        Self::parse_from_args(std::env::args_os())
    }

    pub fn parse_from_args<I: IntoIterator<Item = OsString>>(
        args: I,
    ) -> Result<Options, ConfigError> {
        Self::parse_with(Options::command, args)
    }

    /// `ringsqd export-nsqd [flags]` (the subcommand word removed from
    /// `args`): the broker's flags and config file, so the unit's own
    /// command line works; --data-path, --max-bytes-per-file and
    /// --max-msg-size are the ones that matter.
    pub fn parse_export_args<I: IntoIterator<Item = OsString>>(
        args: I,
    ) -> Result<Options, ConfigError> {
        Self::parse_with(
            || {
                Options::command()
                    .name("ringsqd export-nsqd")
                    .bin_name("ringsqd export-nsqd")
                    .about(EXPORT_ABOUT)
                    .after_help("")
            },
            args,
        )
    }

    fn parse_with<I: IntoIterator<Item = OsString>>(
        command: impl Fn() -> clap::Command,
        args: I,
    ) -> Result<Options, ConfigError> {
        let args = normalize_go_flags(args);
        let matches = command().try_get_matches_from(args.clone())?;
        let config_path = matches
            .get_one::<String>("config")
            .cloned()
            .unwrap_or_default();
        let opts = if config_path.is_empty() {
            Options::from_arg_matches(&matches)?
        } else {
            let text =
                std::fs::read_to_string(&config_path).map_err(|source| ConfigError::ReadFile {
                    path: config_path.clone(),
                    source,
                })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|source: toml::de::Error| ConfigError::ParseFile {
                        path: config_path.clone(),
                        source: Box::new(source),
                    })?;
            // Append file values as flags for every option the command line did not set.
            let cmd = command();
            let mut merged = args;
            for (key, value) in &table {
                let flag = KEY_ALIASES
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, f)| f.to_string())
                    .unwrap_or_else(|| key.replace('_', "-"));
                let Some(arg) = cmd
                    .get_arguments()
                    .find(|a| a.get_long() == Some(flag.as_str()))
                else {
                    continue; // nsqd ignores keys it does not know
                };
                let id = arg.get_id().as_str();
                if matches.value_source(id) == Some(ValueSource::CommandLine) {
                    continue;
                }
                let values = match value {
                    toml::Value::Array(items) => items
                        .iter()
                        .map(|v| toml_scalar(key, v))
                        .collect::<Result<Vec<_>, _>>()?,
                    v => vec![toml_scalar(key, v)?],
                };
                for v in values {
                    merged.push(OsString::from(format!("--{flag}={v}")));
                }
            }
            let matches = command().try_get_matches_from(merged)?;
            Options::from_arg_matches(&matches)?
        };
        let mut opts = opts;
        // nsqd's FloatArray flag keeps the percentiles sorted, largest first.
        opts.e2e_processing_latency_percentile
            .sort_by(|a, b| b.total_cmp(a));
        opts.validate()?;
        Ok(opts)
    }

    /// nsqd's start-up checks (C2), plus ringsq's own.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = self.node_id {
            if !(0..1024).contains(&id) {
                return Err(ConfigError::Invalid(format!(
                    "--node-id must be in range [0,1024), got {id}"
                )));
            }
        }
        if !(1..=9).contains(&self.max_deflate_level) {
            return Err(ConfigError::Invalid(
                "--max-deflate-level must be [1,9]".to_string(),
            ));
        }
        for p in &self.e2e_processing_latency_percentile {
            if *p <= 0.0 || *p > 1.0 {
                return Err(ConfigError::Invalid(format!(
                    "invalid E2E processing latency percentile: {p}"
                )));
            }
        }
        if self.cores == 0 {
            return Err(ConfigError::Invalid("--cores must be at least 1".into()));
        }
        self.tls_required_mode()?;
        self.tls_min_version()?;
        if self.mem_queue_size < 0 {
            return Err(ConfigError::Invalid(
                "--mem-queue-size must not be negative".into(),
            ));
        }
        Ok(())
    }

    /// The accepted flags that do nothing yet and are set here to a value
    /// that would change nsqd's behaviour (not the default, not empty), so
    /// that start-up can say they are ignored.
    pub fn inert_flags_set(&self) -> Vec<&'static str> {
        let d = Options::command().get_matches_from(["ringsqd"]);
        let Ok(d) = Options::from_arg_matches(&d) else {
            return Vec::new();
        };
        let set = [
            (
                "--queue-scan-worker-pool-max",
                self.queue_scan_worker_pool_max != d.queue_scan_worker_pool_max,
            ),
            (
                "--queue-scan-selection-count",
                self.queue_scan_selection_count != d.queue_scan_selection_count,
            ),
        ];
        debug_assert_eq!(set.len(), INERT_FLAGS.len());
        set.into_iter()
            .filter(|(_, s)| *s)
            .map(|(f, _)| f)
            .collect()
    }

    /// `--tls-required` as nsqd reads it (Go's ParseBool or `tcp-https`);
    /// a client-certificate policy implies `true` (T20).
    pub fn tls_required_mode(&self) -> Result<TlsRequired, ConfigError> {
        // Checked on every command of a plain connection: no allocation.
        let v = self.tls_required.as_str();
        let is = |words: &[&str]| words.iter().any(|w| v.eq_ignore_ascii_case(w));
        let mode = if is(&["tcp-https"]) {
            TlsRequired::ExceptHttp
        } else if is(&["1", "t", "true"]) {
            TlsRequired::Yes
        } else if is(&["0", "f", "false"]) {
            TlsRequired::No
        } else {
            // Go's ParseBool after ToLower: nothing else is a boolean.
            return Err(ConfigError::Invalid(format!(
                "invalid value \"{v}\" for flag -tls-required: parse error"
            )));
        };
        if mode == TlsRequired::No && !self.tls_client_auth_policy.is_empty() {
            return Ok(TlsRequired::Yes);
        }
        Ok(mode)
    }

    /// `--tls-min-version` (T18); "" keeps nsqd's default, TLS 1.0.
    pub fn tls_min_version(&self) -> Result<TlsMinVersion, ConfigError> {
        Ok(match self.tls_min_version.to_ascii_lowercase().as_str() {
            "ssl3.0" => TlsMinVersion::Ssl30,
            "" | "tls1.0" => TlsMinVersion::Tls10,
            "tls1.1" => TlsMinVersion::Tls11,
            "tls1.2" => TlsMinVersion::Tls12,
            "tls1.3" => TlsMinVersion::Tls13,
            _ => {
                return Err(ConfigError::Invalid(format!(
                "invalid value \"{}\" for flag -tls-min-version: unknown tlsVersionOption \"{}\"",
                self.tls_min_version,
                self.tls_min_version.to_ascii_lowercase()
            )))
            }
        })
    }

    /// The node id used in message ids (T7).
    pub fn effective_node_id(&self) -> u16 {
        match self.node_id.or(self.worker_id) {
            Some(id) => (id as u16) & 0x3ff,
            None => default_node_id(),
        }
    }

    /// `--broadcast-address`, default: the OS hostname.
    pub fn effective_broadcast_address(&self) -> String {
        self.broadcast_address.clone().unwrap_or_else(hostname)
    }

    /// `--broadcast-http-port`; 0 (the default) means the real HTTP port.
    pub fn effective_broadcast_http_port(&self, real: Option<u16>) -> u16 {
        broadcast_port(self.broadcast_http_port, real)
    }

    /// `--broadcast-tcp-port`; 0 (the default) means the real TCP port.
    pub fn effective_broadcast_tcp_port(&self, real: Option<u16>) -> u16 {
        broadcast_port(self.broadcast_tcp_port, real)
    }

    /// The directory for data files (`--data-path`, default: cwd).
    pub fn effective_data_path(&self) -> std::path::PathBuf {
        if self.data_path.is_empty() {
            std::env::current_dir().unwrap_or_else(|_| ".".into())
        } else {
            self.data_path.clone().into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        let mut v = vec![OsString::from("ringsqd")];
        v.extend(args.iter().map(OsString::from));
        Options::parse_from_args(v).expect("parse")
    }

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("abc").is_err());
    }

    #[test]
    fn nsqd_defaults() {
        let o = parse(&[]);
        assert_eq!(o.tcp_address, "0.0.0.0:4150");
        assert_eq!(o.mem_queue_size, 10000);
        assert_eq!(o.msg_timeout, Duration::from_secs(60));
        assert_eq!(o.max_msg_timeout, Duration::from_secs(900));
        assert_eq!(o.max_rdy_count, 2500);
        assert_eq!(o.max_output_buffer_size, 65536);
        assert!(o.snappy && o.deflate);
    }

    #[test]
    fn single_dash_and_bools() {
        let o = parse(&[
            "-tcp-address=127.0.0.1:1",
            "--snappy=false",
            "-mem-queue-size",
            "5",
            "--deflate",
        ]);
        assert_eq!(o.tcp_address, "127.0.0.1:1");
        assert!(!o.snappy);
        assert!(o.deflate);
        assert_eq!(o.mem_queue_size, 5);
    }

    #[test]
    fn config_file_precedence() {
        let dir = std::env::temp_dir().join(format!("ringsq-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nsqd.cfg");
        std::fs::write(
            &path,
            "mem_queue_size = 7\nmsg_timeout = \"3s\"\nid = 5\nnsqlookupd_tcp_addresses = [\"a:1\", \"b:2\"]\nunknown_key = 1\ntcp_address = \"1.2.3.4:5\"\n",
        )
        .unwrap();
        let o = parse(&[
            &format!("--config={}", path.display()),
            "--tcp-address=127.0.0.1:9",
        ]);
        assert_eq!(o.mem_queue_size, 7);
        assert_eq!(o.msg_timeout, Duration::from_secs(3));
        assert_eq!(o.node_id, Some(5));
        assert_eq!(o.lookupd_tcp_address, vec!["a:1", "b:2"]);
        assert_eq!(o.tcp_address, "127.0.0.1:9");
    }

    #[test]
    fn inert_flags_say_so_in_help() {
        let cmd = Options::command();
        for arg in cmd.get_arguments() {
            let long = arg.get_long().unwrap_or_default();
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert_eq!(
                help.contains("[accepted, not yet in effect]"),
                INERT_FLAGS.contains(&long),
                "--{long}: {help}"
            );
        }
    }

    #[test]
    fn inert_flags_set_lists_only_changed_values() {
        assert!(parse(&[]).inert_flags_set().is_empty());
        // nsqd's example config sets tls_min_version = "": nothing to warn about.
        assert!(parse(&["--tls-min-version=", "--tls-required=false"])
            .inert_flags_set()
            .is_empty());
        let o = parse(&[
            "--tls-cert=/etc/c.pem",
            "--queue-scan-worker-pool-max=8",
            "--auth-http-address=127.0.0.1:4181",
            "--https-address=0.0.0.0:4152",
        ]);
        assert_eq!(o.inert_flags_set(), vec!["--queue-scan-worker-pool-max"]);
    }

    #[test]
    fn tls_required_as_nsqd_reads_it() {
        assert_eq!(parse(&[]).tls_required_mode().unwrap(), TlsRequired::No);
        assert_eq!(
            parse(&["--tls-required"]).tls_required_mode().unwrap(),
            TlsRequired::Yes
        );
        assert_eq!(
            parse(&["--tls-required=TRUE"]).tls_required_mode().unwrap(),
            TlsRequired::Yes
        );
        let o = parse(&["--tls-required=TCP-HTTPS"]);
        assert_eq!(o.tls_required_mode().unwrap(), TlsRequired::ExceptHttp);
        let o = parse(&["--tls-client-auth-policy=require"]);
        assert_eq!(o.tls_required_mode().unwrap(), TlsRequired::Yes);
        let v: Vec<OsString> = ["ringsqd", "--tls-required=maybe"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(Options::parse_from_args(v).is_err());
        let v: Vec<OsString> = ["ringsqd", "--tls-min-version=tls9"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(Options::parse_from_args(v).is_err());
    }

    #[test]
    fn export_takes_the_broker_flags() {
        let v: Vec<OsString> = [
            "ringsqd",
            "-data-path=/d",
            "--max-bytes-per-file",
            "200",
            "-tcp-address=127.0.0.1:1",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let o = Options::parse_export_args(v).expect("parse");
        assert_eq!(o.data_path, "/d");
        assert_eq!(o.max_bytes_per_file, 200);
        assert_eq!(o.max_msg_size, 1048576);
    }

    #[test]
    fn rejects_bad_node_id() {
        let v: Vec<OsString> = ["ringsqd", "--node-id=5000"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(Options::parse_from_args(v).is_err());
    }
}
