//! Read-ahead: the messages loaded and not popped yet (`ready`), and the
//! position the reader loads next. While the reader has caught up, new
//! messages go to `ready` as they are appended, so a consumer that keeps up
//! never reads the file; a backlog is read back in 1 MiB chunks.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::io::DmaFile;

use super::writer::EndMoved;
use super::QueueShared;
use crate::protocol::Message;
use crate::storage::record::{self, DiskPos, Format, Walk, Walker};

const READ_CHUNK: u64 = 1 << 20;
/// The io task reads more once `ready` holds fewer messages than this.
const READY_LOW: usize = 4096;
const READY_LOW_BYTES: usize = 1 << 20;
/// New messages go to `ready` too while it is below these.
const READY_CAP: usize = 8192;
const READY_CAP_BYTES: usize = 4 << 20;
const READ_RETRY: Duration = Duration::from_millis(50);

pub(super) struct Ready {
    pub pos: DiskPos,
    pub msg: Message,
}

pub(super) struct ReadAhead {
    ready: VecDeque<Ready>,
    ready_bytes: usize,
    /// The next record not in `ready` (what the reader loads next).
    pub loaded: DiskPos,
    /// The io task is reading now.
    pub reading: bool,
}

impl ReadAhead {
    pub fn new(start: DiskPos) -> ReadAhead {
        ReadAhead {
            ready: VecDeque::new(),
            ready_bytes: 0,
            loaded: start,
            reading: false,
        }
    }

    /// Below the read-ahead mark with more on disk before `end`.
    pub fn wants_more(&self, end: DiskPos) -> bool {
        self.ready.len() < READY_LOW && self.ready_bytes < READY_LOW_BYTES && self.loaded < end
    }

    /// Everything up to `end` was handed out.
    pub fn drained_to(&self, end: DiskPos) -> bool {
        self.ready.is_empty() && self.loaded >= end
    }

    /// The position of the next message to hand out.
    pub fn next_pos(&self) -> DiskPos {
        self.ready.front().map(|r| r.pos).unwrap_or(self.loaded)
    }

    pub fn pop(&mut self) -> Option<Ready> {
        let r = self.ready.pop_front()?;
        self.ready_bytes = self.ready_bytes.saturating_sub(r.msg.body.len());
        Some(r)
    }

    fn push(&mut self, pos: DiskPos, msg: Message) {
        self.ready_bytes += msg.body.len();
        self.ready.push_back(Ready { pos, msg });
    }

    /// A message appended at `at.old`: kept in memory too if the reader is
    /// there and `ready` has room.
    pub fn offer(&mut self, at: EndMoved, msg: &Message) {
        if self.loaded == at.old
            && self.ready.len() < READY_CAP
            && self.ready_bytes < READY_CAP_BYTES
        {
            self.push(at.old, msg.clone());
            self.loaded = at.new;
        }
    }

    /// The end moved (a seal's padding, a roll): a reader at the old end
    /// has caught up with the new one.
    pub fn follow(&mut self, moved: EndMoved) {
        if self.loaded == moved.old {
            self.loaded = moved.new;
        }
    }
}

/// What the reader does next.
enum Next {
    /// Nothing to read now.
    Wait,
    /// The reader moved (to a segment's start): look again.
    Moved,
    Read(Chunk),
}

/// A range of a segment to read.
struct Chunk {
    ord: u64,
    format: Format,
    path: PathBuf,
    file: Option<Rc<DmaFile>>,
    from: u64,
    to: u64,
    /// The end of the data written so far (what a record may span to).
    limit: u64,
    epoch: u64,
}

impl QueueShared {
    /// Reads ahead if `ready` is low; true when it made progress.
    pub(super) async fn read_ahead(self: &Rc<Self>) -> bool {
        let wants = {
            let inner = self.inner.borrow();
            inner.wants_more() && !inner.closed
        };
        if !wants {
            return false;
        }
        self.inner.borrow_mut().read.reading = true;
        let progressed = self.load().await;
        self.inner.borrow_mut().read.reading = false;
        progressed
    }

    /// Reads the next chunk of the backlog into `ready`. Returns false when
    /// there is nothing to read now.
    async fn load(self: &Rc<Self>) -> bool {
        let chunk = match self.next_chunk() {
            Next::Wait => return false,
            Next::Moved => return true,
            Next::Read(c) => c,
        };
        let file = match self.file_for_read(&chunk).await {
            Ok(f) => f,
            Err(progressed) => return progressed,
        };
        let Some((data, limit)) = self.read_chunk(&file, &chunk).await else {
            return true;
        };
        self.take_records(&chunk, &data, limit);
        true
    }

    /// Decides what to read, moving the reader across segment boundaries.
    fn next_chunk(self: &Rc<Self>) -> Next {
        let mut inner = self.inner.borrow_mut();
        if !inner.wants_more() {
            return Next::Wait;
        }
        let loaded = inner.read.loaded;
        let Some((idx, seg)) = inner.segments.at_or_after(loaded.seg) else {
            return Next::Wait;
        };
        if seg.ord > loaded.seg || loaded.off < seg.start {
            inner.read.loaded = seg.start_pos();
            return Next::Moved;
        }
        if loaded.off >= seg.end && seg.sealed {
            let Some(next) = inner.segments.index(idx + 1).map(|s| s.start_pos()) else {
                return Next::Wait;
            };
            inner.read.loaded = next;
            return Next::Moved;
        }
        let data_end = seg.written_end.min(seg.end);
        if loaded.off >= data_end {
            // Still in memory: write it out and wait for the write.
            if inner.writer.buffers_segment(seg.ord) {
                inner.seal();
                drop(inner);
                self.wake_io();
            }
            return Next::Wait;
        }
        Next::Read(Chunk {
            ord: seg.ord,
            format: seg.format,
            path: seg.path.clone(),
            file: seg.file.clone(),
            from: loaded.off,
            to: data_end.min(loaded.off + READ_CHUNK),
            limit: data_end,
            epoch: inner.epoch,
        })
    }

    /// The chunk's file, opened if needed. Err(whether the reader may try
    /// again now): emptied or deleted while opening, a missing file skipped
    /// (or not, when it is the last), an error retried after a pause.
    async fn file_for_read(self: &Rc<Self>, c: &Chunk) -> Result<Rc<DmaFile>, bool> {
        if let Some(f) = &c.file {
            return Ok(f.clone());
        }
        let opened = self
            .open_segment(c.ord, c.epoch, &c.path, async {
                DmaFile::open(&c.path).await
            })
            .await
            .ok_or(true)?;
        match opened {
            Ok(f) => {
                let f = Rc::new(f);
                if let Some(seg) = self.inner.borrow_mut().segments.get_mut(c.ord) {
                    if seg.sealed {
                        seg.file = Some(f.clone());
                    }
                }
                Ok(f)
            }
            Err(e) => {
                let err = std::io::Error::from(e);
                if err.kind() == std::io::ErrorKind::NotFound {
                    return Err(self.skip_segment(c.ord, "file is missing"));
                }
                tracing::error!(path = %c.path.display(), error = %err, "cannot open segment; retrying");
                glommio::timer::sleep(READ_RETRY).await;
                Err(true)
            }
        }
    }

    /// Reads the chunk, longer when a record does not fit it. None after a
    /// read error (retried) or when the queue changed meanwhile.
    async fn read_chunk(&self, file: &DmaFile, c: &Chunk) -> Option<(Bytes, u64)> {
        let max_body = self.ctx.config.max_msg_size;
        let mut to = c.to;
        let data = loop {
            let read = match file.read_at(c.from, (to - c.from) as usize).await {
                Ok(r) => Bytes::copy_from_slice(&r),
                Err(e) => {
                    tracing::error!(path = %c.path.display(), error = %e, "disk queue read failed; retrying");
                    glommio::timer::sleep(READ_RETRY).await;
                    return None;
                }
            };
            // A record longer than the chunk: read it whole.
            let step = record::step(c.format, &read, c.from, c.from, c.limit, max_body);
            if let record::Step::NeedMore = step {
                if to < c.limit && read.len() as u64 == to - c.from {
                    to = c.limit.min(c.from + (READ_CHUNK.max(max_body) + 64) * 2);
                    continue;
                }
            }
            break read;
        };
        let inner = self.inner.borrow();
        let here = DiskPos {
            seg: c.ord,
            off: c.from,
        };
        (inner.epoch == c.epoch && inner.read.loaded == here).then_some((data, c.limit))
    }

    /// Walks the chunk's records into `ready`, damage skipped and logged.
    fn take_records(self: &Rc<Self>, c: &Chunk, data: &Bytes, limit: u64) {
        let max_body = self.ctx.config.max_msg_size;
        let mut inner = self.inner.borrow_mut();
        let mut walker = Walker::new(c.format, c.from);
        loop {
            match walker.next(data, c.from, limit, max_body) {
                Walk::Record { record, at } => {
                    let pos = DiskPos {
                        seg: c.ord,
                        off: at,
                    };
                    inner.read.push(pos, message_of(record));
                }
                // Start-up trusts the synced part of the queue (its meta has
                // the depth): damage there shows only now.
                Walk::Damaged { from, to } => {
                    super::recovery::report_damage(&self.name, &c.path, from, to)
                }
                Walk::NeedMore | Walk::End => break,
            }
        }
        let pos = walker.pos();
        if let Some(d) = walker.open_damage().filter(|_| pos >= limit) {
            super::recovery::report_open_damage(&self.name, &c.path, data, c.from, d, limit);
        }
        inner.read.loaded = DiskPos {
            seg: c.ord,
            off: pos,
        };
        inner.fix_depth_at_tail(&self.name);
        drop(inner);
        self.ctx.refilled(&self.name);
    }
}

/// A record as a message; `deferred` counts from the publish time.
fn message_of(record: record::Record) -> Message {
    let mut msg = record.msg;
    if let Some(due) = record.due {
        let delay = due.saturating_sub(msg.timestamp).max(0);
        msg.deferred = Some(Duration::from_nanos(delay as u64));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageId;

    fn pos(off: u64) -> DiskPos {
        DiskPos { seg: 1, off }
    }

    fn msg(len: usize) -> Message {
        Message::new(
            MessageId(*b"0123456789abcdef"),
            0,
            Bytes::from(vec![7u8; len]),
        )
    }

    #[test]
    fn appends_are_kept_while_the_reader_has_caught_up() {
        let mut r = ReadAhead::new(pos(64));
        r.offer(
            EndMoved {
                old: pos(64),
                new: pos(100),
            },
            &msg(10),
        );
        assert_eq!((r.loaded, r.next_pos()), (pos(100), pos(64)));
        // The reader is behind (a backlog on disk): appends are not kept.
        let mut behind = ReadAhead::new(pos(64));
        behind.offer(
            EndMoved {
                old: pos(100),
                new: pos(136),
            },
            &msg(10),
        );
        assert_eq!((behind.loaded, behind.ready.len()), (pos(64), 0));
        assert!(behind.wants_more(pos(136)));
        assert_eq!(r.pop().map(|x| x.pos), Some(pos(64)));
        assert!(r.drained_to(pos(100)));
        assert_eq!(r.ready_bytes, 0);
    }

    #[test]
    fn memory_kept_stops_at_its_cap_and_the_rest_is_read_back() {
        let mut r = ReadAhead::new(pos(0));
        let mut end = 0;
        for _ in 0..READY_CAP + 10 {
            r.offer(
                EndMoved {
                    old: pos(end),
                    new: pos(end + 10),
                },
                &msg(1),
            );
            end += 10;
        }
        assert_eq!(r.ready.len(), READY_CAP);
        assert_eq!(r.loaded, pos(READY_CAP as u64 * 10));
        assert!(!r.wants_more(pos(end)), "full enough");
        while r.ready.len() >= READY_LOW {
            r.pop();
        }
        assert!(r.wants_more(pos(end)), "low with more on disk");
    }

    #[test]
    fn a_reader_at_the_end_follows_the_padding() {
        let mut r = ReadAhead::new(pos(100));
        r.follow(EndMoved {
            old: pos(100),
            new: pos(4096),
        });
        assert_eq!(r.loaded, pos(4096));
        r.follow(EndMoved {
            old: pos(5000),
            new: pos(8192),
        });
        assert_eq!(r.loaded, pos(4096), "behind: stays");
    }
}
