//! The queue's segment files in order, as the writer, the reader and the
//! cleanup see them.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;

use glommio::io::DmaFile;

use crate::storage::record::{DiskPos, Format, HEADER_LEN};

pub(super) struct Segment {
    pub ord: u64,
    pub format: Format,
    pub path: PathBuf,
    /// Where records start (after the header, or nsqd's read position).
    pub start: u64,
    /// End of data. Final once sealed; grows while this is the write segment.
    pub end: u64,
    /// Data before this offset has been written (write completions).
    pub written_end: u64,
    pub sealed: bool,
    pub file: Option<Rc<DmaFile>>,
    pub preallocated: u64,
    /// Completed writes, and how many of them an fdatasync has covered.
    /// A sync clears nothing before its fdatasync returns, so a sync
    /// running meanwhile (the shutdown's, beside a group-commit round) syncs
    /// the file itself rather than count on one still in flight.
    pub writes: u64,
    pub synced_writes: u64,
}

impl Segment {
    /// One found at start-up: complete, written, not open yet.
    pub fn sealed(ord: u64, format: Format, path: PathBuf, start: u64, end: u64) -> Segment {
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

    /// A new segment of ringsq's own, not created on disk yet.
    pub fn fresh(ord: u64, path: PathBuf) -> Segment {
        Segment {
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
        }
    }

    pub fn start_pos(&self) -> DiskPos {
        DiskPos {
            seg: self.ord,
            off: self.start,
        }
    }

    pub fn end_pos(&self) -> DiskPos {
        DiskPos {
            seg: self.ord,
            off: self.end,
        }
    }
}

/// The segments from the oldest still needed to the write segment.
#[derive(Default)]
pub(super) struct Segments {
    list: VecDeque<Segment>,
}

impl Segments {
    pub fn new(list: VecDeque<Segment>) -> Segments {
        Segments { list }
    }

    pub fn get(&self, ord: u64) -> Option<&Segment> {
        self.list.iter().find(|s| s.ord == ord)
    }

    pub fn get_mut(&mut self, ord: u64) -> Option<&mut Segment> {
        self.list.iter_mut().find(|s| s.ord == ord)
    }

    /// The first segment at or after `ord`, with its index.
    pub fn at_or_after(&self, ord: u64) -> Option<(usize, &Segment)> {
        self.list.iter().enumerate().find(|(_, s)| s.ord >= ord)
    }

    /// The segment after the one numbered `ord`.
    pub fn after(&self, ord: u64) -> Option<&Segment> {
        let idx = self.list.iter().position(|s| s.ord == ord)?;
        self.list.get(idx + 1)
    }

    pub fn index(&self, idx: usize) -> Option<&Segment> {
        self.list.get(idx)
    }

    pub fn front(&self) -> Option<&Segment> {
        self.list.front()
    }

    pub fn back(&self) -> Option<&Segment> {
        self.list.back()
    }

    pub fn back_mut(&mut self) -> Option<&mut Segment> {
        self.list.back_mut()
    }

    pub fn push(&mut self, seg: Segment) {
        self.list.push_back(seg);
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Segment> {
        self.list.iter()
    }

    pub fn has_nsqd(&self) -> bool {
        self.list.iter().any(|s| s.format == Format::Nsqd)
    }

    /// Takes out the sealed segments wholly before `saved` (never the last
    /// one): consumed, their files may go (D6).
    pub fn take_consumed(&mut self, saved: DiskPos) -> Vec<Segment> {
        let mut done = Vec::new();
        while self.list.len() > 1
            && self
                .list
                .front()
                .is_some_and(|s| s.ord < saved.seg && s.sealed)
        {
            done.extend(self.list.pop_front());
        }
        done
    }

    pub fn take_all(&mut self) -> Vec<Segment> {
        self.list.drain(..).collect()
    }
}
