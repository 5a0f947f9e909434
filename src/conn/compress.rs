//! Snappy and deflate on a connection's byte stream (T19), negotiated by
//! IDENTIFY. Both directions switch right after the IDENTIFY answer, which
//! goes out in clear; from then on everything is compressed.
//!
//! - deflate: raw DEFLATE (no zlib header), sync-flushed at every flush.
//! - snappy: the snappy *framing* format (stream identifier, then chunks).
//!
//! They work on whole buffers (push style), so the reader decompresses what
//! `recv` returned and the writer compresses what it is about to send.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CompressError {
    #[error("deflate: {0}")]
    Deflate(String),
    #[error("snappy: {0}")]
    Snappy(String),
}

/// Turns bytes from the client into plain protocol bytes.
///
/// Input is taken whole but decoded at most `budget` bytes at a time: a
/// small compressed packet can stand for hundreds of megabytes, and a
/// connection must not turn it into memory or a stalled core in one go.
pub enum Decoder {
    Deflate(Box<DeflateDecoder>),
    Snappy(SnappyFrameDecoder),
}

pub struct DeflateDecoder {
    inflate: Decompress,
    pending: Vec<u8>,
    /// The last call stopped with its output full: the inflater may hold
    /// more output even when all input is in.
    held: bool,
    /// The client sent a final block: the stream is over. Go's flate reader
    /// returns EOF there and nsqd closes the connection; bytes after it
    /// would otherwise pile up in `pending`, never decoded.
    ended: bool,
}

/// Turns plain protocol bytes into what goes on the wire.
pub enum Encoder {
    Deflate(Box<Compress>),
    Snappy(Box<snap::write::FrameEncoder<Vec<u8>>>),
}

impl Decoder {
    pub fn deflate() -> Decoder {
        Decoder::Deflate(Box::new(DeflateDecoder {
            inflate: Decompress::new(false),
            pending: Vec::new(),
            held: false,
            ended: false,
        }))
    }

    pub fn snappy() -> Decoder {
        Decoder::Snappy(SnappyFrameDecoder::default())
    }

    /// Compressed bytes received but not decoded yet.
    pub fn has_pending(&self) -> bool {
        match self {
            Decoder::Deflate(d) => !d.pending.is_empty() || d.held || d.ended,
            Decoder::Snappy(s) => s.has_complete_chunk(),
        }
    }

    /// Takes `input`, then decodes onto the end of `out` until about
    /// `budget` bytes were produced or the input runs out.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut bytes::BytesMut,
        budget: usize,
    ) -> Result<(), CompressError> {
        match self {
            Decoder::Deflate(d) => d.decode(input, out, budget),
            Decoder::Snappy(s) => s.decode(input, out, budget),
        }
    }
}

impl DeflateDecoder {
    fn decode(
        &mut self,
        input: &[u8],
        out: &mut bytes::BytesMut,
        budget: usize,
    ) -> Result<(), CompressError> {
        if self.ended {
            return Err(CompressError::Deflate("stream ended".into()));
        }
        self.pending.extend_from_slice(input);
        let target = out.len() + budget;
        let mut taken = 0;
        self.held = false;
        while out.len() < target {
            let start = out.len();
            let room = (target - start).clamp(1024, 64 * 1024);
            out.resize(start + room, 0);
            let before_in = self.inflate.total_in();
            let before_out = self.inflate.total_out();
            let status = self
                .inflate
                .decompress(
                    &self.pending[taken..],
                    &mut out[start..],
                    FlushDecompress::Sync,
                )
                .map_err(|e| CompressError::Deflate(e.to_string()));
            let produced = (self.inflate.total_out() - before_out) as usize;
            out.truncate(start + produced);
            let status = status?;
            let consumed = (self.inflate.total_in() - before_in) as usize;
            taken += consumed;
            let input_done = taken == self.pending.len();
            self.held = produced == room;
            if status == Status::StreamEnd || (consumed == 0 && produced == 0) {
                self.held = false;
                self.ended = status == Status::StreamEnd;
                break;
            }
            // Everything in and the output was not full: nothing is held back.
            if input_done && produced < room {
                break;
            }
        }
        self.pending.drain(..taken);
        Ok(())
    }
}

impl Encoder {
    pub fn deflate(level: u32) -> Encoder {
        Encoder::Deflate(Box::new(Compress::new(Compression::new(level), false)))
    }

    pub fn snappy() -> Encoder {
        Encoder::Snappy(Box::new(snap::write::FrameEncoder::new(Vec::new())))
    }

    /// Compresses `input` and flushes, appending to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CompressError> {
        match self {
            Encoder::Deflate(c) => {
                let mut rest = input;
                loop {
                    out.reserve(rest.len() / 2 + 64);
                    let before_in = c.total_in();
                    let before_len = out.len();
                    c.compress_vec(rest, out, FlushCompress::Sync)
                        .map_err(|e| CompressError::Deflate(e.to_string()))?;
                    rest = &rest[(c.total_in() - before_in) as usize..];
                    // The sync flush is complete when output space was left.
                    if rest.is_empty() && out.len() < out.capacity() {
                        return Ok(());
                    }
                    if rest.is_empty() && out.len() == before_len {
                        return Ok(());
                    }
                }
            }
            Encoder::Snappy(w) => {
                use std::io::Write;
                w.write_all(input)
                    .and_then(|_| w.flush())
                    .map_err(|e| CompressError::Snappy(e.to_string()))?;
                out.append(w.get_mut());
                Ok(())
            }
        }
    }
}

/// A push-style reader of the snappy framing format.
#[derive(Default)]
pub struct SnappyFrameDecoder {
    pending: Vec<u8>,
    seen_identifier: bool,
    raw: snap::raw::Decoder,
}

const SNAPPY_IDENTIFIER: &[u8] = b"sNaPpY";

/// The framing format's limits: at most 64 KiB of data per chunk.
const SNAPPY_MAX_UNCOMPRESSED: usize = 65536;
/// A compressed chunk: crc + the worst-case compressed size of 64 KiB.
const SNAPPY_MAX_CHUNK: usize = 4 + 32 + SNAPPY_MAX_UNCOMPRESSED + SNAPPY_MAX_UNCOMPRESSED / 6;

impl SnappyFrameDecoder {
    /// A whole chunk is pending, or a header `decode` refuses at once.
    fn has_complete_chunk(&self) -> bool {
        self.pending.len() >= 4 && {
            let h = &self.pending[..4];
            let len = u32::from_le_bytes([h[1], h[2], h[3], 0]) as usize;
            self.pending.len() >= 4 + len || (h[0] <= 0x01 && len > SNAPPY_MAX_CHUNK)
        }
    }

    fn decode(
        &mut self,
        input: &[u8],
        out: &mut bytes::BytesMut,
        budget: usize,
    ) -> Result<(), CompressError> {
        self.pending.extend_from_slice(input);
        let target = out.len() + budget;
        let mut pos = 0;
        while self.pending.len() - pos >= 4 && out.len() < target {
            let h = &self.pending[pos..pos + 4];
            let kind = h[0];
            let len = u32::from_le_bytes([h[1], h[2], h[3], 0]) as usize;
            if (kind == 0x00 || kind == 0x01) && len > SNAPPY_MAX_CHUNK {
                return Err(CompressError::Snappy(format!(
                    "chunk of {len} bytes is too large"
                )));
            }
            if self.pending.len() - pos - 4 < len {
                break;
            }
            let chunk = &self.pending[pos + 4..pos + 4 + len];
            match kind {
                0xff => {
                    if chunk != SNAPPY_IDENTIFIER {
                        return Err(CompressError::Snappy("bad stream identifier".into()));
                    }
                    self.seen_identifier = true;
                }
                _ if !self.seen_identifier => {
                    return Err(CompressError::Snappy("missing stream identifier".into()));
                }
                // compressed data: 4-byte masked crc32c, then a snappy block
                0x00 => {
                    let block = chunk
                        .get(4..)
                        .ok_or_else(|| CompressError::Snappy("short chunk".into()))?;
                    let n = snap::raw::decompress_len(block)
                        .map_err(|e| CompressError::Snappy(e.to_string()))?;
                    if n > SNAPPY_MAX_UNCOMPRESSED {
                        return Err(CompressError::Snappy(format!("chunk decodes to {n} bytes")));
                    }
                    let start = out.len();
                    out.resize(start + n, 0);
                    self.raw
                        .decompress(block, &mut out[start..])
                        .map_err(|e| CompressError::Snappy(e.to_string()))?;
                    check_snappy_crc(chunk, &out[start..])?;
                }
                // uncompressed data: crc, then the bytes
                0x01 => {
                    let data = chunk
                        .get(4..)
                        .ok_or_else(|| CompressError::Snappy("short chunk".into()))?;
                    if data.len() > SNAPPY_MAX_UNCOMPRESSED {
                        return Err(CompressError::Snappy("uncompressed chunk too large".into()));
                    }
                    check_snappy_crc(chunk, data)?;
                    out.extend_from_slice(data);
                }
                0x02..=0x7f => {
                    return Err(CompressError::Snappy(format!(
                        "reserved chunk type {kind:#x}"
                    )));
                }
                _ => {} // padding and skippable chunks
            }
            pos += 4 + len;
        }
        self.pending.drain(..pos);
        Ok(())
    }
}

/// The framing format's checksum: crc32c, rotated and offset so that a
/// crc of data holding crcs is not itself trivial.
fn masked_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// A data chunk's first 4 bytes are the masked crc32c of what it decodes
/// to; Go's snappy reader (and so nsqd) refuses a chunk that does not match.
fn check_snappy_crc(chunk: &[u8], data: &[u8]) -> Result<(), CompressError> {
    if chunk[..4] != masked_crc(data).to_le_bytes() {
        return Err(CompressError::Snappy("corrupt input (checksum)".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn round_trip(mut enc: Encoder, mut dec: Decoder) {
        let mut wire = Vec::new();
        let messages: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 10 + i * 97]).collect();
        for m in &messages {
            enc.encode(m, &mut wire).unwrap();
        }
        // Feed the wire bytes in odd-sized pieces.
        let mut plain = BytesMut::new();
        for piece in wire.chunks(7) {
            dec.decode(piece, &mut plain, 1000).unwrap();
        }
        while dec.has_pending() {
            dec.decode(&[], &mut plain, 1000).unwrap();
        }
        assert_eq!(&plain[..], &messages.concat()[..]);
    }

    #[test]
    fn deflate_round_trip() {
        round_trip(Encoder::deflate(6), Decoder::deflate());
    }

    #[test]
    fn snappy_round_trip() {
        round_trip(Encoder::snappy(), Decoder::snappy());
    }

    /// Go's snappy reader checks each data chunk's masked crc32c; so does ours,
    /// for compressed (0x00) and uncompressed (0x01) chunks alike.
    #[test]
    fn snappy_chunk_with_a_bad_checksum_is_refused() {
        let identifier = b"\xff\x06\x00\x00sNaPpY";
        let data = b"PUB t\n\x00\x00\x00\x01x";
        let crc = crc32c::crc32c(data)
            .rotate_right(15)
            .wrapping_add(0xa282_ead8);
        let chunk = |kind: u8, crc: u32, payload: &[u8]| {
            let len = (4 + payload.len()) as u32;
            let mut c = vec![kind, len as u8, (len >> 8) as u8, (len >> 16) as u8];
            c.extend_from_slice(&crc.to_le_bytes());
            c.extend_from_slice(payload);
            c
        };
        let compressed = snap::raw::Encoder::new().compress_vec(data).unwrap();
        for (kind, payload) in [(0x01, &data[..]), (0x00, &compressed[..])] {
            let mut plain = BytesMut::new();
            let good = [&identifier[..], &chunk(kind, crc, payload)].concat();
            Decoder::snappy().decode(&good, &mut plain, 1000).unwrap();
            assert_eq!(&plain[..], data);
            let bad = [&identifier[..], &chunk(kind, crc ^ 1, payload)].concat();
            let e = Decoder::snappy().decode(&bad, &mut BytesMut::new(), 1000);
            assert!(
                matches!(e, Err(CompressError::Snappy(_))),
                "kind {kind:#x}: {e:?}"
            );
        }
    }

    #[test]
    fn deflate_bomb_is_decoded_in_bounded_steps() {
        let mut enc = Encoder::deflate(9);
        let mut wire = Vec::new();
        enc.encode(&vec![b'x'; 50 << 20], &mut wire).unwrap();
        assert!(wire.len() < 200_000);
        let mut dec = Decoder::deflate();
        let mut plain = BytesMut::new();
        dec.decode(&wire, &mut plain, 64 * 1024).unwrap();
        assert!(plain.len() <= 128 * 1024, "{}", plain.len());
        assert!(dec.has_pending());
    }

    /// Found reading the decoder for the compress fuzz target: bytes after
    /// a final deflate block were kept in `pending` forever (memory a client
    /// could grow without bound); now the stream ends there, as nsqd's does.
    #[test]
    fn deflate_stream_ends_at_its_final_block() {
        let mut c = Compress::new(Compression::new(6), false);
        let mut wire = Vec::with_capacity(256);
        c.compress_vec(b"NOP\n", &mut wire, FlushCompress::Finish)
            .unwrap();
        let mut dec = Decoder::deflate();
        let mut plain = BytesMut::new();
        dec.decode(&wire, &mut plain, 1000).unwrap();
        assert_eq!(&plain[..], b"NOP\n");
        // What comes after the end is refused, not held.
        assert!(dec.has_pending());
        assert!(dec.decode(&[1u8; 4096], &mut plain, 1000).is_err());
        assert_eq!(&plain[..], b"NOP\n");
    }

    /// Found by the compress fuzz target: a snappy stream with one bit
    /// flipped into a chunk length over the limit, decoded with a small
    /// budget. The decode that stopped at its budget left the bad header
    /// pending, but `has_pending` looked only for whole chunks, so the
    /// connection waited for more bytes instead of closing at once.
    #[test]
    fn snappy_bad_header_left_by_the_budget_is_pending() {
        let mut raw = vec![0xff, 6, 0, 0];
        raw.extend_from_slice(b"sNaPpY");
        raw.extend_from_slice(&[0x01, 8, 0, 0]);
        raw.extend_from_slice(&masked_crc(b"NOP\n").to_le_bytes());
        raw.extend_from_slice(b"NOP\n");
        raw.extend_from_slice(&[0x00, 0xff, 0xff, 0xff]);
        let mut dec = Decoder::snappy();
        let mut plain = BytesMut::new();
        dec.decode(&raw, &mut plain, 1).unwrap();
        assert_eq!(&plain[..], b"NOP\n");
        assert!(dec.has_pending());
        assert!(dec.decode(&[], &mut plain, 1).is_err());
    }

    #[test]
    fn snappy_huge_declared_length_is_rejected() {
        let mut raw = vec![0xff, 6, 0, 0];
        raw.extend_from_slice(b"sNaPpY");
        raw.extend_from_slice(&[0x00, 9, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        let mut dec = Decoder::snappy();
        let mut plain = BytesMut::new();
        assert!(dec.decode(&raw, &mut plain, 1 << 20).is_err());
        assert!(plain.capacity() < 1 << 20);
    }
}
