//! One topic's or channel's disk queue: segment files written with direct
//! io_uring writes, read back in order, consumed on FIN.
//!
//! The queue API (`put`, `pop`, `ack`) is synchronous because the shard is
//! plain single-threaded code; the file work happens in one background task
//! per queue (`io_task`) plus one task per write in flight. One file per job,
//! each with its own state in `Inner`:
//!
//! - `writer`: `put` encodes the record into the current DMA buffer; a full
//!   buffer, or one a sync needs now, is sealed (padded to 4 KiB) and queued.
//!   `write_io` creates and preallocates segment files and keeps up to eight
//!   writes in flight; a failed (or short) write keeps its buffer and is
//!   retried: nothing acknowledged is dropped while the disk is full.
//! - `readahead`: the newest messages are also kept in `ready` while the
//!   reader has caught up, so a consumer that keeps up never reads the file.
//!   A backlog is read back in 1 MiB chunks, then the core is asked to
//!   dispatch (`CoreStorage::refilled`).
//! - `cursor` and `meta`: a channel's message read from disk keeps its
//!   position until FIN; the position saved in the meta file is the oldest
//!   one not finished, so a crash redelivers what was in flight instead of
//!   losing it. Segments wholly before the *saved* position are deleted,
//!   never before it reached the disk.
//! - `sync`: seals, waits for the writes, fdatasyncs and saves the consume
//!   position; `CoreStorage`'s group commit runs it for every queue written
//!   since the last round (--sync-every, --sync-timeout, and every durable
//!   publish with --sync-every=1).
//! - `recovery`: walking segments record by record with damage skipped and
//!   logged (start-up's crash-tail check, the export), the depth reset when
//!   the reader finds damage start-up did not count, the shutdown trim.
//! - `files`: names, listings, and the file-system calls made on a core
//!   (glommio's io_uring or its blocking pool, never a blocking call).
//!
//! Start-up (`open`, planned off the core thread by `super::open`): the
//! meta file also holds the depth counted up to the synced end, so only
//! records past that end (the unsynced tail after a crash) are read.
//!
//! Files (in --data-path): `<name>.ringsq.NNNNNN.dat` segments and
//! `<name>.ringsq.meta.dat`; `<name>` is the topic or `topic:channel`.
//! nsqd's own `<name>.diskqueue.*` files are read in place (`nsqd_import`).

mod cursor;
mod files;
mod meta;
mod readahead;
mod recovery;
mod segments;
mod sync;
mod write_io;
mod writer;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use super::open;
use super::record::{self, DiskPos, Format};
use super::{CoreStorage, StorageError};
use crate::protocol::Message;

pub use cursor::ConsumeMark;
pub(crate) use files::BusyPaths;
pub use files::{has_own_files, meta_path, segment_path, OWN_BASE};
pub(crate) use files::{next_number, numbered_files, own_segments, read_header, remove_file};
pub use meta::{decode_meta, encode_meta, read_meta, read_meta_full, saved_position, Meta, Synced};
pub use recovery::{scan_segment, walk_segment, Scan};

use cursor::Cursor;
use meta::MetaState;
use readahead::ReadAhead;
use segments::{Segment, Segments};
use sync::SyncState;
use writer::{EndMoved, Writer};

const RETRY_EVERY: Duration = Duration::from_secs(1);

struct Inner {
    /// Bumped by `clear`: completions of older writes and reads are ignored.
    epoch: u64,
    segments: Segments,
    writer: Writer,
    read: ReadAhead,
    cursor: Cursor,
    meta: MetaState,
    sync: SyncState,
    closed: bool,
}

pub struct QueueShared {
    pub name: Rc<str>,
    ctx: Rc<CoreStorage>,
    /// Topics hand messages on to channels at once: consumed on pop.
    ack_on_pop: bool,
    inner: RefCell<Inner>,
    /// Wakes the io task.
    work: super::notify::Notify,
    /// Write completions (sync waiters).
    progress: super::notify::Notify,
    task_running: Cell<bool>,
}

/// The handle a topic or channel holds.
pub struct DiskQueue {
    shared: Rc<QueueShared>,
}

impl DiskQueue {
    /// A queue with no files yet (a topic or channel created at run time).
    pub fn create(ctx: &Rc<CoreStorage>, name: &str, ack_on_pop: bool) -> DiskQueue {
        let inner = Inner::new(Segments::default(), 1, None);
        DiskQueue::start(ctx, name, ack_on_pop, inner)
    }

    /// A fresh queue where `open` failed: its numbers start past every
    /// file and saved position left behind, so nothing old is reused or
    /// later taken for consumed.
    pub fn create_after_failed_open(
        ctx: &Rc<CoreStorage>,
        name: &str,
        ack_on_pop: bool,
    ) -> DiskQueue {
        // `open` always records them; the lookup is a fallback only.
        let (next_own, meta_seq) = ctx
            .take_failed_open(name)
            .unwrap_or_else(|| numbers_on_disk(&ctx.config.dir, name));
        let mut inner = Inner::new(Segments::default(), next_own, None);
        inner.meta.seq = meta_seq;
        DiskQueue::start(ctx, name, ack_on_pop, inner)
    }

    /// Opens what an earlier run (or nsqd) left, as start-up prepared it
    /// (`CoreStorage::prepare_queues`, `open::prepare_open`): the depth
    /// comes from the meta file, and only what was not synced is scanned.
    pub fn open(
        ctx: &Rc<CoreStorage>,
        name: &str,
        ack_on_pop: bool,
    ) -> Result<DiskQueue, StorageError> {
        let prepared = ctx.take_prepared(name).unwrap_or_else(|| {
            // Only queues start-up did not foresee get here.
            open::prepare_open(&ctx.config, name, None)
        });
        let plan = match prepared {
            open::Prepared::Ready(plan) => plan,
            open::Prepared::Failed {
                err,
                next_own,
                meta_seq,
            } => {
                ctx.put_failed_open(name, (next_own, meta_seq));
                return Err(err);
            }
        };
        log_opened(name, &plan);
        let kept: VecDeque<Segment> = plan
            .segments
            .into_iter()
            .map(|g| Segment::sealed(g.ord, g.format, g.path, g.start, g.end))
            .collect();
        let mut inner = Inner::new(Segments::new(kept), plan.next_own, plan.consumed);
        inner.cursor.depth = plan.depth;
        inner.meta.saved_end = plan.saved_end;
        // Slots alternate by sequence: go on from the newest one saved.
        inner.meta.seq = plan.meta_seq;
        Ok(DiskQueue::start(ctx, name, ack_on_pop, inner))
    }

    fn start(ctx: &Rc<CoreStorage>, name: &str, ack_on_pop: bool, inner: Inner) -> DiskQueue {
        let shared = Rc::new(QueueShared {
            name: name.into(),
            ctx: ctx.clone(),
            ack_on_pop,
            inner: RefCell::new(inner),
            work: Default::default(),
            progress: Default::default(),
            task_running: Cell::new(false),
        });
        DiskQueue { shared }
    }

    pub fn shared(&self) -> &Rc<QueueShared> {
        &self.shared
    }

    pub fn depth(&self) -> u64 {
        self.shared.inner.borrow().cursor.depth
    }

    /// Writes are failing (disk full, I/O error) and being retried.
    pub fn is_failing(&self) -> bool {
        self.shared.inner.borrow().writer.failed.is_some()
    }

    /// Appends a message. Fails only while the disk is failing.
    pub fn put(&self, msg: &Message) -> Result<(), StorageError> {
        if let Some(err) = &self.shared.inner.borrow().writer.failed {
            return Err(err.clone());
        }
        self.shared.append(msg);
        Ok(())
    }

    /// Appends whatever the disk's state (shutdown: the buffers are kept and
    /// retried even if a write fails).
    pub fn put_always(&self, msg: &Message) {
        self.shared.append(msg);
    }

    /// The next message, if one is loaded, with its position when that is
    /// consumed only at FIN (`ack`). With none loaded but some on disk, the
    /// io task reads ahead and the core dispatches again.
    pub fn pop(&self) -> Option<(Message, Option<DiskPos>)> {
        self.shared.pop()
    }

    /// FIN of a message that came from this queue.
    pub fn ack(&self, pos: DiskPos) {
        let s = &self.shared;
        if !s.inner.borrow_mut().cursor.finish(pos) {
            return;
        }
        s.inner.borrow_mut().sync.ops += 1;
        s.after_consume();
    }

    /// Shutdown: everything taken from disk was written again (in-flight,
    /// requeued), so the consume position is the read position.
    pub fn forget_outstanding(&self) {
        self.shared.inner.borrow_mut().cursor.forget_outstanding();
        self.shared.after_consume();
    }

    /// Q11/Q12 (empty): drops every message and file.
    pub fn clear(&self) {
        self.shared.reset(false);
    }

    /// Topic or channel deleted: files go, the io task ends.
    pub fn destroy(&self) {
        self.shared.reset(true);
    }

    /// Clean shutdown: writes out the buffer, waits for every write, syncs
    /// and saves the consume position.
    pub async fn close(&self) -> Result<(), StorageError> {
        let r = self.shared.sync(true).await;
        self.shared.inner.borrow_mut().closed = true;
        self.shared.work.notify();
        r
    }
}

/// The numbers a fresh queue starts past, looked up on disk (blocking).
fn numbers_on_disk(dir: &std::path::Path, name: &str) -> (u64, u64) {
    let last_file = own_segments(dir, name)
        .ok()
        .and_then(|v| v.last().map(|(n, _)| *n));
    let saved = read_meta(&meta_path(dir, name));
    (
        next_number(last_file, saved),
        saved.map(|(seq, _)| seq).unwrap_or(0),
    )
}

/// Reading records at start-up (a crash tail, a format-1 meta, nsqd's
/// files) is worth a line; a clean start is not, per queue.
fn log_opened(name: &str, plan: &open::OpenPlan) {
    let read = match plan.counted {
        open::Counted::Meta { verified } => verified > 0,
        open::Counted::Scan { scanned } => scanned > 0,
    };
    let (depth, segments, counted) = (plan.depth, plan.segments.len(), &plan.counted);
    if read {
        tracing::info!(queue = name, depth, segments, ?counted, "disk queue opened");
    } else {
        tracing::debug!(queue = name, depth, segments, ?counted, "disk queue opened");
    }
}

impl Inner {
    fn new(segments: Segments, next_own: u64, consumed: Option<DiskPos>) -> Inner {
        let start = segments.front().map(Segment::start_pos).unwrap_or_default();
        Inner {
            epoch: 0,
            segments,
            writer: Writer::new(next_own),
            read: ReadAhead::new(start),
            cursor: Cursor::default(),
            meta: MetaState::new(consumed),
            sync: SyncState::default(),
            closed: false,
        }
    }

    /// Where the next record will be written; the reader at it has caught up.
    fn write_end(&self) -> DiskPos {
        self.writer.end(&self.segments)
    }

    /// Below the read-ahead mark with more on disk.
    fn wants_more(&self) -> bool {
        self.read.wants_more(self.write_end())
    }

    /// The oldest position still needed (unfinished, or not yet popped),
    /// with the index of the record there.
    fn consume_mark(&self) -> ConsumeMark {
        self.cursor.consume_mark(self.read.next_pos())
    }

    /// Where the data appended so far ends, with the index the next
    /// record gets (taken when a sync seals its buffer).
    fn end_mark(&self) -> ConsumeMark {
        self.cursor.end_mark(self.write_end())
    }

    /// Seals the current buffer; a reader that had caught up follows.
    fn seal(&mut self) {
        if let Some(moved) = self.writer.seal(&mut self.segments) {
            self.read.follow(moved);
        }
    }

    /// Starts the next segment (D6); the reader follows if it had caught
    /// up or this is the only segment.
    fn roll(&mut self, dir: &std::path::Path, name: &str, busy: impl Fn(&std::path::Path) -> bool) {
        self.seal();
        let moved = self.writer.roll(&mut self.segments, dir, name, busy);
        if self.segments.len() == 1 {
            self.read.loaded = moved.new;
        } else {
            self.read.follow(moved);
        }
    }
}

impl QueueShared {
    /// A topic's queue (consumed on pop) rather than a channel's.
    pub fn is_topic(&self) -> bool {
        self.ack_on_pop
    }

    fn wake_io(self: &Rc<Self>) {
        let sealed = self.inner.borrow_mut().writer.take_unwritten();
        self.ctx.add_unwritten(sealed);
        if !self.task_running.get() {
            self.task_running.set(true);
            glommio::spawn_local(io_task(self.clone())).detach();
        }
        self.work.notify();
    }

    fn append(self: &Rc<Self>, msg: &Message) {
        let cfg = &self.ctx.config;
        // A deferred message (DPUB in durable mode) keeps its due time.
        let due = msg
            .deferred
            .filter(|d| !d.is_zero())
            .map(|d| msg.timestamp.saturating_add(d.as_nanos() as i64));
        let len = record::encoded_len(msg, due);
        let mut sealed = false;
        {
            let mut guard = self.inner.borrow_mut();
            let inner = &mut *guard;
            if inner.writer.needs_roll(len, cfg.max_bytes_per_file) {
                sealed = inner.writer.has_buffer();
                let paths = &self.ctx.paths;
                inner.roll(&cfg.dir, &self.name, |p| paths.is_busy(p));
            }
            if inner.writer.buffer_full_for(len) {
                inner.seal();
                sealed = true;
            }
            let at: EndMoved = inner.writer.encode(&mut inner.segments, msg, due, len);
            inner.read.offer(at, msg);
            inner.cursor.depth += 1;
            inner.sync.ops += 1;
            self.mark_dirty(inner);
        }
        if sealed {
            self.wake_io();
        }
    }

    fn pop(self: &Rc<Self>) -> Option<(Message, Option<DiskPos>)> {
        let mut inner = self.inner.borrow_mut();
        let Some(ready) = inner.read.pop() else {
            inner.fix_depth_at_tail(&self.name);
            let idle = inner.cursor.depth > 0 && !inner.read.reading;
            drop(inner);
            if idle {
                self.wake_io();
            }
            return None;
        };
        let low = inner.wants_more();
        let index = inner.cursor.popped();
        let origin = if self.ack_on_pop {
            inner.sync.ops += 1;
            drop(inner);
            self.after_consume();
            None
        } else {
            inner.cursor.hold(ready.pos, index);
            drop(inner);
            Some(ready.pos)
        };
        if low {
            self.wake_io();
        }
        Some((ready.msg, origin))
    }

    /// Empties the queue (`destroy`: for good, its meta file too).
    fn reset(self: &Rc<Self>, destroy: bool) {
        let mut inner = self.inner.borrow_mut();
        let segments = inner.segments.take_all();
        let had_nsqd = segments.iter().any(|s| s.format == Format::Nsqd);
        for seg in segments {
            self.remove_unless_opening(&seg.path);
        }
        if had_nsqd {
            self.remove_nsqd_meta(false);
        }
        // Writes that will never happen no longer hold publishers back.
        let queued = inner.writer.queued_bytes();
        self.ctx
            .sub_unwritten(queued.saturating_sub(inner.writer.unwritten()));
        let failed = inner.writer.failed.is_some();
        let meta_file = inner.meta.file.take();
        let fresh = Inner {
            epoch: inner.epoch + 1,
            closed: destroy,
            ..Inner::new(Segments::default(), inner.writer.next_own, None)
        };
        let meta_seq = inner.meta.seq;
        *inner = fresh;
        inner.meta.seq = meta_seq;
        if destroy {
            self.remove_unless_opening(&meta_path(&self.ctx.config.dir, &self.name));
            drop(meta_file);
        } else {
            inner.meta.file = meta_file;
            self.mark_dirty(&mut inner);
        }
        drop(inner);
        if failed {
            self.ctx.health.recover();
        }
        self.work.notify();
        self.progress.notify();
    }
}

/// The queue's file work: submits sealed buffers, reads the backlog ahead,
/// retries failed writes. Ends when the queue is closed and idle.
async fn io_task(q: Rc<QueueShared>) {
    loop {
        let seen = q.work.generation();
        q.submit_writes().await;
        if q.read_ahead().await {
            continue;
        }
        let (retry, idle_closed) = {
            let inner = q.inner.borrow();
            (
                inner.writer.has_retries(),
                inner.closed && inner.writer.idle(),
            )
        };
        if idle_closed {
            break;
        }
        if retry {
            glommio::timer::sleep(RETRY_EVERY).await;
            q.inner.borrow_mut().writer.requeue_retries();
            continue;
        }
        q.wait_for_work(seen).await;
    }
    q.task_running.set(false);
}

impl QueueShared {
    /// Waits for news; a read waiting on a write's data also wakes on
    /// write completions.
    async fn wait_for_work(&self, seen: u64) {
        let wait_write = self.inner.borrow().wants_more();
        if wait_write {
            let pseen = self.progress.generation();
            futures_lite::future::or(self.work.changed(seen), self.progress.changed(pseen)).await;
        } else {
            self.work.changed(seen).await;
        }
    }
}
