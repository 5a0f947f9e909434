//! IDENTIFY (T13-T17): the client's JSON, its validation, and the
//! feature-negotiation answer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{ClientError, ErrorCode};
use crate::config::{Options, NSQD_COMPAT_VERSION};

use super::gojson::null_as_default;

/// The keys nsqd reads, matched in any case as Go's encoding/json does;
/// unknown keys are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct IdentifyRequest {
    #[serde(deserialize_with = "null_as_default")]
    pub client_id: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub hostname: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub heartbeat_interval: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub output_buffer_size: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub output_buffer_timeout: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub feature_negotiation: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub tls_v1: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub deflate: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub deflate_level: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub snappy: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub sample_rate: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub user_agent: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub msg_timeout: i64,
}

/// What a connection runs with, after defaults and IDENTIFY.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub client_id: String,
    pub hostname: String,
    pub user_agent: String,
    /// None: heartbeats disabled (`-1`).
    pub heartbeat_interval: Option<Duration>,
    pub output_buffer_size: usize,
    /// Zero: no timed flush.
    pub output_buffer_timeout: Duration,
    pub sample_rate: u8,
    pub msg_timeout: Duration,
    /// Set once the TLS upgrade succeeded (T18), for /stats.
    pub tls: Option<TlsSummary>,
}

/// A connection's TLS session as /stats shows it (nsqd's names and formats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSummary {
    pub version: String,
    pub cipher_suite: String,
    pub negotiated_protocol: String,
    pub negotiated_protocol_is_mutual: bool,
    /// The client certificate's subject CN, empty without one: not in
    /// /stats, only the auth query's common_name (T21).
    pub peer_common_name: String,
}

impl ClientSettings {
    /// nsqd's per-client defaults; client_id and hostname are the remote IP.
    pub fn defaults(opts: &Options, remote_ip: &str) -> ClientSettings {
        ClientSettings {
            client_id: remote_ip.to_string(),
            hostname: remote_ip.to_string(),
            user_agent: String::new(),
            // ClientTimeout (60 s, not a flag) / 2
            heartbeat_interval: Some(Duration::from_secs(30)),
            output_buffer_size: 16 * 1024,
            output_buffer_timeout: opts.output_buffer_timeout,
            sample_rate: 0,
            msg_timeout: opts.msg_timeout,
            tls: None,
        }
    }
}

#[derive(Debug, Serialize)]
struct NegotiationResponse<'a> {
    max_rdy_count: i64,
    version: &'a str,
    max_msg_timeout: i64,
    msg_timeout: i64,
    tls_v1: bool,
    deflate: bool,
    deflate_level: i64,
    max_deflate_level: i64,
    snappy: bool,
    sample_rate: i64,
    auth_required: bool,
    output_buffer_size: i64,
    output_buffer_timeout: i64,
}

fn bad_body(text: String) -> ClientError {
    ClientError::new(ErrorCode::BadBody, format!("IDENTIFY {text}"))
}

fn millis(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// The stream compression IDENTIFY turned on (T19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCompression {
    Deflate { level: u32 },
    Snappy,
}

/// What IDENTIFY answers, and what the connection must switch on after the
/// answer has gone out in clear.
#[derive(Debug)]
pub struct IdentifyOutcome {
    pub response: Vec<u8>,
    /// Upgrade to TLS after the answer (T18), before any compression.
    pub tls: bool,
    pub compression: Option<StreamCompression>,
}

/// Applies an IDENTIFY body to `settings`.
pub fn apply_identify(
    body: &[u8],
    opts: &Options,
    settings: &mut ClientSettings,
) -> Result<IdentifyOutcome, ClientError> {
    let req: IdentifyRequest = super::gojson::from_slice(body)
        .map_err(|_| ClientError::new(ErrorCode::BadBody, "IDENTIFY failed to decode JSON body"))?;

    // nsqd stores the (possibly empty) strings as sent.
    settings.client_id = req.client_id.unwrap_or_default();
    settings.hostname = req.hostname.unwrap_or_default();
    settings.user_agent = req.user_agent.unwrap_or_default();

    let max_hb = millis(opts.max_heartbeat_interval);
    match req.heartbeat_interval {
        -1 => settings.heartbeat_interval = None,
        0 => {}
        ms if (1000..=max_hb).contains(&ms) => {
            settings.heartbeat_interval = Some(Duration::from_millis(ms as u64))
        }
        ms => return Err(bad_body(format!("heartbeat interval ({ms}) is invalid"))),
    }

    let min_obt = millis(opts.min_output_buffer_timeout);
    let max_obt = millis(opts.max_output_buffer_timeout);
    match req.output_buffer_timeout {
        -1 => settings.output_buffer_timeout = Duration::ZERO,
        0 => {}
        ms if (min_obt..=max_obt).contains(&ms) => {
            settings.output_buffer_timeout = Duration::from_millis(ms as u64)
        }
        ms => return Err(bad_body(format!("output buffer timeout ({ms}) is invalid"))),
    }
    match req.output_buffer_size {
        -1 => {
            settings.output_buffer_size = 1;
            settings.output_buffer_timeout = Duration::ZERO;
        }
        0 => {}
        n if (64..=opts.max_output_buffer_size).contains(&n) => {
            settings.output_buffer_size = n as usize
        }
        n => return Err(bad_body(format!("output buffer size ({n}) is invalid"))),
    }

    if !(0..=99).contains(&req.sample_rate) {
        return Err(bad_body(format!(
            "sample rate ({}) is invalid",
            req.sample_rate
        )));
    }
    settings.sample_rate = req.sample_rate as u8;

    let max_mt = millis(opts.max_msg_timeout);
    match req.msg_timeout {
        0 => {}
        ms if (1000..=max_mt).contains(&ms) => {
            settings.msg_timeout = Duration::from_millis(ms as u64)
        }
        ms => return Err(bad_body(format!("msg timeout ({ms}) is invalid"))),
    }

    if !req.feature_negotiation {
        return Ok(IdentifyOutcome {
            response: b"OK".to_vec(),
            tls: false,
            compression: None,
        });
    }

    // nsqd: a TLS config exists exactly when a cert or key is set.
    let tls = (!opts.tls_cert.is_empty() || !opts.tls_key.is_empty()) && req.tls_v1;
    let deflate = opts.deflate && req.deflate;
    let snappy = opts.snappy && req.snappy;
    if deflate && snappy {
        return Err(ClientError::new(
            ErrorCode::IdentifyFailed,
            "cannot enable both deflate and snappy compression",
        ));
    }
    let mut deflate_level = if deflate && req.deflate_level > 0 {
        req.deflate_level
    } else {
        6
    };
    deflate_level = deflate_level.min(opts.max_deflate_level);

    let resp = NegotiationResponse {
        max_rdy_count: opts.max_rdy_count,
        version: NSQD_COMPAT_VERSION,
        max_msg_timeout: max_mt,
        msg_timeout: millis(settings.msg_timeout),
        tls_v1: tls,
        deflate,
        deflate_level,
        max_deflate_level: opts.max_deflate_level,
        snappy,
        sample_rate: settings.sample_rate as i64,
        auth_required: !opts.auth_http_address.is_empty(),
        output_buffer_size: settings.output_buffer_size as i64,
        output_buffer_timeout: millis(settings.output_buffer_timeout),
    };
    let response = serde_json::to_vec(&resp)
        .map_err(|e| ClientError::new(ErrorCode::IdentifyFailed, format!("IDENTIFY failed {e}")))?;
    let compression = if deflate {
        Some(StreamCompression::Deflate {
            level: deflate_level.clamp(1, 9) as u32,
        })
    } else if snappy {
        Some(StreamCompression::Snappy)
    } else {
        None
    };
    Ok(IdentifyOutcome {
        response,
        tls,
        compression,
    })
}
