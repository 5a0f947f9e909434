//! H*: a raw `#` in a request target is data, as Go's server reads it.
//!
//! Go parses the target with `url.ParseRequestURI`, which does not cut a
//! fragment: `POST /pub?topic=t#ephemeral` has the query `topic=t#ephemeral`
//! and publishes to the ephemeral topic `t#ephemeral`; a `#` before the `?`
//! stays in the path (no route: 404). hyper's URI parser drops everything
//! from `#` on as a fragment, so clients that build URLs by concatenation
//! would reach the durable topic `t`. `EscapeHash` sits between the socket
//! and hyper and rewrites each `#` in the target of every request line to
//! `%23`, which hyper keeps and the query parser decodes back to `#`.
//!
//! To find every request line of a keep-alive or pipelined connection, it
//! follows the message framing (headers, Content-Length or chunked body) the
//! way hyper does; bodies and headers pass untouched. A framing it cannot
//! follow (hyper then answers 400 and closes) stops the rewriting for the
//! rest of the connection instead of guessing. Cost on the hot path: one
//! pass over the request line and header bytes; bodies are skipped by count.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// A header line longer than this cannot be a Content-Length or
/// Transfer-Encoding hyper would accept from nsqd's clients; only this much
/// of a line split across reads is kept.
const MAX_FRAMING_LINE: usize = 256;

#[derive(Debug, PartialEq)]
enum State {
    /// Before or in a request line. `spaces` counts the spaces seen: the
    /// target is between the first and the second. Empty lines before a
    /// request are skipped, as hyper does.
    RequestLine {
        started: bool,
        spaces: u8,
    },
    Headers,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// Framing not understood: leave the rest of the connection alone.
    Passthrough,
}

/// Follows HTTP/1 request framing over the bytes of a connection and says
/// where the `#`s of request targets are.
#[derive(Debug)]
pub struct Framer {
    state: State,
    /// The current header or chunk-size line when it spans reads.
    line: Vec<u8>,
    content_length: Option<u64>,
    chunked: bool,
    transfer_encoding: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer {
            state: State::RequestLine {
                started: false,
                spaces: 0,
            },
            line: Vec::new(),
            content_length: None,
            chunked: false,
            transfer_encoding: false,
        }
    }
}

impl Framer {
    /// Consumes `data`, the next bytes of the connection, and appends to
    /// `hashes` the offsets in `data` of each `#` in a request target.
    pub fn scan(&mut self, data: &[u8], hashes: &mut Vec<usize>) {
        let mut i = 0;
        while i < data.len() {
            i += match self.state {
                State::RequestLine { .. } => self.request_line(data, i, hashes),
                State::Headers | State::ChunkSize | State::Trailers => self.line(&data[i..]),
                State::Body(left) | State::ChunkData(left) => {
                    let n = left.min((data.len() - i) as u64);
                    self.skip(left - n);
                    n as usize
                }
                State::ChunkEnd => match memchr::memchr(b'\n', &data[i..]) {
                    Some(end) => {
                        self.state = State::ChunkSize;
                        end + 1
                    }
                    None => data.len() - i,
                },
                State::Passthrough => data.len() - i,
            };
        }
    }

    fn skip(&mut self, left: u64) {
        if left == 0 {
            self.state = match self.state {
                State::ChunkData(_) => State::ChunkEnd,
                _ => Self::default().state,
            };
        } else if let State::Body(l) | State::ChunkData(l) = &mut self.state {
            *l = left;
        }
    }

    /// Bytes of `data` from `start` taken by the request line: jumps from
    /// one space, `#` or line end to the next.
    fn request_line(&mut self, data: &[u8], start: usize, hashes: &mut Vec<usize>) -> usize {
        let State::RequestLine { started, spaces } = &mut self.state else {
            return 0;
        };
        let mut i = start;
        if !*started {
            match data[i..].iter().position(|&b| b != b'\r' && b != b'\n') {
                Some(skip) => i += skip,
                None => return data.len() - start,
            }
            *started = true;
        }
        while let Some(at) = memchr::memchr3(b' ', b'#', b'\n', &data[i..]) {
            let at = i + at;
            match data[at] {
                b' ' => *spaces = spaces.saturating_add(1),
                b'#' if *spaces == 1 => hashes.push(at),
                b'#' => {}
                _ => {
                    self.state = State::Headers;
                    self.content_length = None;
                    self.chunked = false;
                    self.transfer_encoding = false;
                    return at + 1 - start;
                }
            }
            i = at + 1;
        }
        data.len() - start
    }

    /// Takes one line (or the part of it in `data`) of the header section,
    /// a chunk size or the trailers; returns the bytes taken.
    fn line(&mut self, data: &[u8]) -> usize {
        let (part, taken, complete) = match memchr::memchr(b'\n', data) {
            Some(end) => (&data[..end], end + 1, true),
            None => (data, data.len(), false),
        };
        if !complete || !self.line.is_empty() {
            let room = MAX_FRAMING_LINE.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            if !complete {
                return taken;
            }
            let line = std::mem::take(&mut self.line);
            self.end_of_line(&line);
            self.line = line;
            self.line.clear();
        } else {
            self.end_of_line(part);
        }
        taken
    }

    fn end_of_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.state {
            State::Headers if line.is_empty() => self.end_of_head(),
            State::Headers => self.header(line),
            State::ChunkSize => self.chunk_size(line),
            State::Trailers if line.is_empty() => self.state = Self::default().state,
            _ => {}
        }
    }

    fn header(&mut self, line: &[u8]) {
        // Most lines are neither: skip them on the first byte.
        if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
            return;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                Some(n) => self.content_length = Some(n),
                None => self.state = State::Passthrough,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
    }

    /// hyper's request framing: chunked wins, else Content-Length, else no
    /// body; another transfer coding is an error that closes the connection.
    fn end_of_head(&mut self) {
        self.state = if self.chunked {
            State::ChunkSize
        } else if self.transfer_encoding {
            State::Passthrough
        } else {
            match self.content_length {
                Some(n) if n > 0 => State::Body(n),
                _ => Self::default().state,
            }
        };
    }

    /// `<hex size>[;extensions]`; size 0 starts the trailers.
    fn chunk_size(&mut self, line: &[u8]) {
        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(digits.trim_ascii())
            .ok()
            .and_then(|d| u64::from_str_radix(d, 16).ok());
        self.state = match size {
            Some(0) => State::Trailers,
            Some(n) => State::ChunkData(n),
            None => State::Passthrough,
        };
    }
}

/// The connection as hyper reads it: `#` in request targets escaped.
pub struct EscapeHash<S> {
    inner: S,
    framer: Framer,
    /// Rewritten bytes that did not fit the caller's buffer.
    pending: Vec<u8>,
    /// Offsets of the `#`s in the last read (kept for its allocation).
    hashes: Vec<usize>,
}

impl<S> EscapeHash<S> {
    pub fn new(inner: S) -> Self {
        EscapeHash {
            inner,
            framer: Framer::default(),
            pending: Vec::new(),
            hashes: Vec::new(),
        }
    }
}

/// Writes `data` with `%23` for the `#` at each of `hashes` into `buf`;
/// what does not fit goes to `pending`. Returns the bytes put into `buf`.
pub fn escape_into(data: &[u8], hashes: &[usize], buf: &mut [u8], pending: &mut Vec<u8>) -> usize {
    let mut out = Vec::with_capacity(data.len() + 2 * hashes.len());
    let mut from = 0;
    for &h in hashes {
        out.extend_from_slice(&data[from..h]);
        out.extend_from_slice(b"%23");
        from = h + 1;
    }
    out.extend_from_slice(&data[from..]);
    let n = out.len().min(buf.len());
    buf[..n].copy_from_slice(&out[..n]);
    pending.extend_from_slice(&out[n..]);
    n
}

impl<S: AsyncRead + Unpin> AsyncRead for EscapeHash<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if !me.pending.is_empty() {
            let n = me.pending.len().min(buf.len());
            buf[..n].copy_from_slice(&me.pending[..n]);
            me.pending.drain(..n);
            return Poll::Ready(Ok(n));
        }
        let n = ready!(Pin::new(&mut me.inner).poll_read(cx, buf))?;
        me.hashes.clear();
        me.framer.scan(&buf[..n], &mut me.hashes);
        if me.hashes.is_empty() {
            return Poll::Ready(Ok(n));
        }
        let data = buf[..n].to_vec();
        Poll::Ready(Ok(escape_into(&data, &me.hashes, buf, &mut me.pending)))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EscapeHash<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection's bytes as hyper would see them, fed in pieces of
    /// `step` bytes.
    fn escaped(input: &[u8], step: usize) -> Vec<u8> {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        let mut hashes = Vec::new();
        for piece in input.chunks(step) {
            hashes.clear();
            framer.scan(piece, &mut hashes);
            let mut buf = vec![0u8; piece.len()];
            let mut pending = Vec::new();
            let n = escape_into(piece, &hashes, &mut buf, &mut pending);
            out.extend_from_slice(&buf[..n]);
            out.extend_from_slice(&pending);
        }
        out
    }

    fn every_split(input: &[u8], want: &[u8]) {
        for step in 1..=input.len() {
            assert_eq!(
                String::from_utf8_lossy(&escaped(input, step)),
                String::from_utf8_lossy(want),
                "pieces of {step}"
            );
        }
    }

    #[test]
    fn a_hash_in_the_target_is_escaped_wherever_the_reads_split() {
        every_split(
            b"POST /pub?topic=t#ephemeral HTTP/1.1\r\nHost: x#y\r\nContent-Length: 3\r\n\r\na#b",
            b"POST /pub?topic=t%23ephemeral HTTP/1.1\r\nHost: x#y\r\nContent-Length: 3\r\n\r\na#b",
        );
    }

    #[test]
    fn pipelined_requests_each_get_their_target_escaped_and_only_that() {
        let input = b"\r\nPOST /pub?topic=a#ephemeral HTTP/1.1\r\ncontent-length: 6\r\n\r\nGET #x\
POST /channel/create?topic=b&channel=c#ephemeral HTTP/1.1\r\n\r\n\
GET /x#y HTTP/1.0\r\nX-A: #\r\n\r\n";
        let want = b"\r\nPOST /pub?topic=a%23ephemeral HTTP/1.1\r\ncontent-length: 6\r\n\r\nGET #x\
POST /channel/create?topic=b&channel=c%23ephemeral HTTP/1.1\r\n\r\n\
GET /x%23y HTTP/1.0\r\nX-A: #\r\n\r\n";
        every_split(input, want);
    }

    #[test]
    fn chunked_bodies_are_followed_to_the_next_request() {
        let input = b"POST /mpub?topic=c#ephemeral HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
4;ext=1\r\n#a#b\r\n0\r\nTrailer-X: #\r\n\r\nGET /stats?topic=d#ephemeral HTTP/1.1\r\n\r\n";
        let want = b"POST /mpub?topic=c%23ephemeral HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
4;ext=1\r\n#a#b\r\n0\r\nTrailer-X: #\r\n\r\nGET /stats?topic=d%23ephemeral HTTP/1.1\r\n\r\n";
        every_split(input, want);
    }

    #[test]
    fn only_the_target_is_rewritten_and_unknown_framing_stops_it() {
        // A `#` in the method or the version is not in the target.
        every_split(
            b"GE#T /a#b HTTP/1.1#\r\n\r\n",
            b"GE#T /a%23b HTTP/1.1#\r\n\r\n",
        );
        // gzip without chunked: hyper refuses it; nothing after is touched.
        let input =
            b"POST /pub?topic=t#x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nGET /a#b HTTP/1.1\r\n\r\n";
        let want = b"POST /pub?topic=t%23x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nGET /a#b HTTP/1.1\r\n\r\n";
        every_split(input, want);
    }

    #[test]
    fn escaped_bytes_that_do_not_fit_wait_for_the_next_read() {
        let data = b"GET /#### HTTP/1.1\r\n";
        let mut hashes = Vec::new();
        Framer::default().scan(data, &mut hashes);
        assert_eq!(hashes, [5, 6, 7, 8]);
        let mut buf = [0u8; 8];
        let mut pending = Vec::new();
        assert_eq!(escape_into(data, &hashes, &mut buf, &mut pending), 8);
        assert_eq!(&buf, b"GET /%23");
        assert_eq!(pending, b"%23%23%23 HTTP/1.1\r\n");
    }
}
