//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;

use crate::stats::CoreStats;

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

pub fn render(stats: &CoreStats, resident_bytes: u64, failing_queues: usize) -> String {
    let mut out = String::with_capacity(4096);
    type TopicMetric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::stats::TopicStats) -> u64,
    );
    let topic_metrics: [TopicMetric; 5] = [
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
    for (name, kind, help, get) in topic_metrics {
        let mut f = Family::new(&mut out, name, kind, help);
        for t in &stats.topics {
            f.sample(name, &[("topic", &t.topic_name)], get(t));
        }
    }
    type ChannelMetric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::stats::ChannelStats) -> u64,
    );
    let channel_metrics: [ChannelMetric; 9] = [
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
    for (name, kind, help, get) in channel_metrics {
        let mut f = Family::new(&mut out, name, kind, help);
        for t in &stats.topics {
            for c in &t.channels {
                f.sample(
                    name,
                    &[("topic", &t.topic_name), ("channel", &c.channel_name)],
                    get(c),
                );
            }
        }
    }
    {
        let name = "nsq_channel_e2e_processing_latency_seconds";
        let mut f = Family::new(
            &mut out,
            name,
            "gauge",
            "End-to-end processing latency percentiles (publish to FIN), when enabled.",
        );
        for t in &stats.topics {
            for c in &t.channels {
                for p in c
                    .e2e_processing_latency
                    .percentiles
                    .as_deref()
                    .unwrap_or(&[])
                {
                    let q = p.quantile.0.to_string();
                    f.sample(
                        name,
                        &[
                            ("topic", &t.topic_name),
                            ("channel", &c.channel_name),
                            ("quantile", &q),
                        ],
                        p.value.0 / 1e9,
                    );
                }
            }
        }
    }
    type CoreMetric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::stats::CoreSnapshot) -> u64,
    );
    let core_metrics: [CoreMetric; 15] = [
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
    for (name, kind, help, get) in core_metrics {
        let mut f = Family::new(&mut out, name, kind, help);
        for c in &stats.cores {
            f.sample(name, &[("core", &c.core.to_string())], get(c));
        }
    }
    let name = "ringsq_core_disk_sync_seconds_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Time this core's group commits took.",
    );
    for c in &stats.cores {
        let seconds = c.disk_sync.busy_micros as f64 / 1e6;
        f.sample(name, &[("core", &c.core.to_string())], seconds);
    }
    let name = "ringsq_disk_failing_queues";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "Disk queues whose writes are failing now (full disk, I/O error); /ping says NOK meanwhile.",
    );
    f.sample(name, &[], failing_queues);
    let mut f = Family::new(
        &mut out,
        "ringsq_process_resident_memory_bytes",
        "gauge",
        "Resident set size of the broker.",
    );
    f.sample("ringsq_process_resident_memory_bytes", &[], resident_bytes);
    out
}
