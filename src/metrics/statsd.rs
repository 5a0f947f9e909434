//! nsqd's statsd push (S1, S2): every `--statsd-interval`, counters as
//! deltas since the last push and gauges, packed into UDP datagrams of at
//! most `--statsd-udp-packet-size` bytes, spread over the interval less 1 s.

use std::net::UdpSocket;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;

use crate::runtime::core::Core;
use crate::stats::{CoreStats, StatsFilter};

/// nsqd's prefix: `%s` → `<broadcast_address>_<broadcast_http_port>` with
/// `.` and `:` turned into `_`, and a trailing `.`.
pub fn prefix(template: &str, broadcast_address: &str, http_port: u16) -> String {
    if template.is_empty() {
        return String::new();
    }
    let host_key = format!("{broadcast_address}:{http_port}").replace(['.', ':'], "_");
    let mut p = template.replace("%s", &host_key);
    if !p.ends_with('.') {
        p.push('.');
    }
    p
}

fn is_ephemeral(name: &str) -> bool {
    crate::protocol::names::is_ephemeral(name)
}

/// The statsd lines for one push.
pub fn lines(
    prefix: &str,
    stats: &CoreStats,
    last: Option<&CoreStats>,
    exclude_ephemeral: bool,
    mem: Option<crate::metrics::HeapFigures>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut incr = |stat: String, v: i64| out.push(format!("{prefix}{stat}:{v}|c\n"));
    let mut gauges = Vec::new();
    let mut gauge = |stat: String, v: i64| gauges.push(format!("{prefix}{stat}:{v}|g\n"));
    for t in &stats.topics {
        if exclude_ephemeral && is_ephemeral(&t.topic_name) {
            continue;
        }
        let lt = last.and_then(|l| l.topics.iter().find(|x| x.topic_name == t.topic_name));
        let name = &t.topic_name;
        incr(
            format!("topic.{name}.message_count"),
            t.message_count
                .wrapping_sub(lt.map_or(0, |x| x.message_count)) as i64,
        );
        incr(
            format!("topic.{name}.message_bytes"),
            t.message_bytes
                .wrapping_sub(lt.map_or(0, |x| x.message_bytes)) as i64,
        );
        gauge(format!("topic.{name}.depth"), t.depth);
        gauge(format!("topic.{name}.backend_depth"), t.backend_depth);
        for p in t
            .e2e_processing_latency
            .percentiles
            .as_deref()
            .unwrap_or(&[])
        {
            gauge(
                format!(
                    "topic.{name}.e2e_processing_latency_{:.0}",
                    p.quantile.0 * 100.0
                ),
                p.value.0 as i64,
            );
        }
        for c in &t.channels {
            if exclude_ephemeral && is_ephemeral(&c.channel_name) {
                continue;
            }
            let lc = lt.and_then(|l| l.channels.iter().find(|x| x.channel_name == c.channel_name));
            let ch = format!("topic.{name}.channel.{}", c.channel_name);
            incr(
                format!("{ch}.message_count"),
                c.message_count
                    .wrapping_sub(lc.map_or(0, |x| x.message_count)) as i64,
            );
            gauge(format!("{ch}.depth"), c.depth);
            gauge(format!("{ch}.backend_depth"), c.backend_depth);
            gauge(format!("{ch}.in_flight_count"), c.in_flight_count);
            gauge(format!("{ch}.deferred_count"), c.deferred_count);
            incr(
                format!("{ch}.requeue_count"),
                c.requeue_count
                    .wrapping_sub(lc.map_or(0, |x| x.requeue_count)) as i64,
            );
            incr(
                format!("{ch}.timeout_count"),
                c.timeout_count
                    .wrapping_sub(lc.map_or(0, |x| x.timeout_count)) as i64,
            );
            gauge(format!("{ch}.clients"), c.client_count);
            for p in c
                .e2e_processing_latency
                .percentiles
                .as_deref()
                .unwrap_or(&[])
            {
                gauge(
                    format!("{ch}.e2e_processing_latency_{:.0}", p.quantile.0 * 100.0),
                    p.value.0 as i64,
                );
            }
        }
    }
    if let Some(heap) = mem {
        for (k, v) in [
            ("heap_objects", 0),
            ("heap_idle_bytes", heap.idle_bytes as i64),
            ("heap_in_use_bytes", heap.in_use_bytes as i64),
            ("heap_released_bytes", 0),
            ("gc_pause_usec_100", 0),
            ("gc_pause_usec_99", 0),
            ("gc_pause_usec_95", 0),
            ("next_gc_bytes", 0),
        ] {
            gauge(format!("mem.{k}"), v);
        }
        incr("mem.gc_runs".to_string(), 0);
    }
    // nsqd interleaves counters and gauges in stat order; order within a
    // push carries no meaning for statsd, so counters come first.
    out.extend(gauges);
    out
}

/// Packs lines into datagrams of at most `size` bytes (a longer line goes
/// alone), like nsqd's boundary-buffered writer.
pub fn pack(lines: &[String], size: usize) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut cur: Vec<u8> = Vec::with_capacity(size);
    for line in lines {
        if !cur.is_empty() && cur.len() + line.len() > size {
            packets.push(std::mem::take(&mut cur));
        }
        cur.extend_from_slice(line.as_bytes());
    }
    if !cur.is_empty() {
        packets.push(cur);
    }
    packets
}

/// The push loop; runs on core 0 when `--statsd-address` is set.
pub async fn run(core: Rc<Core>) {
    let o = core.opts();
    if o.statsd_address.is_empty() {
        return;
    }
    let interval = o.statsd_interval.max(Duration::from_millis(100));
    let prefix = prefix(
        &o.statsd_prefix,
        &o.effective_broadcast_address(),
        o.effective_broadcast_http_port(core.shared.http_port),
    );
    let mut last: Option<CoreStats> = None;
    loop {
        let stopped = future::or(
            async {
                glommio::timer::sleep(interval).await;
                false
            },
            async {
                core.stopping.wait().await;
                true
            },
        )
        .await;
        if stopped {
            return;
        }
        let stats = core
            .broker
            .stats(StatsFilter {
                include_clients: false,
                ..StatsFilter::default()
            })
            .await;
        let mem = o.statsd_mem_stats.then(crate::metrics::heap);
        let lines = lines(
            &prefix,
            &stats,
            last.as_ref(),
            o.statsd_exclude_ephemeral,
            mem,
        );
        let packets = pack(&lines, o.statsd_udp_packet_size.max(1) as usize);
        let socket = match UdpSocket::bind("0.0.0.0:0").and_then(|s| {
            s.connect(&o.statsd_address)?;
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(addr = %o.statsd_address, error = %e, "failed to create UDP socket to statsd");
                continue;
            }
        };
        tracing::info!(addr = %o.statsd_address, "STATSD: pushing stats");
        let spread = interval.saturating_sub(Duration::from_secs(1));
        let gap = spread / (packets.len().max(1) as u32);
        for (i, p) in packets.iter().enumerate() {
            if i > 0 && !gap.is_zero() {
                glommio::timer::sleep(gap).await;
            }
            if let Err(e) = socket.send(p) {
                tracing::debug!(error = %e, "statsd send failed");
            }
        }
        last = Some(stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_host_key() {
        assert_eq!(prefix("nsq.%s", "my.host", 4151), "nsq.my_host_4151.");
        assert_eq!(prefix("app.", "h", 1), "app.");
        assert_eq!(prefix("", "h", 1), "");
    }

    #[test]
    fn packing_respects_the_size() {
        let lines: Vec<String> = (0..10).map(|i| format!("stat{i}:1|c\n")).collect();
        let packets = pack(&lines, 25);
        assert!(packets.iter().all(|p| p.len() <= 25));
        let joined: Vec<u8> = packets.concat();
        assert_eq!(joined, lines.concat().into_bytes());
    }
}
