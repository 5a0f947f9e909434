//! What ringsq keeps on disk: `nsqd.dat` (metadata), each topic's and
//! channel's disk queue (segment files written with direct io_uring
//! writes), deferred-message snapshots, the import of nsqd's files and the
//! export back to them (`ringsqd export-nsqd`).
//!
//! Per core there is one `CoreStorage`: the flags, the group commit that
//! syncs every queue written since the last round in one go, the queues
//! that read a chunk of backlog and want their consumers served, and the
//! shared health that /ping reports.

pub mod deferred;
pub mod disk_queue;
pub mod metadata;
pub mod notify;
pub mod nsqd_export;
pub mod nsqd_import;
pub mod open;
#[cfg(test)]
mod proptests;
pub mod record;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;
use thiserror::Error;

pub use disk_queue::{DiskQueue, QueueShared};
pub use record::DiskPos;

use notify::Notify;

/// A storage failure, typed: the operation, the file and the OS error
/// itself (shared, so a group commit can answer every waiter with it).
/// The text is what nsqd users see after "PUB failed ", worded the way Go
/// (and so nsqd) words I/O errors: "writing <path>: <os error>".
#[derive(Debug, Clone, Error)]
pub enum StorageError {
    #[error("{} {}: {source}", lower(op), .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("short write ({written} of {wanted} bytes) to {}", .path.display())]
    ShortWrite {
        path: PathBuf,
        written: usize,
        wanted: usize,
    },
    #[error("{}: {source}", .path.display())]
    Header {
        path: PathBuf,
        #[source]
        source: record::HeaderError,
    },
    /// The core stopped before its group commit answered.
    #[error("exiting")]
    Exiting,
}

impl StorageError {
    pub fn io(op: &'static str, path: &Path, err: std::io::Error) -> StorageError {
        StorageError::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(err),
        }
    }

    /// A glommio error, keeping its operation and path when it has them
    /// (`op` and `path` otherwise).
    pub fn glommio(op: &'static str, path: &Path, err: glommio::GlommioError<()>) -> StorageError {
        match err {
            glommio::GlommioError::EnhancedIoError {
                source,
                op,
                path: at,
                ..
            } => StorageError::Io {
                op,
                path: at.unwrap_or_else(|| path.to_path_buf()),
                source: Arc::new(source),
            },
            other => StorageError::io(op, path, std::io::Error::from(other)),
        }
    }

    /// The OS error's kind, for an I/O failure.
    pub fn kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            StorageError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// glommio names operations "Writing", "Opening": shown lowercase.
fn lower(op: &str) -> String {
    op.to_lowercase()
}

/// Another process holds the data path (C6): nsqd's words.
#[derive(Debug, Clone, Error)]
#[error("cannot flock directory {dir} - {err} (possibly in use by another instance of nsqd)")]
pub struct LockError {
    pub dir: String,
    pub err: String,
}

/// C6: one process per data path (the broker, or `export-nsqd`). The lock
/// lasts as long as the returned file is open. `create`: make the directory
/// first (the broker does; the export wants an existing one).
pub fn lock_data_path(dir: &Path, create: bool) -> Result<std::fs::File, LockError> {
    use std::os::fd::AsRawFd;
    let locked = |err: String| LockError {
        dir: dir.display().to_string(),
        err,
    };
    if create {
        std::fs::create_dir_all(dir).map_err(|e| locked(e.to_string()))?;
    }
    let file = std::fs::File::open(dir).map_err(|e| locked(e.to_string()))?;
    // SAFETY: flock on an fd we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(locked(std::io::Error::last_os_error().to_string()));
    }
    Ok(file)
}

/// The storage flags, as nsqd names them.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub dir: PathBuf,
    pub max_bytes_per_file: u64,
    pub max_msg_size: u64,
    /// D7: sync after this many operations; 1 is ringsq's durable mode
    /// (OK only once the message is on disk).
    pub sync_every: u64,
    pub sync_timeout: Duration,
}

impl StorageConfig {
    pub fn from_options(o: &crate::config::Options) -> StorageConfig {
        StorageConfig {
            dir: o.effective_data_path(),
            max_bytes_per_file: o.max_bytes_per_file.max(4096) as u64,
            max_msg_size: o.max_msg_size.max(0) as u64,
            sync_every: o.sync_every.max(1) as u64,
            sync_timeout: if o.sync_timeout.is_zero() {
                Duration::from_millis(100)
            } else {
                o.sync_timeout
            },
        }
    }

    pub fn durable(&self) -> bool {
        self.sync_every == 1
    }
}

/// Whether the disk works, for /ping (H1: "NOK - <error>" while failing).
#[derive(Default)]
pub struct Health {
    failing: AtomicUsize,
    last_error: Mutex<String>,
}

impl Health {
    pub fn fail(&self, err: &str) {
        self.failing.fetch_add(1, Ordering::AcqRel);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = err.to_string();
    }

    pub fn recover(&self) {
        let _ = self
            .failing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Queues whose disk writes are failing now.
    pub fn failing_queues(&self) -> usize {
        self.failing.load(Ordering::Acquire)
    }

    /// None when healthy, else the last error.
    pub fn error(&self) -> Option<String> {
        (self.failing.load(Ordering::Acquire) > 0).then(|| {
            self.last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }
}

/// Group commit: every queue written since the last round is synced in one
/// round, and every durable publisher waiting gets its answer from it.
#[derive(Default)]
pub struct SyncGroup {
    dirty: RefCell<Vec<Rc<QueueShared>>>,
    waiters: RefCell<Vec<oneshot::Sender<Result<(), StorageError>>>>,
    requested: Cell<bool>,
    /// The loop has ended (shutdown): no round will answer a new waiter.
    ended: Cell<bool>,
    wake: Notify,
    figures: Cell<SyncFigures>,
}

/// What the group commit has done so far (for /metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncFigures {
    pub rounds: u64,
    pub failed_rounds: u64,
    pub queues_synced: u64,
    pub busy_micros: u64,
}

impl SyncGroup {
    pub fn figures(&self) -> SyncFigures {
        self.figures.get()
    }

    fn add(&self, q: Rc<QueueShared>) {
        self.dirty.borrow_mut().push(q);
    }

    /// A queue reached --sync-every operations.
    fn request(&self) {
        if !self.requested.replace(true) {
            self.wake.notify();
        }
    }

    /// Resolves once everything appended before the call is on disk.
    pub async fn commit(&self) -> Result<(), StorageError> {
        if self.ended.get() {
            return Err(StorageError::Exiting);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push(tx);
        self.request();
        rx.await.unwrap_or(Err(StorageError::Exiting))
    }

    /// One round: sync every dirty queue concurrently, answer the waiters.
    async fn round(&self) {
        let started = std::time::Instant::now();
        self.requested.set(false);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        let queues = std::mem::take(&mut *self.dirty.borrow_mut());
        for q in &queues {
            q.taken_for_sync();
        }
        // Channels first, topics after: a topic's consume position must not
        // reach the disk before the channel records it handed messages to,
        // so topics save the position they had when the round started.
        let (topics, channels): (Vec<_>, Vec<_>) = queues.into_iter().partition(|q| q.is_topic());
        let snapshots: Vec<disk_queue::ConsumeMark> =
            topics.iter().map(|q| q.consume_snapshot()).collect();
        let mut results = futures::future::join_all(channels.iter().map(|q| q.sync(false))).await;
        let topic_syncs = topics
            .iter()
            .zip(&snapshots)
            .map(|(q, at)| q.sync_at(false, Some(*at)));
        results.extend(futures::future::join_all(topic_syncs).await);
        let mut failed = None;
        for (q, r) in channels.iter().chain(topics.iter()).zip(results) {
            if let Err(e) = r {
                q.still_dirty();
                failed.get_or_insert(e);
            }
        }
        let mut figures = self.figures.get();
        figures.rounds += 1;
        figures.failed_rounds += u64::from(failed.is_some());
        figures.queues_synced += (channels.len() + topics.len()) as u64;
        figures.busy_micros += started.elapsed().as_micros() as u64;
        self.figures.set(figures);
        for w in waiters {
            let _ = w.send(match &failed {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            });
        }
    }
}

/// glommio decides once per block device whether reads may use the
/// io_uring poll ring, by reading the first block of the first file it
/// opens; on an empty new segment that read succeeds without touching the
/// device, glommio wrongly caches "pollable", and every later read fails
/// with EOPNOTSUPP on devices without iopoll (virtio disks). Opening a file
/// that has data first makes the probe real.
pub async fn probe_direct_reads(dir: &Path, core: usize) {
    let path = dir.join(format!(".ringsq-probe-{core}"));
    let file = path.clone();
    // Plain std::fs writes the data the probe needs: on the blocking pool.
    let made = glommio::executor()
        .spawn_blocking(move || {
            std::fs::write(&file, [0u8; 4096]).and_then(|_| std::fs::File::open(&file)?.sync_all())
        })
        .await;
    if made.is_ok() {
        if let Ok(f) = glommio::io::DmaFile::open(&path).await {
            let _ = f.close().await;
        }
    }
    let _ = glommio::io::remove(&path).await;
}

/// Per-core storage context.
pub struct CoreStorage {
    pub config: StorageConfig,
    pub health: std::sync::Arc<Health>,
    pub sync: SyncGroup,
    refills: RefCell<Vec<Rc<str>>>,
    refill_signal: Notify,
    /// Set when the core starts writing everything out at shutdown: nothing
    /// may enter a queue after that.
    closing: Cell<bool>,
    /// Set once the core has written everything out at shutdown.
    closed: Cell<bool>,
    /// Bytes sealed for writing but not written yet, over all queues.
    unwritten: Cell<u64>,
    written: Notify,
    /// Files being opened or removed right now (`disk_queue::BusyPaths`).
    pub(crate) paths: Rc<disk_queue::BusyPaths>,
    /// Start-up: each queue's open, prepared off the core thread
    /// (`prepare_queues`), taken by `DiskQueue::open`.
    prepared: RefCell<std::collections::HashMap<String, open::Prepared>>,
    /// Start-up: channels' deferred snapshots, read off the core thread.
    prepared_deferred:
        RefCell<std::collections::HashMap<String, Vec<(crate::protocol::Message, i64)>>>,
    /// Start-up: the numbers a queue whose open failed starts past.
    failed_opens: RefCell<std::collections::HashMap<String, (u64, u64)>>,
}

/// Publishers wait while this much is waiting for the disk (backpressure
/// instead of unbounded memory when publishing outruns the disk).
const MAX_UNWRITTEN: u64 = 64 << 20;

impl CoreStorage {
    /// Shutdown: queues are about to be written out; from now on publishes
    /// are refused and read-ahead is not delivered.
    pub fn begin_close(&self) {
        self.closing.set(true);
        self.refill_signal.notify();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Ends the sync loop (after the shutdown flush).
    pub fn close(&self) {
        self.closed.set(true);
        self.sync.ended.set(true);
        self.sync.wake.notify();
        self.refill_signal.notify();
        self.written.notify();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Shutdown: resolves once every file removal started has finished.
    pub async fn removals_done(&self) {
        self.paths.settle().await;
    }

    fn add_unwritten(&self, bytes: u64) {
        self.unwritten.set(self.unwritten.get() + bytes);
    }

    fn sub_unwritten(&self, bytes: u64) {
        let before = self.unwritten.get();
        let after = before.saturating_sub(bytes);
        self.unwritten.set(after);
        if before > MAX_UNWRITTEN && after <= MAX_UNWRITTEN {
            self.written.notify();
        }
    }

    /// Bytes sealed for writing and not written yet (for /metrics).
    pub fn unwritten_bytes(&self) -> u64 {
        self.unwritten.get()
    }

    /// Whether publishers should wait for the disk.
    pub fn over_limit(&self) -> bool {
        self.unwritten.get() > MAX_UNWRITTEN
    }

    /// Resolves once the disk has caught up enough to take more.
    pub async fn wait_for_room(&self) {
        loop {
            let seen = self.written.generation();
            if !self.over_limit() || self.closed.get() {
                return;
            }
            self.written.changed(seen).await;
        }
    }

    pub fn new(config: StorageConfig, health: std::sync::Arc<Health>) -> Rc<CoreStorage> {
        Rc::new(CoreStorage {
            config,
            health,
            sync: SyncGroup::default(),
            refills: RefCell::new(Vec::new()),
            refill_signal: Notify::default(),
            closing: Cell::new(false),
            closed: Cell::new(false),
            unwritten: Cell::new(0),
            written: Notify::default(),
            paths: Rc::default(),
            prepared: RefCell::new(Default::default()),
            prepared_deferred: RefCell::new(Default::default()),
            failed_opens: RefCell::new(Default::default()),
        })
    }

    /// Start-up: reads what every queue in `names` needs to open (meta
    /// files, segment lengths, the unsynced tails) on the core's blocking
    /// thread, so the core thread never waits on a file.
    pub async fn prepare_queues(&self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let cfg = self.config.clone();
        let prepared = glommio::executor()
            .spawn_blocking(move || {
                let mut listing = open::list_own_segments(&cfg.dir);
                names
                    .into_iter()
                    .map(|name| {
                        let own = listing
                            .as_mut()
                            .map(|l| l.remove(&name).unwrap_or_default());
                        let p = open::prepare_open(&cfg, &name, own);
                        // A channel's deferred snapshot (`topic:channel`).
                        let held = name
                            .contains(':')
                            .then(|| deferred::load(&cfg.dir, &name, cfg.max_msg_size));
                        (name, p, held)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        let mut deferred = self.prepared_deferred.borrow_mut();
        let mut plans = self.prepared.borrow_mut();
        for (name, plan, held) in prepared {
            if let Some(held) = held {
                deferred.insert(name.clone(), held);
            }
            plans.insert(name, plan);
        }
    }

    /// Start-up: a channel's deferred snapshot, read by `prepare_queues`.
    pub fn take_deferred(&self, name: &str) -> Option<Vec<(crate::protocol::Message, i64)>> {
        self.prepared_deferred.borrow_mut().remove(name)
    }

    pub(crate) fn take_prepared(&self, name: &str) -> Option<open::Prepared> {
        self.prepared.borrow_mut().remove(name)
    }

    pub(crate) fn put_failed_open(&self, name: &str, numbers: (u64, u64)) {
        self.failed_opens
            .borrow_mut()
            .insert(name.to_string(), numbers);
    }

    pub(crate) fn take_failed_open(&self, name: &str) -> Option<(u64, u64)> {
        self.failed_opens.borrow_mut().remove(name)
    }

    /// A queue read backlog into memory: its topic or channel can deliver.
    fn refilled(&self, name: &Rc<str>) {
        self.refills.borrow_mut().push(name.clone());
        self.refill_signal.notify();
    }

    /// Waits for refilled queues; returns their names (`topic` or
    /// `topic:channel`).
    /// Empty once the storage is closed.
    pub async fn next_refills(&self) -> Vec<Rc<str>> {
        loop {
            let seen = self.refill_signal.generation();
            let names = std::mem::take(&mut *self.refills.borrow_mut());
            if self.closing.get() {
                return Vec::new();
            }
            if !names.is_empty() {
                return names;
            }
            self.refill_signal.changed(seen).await;
        }
    }

    /// The group-commit loop: a round when asked (durable publish,
    /// --sync-every reached) and every --sync-timeout if anything changed.
    pub async fn sync_loop(self: Rc<Self>) {
        let timeout = self.config.sync_timeout;
        let mut next_tick = std::time::Instant::now() + timeout;
        while !self.closed.get() {
            let seen = self.sync.wake.generation();
            if !self.sync.requested.get() {
                let now = std::time::Instant::now();
                if now < next_tick {
                    futures_lite::future::or(
                        async {
                            glommio::timer::sleep(next_tick - now).await;
                        },
                        self.sync.wake.changed(seen),
                    )
                    .await;
                }
            }
            let now = std::time::Instant::now();
            if self.sync.requested.get() || now >= next_tick {
                if now >= next_tick {
                    next_tick = now + timeout;
                }
                if !self.sync.dirty.borrow().is_empty() || !self.sync.waiters.borrow().is_empty() {
                    self.sync.round().await;
                } else {
                    self.sync.requested.set(false);
                }
            }
        }
        // Answer anyone still waiting.
        self.sync.round().await;
    }
}

#[cfg(test)]
mod sync_group_tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn a_commit_after_the_loop_ended_is_answered_exiting() {
        let group = SyncGroup::default();
        group.ended.set(true);
        let r = group.commit().now_or_never().expect("answered at once");
        assert!(matches!(r, Err(StorageError::Exiting)));
    }
}
