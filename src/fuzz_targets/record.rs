//! Disk-queue segments: the header check and the record walker over both
//! formats (ringsq's with crc and padding, nsqd's D4), fed in one chunk and
//! in small chunks re-read from the walker's position as the readers do.
//! Both walks must find the same records and the same damage.

use bytes::Bytes;

use super::Choices;
use crate::storage::record::{check_header, Format, Walk, Walker, HEADER_LEN};

/// A record as found: where, id, timestamp, attempts, due, body.
type Found = (u64, [u8; 16], i64, u16, Option<i64>, Bytes);

#[derive(Debug, PartialEq)]
struct Walked {
    records: Vec<Found>,
    damaged: Vec<(u64, u64)>,
}

/// Walks `file` from `start`, reading `chunk` bytes at a time (doubled while
/// the walker asks for more at the same position).
fn walk(format: Format, file: &[u8], start: u64, chunk: usize, max_body: u64) -> Walked {
    let limit = file.len() as u64;
    // Chunks are slices of one copy, so that 1-byte reads stay linear.
    let file = Bytes::copy_from_slice(file);
    let mut walker = Walker::new(format, start);
    let mut out = Walked {
        records: Vec::new(),
        damaged: Vec::new(),
    };
    let (mut data, mut data_off, mut size) = (Bytes::new(), 0u64, chunk);
    loop {
        match walker.next(&data, data_off, limit, max_body) {
            Walk::Record { record, at } => {
                let m = record.msg;
                assert!(at < walker.pos() && walker.pos() <= limit);
                out.records
                    .push((at, m.id.0, m.timestamp, m.attempts, record.due, m.body));
            }
            Walk::Damaged { from, to } => {
                assert!(from < to && to <= limit, "damage {from}..{to}");
                out.damaged.push((from, to));
            }
            Walk::End => break,
            Walk::NeedMore => {
                let pos = walker.pos();
                let read_to = data_off + data.len() as u64;
                assert!(
                    pos < data_off || pos >= read_to || read_to < limit,
                    "more bytes wanted at {pos} with the whole file read"
                );
                if pos == data_off && !data.is_empty() {
                    size *= 2;
                }
                let end = (pos as usize).saturating_add(size).min(file.len());
                data = file.slice(pos as usize..end);
                data_off = pos;
            }
        }
    }
    if let Some(from) = walker.open_damage() {
        out.damaged.push((from, limit));
    }
    out
}

pub fn record(data: &[u8]) {
    let mut c = Choices::new(data);
    let flags = c.byte();
    let format = if flags & 1 == 0 {
        Format::Ringsq
    } else {
        Format::Nsqd
    };
    let max_body = c.pick(&[1 << 20, 16, 1, 0]);
    let chunk = c.pick(&[1, 5, 33, 512, 4096]);
    let file = c.rest();
    // Records start where a header that checks out says (ringsq writes
    // HEADER_LEN), or anywhere in a file without one.
    let start = match check_header(file) {
        Ok(start) => start,
        Err(_) => u64::from(flags >> 4) * HEADER_LEN / 16,
    };
    let whole = walk(format, file, start, file.len().max(1), max_body);
    assert_eq!(walk(format, file, start, chunk, max_body), whole);
}
