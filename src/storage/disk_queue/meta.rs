//! The meta file: the consume position, the depth and the synced end that
//! depth counts up to, in two checksummed 4 KiB slots written in turn (a
//! torn write leaves the other). What a save writes is decided by
//! `MetaState::plan`; once a position is on disk, the segments wholly
//! before it go.

use std::path::Path;
use std::rc::Rc;

use glommio::io::DmaFile;

use super::cursor::ConsumeMark;
use super::files::{meta_path, open_rw, sync_dir};
use super::{Inner, QueueShared};
use crate::storage::record::{DiskPos, Format};
use crate::storage::StorageError;

/// The meta file is saved again once the synced end moved this far (or to
/// another segment) without the consume position moving: this bounds what
/// a restart after a crash verifies.
const META_END_STEP: u64 = 16 << 20;

/// What this queue's meta file holds and what its saves have started.
pub(super) struct MetaState {
    /// The consume position on disk.
    pub saved: Option<DiskPos>,
    /// The synced end the meta on disk counts its depth to.
    pub saved_end: DiskPos,
    /// The furthest end known written and fdatasynced: a save that began
    /// with an older end (a group-commit round overtaken by the shutdown
    /// sync) writes this one, so the newest meta slot never moves back.
    synced_mark: Option<ConsumeMark>,
    /// The furthest consume position a save has been started with: a
    /// topic's snapshot taken before it (a round overtaken by the shutdown
    /// sync) must not be written over it, or a restart would hand the
    /// channels those messages again.
    save_started_at: Option<DiskPos>,
    /// The sequence number of the last slot written (or being written).
    pub seq: u64,
    pub file: Option<Rc<DmaFile>>,
}

impl MetaState {
    pub fn new(saved: Option<DiskPos>) -> MetaState {
        MetaState {
            saved,
            saved_end: DiskPos::default(),
            synced_mark: None,
            save_started_at: None,
            seq: 0,
            file: None,
        }
    }

    /// Everything before `end` is written and fdatasynced.
    pub fn synced_to(&mut self, end: ConsumeMark) {
        if self.synced_mark.is_none_or(|m| m.index < end.index) {
            self.synced_mark = Some(end);
        }
    }

    /// The slot a save writes, or None when nothing needs saving. `at`: a
    /// topic's snapshot to save instead of `now`, the current position;
    /// `end`: the synced end of this sync; `on_disk`: the queue has files.
    pub fn plan(
        &mut self,
        force: bool,
        at: Option<ConsumeMark>,
        end: ConsumeMark,
        now: ConsumeMark,
        on_disk: bool,
    ) -> Option<Meta> {
        let end = self
            .synced_mark
            .filter(|m| m.index > end.index)
            .unwrap_or(end);
        if let (Some(snapshot), Some(newer)) = (at, self.save_started_at) {
            if snapshot.pos < newer {
                return None;
            }
        }
        let mark = at.unwrap_or(now);
        let synced = counted(mark, end);
        let end_moved = synced.end.seg != self.saved_end.seg
            || synced.end.off >= self.saved_end.off + META_END_STEP;
        if self.saved == Some(mark.pos) && !force && !end_moved {
            return None;
        }
        // A queue that never touched the disk needs no meta file.
        if !on_disk && self.saved.is_none() {
            return None;
        }
        self.seq += 1;
        self.save_started_at = self.save_started_at.max(Some(mark.pos));
        Some(Meta {
            seq: self.seq,
            consume: mark.pos,
            synced: Some(synced),
        })
    }

    /// `meta` reached the disk: true unless a later save was started since.
    pub fn saved(&mut self, meta: &Meta) -> bool {
        if self.seq != meta.seq {
            return false;
        }
        self.saved = Some(meta.consume);
        if let Some(s) = meta.synced {
            self.saved_end = s.end;
        }
        true
    }
}

/// The records in [mark, end). Consumed past the synced end (served from
/// memory): nothing counted; a restart verifies from the consume position.
fn counted(mark: ConsumeMark, end: ConsumeMark) -> Synced {
    if mark.pos >= end.pos || mark.index >= end.index {
        Synced {
            depth: 0,
            end: mark.pos,
        }
    } else {
        Synced {
            depth: end.index - mark.index,
            end: end.pos,
        }
    }
}

impl QueueShared {
    /// Saves the consume position with the depth counted up to `end`, the
    /// synced end (every write before it completed and fdatasynced). Also
    /// when only the end moved far: a crash then verifies at most that much.
    pub(super) async fn save_meta(
        self: &Rc<Self>,
        force: bool,
        at: Option<ConsumeMark>,
        end: ConsumeMark,
    ) -> Result<(), StorageError> {
        let (meta, file, epoch) = {
            let mut guard = self.inner.borrow_mut();
            let inner = &mut *guard;
            let now = inner.consume_mark();
            let on_disk = !inner.segments.is_empty();
            let Some(meta) = inner.meta.plan(force, at, end, now, on_disk) else {
                return Ok(());
            };
            (meta, inner.meta.file.clone(), inner.epoch)
        };
        let path = meta_path(&self.ctx.config.dir, &self.name);
        let file = match file {
            Some(f) => f,
            None => match self.open_meta_file(&path, epoch).await? {
                Some(f) => f,
                None => return Ok(()),
            },
        };
        write_slot(&file, &path, &meta).await?;
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        if inner.epoch == epoch && inner.meta.saved(&meta) {
            self.drop_consumed(inner, meta.consume);
        }
        Ok(())
    }

    /// Opens (creating) the meta file. Guarded like a segment: a delete of
    /// the queue meanwhile must neither pull the file from under glommio's
    /// open nor leave a re-created meta file behind with a stale position
    /// (emptied meanwhile, the queue keeps its meta file). None: deleted.
    async fn open_meta_file(
        self: &Rc<Self>,
        path: &Path,
        epoch: u64,
    ) -> Result<Option<Rc<DmaFile>>, StorageError> {
        // An earlier life of this queue may still be removing it.
        self.ctx.paths.wait_removed(path).await;
        let opened = self
            .open_guarded(path, open_rw(path), |inner| {
                inner.epoch == epoch || !inner.closed
            })
            .await;
        let Some(opened) = opened else {
            return Ok(None);
        };
        let f = Rc::new(opened?);
        sync_dir(&self.ctx.config.dir).await;
        let mut inner = self.inner.borrow_mut();
        // Emptied meanwhile, and a later save opened it too: keep that one.
        Ok(Some(inner.meta.file.get_or_insert(f).clone()))
    }

    /// Segments wholly before the saved consume position are done (D6).
    /// Only a position already on disk may delete anything: a crash must
    /// find every segment its meta file still points into.
    fn drop_consumed(&self, inner: &mut Inner, saved: DiskPos) {
        for seg in inner.segments.take_consumed(saved) {
            self.remove_unless_opening(&seg.path);
            super::files::close_later(seg.file);
            if seg.format == Format::Nsqd {
                self.remove_nsqd_meta(inner.segments.has_nsqd());
            }
        }
    }
}

/// Writes `meta` into its slot and fdatasyncs it.
async fn write_slot(file: &DmaFile, path: &Path, meta: &Meta) -> Result<(), StorageError> {
    let mut buf = file.alloc_dma_buffer(META_SLOT);
    encode_meta(buf.as_bytes_mut(), meta);
    let slot = (meta.seq % 2) * META_SLOT as u64;
    let n = file
        .write_at(buf, slot)
        .await
        .map_err(|e| StorageError::glommio("writing", path, e))?;
    if n < META_SLOT {
        return Err(StorageError::ShortWrite {
            path: path.to_path_buf(),
            written: n,
            wanted: META_SLOT,
        });
    }
    file.fdatasync()
        .await
        .map_err(|e| StorageError::glommio("syncing", path, e))
}

/// The consume position saved in the queue's meta file, if any.
pub fn saved_position(dir: &Path, name: &str) -> Option<DiskPos> {
    read_meta(&meta_path(dir, name)).map(|(_, pos)| pos)
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
    use crate::storage::disk_queue::files::OWN_BASE;

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

    fn mark(off: u64, index: u64) -> ConsumeMark {
        ConsumeMark {
            pos: DiskPos {
                seg: OWN_BASE + 1,
                off,
            },
            index,
        }
    }

    #[test]
    fn a_save_counts_the_records_between_the_position_and_the_synced_end() {
        let mut m = MetaState::new(None);
        let slot = m
            .plan(false, None, mark(9000, 10), mark(4096, 4), true)
            .unwrap();
        assert_eq!(slot.seq, 1);
        assert_eq!(slot.consume, mark(4096, 4).pos);
        assert_eq!(
            slot.synced,
            Some(Synced {
                depth: 6,
                end: mark(9000, 10).pos
            })
        );
        assert!(m.saved(&slot));
        assert_eq!(m.saved, Some(slot.consume));
        // Nothing moved: no save, unless forced (shutdown).
        assert!(m
            .plan(false, None, mark(9000, 10), mark(4096, 4), true)
            .is_none());
        let forced = m
            .plan(true, None, mark(9000, 10), mark(4096, 4), true)
            .unwrap();
        assert_eq!(forced.seq, 2);
    }

    #[test]
    fn consumed_past_the_synced_end_counts_nothing() {
        let mut m = MetaState::new(None);
        let slot = m
            .plan(false, None, mark(4096, 3), mark(8192, 5), true)
            .unwrap();
        assert_eq!(
            slot.synced,
            Some(Synced {
                depth: 0,
                end: mark(8192, 5).pos
            })
        );
    }

    #[test]
    fn the_end_alone_moving_far_saves_again() {
        let mut m = MetaState::new(None);
        let first = m
            .plan(false, None, mark(8192, 2), mark(4096, 1), true)
            .unwrap();
        m.saved(&first);
        let near = mark(8192 + META_END_STEP - 4096, 3);
        assert!(m.plan(false, None, near, mark(4096, 1), true).is_none());
        let far = mark(8192 + META_END_STEP, 4);
        let slot = m.plan(false, None, far, mark(4096, 1), true).unwrap();
        assert_eq!(slot.synced.map(|s| s.depth), Some(3));
    }

    #[test]
    fn an_older_snapshot_or_end_never_overwrites_a_newer_save() {
        let mut m = MetaState::new(None);
        // The shutdown sync saved up to 8192 with the end at index 9.
        m.synced_to(mark(20000, 9));
        let newer = m
            .plan(true, None, mark(20000, 9), mark(8192, 5), true)
            .unwrap();
        // A round that started before it comes in with an older snapshot.
        assert!(m
            .plan(
                false,
                Some(mark(4096, 2)),
                mark(12000, 6),
                mark(8192, 5),
                true
            )
            .is_none());
        // One with an older end writes the newest end known.
        let slot = m
            .plan(true, None, mark(12000, 6), mark(8192, 5), true)
            .unwrap();
        assert_eq!(
            slot.synced,
            Some(Synced {
                depth: 4,
                end: mark(20000, 9).pos
            })
        );
        // The first save's completion comes last: it is no longer the newest.
        assert!(!m.saved(&newer));
        assert!(m.saved(&slot));
    }

    #[test]
    fn a_queue_that_never_touched_the_disk_writes_no_meta() {
        let mut m = MetaState::new(None);
        assert!(m.plan(true, None, mark(0, 0), mark(0, 0), false).is_none());
        let mut restored = MetaState::new(Some(mark(100, 0).pos));
        assert!(restored
            .plan(true, None, mark(0, 0), mark(0, 0), false)
            .is_some());
    }
}
