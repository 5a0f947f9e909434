//! The append pipeline's state: records are encoded into the current DMA
//! buffer; a full buffer, or one a sync needs now, is sealed (padded to its
//! 4 KiB block, so no two writes ever touch the same block) and queued as a
//! write job with a ticket; tickets complete in order, so "every write up to
//! N is done" is one number. The io side (`write_io`) runs the jobs.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::DmaBuffer;

use super::files::{segment_path, OWN_BASE};
use super::segments::{Segment, Segments};
use crate::protocol::Message;
use crate::storage::record::{self, align_up, DiskPos, HEADER_LEN};
use crate::storage::StorageError;

/// Write buffers grow (to the max) while they fill up before being sealed
/// and shrink when syncs seal them mostly empty: a busy queue writes 2 MiB
/// at a time, an idle one holds little memory. Bigger records get a buffer
/// of their own.
pub(super) const MIN_WRITE_BUF: usize = 128 << 10;
pub(super) const MAX_WRITE_BUF: usize = 2 << 20;
pub(super) const MAX_WRITES_IN_FLIGHT: usize = 8;
/// Segment files grow by this much at a time (ext4 serialises writes that
/// extend a file; preallocated ones run in parallel), doubling for a busy
/// queue (each fallocate waits for the writes in flight) up to the max.
pub(super) const PREALLOC_STEP: u64 = 8 << 20;
pub(super) const MAX_PREALLOC_STEP: u64 = 64 << 20;

struct WriteBuf {
    ord: u64,
    file_off: u64,
    buf: DmaBuffer,
    len: usize,
}

/// A sealed buffer to write at `off` of segment `ord`.
pub(super) struct Job {
    pub seq: u64,
    pub ord: u64,
    pub off: u64,
    pub buf: Rc<DmaBuffer>,
    /// Counted in `failing_jobs` until it succeeds.
    failed_once: bool,
}

struct Ticket {
    seq: u64,
    ord: u64,
    end: u64,
    done: bool,
}

/// An end that moved: where the data appended so far ended before, and
/// where it ends now (the reader follows it when it had caught up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EndMoved {
    pub old: DiskPos,
    pub new: DiskPos,
}

pub(super) struct Writer {
    /// Logical end: where the next record goes (None before the first put).
    write: Option<DiskPos>,
    cur: Option<WriteBuf>,
    jobs: VecDeque<Job>,
    retry: VecDeque<Job>,
    tickets: VecDeque<Ticket>,
    next_seq: u64,
    /// Every write up to this sequence number has completed.
    pub done_through: u64,
    pub in_flight: usize,
    failing_jobs: usize,
    pub failed: Option<StorageError>,
    /// Sealed bytes not yet handed to CoreStorage's unwritten count.
    unwritten: u64,
    /// Size of the next write buffer (adapts, see MIN_WRITE_BUF).
    buf_size: usize,
    /// Next preallocation step (adapts, see PREALLOC_STEP).
    pub prealloc_step: u64,
    /// The number of the next own segment file.
    pub next_own: u64,
}

impl Writer {
    pub fn new(next_own: u64) -> Writer {
        Writer {
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
            unwritten: 0,
            buf_size: 2 * MIN_WRITE_BUF,
            prealloc_step: PREALLOC_STEP,
            next_own,
        }
    }

    /// Where the next record will be written.
    pub fn end(&self, segs: &Segments) -> DiskPos {
        match self.write {
            Some(w) => w,
            None => segs.back().map(Segment::end_pos).unwrap_or_default(),
        }
    }

    /// The sequence number of the last write queued.
    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether a record of `len` bytes must start a new segment (D6: before
    /// one that would pass --max-bytes-per-file).
    pub fn needs_roll(&self, len: usize, max_bytes: u64) -> bool {
        match self.write {
            None => true,
            Some(w) => w.off > HEADER_LEN && w.off + len as u64 > max_bytes,
        }
    }

    pub fn has_buffer(&self) -> bool {
        self.cur.is_some()
    }

    /// The current buffer is in segment `ord` (data the reader must wait for).
    pub fn buffers_segment(&self, ord: u64) -> bool {
        self.cur.as_ref().is_some_and(|c| c.ord == ord)
    }

    /// A record of `len` bytes does not fit the current buffer.
    pub fn buffer_full_for(&self, len: usize) -> bool {
        self.cur.as_ref().is_some_and(|c| c.len + len > c.buf.len())
    }

    /// Seals the current buffer: pads it to the block and queues its write.
    pub fn seal(&mut self, segs: &mut Segments) -> Option<EndMoved> {
        let mut cur = self.cur.take()?;
        if cur.len == 0 {
            return None;
        }
        self.adapt_buf_size(cur.len, cur.buf.len());
        let padded = align_up(cur.len as u64) as usize;
        cur.buf.as_bytes_mut()[cur.len..padded].fill(0);
        cur.buf.trim_to_size(padded);
        let end = cur.file_off + padded as u64;
        let old = self.end(segs);
        let new = DiskPos {
            seg: cur.ord,
            off: end,
        };
        self.write = Some(new);
        if let Some(seg) = segs.get_mut(cur.ord) {
            seg.end = end;
        }
        self.queue_job(cur, end, padded);
        Some(EndMoved { old, new })
    }

    fn adapt_buf_size(&mut self, len: usize, cap: usize) {
        if len * 4 >= cap * 3 {
            self.buf_size = (cap * 2).clamp(MIN_WRITE_BUF, MAX_WRITE_BUF);
        } else if len * 4 < cap {
            self.buf_size = (self.buf_size / 2).max(MIN_WRITE_BUF);
        }
    }

    fn queue_job(&mut self, cur: WriteBuf, end: u64, padded: usize) {
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

    /// Ends the write segment (sealed first by the caller) and starts the
    /// next one. `busy`: paths still being opened or removed for an earlier
    /// life of this queue (emptied, or deleted and re-created); their
    /// numbers are skipped.
    pub fn roll(
        &mut self,
        segs: &mut Segments,
        dir: &Path,
        name: &str,
        busy: impl Fn(&Path) -> bool,
    ) -> EndMoved {
        let old = self.end(segs);
        if let Some(seg) = self.write.and_then(|w| segs.get_mut(w.seg)) {
            seg.sealed = true;
        }
        let (num, path) = self.free_number(dir, name, busy);
        let ord = OWN_BASE + num;
        segs.push(Segment::fresh(ord, path));
        let new = DiskPos {
            seg: ord,
            off: HEADER_LEN,
        };
        self.write = Some(new);
        EndMoved { old, new }
    }

    fn free_number(
        &mut self,
        dir: &Path,
        name: &str,
        busy: impl Fn(&Path) -> bool,
    ) -> (u64, PathBuf) {
        loop {
            let num = self.next_own;
            self.next_own += 1;
            let path = segment_path(dir, name, num);
            if !busy(&path) {
                return (num, path);
            }
        }
    }

    /// Encodes a record of `len` bytes at the end; returns where it went
    /// and where the next one goes.
    pub fn encode(
        &mut self,
        segs: &mut Segments,
        msg: &Message,
        due: Option<i64>,
        len: usize,
    ) -> EndMoved {
        let w = self.write.unwrap_or_default();
        let buf_size = self.buf_size;
        let cur = self.cur.get_or_insert_with(|| WriteBuf {
            ord: w.seg,
            file_off: w.off,
            buf: glommio::allocate_dma_buffer(buf_size.max(align_up(len as u64) as usize)),
            len: 0,
        });
        let at = cur.len;
        record::encode(&mut cur.buf.as_bytes_mut()[at..], msg, due);
        cur.len += len;
        let next = DiskPos {
            seg: w.seg,
            off: w.off + len as u64,
        };
        self.write = Some(next);
        if let Some(seg) = segs.get_mut(w.seg) {
            seg.end = next.off;
        }
        EndMoved { old: w, new: next }
    }

    /// The next job to submit, if fewer than the max are in flight.
    pub fn next_job(&mut self) -> Option<Job> {
        if self.in_flight >= MAX_WRITES_IN_FLIGHT {
            return None;
        }
        self.jobs.pop_front()
    }

    /// Keeps a failed write for the retry, counted until it succeeds.
    pub fn retry_later(&mut self, mut job: Job) {
        if !job.failed_once {
            job.failed_once = true;
            self.failing_jobs += 1;
        }
        self.retry.push_back(job);
    }

    pub fn has_retries(&self) -> bool {
        !self.retry.is_empty()
    }

    /// The retry interval passed: failed writes go first again.
    pub fn requeue_retries(&mut self) {
        while let Some(job) = self.retry.pop_back() {
            self.jobs.push_front(job);
        }
    }

    /// Nothing queued or in flight.
    pub fn idle(&self) -> bool {
        self.jobs.is_empty() && self.in_flight == 0
    }

    pub fn jobs_queued(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Bytes of every write queued or waiting for a retry.
    pub fn queued_bytes(&self) -> u64 {
        self.jobs
            .iter()
            .chain(self.retry.iter())
            .map(|j| j.buf.len() as u64)
            .sum()
    }

    /// Sealed bytes not yet counted in the core's unwritten total.
    pub fn take_unwritten(&mut self) -> u64 {
        std::mem::take(&mut self.unwritten)
    }

    pub fn unwritten(&self) -> u64 {
        self.unwritten
    }

    /// A write completed: its ticket is done, and every ticket before it
    /// that is done too moves `done_through` and its segment's written end.
    /// Returns true when this ends a failure (nothing failing is left).
    pub fn write_done(&mut self, job: &Job, segs: &mut Segments) -> bool {
        if job.failed_once {
            self.failing_jobs = self.failing_jobs.saturating_sub(1);
        }
        for t in self.tickets.iter_mut().filter(|t| t.seq == job.seq) {
            t.done = true;
        }
        while let Some(t) = self.tickets.pop_front() {
            if !t.done {
                self.tickets.push_front(t);
                break;
            }
            self.done_through = t.seq;
            if let Some(seg) = segs.get_mut(t.ord) {
                seg.written_end = seg.written_end.max(t.end);
                seg.writes += 1;
            }
        }
        let recovered = self.failing_jobs == 0 && self.retry.is_empty() && self.failed.is_some();
        if recovered {
            self.failed = None;
        }
        recovered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record::Format;

    fn msg(body: &[u8]) -> Message {
        Message::new(
            crate::protocol::MessageId(*b"0123456789abcdef"),
            0,
            bytes::Bytes::copy_from_slice(body),
        )
    }

    fn on_glommio(f: impl FnOnce() + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { f() })
            .expect("executor")
            .join()
            .expect("join");
    }

    fn rolled() -> (Writer, Segments) {
        let mut w = Writer::new(7);
        let mut segs = Segments::default();
        let moved = w.roll(&mut segs, Path::new("/d"), "t", |_| false);
        assert_eq!(
            moved.new,
            DiskPos {
                seg: OWN_BASE + 7,
                off: HEADER_LEN
            }
        );
        (w, segs)
    }

    #[test]
    fn a_roll_skips_busy_numbers_and_seals_the_old_segment() {
        let (mut w, mut segs) = rolled();
        let busy = segment_path(Path::new("/d"), "t", 8);
        let moved = w.roll(&mut segs, Path::new("/d"), "t", |p| p == busy);
        assert_eq!(
            moved.old,
            DiskPos {
                seg: OWN_BASE + 7,
                off: HEADER_LEN
            }
        );
        assert_eq!(moved.new.seg, OWN_BASE + 9);
        assert!(segs.get(OWN_BASE + 7).is_some_and(|s| s.sealed));
        assert!(segs
            .get(OWN_BASE + 9)
            .is_some_and(|s| !s.sealed && s.format == Format::Ringsq));
        assert_eq!(w.next_own, 10);
    }

    #[test]
    fn sealing_pads_to_the_block_and_tickets_complete_in_order() {
        on_glommio(|| {
            let (mut w, mut segs) = rolled();
            let m = msg(b"hello");
            let len = record::encoded_len(&m, None);
            let at = w.encode(&mut segs, &m, None, len);
            assert_eq!(at.new.off, HEADER_LEN + len as u64);
            let first = w.seal(&mut segs).expect("sealed");
            assert_eq!(first.new.off, align_up(HEADER_LEN + len as u64));
            assert_eq!(first.new.off % 4096, 0);
            w.encode(&mut segs, &m, None, len);
            w.seal(&mut segs).expect("sealed");
            assert!(w.seal(&mut segs).is_none(), "nothing left to seal");
            let (a, b) = (w.next_job().expect("job 1"), w.next_job().expect("job 2"));
            assert_eq!((a.off, b.off), (HEADER_LEN, first.new.off));
            assert_eq!(w.unwritten(), 2 * 4096);
            // The second write finishing first moves nothing yet.
            assert!(!w.write_done(&b, &mut segs));
            assert_eq!(w.done_through, 0);
            w.write_done(&a, &mut segs);
            assert_eq!(w.done_through, 2);
            let seg = segs.get(OWN_BASE + 7).expect("segment");
            assert_eq!((seg.writes, seg.written_end), (2, HEADER_LEN + 2 * 4096));
        });
    }

    #[test]
    fn a_failure_ends_once_every_failed_write_succeeded() {
        on_glommio(|| {
            let (mut w, mut segs) = rolled();
            let m = msg(b"x");
            let len = record::encoded_len(&m, None);
            w.encode(&mut segs, &m, None, len);
            w.seal(&mut segs);
            let job = w.next_job().expect("job");
            w.failed = Some(StorageError::Exiting);
            w.retry_later(job);
            assert!(w.next_job().is_none(), "a failed job waits for the retry");
            assert!(w.has_retries());
            w.requeue_retries();
            let job = w.next_job().expect("retried");
            assert!(w.write_done(&job, &mut segs), "recovered");
            assert!(w.failed.is_none());
            assert_eq!(w.done_through, 1);
        });
    }

    #[test]
    fn buffers_grow_when_full_and_shrink_when_mostly_empty() {
        let mut w = Writer::new(1);
        w.adapt_buf_size(MIN_WRITE_BUF, MIN_WRITE_BUF);
        assert_eq!(w.buf_size, 2 * MIN_WRITE_BUF);
        w.adapt_buf_size(MAX_WRITE_BUF, MAX_WRITE_BUF);
        assert_eq!(w.buf_size, MAX_WRITE_BUF);
        w.adapt_buf_size(10, MAX_WRITE_BUF);
        assert_eq!(w.buf_size, MAX_WRITE_BUF / 2);
        for _ in 0..10 {
            w.adapt_buf_size(10, MAX_WRITE_BUF);
        }
        assert_eq!(w.buf_size, MIN_WRITE_BUF);
    }
}
