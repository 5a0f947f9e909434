//! What a disk queue's start-up reads, decided before the queue exists:
//! its segments, where each one's records start and end, and its depth.
//!
//! The meta file (format 2) holds the depth counted up to the end that was
//! synced when it was saved. Segments wholly before that end are trusted
//! as they are (only their length is looked up); records past it, the
//! tail that was not synced yet (after a crash), are verified record by
//! record with their crc. A clean shutdown trims the last segment to its
//! data, so after one there is nothing to verify. A format-1 meta, a meta
//! that does not fit the files found, or none at all: every segment is
//! scanned as before, and so are nsqd's files when they are taken over (its
//! meta's depth can be short or negative after a crash).
//!
//! This runs on the core's blocking-pool thread (plain `std::fs`): nothing
//! here may touch glommio.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::disk_queue::{
    meta_path, next_number, numbered_files, own_segments, read_header, read_meta_full, remove_file,
    scan_segment, Meta, Synced, OWN_BASE,
};
use super::nsqd_import;
use super::record::{align_up, DiskPos, Format, HEADER_LEN};
use super::{StorageConfig, StorageError};

/// The smallest record of either format (nsqd: 4-byte size + 26-byte
/// header; ringsq's is larger): a depth above bytes / this is impossible.
const MIN_RECORD: u64 = 30;

/// One segment as start-up found it.
#[derive(Debug, Clone)]
pub struct SegmentPlan {
    pub ord: u64,
    pub format: Format,
    pub path: PathBuf,
    /// Where its unconsumed records start.
    pub start: u64,
    /// End of its data (the file length for trusted segments: zeros past
    /// the last record are padding to the reader).
    pub end: u64,
}

/// How the depth was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// From the meta; `verified` bytes past its synced end were scanned.
    Meta { verified: u64 },
    /// From nsqd's meta (D5); the tail past its write position scanned.
    /// Every unconsumed segment scanned (no usable meta).
    Scan { scanned: u64 },
}

/// A queue ready to be opened.
#[derive(Debug)]
pub struct OpenPlan {
    pub segments: Vec<SegmentPlan>,
    pub depth: u64,
    pub consumed: Option<DiskPos>,
    pub meta_seq: u64,
    /// The synced end the meta on disk counts to (its next save compares).
    pub saved_end: DiskPos,
    pub next_own: u64,
    pub counted: Counted,
}

/// What opening a queue found: a plan, or why not (and the numbers a
/// fresh queue must start past).
#[derive(Debug)]
pub enum Prepared {
    Ready(OpenPlan),
    Failed {
        err: StorageError,
        next_own: u64,
        meta_seq: u64,
    },
}

/// Every queue's own segment files in `dir`, by queue name, listed once
/// per core instead of once per queue.
pub fn list_own_segments(dir: &Path) -> Option<HashMap<String, Vec<(u64, PathBuf)>>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut out: HashMap<String, Vec<(u64, PathBuf)>> = HashMap::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        let Some((name, num)) = n
            .strip_suffix(".dat")
            .and_then(|rest| rest.rsplit_once(".ringsq."))
        else {
            continue;
        };
        if num.len() >= 6 && num.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(num) = num.parse() {
                out.entry(name.to_string())
                    .or_default()
                    .push((num, entry.path()));
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    Some(out)
}

/// Decides how queue `name` opens. `own`: its segment files if already
/// listed (`list_own_segments`), else they are listed here.
pub fn prepare_open(cfg: &StorageConfig, name: &str, own: Option<Vec<(u64, PathBuf)>>) -> Prepared {
    let dir = &cfg.dir;
    let meta = read_meta_full(&meta_path(dir, name));
    let meta_seq = meta.map(|m| m.seq).unwrap_or(0);
    let own = match own {
        Some(v) => Ok(v),
        None => own_segments(dir, name),
    };
    let own = match own {
        Ok(v) => v,
        Err(err) => {
            return Prepared::Failed {
                err,
                next_own: next_number(None, meta.map(|m| (m.seq, m.consume))),
                meta_seq,
            }
        }
    };
    let next_own = next_number(
        own.last().map(|(n, _)| *n),
        meta.map(|m| (m.seq, m.consume)),
    );
    match plan(cfg, name, own, meta) {
        Ok(mut p) => {
            p.next_own = next_own;
            p.meta_seq = meta_seq;
            Prepared::Ready(p)
        }
        Err(err) => {
            set_aside(dir, name, &err);
            Prepared::Failed {
                err,
                next_own,
                meta_seq,
            }
        }
    }
}

/// A queue whose files cannot be read starts empty, and its first meta
/// save records a position past them, after which the next start would
/// delete them as consumed. They are renamed `*.bad` instead (nsqd does so
/// with a file it cannot read, D8): out of every listing, kept for the
/// operator.
fn set_aside(dir: &Path, name: &str, err: &StorageError) {
    let own = own_segments(dir, name).unwrap_or_default();
    let nsqd = numbered_files(dir, &format!("{name}.diskqueue.")).unwrap_or_default();
    for (_, path) in own.into_iter().chain(nsqd) {
        let mut bad = path.clone().into_os_string();
        bad.push(".bad");
        match std::fs::rename(&path, &bad) {
            Ok(()) => {
                tracing::error!(queue = name, error = %err, path = %path.display(), "unreadable queue: its file is set aside as .bad")
            }
            Err(e) => {
                tracing::error!(queue = name, error = %e, path = %path.display(), "cannot set an unreadable queue's file aside")
            }
        }
    }
}

/// The queue's segment files in reading order (nsqd's imported ones first),
/// split at the consume position: those wholly consumed, and those still to
/// read (the first from the consume position on). What start-up opens and
/// what `nsqd_export` rewrites. `own` is the queue's own segment files.
pub fn select_segments(
    dir: &Path,
    name: &str,
    own: Vec<(u64, PathBuf)>,
    consumed: Option<DiskPos>,
) -> (Vec<SegmentPlan>, Vec<SegmentPlan>) {
    let legacy = nsqd_import::segments(dir, name);
    let legacy_plan = |l: nsqd_import::LegacySegment| SegmentPlan {
        ord: l.num,
        format: Format::Nsqd,
        path: l.path,
        start: l.start,
        end: l.len,
    };
    // nsqd files it had read to the end (a caught-up queue keeps its write
    // file, D6) are consumed whatever ringsq's own position says.
    let mut done: Vec<SegmentPlan> = legacy.read.into_iter().map(legacy_plan).collect();
    let mut all: Vec<SegmentPlan> = legacy.unread.into_iter().map(legacy_plan).collect();
    for (num, path) in own {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        all.push(SegmentPlan {
            ord: OWN_BASE + num,
            format: Format::Ringsq,
            path,
            start: HEADER_LEN,
            end: len,
        });
    }
    all.sort_by_key(|s| s.ord);
    let Some(c) = consumed else {
        return (done, all);
    };
    let (consumed_files, mut pending): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|s| s.ord < c.seg);
    done.extend(consumed_files);
    for seg in pending.iter_mut().filter(|s| s.ord == c.seg) {
        seg.start = seg.start.max(c.off);
    }
    (done, pending)
}

fn plan(
    cfg: &StorageConfig,
    name: &str,
    own: Vec<(u64, PathBuf)>,
    meta: Option<Meta>,
) -> Result<OpenPlan, StorageError> {
    let dir = &cfg.dir;
    let consumed = meta.map(|m| m.consume);
    let (done, mut kept) = select_segments(dir, name, own, consumed);
    for seg in &done {
        remove_file(&seg.path);
    }
    nsqd_import::remove_meta_if_done(dir, name, kept.iter().any(|s| s.format == Format::Nsqd));
    // nsqd's own meta depth is not trusted: after a crash its reader salvages
    // records past writePos while counting them off a depth that never had
    // them, so a later clean stop can save a depth that is short (or
    // negative). nsqd's files are counted once, at takeover; ringsq's meta
    // holds the count from then on.
    let from_meta = meta.and_then(|m| m.synced.map(|s| (m.consume, s)));
    let trusted = from_meta.filter(|(c, s)| fits(&kept, *c, s));
    let (depth, counted) = match trusted {
        Some((_, synced)) => {
            let verified = verify_tail(cfg, &mut kept, synced.end)?;
            (
                synced.depth + verified.0,
                Counted::Meta {
                    verified: verified.1,
                },
            )
        }
        None => {
            if from_meta.is_some() {
                tracing::warn!(
                    queue = name,
                    "meta file does not match the segment files; counting by scanning them"
                );
            }
            let (records, scanned) = scan_all(cfg, &mut kept)?;
            (records, Counted::Scan { scanned })
        }
    };
    Ok(OpenPlan {
        segments: kept,
        depth,
        consumed,
        meta_seq: 0,
        saved_end: meta
            .and_then(|m| m.synced.map(|s| s.end))
            .unwrap_or_default(),
        next_own: 0,
        counted,
    })
}

/// Where a fresh segment's records start.
fn first_offset(format: Format) -> u64 {
    match format {
        Format::Ringsq => HEADER_LEN,
        Format::Nsqd => 0,
    }
}

fn same_family(a: u64, b: u64) -> bool {
    (a >= OWN_BASE) == (b >= OWN_BASE)
}

/// Whether the files found are those the meta counted: the segments from
/// the consume position to the synced end are all there (numbers follow
/// each other), the end's file is at least that long, and the depth fits
/// the bytes. Anything else (a file deleted or truncated by hand, a meta
/// from another life of the queue) falls back to the scan.
fn fits(kept: &[SegmentPlan], consume: DiskPos, s: &Synced) -> bool {
    if s.end < consume || (s.end == consume && s.depth != 0) {
        return false;
    }
    let in_range: Vec<&SegmentPlan> = kept.iter().filter(|g| g.ord <= s.end.seg).collect();
    let end_format = if s.end.seg >= OWN_BASE {
        Format::Ringsq
    } else {
        Format::Nsqd
    };
    let Some(first) = in_range.first() else {
        // Nothing on disk up to the end: only an empty queue fits.
        return s.depth == 0;
    };
    if first.ord != consume.seg {
        return false;
    }
    for pair in in_range.windows(2) {
        if same_family(pair[0].ord, pair[1].ord) && pair[1].ord != pair[0].ord + 1 {
            return false;
        }
    }
    let mut bytes = 0;
    for g in &in_range {
        let end = if g.ord == s.end.seg { s.end.off } else { g.end };
        bytes += end.saturating_sub(g.start);
    }
    let last = in_range[in_range.len() - 1];
    let end_ok = if last.ord == s.end.seg {
        last.end >= s.end.off
    } else {
        // The end's segment was never written (rolled, then synced).
        s.end.off <= first_offset(end_format)
            && (!same_family(last.ord, s.end.seg) || last.ord + 1 == s.end.seg)
    };
    end_ok && s.depth.saturating_mul(MIN_RECORD) <= bytes
}

/// Scans what follows the synced end: the rest of its segment and every
/// later one. Returns (records, bytes scanned).
fn verify_tail(
    cfg: &StorageConfig,
    kept: &mut [SegmentPlan],
    end: DiskPos,
) -> Result<(u64, u64), StorageError> {
    let mut records = 0;
    let mut bytes = 0;
    for seg in kept.iter_mut() {
        if seg.ord < end.seg {
            continue;
        }
        let from = if seg.ord == end.seg {
            seg.start.max(end.off)
        } else {
            segment_start(seg)
        };
        let (n, b) = scan_from(cfg, seg, from)?;
        records += n;
        bytes += b;
    }
    Ok((records, bytes))
}

/// Every kept segment, from its start. Returns (records, bytes scanned).
fn scan_all(cfg: &StorageConfig, kept: &mut [SegmentPlan]) -> Result<(u64, u64), StorageError> {
    let mut records = 0;
    let mut bytes = 0;
    for seg in kept.iter_mut() {
        let from = segment_start(seg);
        let (n, b) = scan_from(cfg, seg, from)?;
        records += n;
        bytes += b;
    }
    Ok((records, bytes))
}

/// Where a segment's records start, checking a ringsq header on the way
/// (a damaged one is reported; its records are scanned anyway).
fn segment_start(seg: &mut SegmentPlan) -> u64 {
    if seg.format == Format::Ringsq && seg.start <= HEADER_LEN {
        match read_header(&seg.path) {
            Ok(start) => seg.start = start,
            Err(e) => {
                tracing::warn!(path = %seg.path.display(), error = %e, "corrupt segment header; scanning its records anyway");
            }
        }
    }
    seg.start
}

/// Scans `seg` from `from` to its file's end; its end becomes the end of
/// the last valid record.
fn scan_from(
    cfg: &StorageConfig,
    seg: &mut SegmentPlan,
    from: u64,
) -> Result<(u64, u64), StorageError> {
    let len = seg.end;
    if from >= len {
        return Ok((0, 0));
    }
    let scan = scan_segment(&seg.path, seg.format, from, len, cfg.max_msg_size)
        .map_err(|e| StorageError::io("reading", &seg.path, e))?;
    seg.end = scan.end;
    // Only a clean tail goes: bytes the walk could not take (a torn write,
    // or records over today's --max-msg-size) stay for a later start.
    if scan.damaged == 0 {
        trim(seg, len);
    }
    Ok((scan.records, len - from))
}

/// After a crash, a verified segment of ours ends in space preallocated
/// for writes that never came (or in a torn write): nothing valid follows
/// its last record, and no later write goes to it (the queue goes on in a
/// new segment), so that space is given back and the next start does not
/// verify it again. nsqd's files are left as they are.
fn trim(seg: &SegmentPlan, len: u64) {
    let keep = align_up(seg.end.max(seg.start));
    if seg.format != Format::Ringsq || keep >= len {
        return;
    }
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg.path)
        .and_then(|f| f.set_len(keep).and_then(|_| f.sync_all()));
    if let Err(e) = cut {
        tracing::warn!(path = %seg.path.display(), error = %e, "cannot trim a verified segment; the next start verifies its tail again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(num: u64, start: u64, end: u64) -> SegmentPlan {
        SegmentPlan {
            ord: OWN_BASE + num,
            format: Format::Ringsq,
            path: PathBuf::from(format!("q.ringsq.{num:06}.dat")),
            start,
            end,
        }
    }

    fn pos(num: u64, off: u64) -> DiskPos {
        DiskPos {
            seg: OWN_BASE + num,
            off,
        }
    }

    fn synced(depth: u64, end: DiskPos) -> Synced {
        Synced { depth, end }
    }

    #[test]
    fn a_meta_fits_the_files_it_counted() {
        let kept = [
            own(3, 8192, 1 << 20),
            own(4, 4096, 1 << 20),
            own(5, 4096, 65536),
        ];
        let c = pos(3, 8192);
        assert!(fits(&kept, c, &synced(1000, pos(5, 65536))));
        // Later segments (written after the save) are verified, not counted.
        assert!(fits(&kept, c, &synced(500, pos(4, 40960))));
        // Rolled and synced before the new segment's file was written.
        assert!(fits(&kept, c, &synced(1000, pos(6, HEADER_LEN))));
    }

    #[test]
    fn a_meta_that_does_not_fit_is_not_trusted() {
        let c = pos(3, 8192);
        let gap = [own(3, 8192, 1 << 20), own(5, 4096, 65536)];
        assert!(!fits(&gap, c, &synced(10, pos(5, 65536))));
        let short = [own(3, 8192, 1 << 20), own(4, 4096, 8192)];
        assert!(!fits(&short, c, &synced(10, pos(4, 65536))));
        let kept = [own(3, 8192, 1 << 20), own(4, 4096, 65536)];
        // More records than the bytes can hold.
        assert!(!fits(&kept, c, &synced(1 << 20, pos(4, 65536))));
        // The consume position's segment is gone.
        assert!(!fits(&kept[1..], c, &synced(10, pos(4, 65536))));
        // An end before the consume position, or records at an empty range.
        assert!(!fits(&kept, c, &synced(0, pos(2, 4096))));
        assert!(!fits(&kept, c, &synced(3, c)));
        // Nothing on disk: only an empty queue.
        assert!(fits(&[], c, &synced(0, c)));
        assert!(!fits(&[], c, &synced(1, pos(4, 4096))));
    }

    #[test]
    fn nsqd_meta_fits_with_its_write_file_not_created_yet() {
        let legacy = |num: u64, start: u64, end: u64| SegmentPlan {
            ord: num,
            format: Format::Nsqd,
            path: PathBuf::from(format!("q.diskqueue.{num:06}.dat")),
            start,
            end,
        };
        let kept = [legacy(7, 300, 10_000), legacy(8, 0, 10_000)];
        let c = DiskPos { seg: 7, off: 300 };
        assert!(fits(&kept, c, &synced(100, DiskPos { seg: 9, off: 0 })));
        assert!(!fits(&kept, c, &synced(100, DiskPos { seg: 9, off: 50 })));
        assert!(fits(
            &kept,
            c,
            &synced(
                100,
                DiskPos {
                    seg: 8,
                    off: 10_000
                }
            )
        ));
    }
}
