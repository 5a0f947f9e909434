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

use super::error::{ClientError, ErrorCode};
use super::message::MessageId;
use super::names::{go_quote, is_valid_name};

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

fn invalid(text: String) -> DecodeError {
    ClientError::invalid(text).into()
}

fn err(code: ErrorCode, text: String) -> DecodeError {
    ClientError::new(code, text).into()
}

/// nsqd's `ByteToBase10`: digits only, no sign.
fn parse_base10(raw: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for &d in raw {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.wrapping_mul(10).wrapping_add((d - b'0') as u64);
    }
    Some(n)
}

/// `E_INVALID <prefix><raw bytes>`: nsqd's `%s` of a client's bytes.
fn invalid_raw(prefix: &str, raw: &[u8]) -> DecodeError {
    let mut text = prefix.as_bytes().to_vec();
    text.extend_from_slice(raw);
    ClientError::invalid(text).into()
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    buf.get(at..at + 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn message_id(raw: &[u8]) -> Result<MessageId, DecodeError> {
    MessageId::from_slice(raw).ok_or_else(|| invalid("invalid message ID".into()))
}

/// A fully read command with its bodies as ranges of the buffer.
enum Parsed {
    Simple(Command),
    Identify(Range<usize>),
    Auth(Range<usize>),
    Sub(Range<usize>, Range<usize>),
    Pub(Range<usize>, Range<usize>),
    Mpub(Range<usize>, Vec<Range<usize>>),
    Dpub(Range<usize>, i64, Range<usize>),
}

/// What nsqd answers when the client closes in the middle of a body.
struct Truncated {
    code: ErrorCode,
    size: &'static str,
    body: &'static str,
}

const IDENTIFY_TRUNCATED: Truncated = Truncated {
    code: ErrorCode::BadBody,
    size: "IDENTIFY failed to read body size",
    body: "IDENTIFY failed to read body",
};
const AUTH_TRUNCATED: Truncated = Truncated {
    code: ErrorCode::BadBody,
    size: "AUTH failed to read body size",
    body: "AUTH failed to read body",
};
const PUB_TRUNCATED: Truncated = Truncated {
    code: ErrorCode::BadMessage,
    size: "PUB failed to read message body size",
    body: "PUB failed to read message body",
};
const DPUB_TRUNCATED: Truncated = Truncated {
    code: ErrorCode::BadMessage,
    size: "DPUB failed to read message body size",
    body: "DPUB failed to read message body",
};

/// The client closed before the rest: nsqd's "failed to read" error.
fn cut_short(eof: bool, code: ErrorCode, text: &str) -> Result<(), DecodeError> {
    if eof {
        Err(err(code, text.to_string()))
    } else {
        Ok(())
    }
}

/// Reads a `[4B len][body]` that starts at `at`, after the length checks
/// `check(len)`; returns the body range, or None if incomplete.
fn sized_body(
    buf: &[u8],
    at: usize,
    eof: bool,
    trunc: &Truncated,
    check: impl FnOnce(i32) -> Result<(), DecodeError>,
) -> Result<Option<Range<usize>>, DecodeError> {
    let Some(len) = read_i32(buf, at) else {
        cut_short(eof, trunc.code, trunc.size)?;
        return Ok(None);
    };
    check(len)?;
    let start = at + 4;
    let end = start + len as usize;
    if buf.len() < end {
        cut_short(eof, trunc.code, trunc.body)?;
        return Ok(None);
    }
    Ok(Some(start..end))
}

/// Decodes one command from the front of `buf`. `Ok(None)`: need more bytes.
pub fn decode(buf: &mut BytesMut, ctx: &DecodeContext) -> Result<Option<Command>, DecodeError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() >= MAX_LINE_LEN {
            return Err(DecodeError::LineTooLong);
        }
        return Ok(None);
    };
    if nl >= MAX_LINE_LEN {
        return Err(DecodeError::LineTooLong);
    }
    let mut line_end = nl;
    if line_end > 0 && buf[line_end - 1] == b'\r' {
        line_end -= 1;
    }
    let body_at = nl + 1;
    let Some((parsed, consumed)) = parse(&buf[..], line_end, body_at, ctx, false)? else {
        return Ok(None);
    };
    let frame: Bytes = buf.split_to(consumed).freeze();
    // A queued body keeps alive the whole read buffer it is a slice of.
    // Small commands (single PUBs) are copied out so that the buffer is
    // reused at once; large ones (MPUB batches) fill their buffer and are
    // shared without a copy.
    let owned = consumed <= COPY_COMMANDS_UP_TO;
    let slice = |r: Range<usize>| {
        if owned {
            Bytes::copy_from_slice(&frame[r])
        } else {
            frame.slice(r)
        }
    };
    Ok(Some(match parsed {
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
    }))
}

/// After `decode` found `buf` incomplete: the length at which it can
/// finish. For a body whose length is already known that is the body's end
/// (for MPUB the declared body size, which honest clients fill exactly), so
/// that a large command arriving in small pieces is parsed once, not once
/// per piece.
pub fn wanted_len(buf: &[u8], ctx: &DecodeContext) -> usize {
    let next = buf.len() + 1;
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        return next;
    };
    let body_at = nl + 1;
    let name = buf[..nl].split(|&b| b == b' ').next().unwrap_or_default();
    let limit = match name {
        b"PUB" | b"DPUB" => ctx.max_msg_size,
        b"IDENTIFY" | b"AUTH" | b"MPUB" => ctx.max_body_size,
        _ => return next,
    };
    match read_i32(buf, body_at) {
        Some(len) if len > 0 && i64::from(len) <= limit => next.max(body_at + 4 + len as usize),
        _ => next,
    }
}

/// The client closed its side with `buf` holding the start of a command
/// that `decode` found incomplete: the error nsqd sends then, if any. A line
/// without its newline gets none (nsqd closes without a frame).
pub fn decode_eof(buf: &[u8], ctx: &DecodeContext) -> Option<ClientError> {
    let nl = memchr::memchr(b'\n', buf)?;
    let mut line_end = nl;
    if line_end > 0 && buf[line_end - 1] == b'\r' {
        line_end -= 1;
    }
    match parse(buf, line_end, nl + 1, ctx, true) {
        Err(DecodeError::Client(e)) => Some(e),
        _ => None,
    }
}

/// Splits the line on single spaces (nsqd's `bytes.Split`), as ranges.
fn split_params(buf: &[u8], line_end: usize) -> Vec<Range<usize>> {
    let mut params = Vec::with_capacity(4);
    let mut start = 0;
    for (i, &b) in buf[..line_end].iter().enumerate() {
        if b == b' ' {
            params.push(start..i);
            start = i + 1;
        }
    }
    params.push(start..line_end);
    params
}

fn parse(
    buf: &[u8],
    line_end: usize,
    body_at: usize,
    ctx: &DecodeContext,
    eof: bool,
) -> Result<Option<(Parsed, usize)>, DecodeError> {
    let params = split_params(buf, line_end);
    let p = |i: usize| &buf[params[i].clone()];
    let line_only = |cmd: Command| Ok(Some((Parsed::Simple(cmd), body_at)));
    let subscribed_or_closing = matches!(ctx.state, ConnState::Subscribed | ConnState::Closing);

    match p(0) {
        b"IDENTIFY" => {
            if ctx.state != ConnState::Init {
                return Err(invalid("cannot IDENTIFY in current state".into()));
            }
            let max = ctx.max_body_size;
            let body = sized_body(buf, body_at, eof, &IDENTIFY_TRUNCATED, |len| {
                if len as i64 > max {
                    Err(err(
                        ErrorCode::BadBody,
                        format!("IDENTIFY body too big {len} > {max}"),
                    ))
                } else if len <= 0 {
                    Err(err(
                        ErrorCode::BadBody,
                        format!("IDENTIFY invalid body size {len}"),
                    ))
                } else {
                    Ok(())
                }
            })?;
            Ok(body.map(|b| {
                let end = b.end;
                (Parsed::Identify(b), end)
            }))
        }
        b"AUTH" => {
            if ctx.state != ConnState::Init {
                return Err(invalid("cannot AUTH in current state".into()));
            }
            if params.len() != 1 {
                return Err(invalid("AUTH invalid number of parameters".into()));
            }
            let max = ctx.max_body_size;
            let body = sized_body(buf, body_at, eof, &AUTH_TRUNCATED, |len| {
                if len as i64 > max {
                    Err(err(
                        ErrorCode::BadBody,
                        format!("AUTH body too big {len} > {max}"),
                    ))
                } else if len <= 0 {
                    Err(err(
                        ErrorCode::BadBody,
                        format!("AUTH invalid body size {len}"),
                    ))
                } else {
                    Ok(())
                }
            })?;
            Ok(body.map(|b| {
                let end = b.end;
                (Parsed::Auth(b), end)
            }))
        }
        b"SUB" => {
            if ctx.state != ConnState::Init {
                return Err(invalid("cannot SUB in current state".into()));
            }
            if !ctx.heartbeats_enabled {
                return Err(invalid("cannot SUB with heartbeats disabled".into()));
            }
            if params.len() < 3 {
                return Err(invalid("SUB insufficient number of parameters".into()));
            }
            if !is_valid_name(p(1)) {
                return Err(err(
                    ErrorCode::BadTopic,
                    format!("SUB topic name {} is not valid", go_quote(p(1))),
                ));
            }
            if !is_valid_name(p(2)) {
                return Err(err(
                    ErrorCode::BadChannel,
                    format!("SUB channel name {} is not valid", go_quote(p(2))),
                ));
            }
            Ok(Some((
                Parsed::Sub(params[1].clone(), params[2].clone()),
                body_at,
            )))
        }
        b"RDY" => {
            if ctx.state == ConnState::Closing {
                return line_only(Command::Rdy(None));
            }
            if ctx.state != ConnState::Subscribed {
                return Err(invalid("cannot RDY in current state".into()));
            }
            let count = if params.len() > 1 {
                match parse_base10(p(1)) {
                    Some(n) => n as i64,
                    None => return Err(invalid_raw("RDY could not parse count ", p(1))),
                }
            } else {
                1
            };
            if count < 0 || count > ctx.max_rdy_count {
                return Err(invalid(format!(
                    "RDY count {count} out of range 0-{}",
                    ctx.max_rdy_count
                )));
            }
            line_only(Command::Rdy(Some(count)))
        }
        b"FIN" => {
            if !subscribed_or_closing {
                return Err(invalid("cannot FIN in current state".into()));
            }
            if params.len() < 2 {
                return Err(invalid("FIN insufficient number of params".into()));
            }
            line_only(Command::Fin(message_id(p(1))?))
        }
        b"REQ" => {
            if !subscribed_or_closing {
                return Err(invalid("cannot REQ in current state".into()));
            }
            if params.len() < 3 {
                return Err(invalid("REQ insufficient number of params".into()));
            }
            let id = message_id(p(1))?;
            let Some(requested_ms) = parse_base10(p(2)) else {
                return Err(invalid_raw("REQ could not parse timeout ", p(2)));
            };
            // nsqd: time.Duration(ms) * time.Millisecond wraps, then clamps.
            let timeout_ns = (requested_ms as i64)
                .wrapping_mul(1_000_000)
                .clamp(0, ctx.max_req_timeout_ms.saturating_mul(1_000_000));
            let timeout = Duration::from_nanos(timeout_ns as u64);
            line_only(Command::Req {
                id,
                timeout,
                requested_ms,
            })
        }
        b"TOUCH" => {
            if !subscribed_or_closing {
                return Err(invalid("cannot TOUCH in current state".into()));
            }
            if params.len() < 2 {
                return Err(invalid("TOUCH insufficient number of params".into()));
            }
            line_only(Command::Touch(message_id(p(1))?))
        }
        b"CLS" => {
            if ctx.state != ConnState::Subscribed {
                return Err(invalid("cannot CLS in current state".into()));
            }
            line_only(Command::Cls)
        }
        b"NOP" => line_only(Command::Nop),
        b"PUB" => {
            if params.len() < 2 {
                return Err(invalid("PUB insufficient number of parameters".into()));
            }
            if !is_valid_name(p(1)) {
                return Err(err(
                    ErrorCode::BadTopic,
                    format!("PUB topic name {} is not valid", go_quote(p(1))),
                ));
            }
            let max = ctx.max_msg_size;
            let body = sized_body(buf, body_at, eof, &PUB_TRUNCATED, |len| {
                if len <= 0 {
                    Err(err(
                        ErrorCode::BadMessage,
                        format!("PUB invalid message body size {len}"),
                    ))
                } else if len as i64 > max {
                    Err(err(
                        ErrorCode::BadMessage,
                        format!("PUB message too big {len} > {max}"),
                    ))
                } else {
                    Ok(())
                }
            })?;
            Ok(body.map(|b| {
                let end = b.end;
                (Parsed::Pub(params[1].clone(), b), end)
            }))
        }
        b"MPUB" => {
            if params.len() < 2 {
                return Err(invalid("MPUB insufficient number of parameters".into()));
            }
            if !is_valid_name(p(1)) {
                // X2: nsqd doubles the code in this one text.
                return Err(err(
                    ErrorCode::BadTopic,
                    format!(
                        "E_BAD_TOPIC MPUB topic name {} is not valid",
                        go_quote(p(1))
                    ),
                ));
            }
            parse_mpub(buf, body_at, ctx, eof)
                .map(|r| r.map(|(bodies, end)| (Parsed::Mpub(params[1].clone(), bodies), end)))
        }
        b"DPUB" => {
            if params.len() < 3 {
                return Err(invalid("DPUB insufficient number of parameters".into()));
            }
            if !is_valid_name(p(1)) {
                return Err(err(
                    ErrorCode::BadTopic,
                    format!("DPUB topic name {} is not valid", go_quote(p(1))),
                ));
            }
            let Some(defer_ms) = parse_base10(p(2)) else {
                return Err(invalid_raw("DPUB could not parse timeout ", p(2)));
            };
            // Go multiplies into a Duration (int64 ns): huge values wrap negative.
            let defer_ns = (defer_ms as i64).wrapping_mul(1_000_000);
            if defer_ns < 0 || defer_ns > ctx.max_req_timeout_ms.saturating_mul(1_000_000) {
                return Err(invalid(format!(
                    "DPUB timeout {defer_ms} out of range 0-{}",
                    ctx.max_req_timeout_ms
                )));
            }
            let max = ctx.max_msg_size;
            let body = sized_body(buf, body_at, eof, &DPUB_TRUNCATED, |len| {
                if len <= 0 {
                    Err(err(
                        ErrorCode::BadMessage,
                        format!("DPUB invalid message body size {len}"),
                    ))
                } else if len as i64 > max {
                    Err(err(
                        ErrorCode::BadMessage,
                        format!("DPUB message too big {len} > {max}"),
                    ))
                } else {
                    Ok(())
                }
            })?;
            Ok(body.map(|b| {
                let end = b.end;
                (Parsed::Dpub(params[1].clone(), defer_ns, b), end)
            }))
        }
        other => {
            let mut text = b"invalid command ".to_vec();
            text.extend_from_slice(other);
            Err(ClientError::invalid(text).into())
        }
    }
}

/// The bodies of an MPUB as ranges of the buffer, and where it ends.
type MpubBodies = (Vec<Range<usize>>, usize);

/// `[4B body size][4B count]([4B size][data])*`; the body size is checked
/// against the limits but, as in nsqd, not against what follows (T31).
fn parse_mpub(
    buf: &[u8],
    at: usize,
    ctx: &DecodeContext,
    eof: bool,
) -> Result<Option<MpubBodies>, DecodeError> {
    let Some(body_len) = read_i32(buf, at) else {
        cut_short(eof, ErrorCode::BadBody, "MPUB failed to read body size")?;
        return Ok(None);
    };
    if body_len <= 0 {
        return Err(err(
            ErrorCode::BadBody,
            format!("MPUB invalid body size {body_len}"),
        ));
    }
    if body_len as i64 > ctx.max_body_size {
        return Err(err(
            ErrorCode::BadBody,
            format!("MPUB body too big {body_len} > {}", ctx.max_body_size),
        ));
    }
    let Some(count) = read_i32(buf, at + 4) else {
        cut_short(eof, ErrorCode::BadBody, "MPUB failed to read message count")?;
        return Ok(None);
    };
    let max_messages = (ctx.max_body_size - 4) / 5;
    if count <= 0 || count as i64 > max_messages {
        return Err(err(
            ErrorCode::BadBody,
            format!("MPUB invalid message count {count}"),
        ));
    }
    // Sized by what can be in the buffer, not by the client's count.
    let mut bodies = Vec::with_capacity((count as usize).min(buf.len() / 5 + 1));
    let mut pos = at + 8;
    for i in 0..count {
        let Some(size) = read_i32(buf, pos) else {
            cut_short(
                eof,
                ErrorCode::BadMessage,
                &format!("MPUB failed to read message({i}) body size"),
            )?;
            return Ok(None);
        };
        if size <= 0 {
            return Err(err(
                ErrorCode::BadMessage,
                format!("MPUB invalid message({i}) body size {size}"),
            ));
        }
        if size as i64 > ctx.max_msg_size {
            return Err(err(
                ErrorCode::BadMessage,
                format!("MPUB message too big {size} > {}", ctx.max_msg_size),
            ));
        }
        let start = pos + 4;
        let end = start + size as usize;
        if buf.len() < end {
            cut_short(
                eof,
                ErrorCode::BadMessage,
                "MPUB failed to read message body",
            )?;
            return Ok(None);
        }
        bodies.push(start..end);
        pos = end;
    }
    Ok(Some((bodies, pos)))
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
    fn mpub_bodies() {
        let mut raw = b"MPUB t\n".to_vec();
        raw.extend_from_slice(&100i32.to_be_bytes());
        raw.extend_from_slice(&2i32.to_be_bytes());
        for m in [&b"ab"[..], b"cde"] {
            raw.extend_from_slice(&(m.len() as i32).to_be_bytes());
            raw.extend_from_slice(m);
        }
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
