//! The consume cursor: how many records are left, which were handed out
//! from disk and not finished yet, and so the oldest position still needed.
//! That position (with the index of its record) is what the meta file
//! saves; after a crash, messages in flight are delivered again.

use std::collections::BTreeMap;

use crate::storage::record::DiskPos;

/// A position with the index of the record there (see `Cursor::pop_index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumeMark {
    pub pos: DiskPos,
    pub index: u64,
}

#[derive(Default)]
pub(super) struct Cursor {
    pub depth: u64,
    /// Records popped since the queue was opened: the index of the next
    /// one. `pop_index + depth` is the index the next append gets, so the
    /// records between a consume position and an end can be counted.
    pop_index: u64,
    /// Popped from disk, not finished yet (channels only), with the index
    /// each had.
    outstanding: BTreeMap<DiskPos, u64>,
}

impl Cursor {
    /// A record was handed out: returns its index.
    pub fn popped(&mut self) -> u64 {
        self.depth = self.depth.saturating_sub(1);
        self.pop_index += 1;
        self.pop_index - 1
    }

    /// A channel's record stays needed until its FIN.
    pub fn hold(&mut self, pos: DiskPos, index: u64) {
        self.outstanding.insert(pos, index);
    }

    /// FIN: false when `pos` was not held (already finished, or emptied).
    pub fn finish(&mut self, pos: DiskPos) -> bool {
        self.outstanding.remove(&pos).is_some()
    }

    pub fn forget_outstanding(&mut self) {
        self.outstanding.clear();
    }

    /// The oldest position still needed: the oldest unfinished one, or
    /// `next` (the next record to hand out).
    pub fn consume_mark(&self, next: DiskPos) -> ConsumeMark {
        let next = ConsumeMark {
            pos: next,
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

    /// `end` with the index the next appended record gets.
    pub fn end_mark(&self, end: DiskPos) -> ConsumeMark {
        ConsumeMark {
            pos: end,
            index: self.pop_index + self.depth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(off: u64) -> DiskPos {
        DiskPos { seg: 3, off }
    }

    #[test]
    fn the_oldest_unfinished_record_holds_the_position() {
        let mut c = Cursor {
            depth: 4,
            ..Cursor::default()
        };
        let (a, b) = (c.popped(), c.popped());
        assert_eq!((a, b, c.depth), (0, 1, 2));
        c.hold(pos(100), a);
        c.hold(pos(200), b);
        assert_eq!(
            c.consume_mark(pos(300)),
            ConsumeMark {
                pos: pos(100),
                index: 0
            }
        );
        // Finished out of order: the older one still holds it.
        assert!(c.finish(pos(200)));
        assert_eq!(c.consume_mark(pos(300)).pos, pos(100));
        assert!(c.finish(pos(100)));
        assert!(!c.finish(pos(100)), "a second FIN changes nothing");
        assert_eq!(
            c.consume_mark(pos(300)),
            ConsumeMark {
                pos: pos(300),
                index: 2
            }
        );
        assert_eq!(
            c.end_mark(pos(500)),
            ConsumeMark {
                pos: pos(500),
                index: 4
            }
        );
    }

    #[test]
    fn forgetting_in_flight_moves_the_position_to_the_reader() {
        let mut c = Cursor {
            depth: 1,
            ..Cursor::default()
        };
        let i = c.popped();
        c.hold(pos(10), i);
        c.forget_outstanding();
        assert_eq!(
            c.consume_mark(pos(50)),
            ConsumeMark {
                pos: pos(50),
                index: 1
            }
        );
        assert_eq!(c.popped(), 1);
        assert_eq!(c.depth, 0, "the depth never goes below zero");
    }
}
