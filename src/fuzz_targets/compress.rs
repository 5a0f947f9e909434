//! The snappy (framing format) and raw deflate decoders of a connection's
//! input (T19): arbitrary bytes, or a stream our encoder made (perhaps
//! with one byte flipped), fed in pieces with a decode budget and drained
//! as `conn::fill` does. The pieces must decode to what the whole input
//! decodes to at once, and a decoder must never keep input it does not
//! decode while saying it has none (a connection would hold it forever).

use bytes::BytesMut;

use super::{pieces, Choices};
use crate::conn::compress::{Decoder, Encoder};

fn decoder(snappy: bool) -> Decoder {
    if snappy {
        Decoder::snappy()
    } else {
        Decoder::deflate()
    }
}

/// What a decode of `wire` in `cuts` gives: the plain bytes, and whether
/// the stream failed.
fn decode(
    snappy: bool,
    wire: &[u8],
    cuts: &[std::ops::Range<usize>],
    budget: usize,
) -> (Vec<u8>, bool) {
    let mut dec = decoder(snappy);
    let mut out = BytesMut::new();
    for cut in cuts {
        if dec.decode(&wire[cut.clone()], &mut out, budget).is_err() {
            return (out.to_vec(), true);
        }
        // `conn` decodes what is pending, in budgets, while it gets bytes.
        while dec.has_pending() {
            let before = out.len();
            if dec.decode(&[], &mut out, budget).is_err() {
                return (out.to_vec(), true);
            }
            if out.len() == before {
                assert!(!dec.has_pending(), "input held that nothing decodes");
                break;
            }
        }
    }
    (out.to_vec(), false)
}

/// `plain` compressed by our encoder, flushed after each of `cuts`.
fn encoded(snappy: bool, plain: &[u8], cuts: &[std::ops::Range<usize>]) -> Vec<u8> {
    let mut enc = if snappy {
        Encoder::snappy()
    } else {
        Encoder::deflate(6)
    };
    let mut wire = Vec::new();
    for cut in cuts {
        if let Err(e) = enc.encode(&plain[cut.clone()], &mut wire) {
            panic!("encoding failed: {e}");
        }
    }
    wire
}

pub fn compress(data: &[u8]) {
    let mut c = Choices::new(data);
    let flags = c.byte();
    let snappy = flags & 1 == 1;
    let budget = c.pick(&[64 * 1024, 1, 100, 4096]);
    let seed = c.byte();
    let max_piece = c.pick(&[1, 3, 7, 64, 4096]);
    let flip = c.byte() as usize;
    let input = c.rest();
    let made = flags & 2 == 2;
    let mut wire = if made {
        encoded(
            snappy,
            input,
            &pieces(input.len(), seed.rotate_left(3), 300),
        )
    } else {
        input.to_vec()
    };
    let flipped = made && flags & 4 == 4 && !wire.is_empty();
    if flipped {
        let at = flip * 7919 % wire.len();
        wire[at] ^= 1 << (flip % 8);
    }
    let whole = decode(
        snappy,
        &wire,
        &pieces(wire.len(), 0, wire.len()),
        usize::MAX / 4,
    );
    let cut = decode(snappy, &wire, &pieces(wire.len(), seed, max_piece), budget);
    if made && !flipped {
        assert!(!whole.1, "our own stream does not decode");
        assert_eq!(whole.0, input, "our own stream decodes to other bytes");
    }
    match (whole.1, cut.1) {
        (false, false) => assert_eq!(cut.0, whole.0, "decoded in pieces differs"),
        (true, true) => {
            let n = whole.0.len().min(cut.0.len());
            assert_eq!(cut.0[..n], whole.0[..n], "output before the error differs");
        }
        (w, c) => panic!("whole input failed: {w}, in pieces failed: {c}"),
    }
}
