//! The one splitter of MPUB bodies, shared by TCP's `MPUB` (T31) and
//! HTTP's `/mpub` (H7). Both read `[4B count]([4B size][data])*` with the
//! same limits in the same order; only the error texts differ, so the
//! splitter reports what went wrong and each side words it (TCP in
//! `codec`, HTTP in `http::error`).

use std::ops::Range;

use bytes::Bytes;
use thiserror::Error;

use super::error::{ClientError, ErrorCode};

/// The limits an MPUB is checked against (`--max-msg-size`,
/// `--max-body-size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpubLimits {
    pub max_msg_size: i64,
    pub max_body_size: i64,
}

impl MpubLimits {
    /// nsqd's bound on the count: every message takes at least 5 bytes.
    pub fn max_messages(&self) -> i64 {
        (self.max_body_size - 4) / 5
    }

    /// The message count's check (T31).
    fn check_count(&self, count: i32) -> Result<(), MpubError> {
        if count <= 0 || i64::from(count) > self.max_messages() {
            return Err(MpubError::BadCount(count));
        }
        Ok(())
    }

    /// One message size's checks, in nsqd's order (T31).
    fn check_size(&self, index: i32, size: i32) -> Result<(), MpubError> {
        if size <= 0 {
            return Err(MpubError::BadSize { index, size });
        }
        if i64::from(size) > self.max_msg_size {
            return Err(MpubError::TooBig {
                size,
                max: self.max_msg_size,
            });
        }
        Ok(())
    }
}

/// Where a binary MPUB body stops being valid. The `*Missing` variants
/// mean the bytes end there: more may come on TCP, the body is short on
/// HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MpubError {
    #[error("message count missing")]
    CountMissing,
    #[error("invalid message count {0}")]
    BadCount(i32),
    #[error("message({0}) body size missing")]
    SizeMissing(i32),
    #[error("invalid message({index}) body size {size}")]
    BadSize { index: i32, size: i32 },
    #[error("message too big {size} > {max}")]
    TooBig { size: i32, max: i64 },
    #[error("message({0}) body missing")]
    BodyMissing(i32),
}

impl MpubError {
    /// The bytes ended before the body did (no limit was broken).
    pub fn is_incomplete(&self) -> bool {
        matches!(
            self,
            MpubError::CountMissing | MpubError::SizeMissing(_) | MpubError::BodyMissing(_)
        )
    }
}

/// TCP's words for each (T31); a `*Missing` is an error only once the
/// client has closed its side.
impl From<MpubError> for ClientError {
    fn from(e: MpubError) -> Self {
        let (code, text) = match e {
            MpubError::CountMissing => (
                ErrorCode::BadBody,
                "MPUB failed to read message count".to_string(),
            ),
            MpubError::BadCount(n) => (
                ErrorCode::BadBody,
                format!("MPUB invalid message count {n}"),
            ),
            MpubError::SizeMissing(i) => (
                ErrorCode::BadMessage,
                format!("MPUB failed to read message({i}) body size"),
            ),
            MpubError::BadSize { index, size } => (
                ErrorCode::BadMessage,
                format!("MPUB invalid message({index}) body size {size}"),
            ),
            MpubError::TooBig { size, max } => (
                ErrorCode::BadMessage,
                format!("MPUB message too big {size} > {max}"),
            ),
            MpubError::BodyMissing(_) => (
                ErrorCode::BadMessage,
                "MPUB failed to read message body".to_string(),
            ),
        };
        ClientError::new(code, text)
    }
}

/// The messages as ranges of the buffer, and where the last one ends.
pub type MpubRanges = (Vec<Range<usize>>, usize);

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    buf.get(at..at.checked_add(4)?)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Splits `[4B count]([4B size][data])*` starting at `at`, checking the
/// count, then each size, in nsqd's order.
pub fn split(buf: &[u8], at: usize, limits: &MpubLimits) -> Result<MpubRanges, MpubError> {
    let count = read_i32(buf, at).ok_or(MpubError::CountMissing)?;
    limits.check_count(count)?;
    // Sized by what can be in the buffer, not by the client's count.
    let mut bodies = Vec::with_capacity((count as usize).min(buf.len() / 5 + 1));
    let mut pos = at + 4;
    for index in 0..count {
        let size = read_i32(buf, pos).ok_or(MpubError::SizeMissing(index))?;
        limits.check_size(index, size)?;
        let start = pos + 4;
        let end = start + size as usize;
        if buf.len() < end {
            return Err(MpubError::BodyMissing(index));
        }
        bodies.push(start..end);
        pos = end;
    }
    Ok((bodies, pos))
}

/// An MPUB's messages walked as their bytes arrive, so that a connection
/// waits for the end of the message in progress and no further: nsqd reads
/// the count and then message by message, never the declared body size
/// (T31), so a client that declares more than it sends still gets its OK.
/// The walk keeps its place, so each size header is read once however
/// many pieces the body comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// The offset of the next header to read (the count, then each size).
    at: usize,
    /// Messages not yet walked; `None` until the count is read.
    left: Option<i32>,
    limits: MpubLimits,
}

impl Walk {
    /// A walk of the body whose count starts at `count_at`.
    pub fn new(count_at: usize, limits: MpubLimits) -> Self {
        Walk {
            at: count_at,
            left: None,
            limits,
        }
    }

    /// Walks on over `buf`: `Some(len)` if the buffer must reach `len`
    /// before the MPUB can finish, `None` once it is whole or has reached a
    /// header that `split` refuses (the error is `split`'s to word).
    pub fn advance(&mut self, buf: &[u8]) -> Option<usize> {
        loop {
            if self.left == Some(0) {
                return None;
            }
            let Some(header) = read_i32(buf, self.at) else {
                return Some(self.at + 4);
            };
            let Some(left) = self.left else {
                self.limits.check_count(header).ok()?;
                self.left = Some(header);
                self.at += 4;
                continue;
            };
            // The index only words split's error; any refusal ends the walk.
            self.limits.check_size(0, header).ok()?;
            let end = self.at + 4 + header as usize;
            if buf.len() < end {
                return Some(end);
            }
            self.at = end;
            self.left = Some(left - 1);
        }
    }
}

/// A whole binary body (HTTP's form, without TCP's leading body size) as
/// slices of it.
pub fn split_bytes(body: &Bytes, limits: &MpubLimits) -> Result<Vec<Bytes>, MpubError> {
    let (ranges, _) = split(body, 0, limits)?;
    Ok(ranges.into_iter().map(|r| body.slice(r)).collect())
}

/// A line longer than `--max-msg-size` in a text-mode `/mpub` (H7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("line of {len} bytes is longer than {max}")]
pub struct LineTooLong {
    pub len: usize,
    pub max: i64,
}

/// HTTP's text form: one message per `\n`-terminated line, empty lines
/// skipped, no `\r` stripped (H7).
pub fn split_lines(body: &Bytes, max_msg_size: i64) -> Result<Vec<Bytes>, LineTooLong> {
    let mut bodies = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        if line.len() as i64 > max_msg_size {
            return Err(LineTooLong {
                len: line.len(),
                max: max_msg_size,
            });
        }
        bodies.push(body.slice_ref(line));
    }
    Ok(bodies)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MpubLimits = MpubLimits {
        max_msg_size: 10,
        max_body_size: 100,
    };

    fn frame(count: i32, msgs: &[&[u8]]) -> Bytes {
        let mut raw = count.to_be_bytes().to_vec();
        for m in msgs {
            raw.extend_from_slice(&(m.len() as i32).to_be_bytes());
            raw.extend_from_slice(m);
        }
        Bytes::from(raw)
    }

    #[test]
    fn splits_in_order() {
        let b = frame(2, &[b"ab", b"cde"]);
        assert_eq!(split_bytes(&b, &LIMITS).unwrap(), vec![&b"ab"[..], b"cde"]);
    }

    #[test]
    fn errors_in_nsqds_order() {
        let e = |b: Bytes| split_bytes(&b, &LIMITS).unwrap_err();
        assert_eq!(e(Bytes::from_static(b"\0\0")), MpubError::CountMissing);
        assert_eq!(e(frame(0, &[])), MpubError::BadCount(0));
        // (100 - 4) / 5 = 19 messages at most.
        assert_eq!(e(frame(20, &[])), MpubError::BadCount(20));
        assert_eq!(e(frame(2, &[b"a"])), MpubError::SizeMissing(1));
        assert_eq!(
            e(frame(1, &[b"0123456789A"])),
            MpubError::TooBig { size: 11, max: 10 }
        );
        let mut short = frame(1, &[b"abc"]).to_vec();
        short.pop();
        assert_eq!(e(Bytes::from(short)), MpubError::BodyMissing(0));
        let mut zero = 1i32.to_be_bytes().to_vec();
        zero.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(
            e(Bytes::from(zero)),
            MpubError::BadSize { index: 0, size: 0 }
        );
    }

    #[test]
    fn lines_skip_empty_keep_cr() {
        let b = Bytes::from_static(b"a\r\n\nbc\n");
        assert_eq!(split_lines(&b, 10).unwrap(), vec![&b"a\r"[..], b"bc"]);
        assert_eq!(split_lines(&b, 1), Err(LineTooLong { len: 2, max: 1 }));
    }

    #[test]
    fn walk_waits_for_the_message_in_progress_only() {
        // count 2, "ab", "cde": headers at 0, 4 and 10; the end at 17.
        let b = frame(2, &[b"ab", b"cde"]);
        let mut w = Walk::new(0, LIMITS);
        assert_eq!(w.advance(&b[..2]), Some(4));
        assert_eq!(w.advance(&b[..4]), Some(8));
        assert_eq!(w.advance(&b[..9]), Some(10));
        assert_eq!(w.advance(&b[..12]), Some(14));
        assert_eq!(w.advance(&b[..14]), Some(17));
        assert_eq!(w.advance(&b), None);
        // Bytes after the last message are the next command's.
        let mut more = b.to_vec();
        more.extend_from_slice(b"NOP\n");
        assert_eq!(Walk::new(0, LIMITS).advance(&more), None);
    }

    #[test]
    fn walk_stops_at_what_split_refuses() {
        assert_eq!(Walk::new(0, LIMITS).advance(&frame(0, &[])), None);
        assert_eq!(Walk::new(0, LIMITS).advance(&frame(20, &[])), None);
        let big = frame(1, &[b"0123456789A"]);
        assert_eq!(Walk::new(0, LIMITS).advance(&big[..8]), None);
    }
}
