//! The V2 command decoder over a stream of commands, with the connection
//! state each command leaves behind (SUB, CLS), parsed at once and in
//! pieces as `conn` feeds it (re-parsing only once the bytes `Wanted` asks
//! for are there); both must agree, and no input may panic.

use bytes::BytesMut;

use super::{pieces, Choices};
use crate::protocol::codec::{
    decode, decode_eof, Command, ConnState, DecodeContext, DecodeError, Wanted,
};
use crate::protocol::ClientError;

/// How a run over a stream ended.
#[derive(Debug, PartialEq)]
enum End {
    Fatal(DecodeError),
    /// Bytes left that are not a whole command, and what the client's
    /// closing its side would answer.
    Short {
        rest: Vec<u8>,
        at_eof: Option<ClientError>,
    },
}

#[derive(Debug, PartialEq)]
struct Run {
    commands: Vec<Command>,
    end: End,
}

/// The state `conn` moves to after a command that succeeds (T9).
fn after(ctx: &mut DecodeContext, cmd: &Command) {
    match cmd {
        Command::Sub { .. } => ctx.state = ConnState::Subscribed,
        Command::Cls => ctx.state = ConnState::Closing,
        _ => {}
    }
}

/// One decode, checked: a command consumes bytes, anything else none.
fn step(buf: &mut BytesMut, ctx: &DecodeContext) -> Result<Option<Command>, DecodeError> {
    let before = buf.clone();
    let got = decode(buf, ctx);
    match &got {
        Ok(Some(_)) => assert!(buf.len() < before.len(), "a command consumed nothing"),
        _ => assert_eq!(
            &buf[..],
            &before[..],
            "decode consumed bytes without a command"
        ),
    }
    got
}

fn short(buf: &BytesMut, ctx: &DecodeContext) -> End {
    End::Short {
        rest: buf.to_vec(),
        at_eof: decode_eof(buf, ctx),
    }
}

fn at_once(data: &[u8], mut ctx: DecodeContext) -> Run {
    let mut buf = BytesMut::from(data);
    let mut commands = Vec::new();
    loop {
        match step(&mut buf, &ctx) {
            Ok(Some(cmd)) => {
                after(&mut ctx, &cmd);
                commands.push(cmd);
            }
            Ok(None) => {
                return Run {
                    end: short(&buf, &ctx),
                    commands,
                }
            }
            Err(e) => {
                return Run {
                    end: End::Fatal(e),
                    commands,
                }
            }
        }
    }
}

/// The bytes as `conn` receives them: decode after each piece, but only
/// once the buffer holds what `Wanted` asks for (if `use_wanted`).
fn in_pieces(
    data: &[u8],
    mut ctx: DecodeContext,
    cuts: &[std::ops::Range<usize>],
    use_wanted: bool,
) -> Run {
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut wanted = Wanted::default();
    for (i, cut) in cuts.iter().enumerate() {
        buf.extend_from_slice(&data[cut.clone()]);
        let last = i + 1 == cuts.len();
        loop {
            if use_wanted && !wanted.is_met(&buf) {
                if !last {
                    break;
                }
                // All bytes are in and `conn` would wait for more.
                waiting_is_right(&buf, &ctx, wanted.target());
            }
            match step(&mut buf, &ctx) {
                Ok(Some(cmd)) => {
                    wanted = Wanted::default();
                    after(&mut ctx, &cmd);
                    commands.push(cmd);
                }
                Ok(None) => {
                    wanted = Wanted::after_incomplete(&buf, &ctx);
                    assert!(wanted.target() > buf.len(), "Wanted asks for nothing more");
                    break;
                }
                Err(e) => {
                    return Run {
                        end: End::Fatal(e),
                        commands,
                    }
                }
            }
        }
    }
    Run {
        end: short(&buf, &ctx),
        commands,
    }
}

/// `conn` waits for more only while decoding cannot finish (an MPUB's
/// declared size is not waited for, T31).
fn waiting_is_right(buf: &BytesMut, ctx: &DecodeContext, wanted: usize) {
    let mut probe = buf.clone();
    assert!(
        matches!(decode(&mut probe, ctx), Ok(None)),
        "a command finishes at {} bytes but conn waits for {wanted}",
        buf.len()
    );
}

pub fn v2_codec(data: &[u8]) {
    let mut c = Choices::new(data);
    let flags = c.byte();
    let ctx = DecodeContext {
        state: [ConnState::Init, ConnState::Subscribed, ConnState::Closing][(flags % 3) as usize],
        heartbeats_enabled: flags & 0x10 == 0,
        max_msg_size: c.pick(&[1024, 16, 1, 1 << 20, 0, -1]),
        max_body_size: c.pick(&[5000, 100, 16, 5 << 20, 4, 0, -1]),
        max_rdy_count: c.pick(&[2500, 0, 1, -1]),
        max_req_timeout_ms: c.pick(&[3_600_000, 0, 1, -1, i64::MAX]),
    };
    let seed = c.byte();
    let max_piece = c.pick(&[1, 3, 7, 64, 4096]);
    let stream = c.rest();
    let whole = at_once(stream, ctx);
    let cuts = pieces(stream.len(), seed, max_piece);
    assert_eq!(in_pieces(stream, ctx, &cuts, false), whole, "in pieces");
    assert_eq!(
        in_pieces(stream, ctx, &cuts, flags & 0x20 == 0),
        whole,
        "in pieces, with Wanted"
    );
}
