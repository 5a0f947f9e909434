//! Damage and crash tails: segments walked record by record with damage
//! skipped and logged (start-up's check of the unsynced tail, the export),
//! the depth set right when the reader meets damage start-up did not count
//! (D8), a missing segment skipped, and the shutdown's trim of the
//! preallocated space past the data, so the next start finds nothing to
//! verify.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;

use super::{Inner, QueueShared};
use crate::storage::record::{self, align_up, Format, Walk, Walker};

pub(super) fn report_damage(queue: &str, path: &Path, from: u64, to: u64) {
    tracing::warn!(queue, path = %path.display(), offset = from, skipped = to - from, "corrupt records skipped");
}

/// Damage running to the end of what was read (`data`, read from
/// `chunk_off`): zeros up to `limit` are padding, not damage.
pub(super) fn report_open_damage(
    queue: &str,
    path: &Path,
    data: &[u8],
    chunk_off: u64,
    from: u64,
    limit: u64,
) {
    let rest = data.get((from - chunk_off) as usize..).unwrap_or_default();
    if rest.iter().any(|b| *b != 0) {
        report_damage(queue, path, from, limit);
    }
}

impl Inner {
    /// Everything on disk has been read and handed out, yet the depth says
    /// more: records counted at start-up were damaged (found by the reader
    /// since). The depth goes to 0 at the tail, as nsqd does (D8).
    pub(super) fn fix_depth_at_tail(&mut self, name: &str) {
        if self.cursor.depth > 0 && self.read.drained_to(self.write_end()) {
            tracing::warn!(
                queue = name,
                depth = self.cursor.depth,
                "depth did not match the records on disk; reset"
            );
            self.cursor.depth = 0;
        }
    }
}

impl QueueShared {
    /// A segment that cannot be read (its file is missing): the reader goes
    /// on with the next one. Returns whether the reader moved on.
    pub(super) fn skip_segment(self: &Rc<Self>, ord: u64, why: &str) -> bool {
        let mut inner = self.inner.borrow_mut();
        tracing::error!(queue = %self.name, segment = ord, why, "corrupt segment skipped");
        let Some(next) = inner.segments.after(ord).map(|s| s.start_pos()) else {
            return false;
        };
        inner.read.loaded = next;
        true
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
            if seg.written_end < seg.end || seg.preallocated <= len || inner.writer.jobs_queued() {
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
                match read_more(&file, pos, len, max_body, (&chunk, chunk_off))? {
                    Some(next) => (chunk, chunk_off) = (next, pos),
                    None => {
                        // No progress possible: the file is shorter than it said.
                        walker.skip_damaged(len);
                        break;
                    }
                }
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

/// The next chunk from `pos` (up to 4 MiB, or a whole record); None when
/// it would hold nothing past `last`, the chunk read before.
fn read_more(
    file: &std::fs::File,
    pos: u64,
    len: u64,
    max_body: u64,
    last: (&Bytes, u64),
) -> std::io::Result<Option<Bytes>> {
    let (chunk, chunk_off) = last;
    let want = (len - pos).min((4 << 20).max(max_body + 64));
    let mut buf = vec![0u8; want as usize];
    let n = read_full_at(file, &mut buf, pos)?;
    let chunk_end = chunk_off + chunk.len() as u64;
    if n == 0 || (pos >= chunk_off && (n as u64) <= chunk_end.saturating_sub(pos)) {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some(Bytes::from(buf)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Message, MessageId};
    use crate::storage::record::HEADER_LEN;

    fn segment_bytes(bodies: &[&[u8]]) -> (Vec<u8>, Vec<u64>) {
        let mut data = vec![0u8; HEADER_LEN as usize];
        record::encode_header(&mut data, 1);
        let mut starts = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let mut id = *b"0000000000000000";
            id[15] = b'0' + i as u8;
            let msg = Message::new(MessageId(id), 1, Bytes::copy_from_slice(body));
            let at = data.len();
            starts.push(at as u64);
            data.resize(at + record::encoded_len(&msg, None), 0);
            record::encode(&mut data[at..], &msg, None);
        }
        (data, starts)
    }

    fn walk(tag: &str, data: &[u8]) -> (Scan, Vec<Vec<u8>>) {
        let dir =
            std::env::temp_dir().join(format!("ringsq-recovery-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.ringsq.000001.dat");
        std::fs::write(&path, data).unwrap();
        let mut bodies = Vec::new();
        let scan = walk_segment(
            &path,
            Format::Ringsq,
            HEADER_LEN,
            data.len() as u64,
            1 << 20,
            |r| {
                bodies.push(r.msg.body.to_vec());
                Ok(())
            },
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (scan, bodies)
    }

    #[test]
    fn a_damaged_record_is_skipped_and_the_ones_after_it_kept() {
        let (mut data, starts) = segment_bytes(&[b"one", b"two", b"three"]);
        // Flip a byte in the middle record's body: its crc fails.
        let second_end = starts[2] as usize;
        data[second_end - 1] ^= 0xff;
        let (scan, bodies) = walk("mid", &data);
        assert_eq!(bodies, vec![b"one".to_vec(), b"three".to_vec()]);
        assert_eq!((scan.records, scan.damaged), (2, 1));
        assert_eq!(scan.end, data.len() as u64);
        assert!(scan.damaged_bytes > 0);
    }

    #[test]
    fn preallocated_zeros_after_the_last_record_are_no_damage() {
        let (mut data, _) = segment_bytes(&[b"a", b"b"]);
        let end = data.len() as u64;
        data.resize(64 << 10, 0);
        let (scan, bodies) = walk("zeros", &data);
        assert_eq!(bodies.len(), 2);
        assert_eq!((scan.records, scan.damaged, scan.end), (2, 0, end));
    }

    #[test]
    fn a_torn_last_record_ends_the_data_before_it() {
        let (data, starts) = segment_bytes(&[b"kept", b"torn record body"]);
        let torn = &data[..data.len() - 5];
        let (scan, bodies) = walk("torn", torn);
        assert_eq!(bodies, vec![b"kept".to_vec()]);
        assert_eq!(scan.records, 1);
        assert_eq!(
            scan.end, starts[1],
            "the valid data ends where the torn record starts"
        );
        assert_eq!(scan.damaged, 1);
    }

    #[test]
    fn garbage_after_the_records_is_reported() {
        let (mut data, _) = segment_bytes(&[b"x"]);
        let end = data.len() as u64;
        data.extend_from_slice(&[0xab; 100]);
        let (scan, _) = walk("garbage", &data);
        assert_eq!((scan.records, scan.end), (1, end));
        assert_eq!((scan.damaged, scan.damaged_bytes), (1, 100));
    }
}
