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
pub enum Decoder {
    Deflate(Box<Decompress>),
    Snappy(SnappyFrameDecoder),
}

/// Turns plain protocol bytes into what goes on the wire.
pub enum Encoder {
    Deflate(Box<Compress>),
    Snappy(Box<snap::write::FrameEncoder<Vec<u8>>>),
}

impl Decoder {
    pub fn deflate() -> Decoder {
        Decoder::Deflate(Box::new(Decompress::new(false)))
    }

    pub fn snappy() -> Decoder {
        Decoder::Snappy(SnappyFrameDecoder::default())
    }

    /// Decodes `input` (all of it is consumed) onto the end of `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut bytes::BytesMut) -> Result<(), CompressError> {
        match self {
            Decoder::Deflate(d) => {
                let mut rest = input;
                loop {
                    out.reserve(rest.len().max(4096) * 2);
                    let before_in = d.total_in();
                    let start = out.len();
                    let spare = out.capacity() - start;
                    out.resize(start + spare, 0);
                    let before_out = d.total_out();
                    let status = d
                        .decompress(rest, &mut out[start..], FlushDecompress::Sync)
                        .map_err(|e| CompressError::Deflate(e.to_string()));
                    let produced = (d.total_out() - before_out) as usize;
                    out.truncate(start + produced);
                    let status = status?;
                    let consumed = (d.total_in() - before_in) as usize;
                    rest = &rest[consumed..];
                    // Done when all input is in and the output was not full.
                    if rest.is_empty() && produced < spare {
                        return Ok(());
                    }
                    if status == Status::StreamEnd {
                        return Ok(());
                    }
                    if consumed == 0 && produced == 0 {
                        return Ok(()); // needs more input
                    }
                }
            }
            Decoder::Snappy(s) => s.decode(input, out),
        }
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

impl SnappyFrameDecoder {
    fn decode(&mut self, input: &[u8], out: &mut bytes::BytesMut) -> Result<(), CompressError> {
        self.pending.extend_from_slice(input);
        let mut pos = 0;
        while self.pending.len() - pos >= 4 {
            let h = &self.pending[pos..pos + 4];
            let kind = h[0];
            let len = u32::from_le_bytes([h[1], h[2], h[3], 0]) as usize;
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
                    let start = out.len();
                    out.resize(start + n, 0);
                    self.raw
                        .decompress(block, &mut out[start..])
                        .map_err(|e| CompressError::Snappy(e.to_string()))?;
                }
                // uncompressed data: crc, then the bytes
                0x01 => {
                    let data = chunk
                        .get(4..)
                        .ok_or_else(|| CompressError::Snappy("short chunk".into()))?;
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
            dec.decode(piece, &mut plain).unwrap();
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
}
