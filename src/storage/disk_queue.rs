//! One topic's or channel's disk queue: segment files written with direct
//! io_uring writes, read back in order, consumed on FIN.
//!
//! The queue API (`put`, `pop`, `ack`) is synchronous because the shard is
//! plain single-threaded code; the file work happens in one background task
//! per queue (`io_task`) plus one task per write in flight:
//!
//! - `put` encodes the record into the current 1 MiB DMA buffer. A full
//!   buffer, or one a sync needs now, is sealed (padded to 4 KiB, so no
//!   two writes ever touch the same block) and handed to the io task, which
//!   creates and preallocates segment files and keeps up to eight writes
//!   in flight. A failed (or short) write keeps its buffer and is retried:
//!   nothing acknowledged is dropped while the disk is full.
//! - Reading: the newest messages are also kept in `ready` while the reader
//!   has caught up, so a consumer that keeps up never reads the file. A
//!   backlog is read back in 1 MiB chunks by the io task, which then asks
//!   the core to dispatch (`CoreStorage::refilled`).
//! - Consumption: a channel's message read from disk carries its position
//!   (`Message::origin`) until FIN; the position saved in the meta file is
//!   the oldest one not finished, so a crash redelivers what was in flight
//!   instead of losing it. Segments wholly before the *saved* position are
//!   deleted, never before it reached the disk.
//! - Durability: `sync` seals, waits for the writes, fdatasyncs and saves
//!   the consume position; `CoreStorage`'s group commit runs it for every
//!   queue written since the last round (--sync-every, --sync-timeout, and
//!   every durable publish with --sync-every=1).
//! - Start-up (`open`, planned off the core thread by `super::open`): the
//!   meta file also holds the depth counted up to the synced end, so only
//!   records past that end (the unsynced tail after a crash) are read.
//!
//! Files (in --data-path): `<name>.ringsq.NNNNNN.dat` segments and
//! `<name>.ringsq.meta.dat`; `<name>` is the topic or `topic:channel`.
//! nsqd's own `<name>.diskqueue.*` files are read in place (`nsqd_import`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use super::nsqd_import;
use super::open;
use super::record::{self, align_up, DiskPos, Format, Walk, Walker, HEADER_LEN};
use super::{CoreStorage, StorageError};
use crate::protocol::Message;

/// Write buffers grow (to the max) while they fill up before being sealed
/// and shrink when syncs seal them mostly empty: a busy queue writes 2 MiB
/// at a time, an idle one holds little memory. Bigger records get a buffer
/// of their own.
const MIN_WRITE_BUF: usize = 128 << 10;
const MAX_WRITE_BUF: usize = 2 << 20;
const MAX_WRITES_IN_FLIGHT: usize = 8;
/// Segment files grow by this much at a time (ext4 serialises writes that
/// extend a file; preallocated ones run in parallel), doubling for a busy
/// queue (each fallocate waits for the writes in flight) up to the max.
const PREALLOC_STEP: u64 = 8 << 20;
const MAX_PREALLOC_STEP: u64 = 64 << 20;
const READ_CHUNK: u64 = 1 << 20;
/// The io task reads more once `ready` holds fewer messages than this.
const READY_LOW: usize = 4096;
const READY_LOW_BYTES: usize = 1 << 20;
/// New messages go to `ready` too while it is below these.
const READY_CAP: usize = 8192;
const READY_CAP_BYTES: usize = 4 << 20;
const RETRY_EVERY: Duration = Duration::from_secs(1);
const READ_RETRY: Duration = Duration::from_millis(50);
/// Segment ordinals: imported nsqd files keep their numbers (below this),
/// ringsq's own start here, so positions order the whole queue.
pub const OWN_BASE: u64 = 1 << 40;

pub fn segment_path(dir: &Path, name: &str, num: u64) -> PathBuf {
    dir.join(format!("{name}.ringsq.{num:06}.dat"))
}

pub fn meta_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.ringsq.meta.dat"))
}

struct Segment {
    ord: u64,
    format: Format,
    path: PathBuf,
    /// Where records start (after the header, or nsqd's read position).
    start: u64,
    /// End of data. Final once sealed; grows while this is the write segment.
    end: u64,
    /// Data before this offset has been written (write completions).
    written_end: u64,
    sealed: bool,
    file: Option<Rc<DmaFile>>,
    preallocated: u64,
    /// Completed writes, and how many of them an fdatasync has covered.
    /// A sync clears nothing before its fdatasync returns, so a sync
    /// running meanwhile (the shutdown's, beside a group-commit round) syncs
    /// the file itself rather than count on one still in flight.
    writes: u64,
    synced_writes: u64,
}

struct WriteBuf {
    ord: u64,
    file_off: u64,
    buf: DmaBuffer,
    len: usize,
}

struct Job {
    seq: u64,
    ord: u64,
    off: u64,
    buf: Rc<DmaBuffer>,
    /// Counted in `failing_jobs` until it succeeds.
    failed_once: bool,
}

struct Ticket {
    seq: u64,
    ord: u64,
    end: u64,
    done: bool,
}

struct Ready {
    pos: DiskPos,
    msg: Message,
}

struct Inner {
    /// Bumped by `clear`: completions of older writes and reads are ignored.
    epoch: u64,
    segments: VecDeque<Segment>,
    next_own: u64,
    /// Logical end: where the next record goes (None before the first put).
    write: Option<DiskPos>,
    cur: Option<WriteBuf>,
    jobs: VecDeque<Job>,
    retry: VecDeque<Job>,
    tickets: VecDeque<Ticket>,
    next_seq: u64,
    /// Every write up to this sequence number has completed.
    done_through: u64,
    in_flight: usize,
    failing_jobs: usize,
    failed: Option<String>,

    ready: VecDeque<Ready>,
    ready_bytes: usize,
    /// The next record not in `ready` (what the reader loads next).
    loaded: DiskPos,
    depth: u64,
    /// Records popped since the queue was opened: the index of the next
    /// one. `pop_index + depth` is the index the next append gets, so the
    /// records between a consume position and an end can be counted.
    pop_index: u64,
    /// Popped from disk, not finished yet (channels only), with the index
    /// each had.
    outstanding: BTreeMap<DiskPos, u64>,
    reading: bool,

    meta_saved: Option<DiskPos>,
    /// The synced end the meta on disk counts its depth to.
    saved_end: DiskPos,
    /// The furthest end known written and fdatasynced: a save that began
    /// with an older end (a group-commit round overtaken by the shutdown
    /// sync) writes this one, so the newest meta slot never moves back.
    synced_mark: Option<ConsumeMark>,
    /// The furthest consume position a save has been started with: a
    /// topic's snapshot taken before it (a round overtaken by the shutdown
    /// sync) must not be written over it, or a restart would hand the
    /// channels those messages again.
    save_started_at: Option<DiskPos>,
    meta_seq: u64,
    meta_file: Option<Rc<DmaFile>>,
    /// Puts and FINs since the last sync (--sync-every).
    ops: u64,
    /// Sealed bytes not yet handed to CoreStorage's unwritten count.
    unwritten: u64,
    /// Size of the next write buffer (adapts, see MIN_WRITE_BUF).
    buf_size: usize,
    /// Next preallocation step (adapts, see PREALLOC_STEP).
    prealloc_step: u64,
    in_sync_list: bool,
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

/// A position with the index of the record there (see `Inner::pop_index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumeMark {
    pub pos: DiskPos,
    pub index: u64,
}

/// The meta file is saved again once the synced end moved this far (or to
/// another segment) without the consume position moving: this bounds what
/// a restart after a crash verifies.
const META_END_STEP: u64 = 16 << 20;

/// The handle a topic or channel holds.
pub struct DiskQueue {
    shared: Rc<QueueShared>,
}

impl DiskQueue {
    /// A queue with no files yet (a topic or channel created at run time).
    pub fn create(ctx: &Rc<CoreStorage>, name: &str, ack_on_pop: bool) -> DiskQueue {
        let inner = Inner::new(VecDeque::new(), 1, None);
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
        let (next_own, meta_seq) = match ctx.take_failed_open(name) {
            Some(numbers) => numbers,
            None => {
                let dir = &ctx.config.dir;
                let last_file = own_segments(dir, name)
                    .ok()
                    .and_then(|v| v.last().map(|(n, _)| *n));
                let saved = read_meta(&meta_path(dir, name));
                (
                    next_number(last_file, saved),
                    saved.map(|(seq, _)| seq).unwrap_or(0),
                )
            }
        };
        let mut inner = Inner::new(VecDeque::new(), next_own, None);
        inner.meta_seq = meta_seq;
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
        // Reading records at start-up (a crash tail, a format-1 meta, nsqd's
        // files) is worth a line; a clean start is not, per queue.
        let read = match plan.counted {
            open::Counted::Meta { verified } => verified > 0,
            open::Counted::Scan { scanned } => scanned > 0,
        };
        if read {
            tracing::info!(
                queue = name,
                depth = plan.depth,
                segments = plan.segments.len(),
                counted = ?plan.counted,
                "disk queue opened"
            );
        } else {
            tracing::debug!(
                queue = name,
                depth = plan.depth,
                segments = plan.segments.len(),
                counted = ?plan.counted,
                "disk queue opened"
            );
        }
        let kept: VecDeque<Segment> = plan
            .segments
            .into_iter()
            .map(|g| Segment::sealed(g.ord, g.format, g.path, g.start, g.end))
            .collect();
        let mut inner = Inner::new(kept, plan.next_own, plan.consumed);
        inner.depth = plan.depth;
        inner.saved_end = plan.saved_end;
        // Slots alternate by sequence: go on from the newest one saved.
        inner.meta_seq = plan.meta_seq;
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
        self.shared.inner.borrow().depth
    }

    /// Writes are failing (disk full, I/O error) and being retried.
    pub fn is_failing(&self) -> bool {
        self.shared.inner.borrow().failed.is_some()
    }

    /// Appends a message. Fails only while the disk is failing.
    pub fn put(&self, msg: &Message) -> Result<(), StorageError> {
        let s = &self.shared;
        {
            let inner = s.inner.borrow();
            if let Some(err) = &inner.failed {
                return Err(StorageError::Failing(err.clone()));
            }
        }
        s.append(msg);
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
        let s = &self.shared;
        let mut inner = s.inner.borrow_mut();
        let r = inner.ready.pop_front();
        let low = inner.wants_more();
        let Some(Ready { pos, msg }) = r else {
            inner.fix_depth_at_tail(&s.name);
            if inner.depth > 0 && !inner.reading {
                drop(inner);
                s.wake_io();
            }
            return None;
        };
        inner.depth = inner.depth.saturating_sub(1);
        let index = inner.pop_index;
        inner.pop_index += 1;
        inner.ready_bytes = inner.ready_bytes.saturating_sub(msg.body.len());
        let origin = if s.ack_on_pop {
            inner.ops += 1;
            drop(inner);
            s.after_consume();
            None
        } else {
            inner.outstanding.insert(pos, index);
            drop(inner);
            Some(pos)
        };
        if low {
            s.wake_io();
        }
        Some((msg, origin))
    }

    /// FIN of a message that came from this queue.
    pub fn ack(&self, pos: DiskPos) {
        let s = &self.shared;
        {
            let mut inner = s.inner.borrow_mut();
            if inner.outstanding.remove(&pos).is_none() {
                return;
            }
            inner.ops += 1;
        }
        s.after_consume();
    }

    /// Shutdown: everything taken from disk was written again (in-flight,
    /// requeued), so the consume position is the read position.
    pub fn forget_outstanding(&self) {
        self.shared.inner.borrow_mut().outstanding.clear();
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

impl Segment {
    fn sealed(ord: u64, format: Format, path: PathBuf, start: u64, end: u64) -> Segment {
        Segment {
            ord,
            format,
            path,
            start,
            end,
            written_end: end,
            sealed: true,
            file: None,
            preallocated: end,
            writes: 0,
            synced_writes: 0,
        }
    }
}

impl Inner {
    fn new(segments: VecDeque<Segment>, next_own: u64, consumed: Option<DiskPos>) -> Inner {
        let loaded = segments
            .front()
            .map(|s| DiskPos {
                seg: s.ord,
                off: s.start,
            })
            .unwrap_or_default();
        Inner {
            epoch: 0,
            segments,
            next_own,
            write: None,
            cur: None,
            jobs: VecDeque::new(),
            retry: VecDeque::new(),
            tickets: VecDeque::new(),
            next_seq: 0,
            done_through: 0,
            in_flight: 0,
            failing_jobs: 0,
            failed: None,
            ready: VecDeque::new(),
            ready_bytes: 0,
            loaded,
            depth: 0,
            pop_index: 0,
            outstanding: BTreeMap::new(),
            reading: false,
            meta_saved: consumed,
            saved_end: DiskPos::default(),
            synced_mark: None,
            save_started_at: None,
            meta_seq: 0,
            meta_file: None,
            ops: 0,
            unwritten: 0,
            buf_size: 2 * MIN_WRITE_BUF,
            prealloc_step: PREALLOC_STEP,
            in_sync_list: false,
            closed: false,
        }
    }

    /// Where the next record will be written; `loaded` equal to it means the
    /// reader has caught up.
    fn write_end(&self) -> DiskPos {
        match self.write {
            Some(w) => w,
            None => self
                .segments
                .back()
                .map(|s| DiskPos {
                    seg: s.ord,
                    off: s.end,
                })
                .unwrap_or_default(),
        }
    }

    /// Everything on disk has been read and handed out, yet the depth says
    /// more: records counted at start-up were damaged (found by the reader
    /// since). The depth goes to 0 at the tail, as nsqd does (D8).
    fn fix_depth_at_tail(&mut self, name: &str) {
        if self.ready.is_empty() && self.loaded >= self.write_end() && self.depth > 0 {
            tracing::warn!(
                queue = name,
                depth = self.depth,
                "depth did not match the records on disk; reset"
            );
            self.depth = 0;
        }
    }

    /// Keeps a failed write for the retry, counted until it succeeds.
    fn retry_later(&mut self, mut job: Job) {
        if !job.failed_once {
            job.failed_once = true;
            self.failing_jobs += 1;
        }
        self.retry.push_back(job);
    }

    /// Below the read-ahead mark with more on disk.
    fn wants_more(&self) -> bool {
        self.ready.len() < READY_LOW
            && self.ready_bytes < READY_LOW_BYTES
            && self.loaded < self.write_end()
    }

    fn segment(&self, ord: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.ord == ord)
    }

    fn segment_mut(&mut self, ord: u64) -> Option<&mut Segment> {
        self.segments.iter_mut().find(|s| s.ord == ord)
    }

    /// The oldest position still needed: unfinished, or not yet popped.
    fn consume_pos(&self) -> DiskPos {
        self.consume_mark().pos
    }

    /// `consume_pos` with the index of the record there.
    fn consume_mark(&self) -> ConsumeMark {
        let next = ConsumeMark {
            pos: self.ready.front().map(|r| r.pos).unwrap_or(self.loaded),
            index: self.pop_index,
        };
        match self.outstanding.first_key_value() {
            Some((pos, index)) if *pos < next.pos => ConsumeMark {
                pos: *pos,
                index: *index,
            },
            _ => next,
        }
    }

    /// Where the data appended so far ends, with the index the next
    /// record gets (taken when a sync seals its buffer).
    fn end_mark(&self) -> ConsumeMark {
        ConsumeMark {
            pos: self.write_end(),
            index: self.pop_index + self.depth,
        }
    }

    /// Seals the current buffer: pads it to the block and queues its write.
    fn seal(&mut self) {
        let Some(mut cur) = self.cur.take() else {
            return;
        };
        if cur.len == 0 {
            return;
        }
        let cap = cur.buf.len();
        if cur.len * 4 >= cap * 3 {
            self.buf_size = (cap * 2).clamp(MIN_WRITE_BUF, MAX_WRITE_BUF);
        } else if cur.len * 4 < cap {
            self.buf_size = (self.buf_size / 2).max(MIN_WRITE_BUF);
        }
        let padded = align_up(cur.len as u64) as usize;
        cur.buf.as_bytes_mut()[cur.len..padded].fill(0);
        cur.buf.trim_to_size(padded);
        let end = cur.file_off + padded as u64;
        let old_end = self.write_end();
        let new_end = DiskPos {
            seg: cur.ord,
            off: end,
        };
        if self.loaded == old_end {
            self.loaded = new_end;
        }
        self.write = Some(new_end);
        if let Some(seg) = self.segment_mut(cur.ord) {
            seg.end = end;
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        self.tickets.push_back(Ticket {
            seq,
            ord: cur.ord,
            end,
            done: false,
        });
        self.unwritten += padded as u64;
        self.jobs.push_back(Job {
            seq,
            ord: cur.ord,
            off: cur.file_off,
            buf: Rc::new(cur.buf),
            failed_once: false,
        });
    }

    /// Ends the write segment (D6: before a record that would pass
    /// --max-bytes-per-file) and starts the next one.
    /// `busy`: paths still being opened for an earlier life of this
    /// queue (emptied, or deleted and re-created); their numbers are skipped.
    fn roll(&mut self, dir: &Path, name: &str, busy: impl Fn(&Path) -> bool) {
        self.seal();
        let old_end = self.write_end();
        if let Some(w) = self.write {
            if let Some(seg) = self.segment_mut(w.seg) {
                seg.sealed = true;
            }
        }
        let (num, path) = loop {
            let num = self.next_own;
            self.next_own += 1;
            let path = segment_path(dir, name, num);
            if !busy(&path) {
                break (num, path);
            }
        };
        let ord = OWN_BASE + num;
        self.segments.push_back(Segment {
            ord,
            format: Format::Ringsq,
            path,
            start: HEADER_LEN,
            end: HEADER_LEN,
            written_end: HEADER_LEN,
            sealed: false,
            file: None,
            preallocated: 0,
            writes: 0,
            synced_writes: 0,
        });
        let new_end = DiskPos {
            seg: ord,
            off: HEADER_LEN,
        };
        if self.loaded == old_end || self.segments.len() == 1 {
            self.loaded = new_end;
        }
        self.write = Some(new_end);
    }
}

impl QueueShared {
    /// A topic's queue (consumed on pop) rather than a channel's.
    pub fn is_topic(&self) -> bool {
        self.ack_on_pop
    }

    fn wake_io(self: &Rc<Self>) {
        let sealed = std::mem::take(&mut self.inner.borrow_mut().unwritten);
        self.ctx.add_unwritten(sealed);
        if !self.task_running.get() {
            self.task_running.set(true);
            glommio::spawn_local(io_task(self.clone())).detach();
        }
        self.work.notify();
    }

    fn mark_dirty(self: &Rc<Self>, inner: &mut Inner) {
        if !inner.in_sync_list {
            inner.in_sync_list = true;
            self.ctx.sync.add(self.clone());
        }
        if inner.ops >= self.ctx.config.sync_every.max(1) {
            self.ctx.sync.request();
        }
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
            let needs_roll = match inner.write {
                None => true,
                Some(w) => w.off > HEADER_LEN && w.off + len as u64 > cfg.max_bytes_per_file,
            };
            if needs_roll {
                sealed = inner.cur.is_some();
                inner.roll(&cfg.dir, &self.name, |p| self.ctx.is_opening(p));
            }
            if inner
                .cur
                .as_ref()
                .is_some_and(|c| c.len + len > c.buf.len())
            {
                inner.seal();
                sealed = true;
            }
            let w = inner.write.unwrap_or_default();
            let buf_size = inner.buf_size;
            let cur = inner.cur.get_or_insert_with(|| WriteBuf {
                ord: w.seg,
                file_off: w.off,
                buf: glommio::allocate_dma_buffer(buf_size.max(align_up(len as u64) as usize)),
                len: 0,
            });
            let at = cur.len;
            record::encode(&mut cur.buf.as_bytes_mut()[at..], msg, due);
            cur.len += len;
            let pos = w;
            let next = DiskPos {
                seg: w.seg,
                off: w.off + len as u64,
            };
            if inner.loaded == pos
                && inner.ready.len() < READY_CAP
                && inner.ready_bytes < READY_CAP_BYTES
            {
                inner.ready.push_back(Ready {
                    pos,
                    msg: msg.clone(),
                });
                inner.ready_bytes += msg.body.len();
                inner.loaded = next;
            }
            inner.write = Some(next);
            if let Some(seg) = inner.segment_mut(w.seg) {
                seg.end = next.off;
            }
            inner.depth += 1;
            inner.ops += 1;
            self.mark_dirty(inner);
        }
        if sealed {
            self.wake_io();
        }
    }

    fn after_consume(self: &Rc<Self>) {
        let mut inner = self.inner.borrow_mut();
        let consume = inner.consume_pos();
        if inner.meta_saved != Some(consume) {
            self.mark_dirty(&mut inner);
        }
    }

    /// Deletes a segment or meta file unless it is being opened; then its
    /// opener deletes it (`open_segment`, `save_meta`).
    fn remove_file_unless_opening(&self, path: &Path) {
        if !self.ctx.is_opening(path) {
            remove_file(path);
        }
    }

    /// Segments wholly before the saved consume position are done (D6).
    /// Only a position already on disk may delete anything: a crash must
    /// find every segment its meta file still points into.
    fn drop_consumed(&self, inner: &mut Inner, saved: DiskPos) {
        while inner.segments.len() > 1
            && inner
                .segments
                .front()
                .is_some_and(|s| s.ord < saved.seg && s.sealed)
        {
            if let Some(seg) = inner.segments.pop_front() {
                self.remove_file_unless_opening(&seg.path);
                close_later(seg.file);
                if seg.format == Format::Nsqd {
                    let more = inner.segments.iter().any(|s| s.format == Format::Nsqd);
                    nsqd_import::remove_meta_if_done(&self.ctx.config.dir, &self.name, more);
                }
            }
        }
    }

    /// The position a topic's meta may save once the channels it handed
    /// messages to are synced (group commit, before the channel phase).
    pub fn consume_snapshot(&self) -> ConsumeMark {
        self.inner.borrow().consume_mark()
    }

    /// A failed sync: the queue stays in the next round.
    pub fn still_dirty(self: &Rc<Self>) {
        let mut inner = self.inner.borrow_mut();
        inner.in_sync_list = false;
        self.mark_dirty(&mut inner);
    }

    /// Taken into a sync round: later appends must join the next one.
    pub fn taken_for_sync(&self) {
        self.inner.borrow_mut().in_sync_list = false;
    }

    fn reset(self: &Rc<Self>, destroy: bool) {
        let mut inner = self.inner.borrow_mut();
        for seg in inner.segments.drain(..) {
            self.remove_file_unless_opening(&seg.path);
            if seg.format == Format::Nsqd {
                nsqd_import::remove_meta_if_done(&self.ctx.config.dir, &self.name, false);
            }
        }
        // Writes that will never happen no longer hold publishers back.
        let queued: u64 = inner
            .jobs
            .iter()
            .chain(inner.retry.iter())
            .map(|j| j.buf.len() as u64)
            .sum();
        self.ctx
            .sub_unwritten(queued.saturating_sub(inner.unwritten));
        let next_own = inner.next_own;
        let failed = inner.failed.is_some();
        let epoch = inner.epoch + 1;
        let meta_file = inner.meta_file.take();
        let meta_seq = inner.meta_seq;
        *inner = Inner::new(VecDeque::new(), next_own, None);
        inner.epoch = epoch;
        inner.meta_seq = meta_seq;
        inner.closed = destroy;
        if destroy {
            self.remove_file_unless_opening(&meta_path(&self.ctx.config.dir, &self.name));
            drop(meta_file);
        } else {
            inner.meta_file = meta_file;
            inner.meta_saved = None;
            self.mark_dirty(&mut inner);
        }
        drop(inner);
        if failed {
            self.ctx.health.recover();
        }
        self.work.notify();
        self.progress.notify();
    }

    /// Clean shutdown, after the last sync: the write segment gives back
    /// the space preallocated past its data, so the next start, which
    /// verifies everything past the synced end, finds nothing there.
    pub async fn trim_tail(&self) {
        let (file, len) = {
            let inner = self.inner.borrow();
            let Some(seg) = inner.segments.back() else {
                return;
            };
            let len = align_up(seg.end);
            if seg.written_end < seg.end || seg.preallocated <= len || !inner.jobs.is_empty() {
                return;
            }
            let Some(file) = seg.file.clone() else {
                return;
            };
            (file, len)
        };
        match file.truncate(len).await {
            Ok(()) => {
                if let Some(seg) = self.inner.borrow_mut().segments.back_mut() {
                    seg.preallocated = len;
                }
            }
            Err(e) => {
                tracing::warn!(queue = %self.name, error = %e, "cannot trim the last segment; the next start verifies its tail");
            }
        }
    }

    /// Makes everything appended so far durable: seals the buffer, waits for
    /// every write, fdatasyncs the files written, saves the consume position.
    pub async fn sync(self: &Rc<Self>, force_meta: bool) -> Result<(), StorageError> {
        self.sync_at(force_meta, None).await
    }

    /// `sync`, saving `meta_at` (a topic's snapshot) instead of the current
    /// consume position.
    pub async fn sync_at(
        self: &Rc<Self>,
        force_meta: bool,
        meta_at: Option<ConsumeMark>,
    ) -> Result<(), StorageError> {
        let (target, epoch, end) = {
            let mut inner = self.inner.borrow_mut();
            inner.in_sync_list = false;
            inner.ops = 0;
            inner.seal();
            (inner.next_seq, inner.epoch, inner.end_mark())
        };
        self.wake_io();
        loop {
            let seen = self.progress.generation();
            {
                let inner = self.inner.borrow();
                if inner.epoch != epoch {
                    return Ok(()); // emptied meanwhile
                }
                if inner.done_through >= target {
                    break;
                }
                if let Some(err) = &inner.failed {
                    return Err(StorageError::Failing(err.clone()));
                }
            }
            self.progress.changed(seen).await;
        }
        let files: Vec<(u64, u64, Rc<DmaFile>)> = {
            let inner = self.inner.borrow();
            inner
                .segments
                .iter()
                .filter(|s| s.writes > s.synced_writes)
                .filter_map(|s| s.file.clone().map(|f| (s.ord, s.writes, f)))
                .collect()
        };
        let results = futures::future::join_all(files.iter().map(|(_, _, f)| f.fdatasync())).await;
        for ((ord, writes, _), r) in files.iter().zip(results) {
            if let Err(e) = r {
                // Not marked synced: the next round syncs this file again.
                let err = describe(e);
                tracing::error!(queue = %self.name, error = %err, "fdatasync failed");
                return Err(StorageError::Failing(err));
            }
            let mut inner = self.inner.borrow_mut();
            if inner.epoch == epoch {
                if let Some(seg) = inner.segment_mut(*ord) {
                    seg.synced_writes = seg.synced_writes.max(*writes);
                }
            }
        }
        {
            let mut inner = self.inner.borrow_mut();
            if inner.epoch == epoch && inner.synced_mark.is_none_or(|m| m.index < end.index) {
                inner.synced_mark = Some(end);
            }
        }
        self.save_meta(force_meta, meta_at, end).await
    }

    /// Saves the consume position with the depth counted up to `end`, the
    /// synced end (every write before it completed and fdatasynced). Also
    /// when only the end moved far: a crash then verifies at most that much.
    async fn save_meta(
        self: &Rc<Self>,
        force: bool,
        at: Option<ConsumeMark>,
        end: ConsumeMark,
    ) -> Result<(), StorageError> {
        let (consume, synced, seq, file, epoch) = {
            let mut inner = self.inner.borrow_mut();
            let end = inner
                .synced_mark
                .filter(|m| m.index > end.index)
                .unwrap_or(end);
            if let (Some(snapshot), Some(newer)) = (at, inner.save_started_at) {
                if snapshot.pos < newer {
                    return Ok(());
                }
            }
            let mark = at.unwrap_or_else(|| inner.consume_mark());
            let consume = mark.pos;
            // Consumed past the synced end (served from memory): nothing
            // counted; a restart verifies from the consume position.
            let synced = if mark.pos >= end.pos || mark.index >= end.index {
                Synced {
                    depth: 0,
                    end: mark.pos,
                }
            } else {
                Synced {
                    depth: end.index - mark.index,
                    end: end.pos,
                }
            };
            let end_moved = synced.end.seg != inner.saved_end.seg
                || synced.end.off >= inner.saved_end.off + META_END_STEP;
            if inner.meta_saved == Some(consume) && !force && !end_moved {
                return Ok(());
            }
            // A queue that never touched the disk needs no meta file.
            if inner.segments.is_empty() && inner.meta_saved.is_none() {
                return Ok(());
            }
            inner.meta_seq += 1;
            inner.save_started_at = inner.save_started_at.max(Some(consume));
            (
                consume,
                synced,
                inner.meta_seq,
                inner.meta_file.clone(),
                inner.epoch,
            )
        };
        let path = meta_path(&self.ctx.config.dir, &self.name);
        let file = match file {
            Some(f) => f,
            None => {
                // Guarded like a segment: a delete of the queue meanwhile
                // must neither pull the file from under glommio's open nor
                // leave a re-created meta file behind with a stale position.
                // (Emptied meanwhile, the queue keeps its meta file.)
                let opened = self
                    .open_guarded(&path, open_rw(&path), |inner| {
                        inner.epoch == epoch || !inner.closed
                    })
                    .await;
                let Some(opened) = opened else {
                    return Ok(());
                };
                let f = Rc::new(opened?);
                sync_dir(&self.ctx.config.dir);
                let mut inner = self.inner.borrow_mut();
                match &inner.meta_file {
                    // Emptied meanwhile, and a later save opened it too.
                    Some(existing) => existing.clone(),
                    None => {
                        inner.meta_file = Some(f.clone());
                        f
                    }
                }
            }
        };
        let mut buf = file.alloc_dma_buffer(META_SLOT);
        let meta = Meta {
            seq,
            consume,
            synced: Some(synced),
        };
        encode_meta(buf.as_bytes_mut(), &meta);
        let slot = (seq % 2) * META_SLOT as u64;
        let r = async {
            let n = file.write_at(buf, slot).await.map_err(describe)?;
            if n < META_SLOT {
                return Err(format!("short write ({n} bytes) to {}", path.display()));
            }
            file.fdatasync().await.map_err(describe)
        }
        .await;
        if let Err(e) = r {
            return Err(StorageError::Failing(e));
        }
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        if inner.epoch == epoch && inner.meta_seq == seq {
            inner.meta_saved = Some(consume);
            inner.saved_end = synced.end;
            self.drop_consumed(inner, consume);
        }
        Ok(())
    }

    fn complete_write(self: &Rc<Self>, job: Job, epoch: u64, result: Result<(), String>) {
        let mut inner = self.inner.borrow_mut();
        if inner.epoch != epoch {
            self.ctx.sub_unwritten(job.buf.len() as u64);
            return;
        }
        inner.in_flight -= 1;
        match result {
            Ok(_) => {
                self.ctx.sub_unwritten(job.buf.len() as u64);
                if job.failed_once {
                    inner.failing_jobs = inner.failing_jobs.saturating_sub(1);
                }
                for t in inner.tickets.iter_mut() {
                    if t.seq == job.seq {
                        t.done = true;
                    }
                }
                while inner.tickets.front().is_some_and(|t| t.done) {
                    if let Some(t) = inner.tickets.pop_front() {
                        inner.done_through = t.seq;
                        if let Some(seg) = inner.segment_mut(t.ord) {
                            seg.written_end = seg.written_end.max(t.end);
                            seg.writes += 1;
                        }
                    }
                }
                if inner.failing_jobs == 0 && inner.retry.is_empty() && inner.failed.is_some() {
                    inner.failed = None;
                    tracing::info!(queue = %self.name, "disk writes work again");
                    self.ctx.health.recover();
                    // A topic stopped handing messages to this channel.
                    self.ctx.refilled(&self.name);
                }
            }
            Err(e) => {
                inner.retry_later(job);
                drop(inner);
                self.fail(e);
            }
        }
        self.progress.notify();
        self.work.notify();
    }

    fn fail(self: &Rc<Self>, err: String) {
        let mut inner = self.inner.borrow_mut();
        if inner.failed.is_none() {
            tracing::error!(queue = %self.name, error = %err, "disk queue failing; retrying");
            self.ctx.health.fail(&err);
            inner.failed = Some(err);
        }
        drop(inner);
        self.progress.notify();
    }

    /// Runs `open` (which opens the file at `path`) while nothing may delete
    /// `path` (`CoreStorage::opening`). None when `still_wanted` says the
    /// file went away meanwhile (its segment consumed, the queue emptied or
    /// deleted): then it is deleted here, once no other open of it is under
    /// way.
    async fn open_guarded<T>(
        &self,
        path: &Path,
        open: impl std::future::Future<Output = T>,
        still_wanted: impl Fn(&Inner) -> bool,
    ) -> Option<T> {
        self.ctx.begin_opening(path);
        let opened = open.await;
        let last = self.ctx.end_opening(path);
        if still_wanted(&self.inner.borrow()) {
            return Some(opened);
        }
        if last {
            remove_file(path);
        }
        None
    }

    /// `open_guarded` for segment `ord` as of `epoch`.
    async fn open_segment<T>(
        &self,
        ord: u64,
        epoch: u64,
        path: &Path,
        open: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        self.open_guarded(path, open, |inner| {
            inner.epoch == epoch && inner.segment(ord).is_some()
        })
        .await
    }

    /// Opens (creating and preallocating as needed) the file a job writes.
    /// None: the segment is gone (consumed and deleted, or the queue was
    /// emptied) and the write is not needed any more.
    async fn file_for_write(
        self: &Rc<Self>,
        ord: u64,
        until: u64,
    ) -> Result<Option<Rc<DmaFile>>, String> {
        let (path, existing, preallocated, epoch, step) = {
            let inner = self.inner.borrow();
            let Some(seg) = inner.segment(ord) else {
                return Ok(None);
            };
            (
                seg.path.clone(),
                seg.file.clone(),
                seg.preallocated,
                inner.epoch,
                inner.prealloc_step,
            )
        };
        let file = match existing {
            Some(f) => f,
            None => {
                let created = self
                    .open_segment(ord, epoch, &path, async {
                        let f = open_rw(&path).await.map_err(|e| e.to_string())?;
                        let mut head = f.alloc_dma_buffer(HEADER_LEN as usize);
                        record::encode_header(head.as_bytes_mut(), ord - OWN_BASE);
                        let n = f.write_at(head, 0).await.map_err(describe)?;
                        if n < HEADER_LEN as usize {
                            return Err(format!("short write to {}", path.display()));
                        }
                        sync_dir(&self.ctx.config.dir);
                        Ok::<_, String>(f)
                    })
                    .await;
                // Consumers may finish a whole segment before its file
                // exists, and /channel/empty or a delete may drop it while
                // it is created; then nothing needs writing.
                let Some(created) = created else {
                    return Ok(None);
                };
                let f = Rc::new(created?);
                if let Some(seg) = self.inner.borrow_mut().segment_mut(ord) {
                    seg.file = Some(f.clone());
                }
                f
            }
        };
        if until > preallocated {
            let want = (until + step).min(self.ctx.config.max_bytes_per_file.max(until));
            let want = align_up(want);
            // Only a speed-up: a failure shows again at the write.
            if file.pre_allocate(want, false).await.is_ok() {
                let mut inner = self.inner.borrow_mut();
                inner.prealloc_step = (step * 2).min(MAX_PREALLOC_STEP);
                if let Some(seg) = inner.segment_mut(ord) {
                    seg.preallocated = want;
                }
            }
        }
        Ok(Some(file))
    }

    /// Reads the next chunk of the backlog into `ready`. Returns false when
    /// there is nothing to read now.
    async fn load(self: &Rc<Self>) -> bool {
        let max_body = self.ctx.config.max_msg_size;
        // Decide what to read.
        let (ord, format, path, file, from, to, limit, epoch) = {
            let mut inner = self.inner.borrow_mut();
            if !inner.wants_more() {
                return false;
            }
            let loaded = inner.loaded;
            let Some(idx) = inner.segments.iter().position(|s| s.ord >= loaded.seg) else {
                return false;
            };
            let seg = &inner.segments[idx];
            if seg.ord > loaded.seg || loaded.off < seg.start {
                inner.loaded = DiskPos {
                    seg: seg.ord,
                    off: seg.start,
                };
                return true;
            }
            if loaded.off >= seg.end && seg.sealed {
                match inner.segments.get(idx + 1) {
                    Some(next) => {
                        inner.loaded = DiskPos {
                            seg: next.ord,
                            off: next.start,
                        };
                        return true;
                    }
                    None => return false,
                }
            }
            let data_end = seg.written_end.min(seg.end);
            if loaded.off >= data_end {
                // Still in memory: write it out and wait for the write.
                if inner.cur.as_ref().is_some_and(|c| c.ord == seg.ord) {
                    inner.seal();
                    drop(inner);
                    self.wake_io();
                }
                return false;
            }
            (
                seg.ord,
                seg.format,
                seg.path.clone(),
                seg.file.clone(),
                loaded.off,
                data_end.min(loaded.off + READ_CHUNK),
                data_end,
                inner.epoch,
            )
        };
        let file = match file {
            Some(f) => f,
            None => match self
                .open_segment(ord, epoch, &path, async { DmaFile::open(&path).await })
                .await
            {
                // Emptied or deleted while opening.
                None => return true,
                Some(Ok(f)) => {
                    let f = Rc::new(f);
                    if let Some(seg) = self.inner.borrow_mut().segment_mut(ord) {
                        if seg.sealed {
                            seg.file = Some(f.clone());
                        }
                    }
                    f
                }
                Some(Err(e)) => {
                    let err = std::io::Error::from(e);
                    if err.kind() == std::io::ErrorKind::NotFound {
                        return self.skip_segment(ord, "file is missing");
                    }
                    tracing::error!(path = %path.display(), error = %err, "cannot open segment; retrying");
                    glommio::timer::sleep(READ_RETRY).await;
                    return true;
                }
            },
        };
        let mut to = to;
        let chunk = loop {
            let read = match file.read_at(from, (to - from) as usize).await {
                Ok(r) => Bytes::copy_from_slice(&r),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "disk queue read failed; retrying");
                    glommio::timer::sleep(READ_RETRY).await;
                    return true;
                }
            };
            // A record longer than the chunk: read it whole.
            if let record::Step::NeedMore = record::step(format, &read, from, from, limit, max_body)
            {
                if to < limit && read.len() as u64 == to - from {
                    to = limit.min(from + (READ_CHUNK.max(max_body) + 64) * 2);
                    continue;
                }
            }
            break read;
        };
        let mut inner = self.inner.borrow_mut();
        if inner.epoch != epoch
            || inner.loaded
                != (DiskPos {
                    seg: ord,
                    off: from,
                })
        {
            return true;
        }
        let mut walker = Walker::new(format, from);
        loop {
            match walker.next(&chunk, from, limit, max_body) {
                Walk::Record { record, at } => {
                    let mut msg = record.msg;
                    if let Some(due) = record.due {
                        // `deferred` counts from the publish time.
                        let delay = due.saturating_sub(msg.timestamp).max(0);
                        msg.deferred = Some(Duration::from_nanos(delay as u64));
                    }
                    inner.ready_bytes += msg.body.len();
                    inner.ready.push_back(Ready {
                        pos: DiskPos { seg: ord, off: at },
                        msg,
                    });
                }
                // Start-up trusts the synced part of the queue (its meta has
                // the depth): damage there shows only now.
                Walk::Damaged { from, to } => report_damage(&self.name, &path, from, to),
                Walk::NeedMore | Walk::End => break,
            }
        }
        let pos = walker.pos();
        if let Some(d) = walker.open_damage().filter(|_| pos >= limit) {
            let rest = chunk.get((d - from) as usize..).unwrap_or_default();
            // Zeros up to the end are padding, not damage.
            if rest.iter().any(|b| *b != 0) {
                report_damage(&self.name, &path, d, limit);
            }
        }
        inner.loaded = DiskPos { seg: ord, off: pos };
        inner.fix_depth_at_tail(&self.name);
        drop(inner);
        self.ctx.refilled(&self.name);
        true
    }

    /// Returns whether the reader moved on.
    fn skip_segment(self: &Rc<Self>, ord: u64, why: &str) -> bool {
        let mut inner = self.inner.borrow_mut();
        tracing::error!(queue = %self.name, segment = ord, why, "corrupt segment skipped");
        let Some(idx) = inner.segments.iter().position(|s| s.ord == ord) else {
            return false;
        };
        let Some(next) = inner.segments.get(idx + 1) else {
            return false;
        };
        inner.loaded = DiskPos {
            seg: next.ord,
            off: next.start,
        };
        true
    }
}

/// The queue's file work: submits sealed buffers, reads the backlog ahead,
/// retries failed writes. Ends when the queue is closed and idle.
async fn io_task(q: Rc<QueueShared>) {
    loop {
        let seen = q.work.generation();
        // Submit sealed buffers.
        loop {
            let job = {
                let mut inner = q.inner.borrow_mut();
                if inner.in_flight >= MAX_WRITES_IN_FLIGHT {
                    None
                } else {
                    inner.jobs.pop_front()
                }
            };
            let Some(job) = job else { break };
            let (epoch, gone) = {
                let inner = q.inner.borrow();
                (inner.epoch, inner.segment(job.ord).is_none())
            };
            if gone {
                // Consumed and deleted before its last write went out.
                q.inner.borrow_mut().in_flight += 1;
                q.complete_write(job, epoch, Ok(()));
                continue;
            }
            let until = job.off + job.buf.len() as u64;
            let file = q.file_for_write(job.ord, until).await;
            if q.inner.borrow().epoch != epoch {
                // Emptied or deleted meanwhile: this write is not wanted.
                q.ctx.sub_unwritten(job.buf.len() as u64);
                continue;
            }
            match file {
                Ok(None) => {
                    q.inner.borrow_mut().in_flight += 1;
                    q.complete_write(job, epoch, Ok(()));
                }
                Ok(Some(file)) => {
                    q.inner.borrow_mut().in_flight += 1;
                    let q2 = q.clone();
                    let inflight = q.inner.borrow().in_flight;
                    glommio::spawn_local(async move {
                        let t0 = std::time::Instant::now();
                        // A short write is a failure too: rewritten whole.
                        let r = match file.write_rc_at(job.buf.clone(), job.off).await {
                            Ok(n) if n >= job.buf.len() => Ok(()),
                            Ok(n) => Err(format!("short write ({n} of {} bytes)", job.buf.len())),
                            Err(e) => Err(describe(e)),
                        };
                        tracing::trace!(
                            len = job.buf.len(),
                            off = job.off,
                            inflight,
                            us = t0.elapsed().as_micros() as u64,
                            "write done"
                        );
                        q2.complete_write(job, epoch, r);
                    })
                    .detach();
                }
                Err(e) => {
                    let mut inner = q.inner.borrow_mut();
                    if inner.epoch == epoch {
                        inner.retry_later(job);
                        drop(inner);
                        q.fail(e);
                    }
                    break;
                }
            }
        }
        // Read ahead.
        let wants_read = {
            let inner = q.inner.borrow();
            inner.wants_more() && !inner.closed
        };
        if wants_read {
            q.inner.borrow_mut().reading = true;
            let progressed = q.load().await;
            q.inner.borrow_mut().reading = false;
            if progressed {
                continue;
            }
        }
        let (retry, idle_closed) = {
            let inner = q.inner.borrow();
            (
                !inner.retry.is_empty(),
                inner.closed && inner.jobs.is_empty() && inner.in_flight == 0,
            )
        };
        if idle_closed {
            break;
        }
        if retry {
            glommio::timer::sleep(RETRY_EVERY).await;
            let mut inner = q.inner.borrow_mut();
            let retry: Vec<Job> = inner.retry.drain(..).collect();
            for job in retry.into_iter().rev() {
                inner.jobs.push_front(job);
            }
            continue;
        }
        // Wait for news; a write waiting on its data also wakes us.
        let wait_write = {
            let inner = q.inner.borrow();
            inner.wants_more()
        };
        if wait_write {
            let pseen = q.progress.generation();
            futures_lite::future::or(q.work.changed(seen), q.progress.changed(pseen)).await;
        } else {
            q.work.changed(seen).await;
        }
    }
    q.task_running.set(false);
}

fn report_damage(queue: &str, path: &Path, from: u64, to: u64) {
    tracing::warn!(queue, path = %path.display(), offset = from, skipped = to - from, "corrupt records skipped");
}

/// Makes a new file's directory entry durable (a crash must not lose the
/// file itself). Rare: once per segment and meta file.
fn sync_dir(dir: &Path) {
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync the data directory");
    }
}

/// Closes a file asynchronously once its last user lets go.
fn close_later(file: Option<Rc<DmaFile>>) {
    if let Some(f) = file {
        glommio::spawn_local(async move {
            let _ = f.close_rc().await;
        })
        .detach();
    }
}

/// "write <path>: <os error>", the way Go (and so nsqd) words I/O errors.
fn describe(e: glommio::GlommioError<()>) -> String {
    match e {
        glommio::GlommioError::EnhancedIoError {
            source, op, path, ..
        } => match path {
            Some(p) => format!("{} {}: {source}", op.to_lowercase(), p.display()),
            None => format!("{}: {source}", op.to_lowercase()),
        },
        other => other.to_string(),
    }
}

async fn open_rw(path: &Path) -> Result<DmaFile, StorageError> {
    // Read+write: glommio probes iopoll with a read (glommio-notes).
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .map_err(|e| StorageError::io("opening", path, e.into()))
}

pub(super) fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove file");
        }
    }
}

/// The number of the next new segment: past the last file on disk and past
/// the saved consume position, even when every file before it is gone (or
/// the next start would take the new segments for consumed).
pub(super) fn next_number(last_file: Option<u64>, saved: Option<(u64, DiskPos)>) -> u64 {
    let after_file = last_file.map_or(1, |n| n + 1);
    match saved {
        Some((_, pos)) if pos.seg >= OWN_BASE => after_file.max(pos.seg - OWN_BASE + 1),
        _ => after_file,
    }
}

/// The consume position saved in the queue's meta file, if any.
pub fn saved_position(dir: &Path, name: &str) -> Option<DiskPos> {
    read_meta(&meta_path(dir, name)).map(|(_, pos)| pos)
}

/// Whether ringsq has any file of its own for the queue (meta or segment).
pub fn has_own_files(dir: &Path, name: &str) -> Result<bool, StorageError> {
    Ok(meta_path(dir, name).exists() || !own_segments(dir, name)?.is_empty())
}

/// This queue's own segment files, by number.
pub(super) fn own_segments(dir: &Path, name: &str) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    numbered_files(dir, &format!("{name}.ringsq."))
}

/// The files `<prefix>NNNNNN.dat` (six digits or more) in `dir`, by number:
/// ringsq's segments and nsqd's diskqueue files are both named so.
pub(super) fn numbered_files(
    dir: &Path,
    prefix: &str,
) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("listing", dir, e))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(num) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|r| r.strip_suffix(".dat"))
        else {
            continue;
        };
        if num.len() >= 6 && num.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(num) = num.parse() {
                out.push((num, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(super) fn read_header(path: &Path) -> Result<u64, String> {
    let mut head = [0u8; HEADER_LEN as usize];
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    f.read_exact(&mut head).map_err(|e| e.to_string())?;
    record::check_header(&head).map_err(|e| e.to_string())
}

pub struct Scan {
    pub records: u64,
    /// End of the last valid record.
    pub end: u64,
    /// Damaged ranges skipped, and their bytes.
    pub damaged: u64,
    pub damaged_bytes: u64,
}

/// Walks a segment's records from `start` (start-up), logging damage.
pub fn scan_segment(
    path: &Path,
    format: Format,
    start: u64,
    len: u64,
    max_body: u64,
) -> std::io::Result<Scan> {
    walk_segment(path, format, start, len, max_body, |_| Ok(()))
}

/// Walks a segment's records from `start`, handing each to `each`, skipping
/// and logging damage as the reader does.
pub fn walk_segment(
    path: &Path,
    format: Format,
    start: u64,
    len: u64,
    max_body: u64,
    mut each: impl FnMut(record::Record) -> std::io::Result<()>,
) -> std::io::Result<Scan> {
    let file = std::fs::File::open(path)?;
    let mut scan = Scan {
        records: 0,
        end: start,
        damaged: 0,
        damaged_bytes: 0,
    };
    let mut walker = Walker::new(format, start);
    let mut chunk_off = start;
    let mut chunk = Bytes::new();
    let report = |scan: &mut Scan, from: u64, to: u64| {
        scan.damaged += 1;
        scan.damaged_bytes += to - from;
        tracing::warn!(path = %path.display(), offset = from, skipped = to - from, "corrupt records skipped");
    };
    loop {
        match walker.next(&chunk, chunk_off, len, max_body) {
            Walk::Record { record, .. } => {
                scan.records += 1;
                scan.end = walker.pos();
                each(record)?;
            }
            Walk::Damaged { from, to } => report(&mut scan, from, to),
            Walk::End => break,
            Walk::NeedMore => {
                let pos = walker.pos();
                let want = (len - pos).min((4 << 20).max(max_body + 64));
                let mut buf = vec![0u8; want as usize];
                let n = read_full_at(&file, &mut buf, pos)?;
                let chunk_end = chunk_off + chunk.len() as u64;
                if n == 0 || (pos >= chunk_off && (n as u64) <= chunk_end.saturating_sub(pos)) {
                    // No progress possible: the file is shorter than it said.
                    walker.skip_damaged(len);
                    break;
                }
                buf.truncate(n);
                chunk = Bytes::from(buf);
                chunk_off = pos;
            }
        }
    }
    if let Some(d) = walker.open_damage() {
        // Zeros up to the end are preallocated space, not damage.
        if !tail_is_zero(&file, d, len)? {
            report(&mut scan, d, len);
        }
    }
    Ok(scan)
}

fn read_full_at(file: &std::fs::File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], pos + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn tail_is_zero(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < to {
        let want = ((to - pos) as usize).min(buf.len());
        let n = read_full_at(file, &mut buf[..want], pos)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// Meta file format 1: the consume position only (start-up scans the rest).
const META_MAGIC_V1: &[u8; 8] = b"RSQMETA1";
/// Format 2 adds the depth and the synced end it counts up to.
const META_MAGIC: &[u8; 8] = b"RSQMETA2";

/// Each of the meta file's two slots is one file-system block.
const META_SLOT: usize = 4096;

/// What one meta slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Slots alternate by sequence; the newest valid one counts.
    pub seq: u64,
    /// The oldest record not yet consumed (finished).
    pub consume: DiskPos,
    /// None in a format-1 file.
    pub synced: Option<Synced>,
}

/// What was on disk (written and fdatasynced) when the meta was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Records in [consume, end).
    pub depth: u64,
    /// End of the synced data; records appended later start here or in a
    /// later segment.
    pub end: DiskPos,
}

/// One of the meta file's two slots (written alternately, so a
/// torn write leaves the other one valid).
pub fn encode_meta(out: &mut [u8], meta: &Meta) {
    out.fill(0);
    let synced = meta.synced.unwrap_or(Synced {
        depth: 0,
        end: meta.consume,
    });
    out[..8].copy_from_slice(META_MAGIC);
    out[8..16].copy_from_slice(&meta.seq.to_le_bytes());
    out[16..24].copy_from_slice(&meta.consume.seg.to_le_bytes());
    out[24..32].copy_from_slice(&meta.consume.off.to_le_bytes());
    out[32..40].copy_from_slice(&synced.depth.to_le_bytes());
    out[40..48].copy_from_slice(&synced.end.seg.to_le_bytes());
    out[48..56].copy_from_slice(&synced.end.off.to_le_bytes());
    let crc = crc32fast::hash(&out[..56]);
    out[56..60].copy_from_slice(&crc.to_le_bytes());
}

/// A slot of either format; None when torn, damaged or empty.
pub fn decode_meta(slot: &[u8]) -> Option<Meta> {
    let n = |r: std::ops::Range<usize>| u64::from_le_bytes(slot[r].try_into().unwrap_or_default());
    let (crc_at, v2) = match slot.get(..8)? {
        m if m == META_MAGIC_V1 => (32, false),
        m if m == META_MAGIC => (56, true),
        _ => return None,
    };
    let crc = u32::from_le_bytes(slot.get(crc_at..crc_at + 4)?.try_into().ok()?);
    if crc != crc32fast::hash(&slot[..crc_at]) {
        return None;
    }
    Some(Meta {
        seq: n(8..16),
        consume: DiskPos {
            seg: n(16..24),
            off: n(24..32),
        },
        synced: v2.then(|| Synced {
            depth: n(32..40),
            end: DiskPos {
                seg: n(40..48),
                off: n(48..56),
            },
        }),
    })
}

/// The newest valid slot of a meta file's bytes.
fn pick_meta(path: &Path, data: &[u8]) -> Option<Meta> {
    let a = decode_meta(data.get(..META_SLOT).unwrap_or(&[]));
    let b = decode_meta(data.get(META_SLOT..2 * META_SLOT).unwrap_or(&[]));
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.seq >= b.seq { a } else { b }),
        (Some(x), None) | (None, Some(x)) => Some(x),
        (None, None) => {
            tracing::warn!(path = %path.display(), "corrupt meta file; reading the queue from its start");
            None
        }
    }
}

/// The saved meta, if any (blocking: start-up's pool thread, offline tools).
pub fn read_meta_full(path: &Path) -> Option<Meta> {
    let data = std::fs::read(path).ok()?;
    pick_meta(path, &data)
}

/// The saved consume position and its sequence number, if any.
pub fn read_meta(path: &Path) -> Option<(u64, DiskPos)> {
    read_meta_full(path).map(|m| (m.seq, m.consume))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: u64, seg: u64, off: u64, depth: u64) -> Meta {
        Meta {
            seq,
            consume: DiskPos { seg, off },
            synced: Some(Synced {
                depth,
                end: DiskPos {
                    seg: seg + 1,
                    off: 8192,
                },
            }),
        }
    }

    #[test]
    fn meta_slots_round_trip_and_newest_wins() {
        let mut a = [0u8; META_SLOT];
        let mut b = [0u8; META_SLOT];
        encode_meta(&mut a, &meta(4, 1, 600, 7));
        encode_meta(&mut b, &meta(5, 2, 512, 3));
        let dir = std::env::temp_dir().join(format!("ringsq-meta-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("t.ringsq.meta.dat");
        let mut data = a.to_vec();
        data.extend_from_slice(&b);
        std::fs::write(&path, &data).unwrap();
        assert_eq!(read_meta_full(&path), Some(meta(5, 2, 512, 3)));
        assert_eq!(read_meta(&path), Some((5, DiskPos { seg: 2, off: 512 })));
        data[META_SLOT + 20] ^= 1; // torn newer slot: the older one counts
        std::fs::write(&path, &data).unwrap();
        assert_eq!(read_meta_full(&path), Some(meta(4, 1, 600, 7)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn format_1_slots_still_read_without_a_depth() {
        let mut slot = [0u8; META_SLOT];
        slot[..8].copy_from_slice(b"RSQMETA1");
        slot[8..16].copy_from_slice(&9u64.to_le_bytes());
        slot[16..24].copy_from_slice(&(OWN_BASE + 3).to_le_bytes());
        slot[24..32].copy_from_slice(&4096u64.to_le_bytes());
        let crc = crc32fast::hash(&slot[..32]);
        slot[32..36].copy_from_slice(&crc.to_le_bytes());
        let m = decode_meta(&slot).unwrap();
        assert_eq!(m.seq, 9);
        assert_eq!(
            m.consume,
            DiskPos {
                seg: OWN_BASE + 3,
                off: 4096
            }
        );
        assert_eq!(m.synced, None);
        slot[30] ^= 1;
        assert_eq!(decode_meta(&slot), None);
    }
}
