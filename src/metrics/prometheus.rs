//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;

use crate::stats::{ChannelStats, CoreSnapshot, CoreStats, TopicStats};

/// One metric family: HELP and TYPE lines, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A family read off one kind of record: name, type, help, value.
type Metric<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

const TOPIC_METRICS: [Metric<TopicStats>; 5] = [
    (
        "nsq_topic_depth",
        "gauge",
        "Messages held by the topic (memory + backend).",
        |t| t.depth as u64,
    ),
    (
        "nsq_topic_backend_depth",
        "gauge",
        "Messages of the topic in its overflow backend.",
        |t| t.backend_depth as u64,
    ),
    (
        "nsq_topic_messages_total",
        "counter",
        "Messages published to the topic.",
        |t| t.message_count,
    ),
    (
        "nsq_topic_message_bytes_total",
        "counter",
        "Body bytes published to the topic.",
        |t| t.message_bytes,
    ),
    (
        "nsq_topic_paused",
        "gauge",
        "1 if the topic is paused.",
        |t| u64::from(t.paused),
    ),
];

const CHANNEL_METRICS: [Metric<ChannelStats>; 9] = [
    (
        "nsq_channel_depth",
        "gauge",
        "Messages queued in the channel (memory + backend).",
        |c| c.depth as u64,
    ),
    (
        "nsq_channel_backend_depth",
        "gauge",
        "Messages of the channel in its overflow backend.",
        |c| c.backend_depth as u64,
    ),
    (
        "nsq_channel_in_flight",
        "gauge",
        "Messages delivered and not yet finished.",
        |c| c.in_flight_count as u64,
    ),
    (
        "nsq_channel_deferred",
        "gauge",
        "Messages waiting for their defer or requeue delay.",
        |c| c.deferred_count as u64,
    ),
    (
        "nsq_channel_messages_total",
        "counter",
        "Messages the channel received from its topic.",
        |c| c.message_count,
    ),
    (
        "nsq_channel_requeued_total",
        "counter",
        "Messages requeued by consumers (REQ).",
        |c| c.requeue_count,
    ),
    (
        "nsq_channel_timed_out_total",
        "counter",
        "In-flight messages that timed out.",
        |c| c.timeout_count,
    ),
    (
        "nsq_channel_clients",
        "gauge",
        "Consumers subscribed to the channel.",
        |c| c.client_count as u64,
    ),
    (
        "nsq_channel_paused",
        "gauge",
        "1 if the channel is paused.",
        |c| u64::from(c.paused),
    ),
];

const CORE_METRICS: [Metric<CoreSnapshot>; 15] = [
    (
        "ringsq_core_forwarded_batches_total",
        "counter",
        "Publish batches this core forwarded to other cores' rings.",
        |c| c.forwarded_batches,
    ),
    (
        "ringsq_core_forwarded_messages_total",
        "counter",
        "Messages this core forwarded to other cores.",
        |c| c.forwarded_messages,
    ),
    (
        "ringsq_core_received_batches_total",
        "counter",
        "Publish batches this core took from other cores.",
        |c| c.received_batches,
    ),
    (
        "ringsq_core_received_messages_total",
        "counter",
        "Messages this core took from other cores.",
        |c| c.received_messages,
    ),
    (
        "ringsq_core_handoffs_out_total",
        "counter",
        "Consumer connections moved from this core to a topic's core.",
        |c| c.handoffs_out,
    ),
    (
        "ringsq_core_handoffs_in_total",
        "counter",
        "Consumer connections moved to this core.",
        |c| c.handoffs_in,
    ),
    (
        "ringsq_core_ring_occupancy",
        "gauge",
        "Items waiting in this core's outgoing rings.",
        |c| c.ring_occupancy,
    ),
    (
        "ringsq_core_io_uring_ops_total",
        "counter",
        "io_uring file operations (reads, writes) completed by this core.",
        |c| c.io_ops,
    ),
    (
        "ringsq_core_disk_bytes_written_total",
        "counter",
        "Bytes this core wrote to files.",
        |c| c.file_bytes_written,
    ),
    (
        "ringsq_core_tasks_executed_total",
        "counter",
        "Tasks run by this core's executor.",
        |c| c.tasks_executed,
    ),
    (
        "ringsq_core_connections",
        "gauge",
        "TCP client connections on this core.",
        |c| c.connections,
    ),
    (
        "ringsq_core_disk_unwritten_bytes",
        "gauge",
        "Bytes of this core's disk queues waiting to be written (publishers wait past 64 MiB).",
        |c| c.disk_unwritten_bytes,
    ),
    (
        "ringsq_core_disk_sync_rounds_total",
        "counter",
        "Group commits (fdatasync of every queue written, consume positions saved) run by this core.",
        |c| c.disk_sync.rounds,
    ),
    (
        "ringsq_core_disk_sync_failures_total",
        "counter",
        "Group commits that failed on some queue (retried in the next round).",
        |c| c.disk_sync.failed_rounds,
    ),
    (
        "ringsq_core_disk_queues_synced_total",
        "counter",
        "Queue syncs done by this core's group commits.",
        |c| c.disk_sync.queues_synced,
    ),
];

pub fn render(stats: &CoreStats, resident_bytes: u64, failing_queues: usize) -> String {
    let mut out = String::with_capacity(4096);
    topic_families(&mut out, &stats.topics);
    channel_families(&mut out, &stats.topics);
    e2e_family(&mut out, &stats.topics);
    core_families(&mut out, &stats.cores);
    process_families(&mut out, resident_bytes, failing_queues);
    out
}

fn topic_families(out: &mut String, topics: &[TopicStats]) {
    for (name, kind, help, get) in TOPIC_METRICS {
        let mut f = Family::new(out, name, kind, help);
        for t in topics {
            f.sample(name, &[("topic", &t.topic_name)], get(t));
        }
    }
}

fn channel_families(out: &mut String, topics: &[TopicStats]) {
    for (name, kind, help, get) in CHANNEL_METRICS {
        let mut f = Family::new(out, name, kind, help);
        for t in topics {
            for c in &t.channels {
                let labels = [
                    ("topic", t.topic_name.as_str()),
                    ("channel", &c.channel_name),
                ];
                f.sample(name, &labels, get(c));
            }
        }
    }
}

fn e2e_family(out: &mut String, topics: &[TopicStats]) {
    let name = "nsq_channel_e2e_processing_latency_seconds";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "End-to-end processing latency percentiles (publish to FIN), when enabled.",
    );
    for t in topics {
        for c in &t.channels {
            let percentiles = c.e2e_processing_latency.percentiles.as_deref();
            for p in percentiles.unwrap_or(&[]) {
                let q = p.quantile.0.to_string();
                let labels = [
                    ("topic", t.topic_name.as_str()),
                    ("channel", &c.channel_name),
                    ("quantile", &q),
                ];
                f.sample(name, &labels, p.value.0 / 1e9);
            }
        }
    }
}

fn core_families(out: &mut String, cores: &[CoreSnapshot]) {
    for (name, kind, help, get) in CORE_METRICS {
        let mut f = Family::new(out, name, kind, help);
        for c in cores {
            f.sample(name, &[("core", &c.core.to_string())], get(c));
        }
    }
    let name = "ringsq_core_disk_sync_seconds_total";
    let mut f = Family::new(out, name, "counter", "Time this core's group commits took.");
    for c in cores {
        let seconds = c.disk_sync.busy_micros as f64 / 1e6;
        f.sample(name, &[("core", &c.core.to_string())], seconds);
    }
}

fn process_families(out: &mut String, resident_bytes: u64, failing_queues: usize) {
    let name = "ringsq_disk_failing_queues";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "Disk queues whose writes are failing now (full disk, I/O error); /ping says NOK meanwhile.",
    );
    f.sample(name, &[], failing_queues);
    let name = "ringsq_process_resident_memory_bytes";
    let mut f = Family::new(out, name, "gauge", "Resident set size of the broker.");
    f.sample(name, &[], resident_bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{E2eLatency, GoFloat, Percentile};

    fn channel(name: &str) -> ChannelStats {
        ChannelStats {
            channel_name: name.into(),
            depth: 4,
            backend_depth: 2,
            in_flight_count: 1,
            deferred_count: 7,
            message_count: 9,
            requeue_count: 3,
            timeout_count: 2,
            client_count: 5,
            clients: None,
            paused: false,
            e2e_processing_latency: E2eLatency {
                count: 1,
                percentiles: Some(vec![Percentile {
                    quantile: GoFloat(0.99),
                    value: GoFloat(1_234_567.0),
                }]),
            },
        }
    }

    fn sample_stats() -> CoreStats {
        let mut core = CoreSnapshot {
            core: 1,
            forwarded_batches: 3,
            ..CoreSnapshot::default()
        };
        core.disk_sync.busy_micros = 1_500_001;
        CoreStats {
            topics: vec![TopicStats {
                topic_name: "b\nx".into(),
                channels: vec![channel("c\"1")],
                depth: 11,
                backend_depth: 6,
                message_count: 100,
                message_bytes: 5000,
                paused: true,
                e2e_processing_latency: E2eLatency::default(),
            }],
            producers: vec![],
            cores: vec![core],
        }
    }

    #[test]
    fn samples_are_labelled_and_escaped() {
        let out = render(&sample_stats(), 4096, 2);
        for line in [
            "nsq_topic_paused{topic=\"b\\nx\"} 1\n",
            "nsq_channel_deferred{topic=\"b\\nx\",channel=\"c\\\"1\"} 7\n",
            "nsq_channel_e2e_processing_latency_seconds{topic=\"b\\nx\",channel=\"c\\\"1\",quantile=\"0.99\"} 0.001234567\n",
            "ringsq_core_forwarded_batches_total{core=\"1\"} 3\n",
            "ringsq_core_disk_sync_seconds_total{core=\"1\"} 1.500001\n",
            "# TYPE ringsq_disk_failing_queues gauge\nringsq_disk_failing_queues 2\n",
            "ringsq_process_resident_memory_bytes 4096\n",
        ] {
            assert!(out.contains(line), "{line:?} not in\n{out}");
        }
    }

    #[test]
    fn every_family_has_help_and_type_even_without_samples() {
        let out = render(&CoreStats::default(), 0, 0);
        let families = TOPIC_METRICS.len() + CHANNEL_METRICS.len() + CORE_METRICS.len() + 4;
        assert_eq!(out.matches("# HELP ").count(), families);
        assert_eq!(out.matches("# TYPE ").count(), families);
    }
}
