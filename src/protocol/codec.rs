//! Decoding of client commands (T3, T4, T9, T13-T32).
//!
//! nsqd validates a command in stages while it reads it: the line first
//! (state, parameters, names), then the 4-byte body length, then the body.
//! An error is reported as soon as the bytes that prove it have arrived, so a
//! `PUB bad!name\n` gets its error without waiting for a body. `decode` is
//! re-run on the buffered bytes whenever more arrive; it consumes nothing
//! until a whole command is there, and then hands out the body as `Bytes`
//! slices of the read buffer (no copy).

use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::commands::{body_limit, mpub_topic, parse, read_i32, Parsed};
use super::error::ClientError;
use super::message::MessageId;
use super::mpub::{MpubLimits, Walk};

/// nsqd reads command lines with a 16 KiB `bufio.Reader`; a longer line
/// fails the read and the connection is closed without an error frame.
pub const MAX_LINE_LEN: usize = 16 * 1024;

/// Commands up to this size have their bodies copied out of the read buffer.
pub const COPY_COMMANDS_UP_TO: usize = 16 * 1024;

/// Where the connection is in its life (T9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Init,
    Subscribed,
    Closing,
}

/// What the decoder must know about the connection and the limits.
#[derive(Debug, Clone, Copy)]
pub struct DecodeContext {
    pub state: ConnState,
    pub heartbeats_enabled: bool,
    pub max_msg_size: i64,
    pub max_body_size: i64,
    pub max_rdy_count: i64,
    pub max_req_timeout_ms: i64,
}

impl DecodeContext {
    /// The limits an MPUB body is checked against.
    pub fn mpub_limits(&self) -> MpubLimits {
        MpubLimits {
            max_msg_size: self.max_msg_size,
            max_body_size: self.max_body_size,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Identify(Bytes),
    Auth(Bytes),
    Sub {
        topic: Bytes,
        channel: Bytes,
    },
    /// `RDY` after CLS is accepted and ignored.
    Rdy(Option<i64>),
    Fin(MessageId),
    /// Timeout already clamped into `[0, max_req_timeout]` (T26).
    Req {
        id: MessageId,
        timeout: Duration,
        requested_ms: u64,
    },
    Touch(MessageId),
    Cls,
    Nop,
    Pub {
        topic: Bytes,
        body: Bytes,
    },
    Mpub {
        topic: Bytes,
        bodies: Vec<Bytes>,
    },
    /// The delay as nsqd computes it: milliseconds times 10^6 in a
    /// wrapping int64 of nanoseconds.
    Dpub {
        topic: Bytes,
        defer: Duration,
        body: Bytes,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Identify(_) => "IDENTIFY",
            Command::Auth(_) => "AUTH",
            Command::Sub { .. } => "SUB",
            Command::Rdy(_) => "RDY",
            Command::Fin(_) => "FIN",
            Command::Req { .. } => "REQ",
            Command::Touch(_) => "TOUCH",
            Command::Cls => "CLS",
            Command::Nop => "NOP",
            Command::Pub { .. } => "PUB",
            Command::Mpub { .. } => "MPUB",
            Command::Dpub { .. } => "DPUB",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Send this error frame (and close if it is fatal).
    Client(ClientError),
    /// The line is longer than nsqd reads: close without a frame.
    LineTooLong,
}

impl From<ClientError> for DecodeError {
    fn from(e: ClientError) -> Self {
        DecodeError::Client(e)
    }
}

/// The end of the command line (before any `\r`) and where its body
/// starts; `None` until the newline has arrived.
fn find_line(buf: &[u8]) -> Option<(usize, usize)> {
    let nl = memchr::memchr(b'\n', buf)?;
    let mut line_end = nl;
    if line_end > 0 && buf[line_end - 1] == b'\r' {
        line_end -= 1;
    }
    Some((line_end, nl + 1))
}

/// Decodes one command from the front of `buf`. `Ok(None)`: need more bytes.
pub fn decode(buf: &mut BytesMut, ctx: &DecodeContext) -> Result<Option<Command>, DecodeError> {
    let Some((line_end, body_at)) = find_line(buf) else {
        if buf.len() >= MAX_LINE_LEN {
            return Err(DecodeError::LineTooLong);
        }
        return Ok(None);
    };
    if body_at > MAX_LINE_LEN {
        return Err(DecodeError::LineTooLong);
    }
    let Some((parsed, consumed)) = parse(&buf[..], line_end, body_at, ctx, false)? else {
        return Ok(None);
    };
    Ok(Some(into_command(parsed, buf.split_to(consumed).freeze())))
}

/// The topic of a complete, valid `MPUB` line at the front of `buf`, if
/// there is one: the connection checks auth before MPUB's body (T22).
pub fn mpub_line_topic<'a>(buf: &'a [u8], ctx: &DecodeContext) -> Option<&'a [u8]> {
    if !buf.starts_with(b"MPUB ") {
        return None;
    }
    let (line_end, body_at) = find_line(buf)?;
    if body_at > MAX_LINE_LEN {
        return None;
    }
    mpub_topic(buf, line_end, ctx).map(|r| &buf[r])
}

/// Hands out the parsed ranges of `frame` as `Bytes`.
fn into_command(parsed: Parsed, frame: Bytes) -> Command {
    // A queued body keeps alive the whole read buffer it is a slice of.
    // Small commands (single PUBs) are copied out so that the buffer is
    // reused at once; large ones (MPUB batches) fill their buffer and are
    // shared without a copy. The copy is one allocation for topic and
    // bodies together (from the topic's start to the last body's end: a
    // few framing bytes more), so that their later clones are only
    // reference counts, not one allocation each.
    let span = parsed.span();
    let owned = frame.len() <= COPY_COMMANDS_UP_TO && !span.is_empty();
    let (source, base) = if owned {
        (Bytes::copy_from_slice(&frame[span.clone()]), span.start)
    } else {
        (frame, 0)
    };
    let slice = |r: Range<usize>| source.slice(r.start - base..r.end - base);
    match parsed {
        Parsed::Simple(cmd) => cmd,
        Parsed::Identify(b) => Command::Identify(slice(b)),
        Parsed::Auth(b) => Command::Auth(slice(b)),
        Parsed::Sub(t, c) => Command::Sub {
            topic: slice(t),
            channel: slice(c),
        },
        Parsed::Pub(t, b) => Command::Pub {
            topic: slice(t),
            body: slice(b),
        },
        Parsed::Mpub(t, bodies) => Command::Mpub {
            topic: slice(t),
            bodies: bodies.into_iter().map(slice).collect(),
        },
        Parsed::Dpub(t, defer_ns, b) => Command::Dpub {
            topic: slice(t),
            defer: Duration::from_nanos(defer_ns as u64),
            body: slice(b),
        },
    }
}

/// After `decode` found a command incomplete: how long the buffer must
/// grow before decoding again can finish it, so that a large command
/// arriving in small pieces is parsed once, not once per piece. The
/// connection keeps one across reads; for an MPUB it walks the messages
/// as they arrive (`mpub::Walk`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    len: usize,
    mpub: Option<Walk>,
}

impl Wanted {
    /// What the incomplete command at the start of `buf` waits for: the
    /// end of a body whose length is known, for MPUB the end of the
    /// message in progress (its declared size is not waited for, T31),
    /// else one more byte.
    pub fn after_incomplete(buf: &[u8], ctx: &DecodeContext) -> Self {
        let mut wanted = Wanted {
            len: buf.len() + 1,
            mpub: None,
        };
        let Some(nl) = memchr::memchr(b'\n', buf) else {
            return wanted;
        };
        let body_at = nl + 1;
        let name = buf[..nl].split(|&b| b == b' ').next().unwrap_or_default();
        let Some(limit) = body_limit(name, ctx) else {
            return wanted;
        };
        let Some(len) = read_i32(buf, body_at).filter(|&l| l > 0 && i64::from(l) <= limit) else {
            return wanted;
        };
        if name == b"MPUB" {
            let mut walk = Walk::new(body_at + 4, ctx.mpub_limits());
            if let Some(need) = walk.advance(buf) {
                wanted.len = need;
                wanted.mpub = Some(walk);
            }
        } else {
            wanted.len = wanted.len.max(body_at + 4 + len as usize);
        }
        wanted
    }

    /// The length decoding waits for.
    pub fn target(&self) -> usize {
        self.len
    }

    /// Whether `buf` (the same command's bytes, grown) is worth decoding.
    pub fn is_met(&mut self, buf: &[u8]) -> bool {
        if buf.len() < self.len {
            return false;
        }
        let Some(walk) = self.mpub.as_mut() else {
            return true;
        };
        match walk.advance(buf) {
            Some(need) => {
                self.len = need;
                false
            }
            None => {
                self.mpub = None;
                true
            }
        }
    }
}

/// `Wanted::after_incomplete(buf, ctx).target()`, for the tests.
#[cfg(test)]
pub fn wanted_len(buf: &[u8], ctx: &DecodeContext) -> usize {
    Wanted::after_incomplete(buf, ctx).target()
}

/// The client closed its side with `buf` holding the start of a command
/// that `decode` found incomplete: the error nsqd sends then, if any. A line
/// without its newline gets none (nsqd closes without a frame).
pub fn decode_eof(buf: &[u8], ctx: &DecodeContext) -> Option<ClientError> {
    let (line_end, body_at) = find_line(buf)?;
    match parse(buf, line_end, body_at, ctx, true) {
        Err(DecodeError::Client(e)) => Some(e),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(state: ConnState) -> DecodeContext {
        DecodeContext {
            state,
            heartbeats_enabled: true,
            max_msg_size: 1024,
            max_body_size: 5000,
            max_rdy_count: 2500,
            max_req_timeout_ms: 3_600_000,
        }
    }

    fn dec(raw: &[u8], state: ConnState) -> Result<Option<Command>, DecodeError> {
        let mut b = BytesMut::from(raw);
        decode(&mut b, &ctx(state))
    }

    fn err_text(r: Result<Option<Command>, DecodeError>) -> String {
        match r {
            Err(DecodeError::Client(e)) => e.to_string(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// `MPUB t` with a declared body size and the messages.
    fn mpub_raw(declared: i32, messages: &[&[u8]]) -> Vec<u8> {
        let mut raw = b"MPUB t\n".to_vec();
        raw.extend_from_slice(&declared.to_be_bytes());
        raw.extend_from_slice(&(messages.len() as i32).to_be_bytes());
        for m in messages {
            raw.extend_from_slice(&(m.len() as i32).to_be_bytes());
            raw.extend_from_slice(m);
        }
        raw
    }

    /// T31: an MPUB declaring more than its messages take finishes at its
    /// last message; the connection must not wait for the surplus.
    #[test]
    fn mpub_waits_for_its_messages_not_its_declared_size() {
        let mut raw = mpub_raw(1000, &[b"ab", b"cde"]);
        let c = ctx(ConnState::Init);
        let mut wanted = Wanted::after_incomplete(&raw[..12], &c);
        for cut in 12..raw.len() {
            assert_eq!(dec(&raw[..cut], ConnState::Init), Ok(None));
            assert!(wanted_len(&raw[..cut], &c) <= raw.len(), "at {cut}");
            assert!(!wanted.is_met(&raw[..cut]), "at {cut}");
            assert!(wanted.target() > cut && wanted.target() <= raw.len());
        }
        assert!(wanted.is_met(&raw));
        raw.extend_from_slice(b"NOP\n");
        let mut b = BytesMut::from(&raw[..]);
        let cmd = decode(&mut b, &c).unwrap().unwrap();
        assert!(matches!(cmd, Command::Mpub { ref bodies, .. } if bodies.len() == 2));
        assert_eq!(&b[..], b"NOP\n");
    }

    #[test]
    fn pub_waits_for_its_declared_body() {
        let raw = b"PUB t\n\0\0\0\x05hel";
        let c = ctx(ConnState::Init);
        let mut wanted = Wanted::after_incomplete(raw, &c);
        assert_eq!(wanted.target(), 15);
        assert!(!wanted.is_met(raw));
        assert!(wanted.is_met(b"PUB t\n\0\0\0\x05hello"));
    }

    #[test]
    fn pub_waits_for_body_and_slices_it() {
        assert_eq!(dec(b"PUB t\n\0\0\0\x05hel", ConnState::Init), Ok(None));
        let mut b = BytesMut::from(&b"PUB t\n\0\0\0\x05helloNOP\n"[..]);
        let cmd = decode(&mut b, &ctx(ConnState::Init)).unwrap().unwrap();
        assert_eq!(
            cmd,
            Command::Pub {
                topic: Bytes::from_static(b"t"),
                body: Bytes::from_static(b"hello")
            }
        );
        assert_eq!(&b[..], b"NOP\n");
    }

    #[test]
    fn errors_come_before_the_body() {
        assert_eq!(
            err_text(dec(b"PUB a!b\n", ConnState::Init)),
            "E_BAD_TOPIC PUB topic name \"a!b\" is not valid"
        );
        assert_eq!(
            err_text(dec(b"PUB t\n\x7f\xff\xff\xff", ConnState::Init)),
            "E_BAD_MESSAGE PUB message too big 2147483647 > 1024"
        );
        assert_eq!(
            err_text(dec(b"MPUB a!b\n", ConnState::Init)),
            "E_BAD_TOPIC E_BAD_TOPIC MPUB topic name \"a!b\" is not valid"
        );
        assert_eq!(
            err_text(dec(b"\n", ConnState::Init)),
            "E_INVALID invalid command "
        );
        assert_eq!(
            err_text(dec(b"RDY 3000\n", ConnState::Subscribed)),
            "E_INVALID RDY count 3000 out of range 0-2500"
        );
        assert_eq!(
            err_text(dec(b"DPUB t 3600001\n", ConnState::Init)),
            "E_INVALID DPUB timeout 3600001 out of range 0-3600000"
        );
    }

    #[test]
    fn mpub_line_topic_once_the_line_has_passed_its_checks() {
        let c = ctx(ConnState::Init);
        assert_eq!(mpub_line_topic(b"MPUB t\n", &c), Some(&b"t"[..]));
        assert_eq!(mpub_line_topic(b"MPUB t\r\n\0\0", &c), Some(&b"t"[..]));
        for not_yet in [
            &b"MPUB t"[..],
            b"MPUB a!b\n",
            b"MPUB\n",
            b"PUB t\n",
            b"MPUBX t\n",
        ] {
            assert_eq!(mpub_line_topic(not_yet, &c), None, "{not_yet:?}");
        }
    }

    #[test]
    fn mpub_bodies() {
        let raw = mpub_raw(100, &[b"ab", b"cde"]);
        match dec(&raw, ConnState::Init).unwrap().unwrap() {
            Command::Mpub { bodies, .. } => assert_eq!(bodies, vec![&b"ab"[..], b"cde"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(dec(&raw[..raw.len() - 1], ConnState::Init), Ok(None));
    }

    #[test]
    fn req_clamps() {
        match dec(b"REQ 0123456789abcdef 99999999999\n", ConnState::Subscribed)
            .unwrap()
            .unwrap()
        {
            Command::Req { timeout, .. } => assert_eq!(timeout, Duration::from_secs(3600)),
            other => panic!("{other:?}"),
        }
    }

    /// Garbage of every shape never panics the decoder, and what it accepts
    /// it consumes.
    #[test]
    fn random_input_never_panics() {
        let seeds: [&[u8]; 6] = [
            b"PUB t\n\0\0\0\x03abc",
            b"MPUB t\n\0\0\0\x0e\0\0\0\x01\0\0\0\x02hi",
            b"DPUB t 100\n\0\0\0\x01x",
            b"IDENTIFY\n\0\0\0\x02{}",
            b"REQ 0123456789abcdef 10\n",
            b"RDY 10\nFIN 0123456789abcdef\nTOUCH 0123456789abcdef\n",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..200_000 {
            let mut raw: Vec<u8> = if i % 2 == 0 {
                let len = rng.usize(0..64);
                (0..len).map(|_| rng.u8(..)).collect()
            } else {
                let mut s = seeds[rng.usize(..seeds.len())].to_vec();
                for _ in 0..rng.usize(1..4) {
                    if s.is_empty() {
                        break;
                    }
                    let at = rng.usize(..s.len());
                    s[at] = rng.u8(..);
                }
                s.truncate(rng.usize(0..=s.len()));
                s
            };
            raw.extend_from_slice(b"\n");
            let state =
                [ConnState::Init, ConnState::Subscribed, ConnState::Closing][rng.usize(..3)];
            let mut buf = BytesMut::from(&raw[..]);
            let c = ctx(state);
            while let Ok(Some(_)) = decode(&mut buf, &c) {}
            let _ = decode_eof(&buf, &c);
        }
    }

    #[test]
    fn long_line_closes() {
        let raw = vec![b'A'; MAX_LINE_LEN + 1];
        assert_eq!(dec(&raw, ConnState::Init), Err(DecodeError::LineTooLong));
    }
}
