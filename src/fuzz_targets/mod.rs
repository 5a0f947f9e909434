//! The bodies of the fuzz targets in `fuzz/` (cargo fuzz, nightly), as
//! plain functions so that `tests/fuzz_corpus.rs` replays every committed
//! corpus file through the same code on stable. Each takes the fuzzer's
//! bytes and panics when a parser panics or breaks a property: a stream
//! parsed in pieces must agree with the same bytes parsed at once.
//!
//! Not part of the broker; the top layer, so that it may reach every
//! parser it drives.

pub mod auth;
pub mod codec;
pub mod compress;
pub mod http;
pub mod identify;
pub mod meta;
pub mod mpub;
pub mod record;

/// A small deterministic generator for the choices a target makes from
/// its input's first bytes (where to cut a stream, which limits apply).
pub(crate) struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Choices<'a> {
        Choices { data }
    }

    /// The next byte, 0 once the input is used up.
    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// One of `options`, picked by the next byte.
    pub(crate) fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.byte() as usize % options.len()]
    }

    /// What is left after the choices.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Cut points for `len` bytes: piece lengths from a seed, 1..=max each.
pub(crate) fn pieces(len: usize, seed: u8, max: usize) -> Vec<std::ops::Range<usize>> {
    let mut rng = fastrand::Rng::with_seed(u64::from(seed));
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        let n = if seed == 0 { len } else { rng.usize(1..=max) };
        let end = (at + n).min(len);
        out.push(at..end);
        at = end;
    }
    out
}
