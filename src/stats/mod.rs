//! Snapshots of a core's topics, channels and clients in nsqd's /stats
//! JSON shape (H8-H12). A core builds its part; the HTTP handler merges
//! the parts of every core.

mod counters;

use serde::Serialize;

pub use counters::{CoreCounters, CoreSnapshot};

#[derive(Debug, Clone, Serialize)]
pub struct PubCount {
    pub topic: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientStats {
    pub client_id: String,
    pub hostname: String,
    pub version: &'static str,
    pub remote_address: String,
    pub state: i32,
    pub ready_count: i64,
    pub in_flight_count: i64,
    pub message_count: u64,
    pub finish_count: u64,
    pub requeue_count: u64,
    pub connect_ts: i64,
    pub sample_rate: i32,
    pub deflate: bool,
    pub snappy: bool,
    pub user_agent: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub authed: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub auth_identity: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub auth_identity_url: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pub_counts: Vec<PubCount>,
    pub tls: bool,
    pub tls_cipher_suite: String,
    pub tls_version: String,
    pub tls_negotiated_protocol: String,
    pub tls_negotiated_protocol_is_mutual: bool,
}

/// A float as Go's encoding/json prints it: whole numbers without `.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GoFloat(pub f64);

impl Serialize for GoFloat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.fract() == 0.0 && v.abs() < 1e15 {
            s.serialize_i64(v as i64)
        } else {
            s.serialize_f64(v)
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentile {
    pub quantile: GoFloat,
    pub value: GoFloat,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct E2eLatency {
    pub count: u64,
    /// null when e2e latency is not tracked (X3).
    pub percentiles: Option<Vec<Percentile>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelStats {
    pub channel_name: String,
    pub depth: i64,
    pub backend_depth: i64,
    pub in_flight_count: i64,
    pub deferred_count: i64,
    pub message_count: u64,
    pub requeue_count: u64,
    pub timeout_count: u64,
    pub client_count: i64,
    /// null with include_clients=false (X3).
    pub clients: Option<Vec<ClientStats>>,
    pub paused: bool,
    pub e2e_processing_latency: E2eLatency,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicStats {
    pub topic_name: String,
    pub channels: Vec<ChannelStats>,
    pub depth: i64,
    pub backend_depth: i64,
    pub message_count: u64,
    pub message_bytes: u64,
    pub paused: bool,
    pub e2e_processing_latency: E2eLatency,
}

/// What one core contributes to /stats.
#[derive(Debug, Clone, Default)]
pub struct CoreStats {
    pub topics: Vec<TopicStats>,
    pub producers: Vec<ClientStats>,
    /// Per-core figures for /metrics (one entry per core).
    pub cores: Vec<CoreSnapshot>,
}

/// Which part of the stats to gather.
#[derive(Debug, Clone, Default)]
pub struct StatsFilter {
    pub topic: Option<String>,
    pub channel: Option<String>,
    pub include_clients: bool,
}
