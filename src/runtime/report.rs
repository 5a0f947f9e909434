//! What an operator reads at start and stop (one line each way), the
//! limits in force, and systemd's readiness protocol (sd_notify).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::stats::{StatsFilter, TopicStats};
use crate::system::{self, Limit};

/// Queues, messages and files, summed over the cores.
#[derive(Debug, Default)]
pub struct Tally {
    pub topics: AtomicU64,
    pub channels: AtomicU64,
    /// Messages the queues held when opened (deferred ones included).
    pub opened_depth: AtomicU64,
    /// Disk queues written out and closed at stop.
    pub closed_queues: AtomicU64,
    /// Messages on disk after stop (queued, in flight and deferred).
    pub stored_messages: AtomicU64,
    /// Of those, moved from memory, in flight and deferred at stop.
    pub written_at_stop: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A core's topics as start-up opened them: counted, and each queue at debug.
pub fn opened(tally: &Tally, core: usize, shard: &crate::shard::Shard) {
    for t in shard.stats(&StatsFilter::default()) {
        add(&tally.topics, 1);
        add(&tally.channels, t.channels.len() as u64);
        let depth = t.depth.max(0) as u64
            + t.channels
                .iter()
                .map(|c| (c.depth + c.in_flight_count + c.deferred_count).max(0) as u64)
                .sum::<u64>();
        add(&tally.opened_depth, depth);
        tracing::debug!(core, topic = %t.topic_name, depth = t.depth, "opened topic");
        for c in &t.channels {
            tracing::debug!(core, topic = %t.topic_name, channel = %c.channel_name, depth = c.depth, in_flight = c.in_flight_count, deferred = c.deferred_count, "opened channel");
        }
    }
}

/// A core's messages just before shutdown writes them out (D10).
pub fn stopping(tally: &Tally, topics: &[TopicStats]) {
    for t in topics {
        let topic_memory = (t.depth - t.backend_depth).max(0) as u64;
        add(&tally.written_at_stop, topic_memory);
        add(&tally.stored_messages, t.depth.max(0) as u64);
        for c in &t.channels {
            let held = (c.in_flight_count + c.deferred_count).max(0) as u64;
            let memory = (c.depth - c.backend_depth).max(0) as u64;
            add(&tally.written_at_stop, memory + held);
            add(&tally.stored_messages, c.depth.max(0) as u64 + held);
        }
    }
}

pub fn closed_queues(tally: &Tally, n: usize) {
    add(&tally.closed_queues, n as u64);
}

fn limit_text(v: u64, unit: u64, suffix: &str) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        format!("{}{suffix}", v / unit)
    }
}

/// Go (1.19+) raises the open-files soft limit to the hard limit at start,
/// so nsqd serves as many connections as the hard limit allows: so do we.
pub fn raise_open_files() {
    system::raise_soft_limit(Limit::OpenFiles);
}

/// Locked memory the executors' registered io buffers need: 3 rings per
/// core, each registering `io_memory`, plus the rings themselves.
pub fn memlock_needed(cores: usize, io_memory: usize) -> u64 {
    (cores * 3 * io_memory + (16 << 20)) as u64
}

/// Every core serves: the memlock warning if any, the start line, and
/// READY=1 for systemd, in that order.
pub fn serving(tally: &Tally, cores: usize, data_path: &std::path::Path, io_memory: usize) {
    warn_if_buffers_unregistered(cores, super::MAX_IO_MEMORY);
    log_started(
        tally,
        &StartFacts {
            cores,
            data_path,
            io_memory,
        },
    );
    sd_notify("READY=1\nSTATUS=serving");
}

/// One line instead of glommio's dump per core, once per process.
fn warn_if_buffers_unregistered(cores: usize, max_io_memory: usize) {
    if !crate::logging::take_buffers_unregistered() {
        return;
    }
    let soft = system::limits(Limit::LockedMemory).soft;
    let need_mib = memlock_needed(cores, max_io_memory) >> 20;
    tracing::warn!(
        "locked memory limit ({}, shared by every process of this user) too small for io_uring registered buffers on {cores} core(s): \
         disk I/O runs on unregistered buffers (works, about the same write speed, more kernel work per I/O); \
         fix: `ulimit -l unlimited` (or at least {} KiB) or LimitMEMLOCK=infinity (or {need_mib}M) in the systemd unit",
        limit_text(soft, 1024, " KiB"),
        need_mib << 10,
    );
}

struct StartFacts<'a> {
    pub cores: usize,
    pub data_path: &'a std::path::Path,
    pub io_memory: usize,
}

/// The one start-up line (item 6), after every core serves.
fn log_started(tally: &Tally, f: &StartFacts<'_>) {
    let ml_soft = system::limits(Limit::LockedMemory).soft;
    let nofile_soft = system::limits(Limit::OpenFiles).soft;
    let memlock = if system::is_root() {
        format!("{} (root: not enforced)", limit_text(ml_soft, 1024, " KiB"))
    } else {
        limit_text(ml_soft, 1024, " KiB")
    };
    tracing::info!(
        "ringsq {} (speaks nsqd {}) started: data path {}, {} core(s), {} topic(s) and {} channel(s) opened holding {} message(s), limits: memlock {memlock}, open files {}, io memory {} KiB per ring",
        env!("CARGO_PKG_VERSION"),
        crate::config::NSQD_COMPAT_VERSION,
        f.data_path.display(),
        f.cores,
        get(&tally.topics),
        get(&tally.channels),
        get(&tally.opened_depth),
        limit_text(nofile_soft, 1, ""),
        f.io_memory >> 10,
    );
}

/// What stop wrote to disk, then the last line.
pub fn log_stopped(tally: &Tally, metadata: Option<(usize, usize)>, since: Instant, clean: bool) {
    let nsqd_dat = match metadata {
        Some((topics, channels)) => {
            format!("nsqd.dat written ({topics} topic(s), {channels} channel(s))")
        }
        None => "nsqd.dat NOT written".to_string(),
    };
    tracing::info!(
        "wrote to disk: {} message(s) from memory, in flight and deferred; {} queue(s) closed holding {} message(s); {nsqd_dat}",
        get(&tally.written_at_stop),
        get(&tally.closed_queues),
        get(&tally.stored_messages),
    );
    let ms = since.elapsed().as_millis();
    if clean {
        tracing::info!("ringsqd stopped cleanly in {ms} ms");
    } else {
        tracing::error!("ringsqd stopped after an error in {ms} ms");
    }
}

/// systemd's notification socket (`NOTIFY_SOCKET`, `Type=notify`): READY=1
/// once every core serves, STOPPING=1 at shutdown. A no-op without it.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notify(&path, state) {
        tracing::warn!(socket = ?path, error = %e, "cannot notify systemd");
    }
}

fn send_notify(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        // A leading '@' names an abstract socket (sd_notify(3)).
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(path))?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}
