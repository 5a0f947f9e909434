//! Property tests of the codec (T13-T32), the MPUB splitter (T31, H7) and
//! IDENTIFY (T13-T16): round trips, any split of a stream, and no panic
//! on any input.

use std::ffi::OsString;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::codec::{decode, decode_eof, wanted_len, Command, ConnState, DecodeContext};
use super::identify::{apply_identify, ClientSettings};
use super::message::MessageId;
use super::mpub::{self, MpubLimits};
use crate::config::Options;

const MAX_REQ_MS: u64 = 3_600_000;

fn ctx(state: ConnState) -> DecodeContext {
    DecodeContext {
        state,
        heartbeats_enabled: true,
        max_msg_size: 64,
        max_body_size: 1024,
        max_rdy_count: 2500,
        max_req_timeout_ms: MAX_REQ_MS as i64,
    }
}

fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::with_cases(512)
    }
}

// ---- strategies ----

fn name() -> impl Strategy<Value = Bytes> {
    "[a-zA-Z0-9._-]{1,54}(#ephemeral)?".prop_map(Bytes::from)
}

/// Any 16 bytes that keep the line one line of the right parts.
fn message_id() -> impl Strategy<Value = MessageId> {
    let byte = any::<u8>().prop_filter("separator", |b| !b" \n\r".contains(b));
    proptest::array::uniform16(byte).prop_map(MessageId)
}

fn body(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 1..=max).prop_map(Bytes::from)
}

fn publish() -> impl Strategy<Value = Command> {
    prop_oneof![
        (name(), body(64)).prop_map(|(topic, body)| Command::Pub { topic, body }),
        (name(), vec(body(64), 1..8)).prop_map(|(topic, bodies)| Command::Mpub { topic, bodies }),
        (name(), 0..=MAX_REQ_MS, body(64)).prop_map(|(topic, ms, body)| Command::Dpub {
            topic,
            defer: Duration::from_millis(ms),
            body,
        }),
        Just(Command::Nop),
    ]
}

/// Commands a connection may send before SUB.
fn init_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        publish(),
        body(200).prop_map(Command::Identify),
        body(200).prop_map(Command::Auth),
        (name(), name()).prop_map(|(topic, channel)| Command::Sub { topic, channel }),
    ]
}

/// Commands a subscribed connection may send.
fn subscribed_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        publish(),
        (0..=2500i64).prop_map(|n| Command::Rdy(Some(n))),
        message_id().prop_map(Command::Fin),
        message_id().prop_map(Command::Touch),
        // Beyond the limit too: REQ clamps (T26).
        (message_id(), 0..=2 * MAX_REQ_MS).prop_map(|(id, requested_ms)| Command::Req {
            id,
            timeout: Duration::from_millis(requested_ms.min(MAX_REQ_MS)),
            requested_ms,
        }),
        Just(Command::Cls),
    ]
}

/// A state and a stream of commands valid in it.
fn stream() -> impl Strategy<Value = (ConnState, Vec<Command>)> {
    prop_oneof![
        vec(init_command(), 1..6).prop_map(|c| (ConnState::Init, c)),
        vec(subscribed_command(), 1..6).prop_map(|c| (ConnState::Subscribed, c)),
    ]
}

// ---- the client side of the codec ----

fn sized(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(body);
}

fn line(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.extend_from_slice(&parts.join(&b' '));
    out.push(b'\n');
}

/// `[4B count]([4B size][data])*`, HTTP's binary /mpub body.
fn mpub_messages(bodies: &[Bytes]) -> Vec<u8> {
    let mut out = (bodies.len() as i32).to_be_bytes().to_vec();
    for b in bodies {
        sized(&mut out, b);
    }
    out
}

/// Writes `cmd` as a client would.
fn encode(cmd: &Command, out: &mut Vec<u8>) {
    match cmd {
        Command::Identify(b) => {
            line(out, &[b"IDENTIFY"]);
            sized(out, b);
        }
        Command::Auth(b) => {
            line(out, &[b"AUTH"]);
            sized(out, b);
        }
        Command::Sub { topic, channel } => line(out, &[b"SUB", topic, channel]),
        Command::Rdy(n) => line(out, &[b"RDY", n.unwrap_or(1).to_string().as_bytes()]),
        Command::Fin(id) => line(out, &[b"FIN", &id.0]),
        Command::Touch(id) => line(out, &[b"TOUCH", &id.0]),
        Command::Req {
            id, requested_ms, ..
        } => line(out, &[b"REQ", &id.0, requested_ms.to_string().as_bytes()]),
        Command::Cls => line(out, &[b"CLS"]),
        Command::Nop => line(out, &[b"NOP"]),
        Command::Pub { topic, body } => {
            line(out, &[b"PUB", topic]);
            sized(out, body);
        }
        Command::Mpub { topic, bodies } => {
            line(out, &[b"MPUB", topic]);
            sized(out, &mpub_messages(bodies));
        }
        Command::Dpub { topic, defer, body } => {
            let ms = defer.as_millis().to_string();
            line(out, &[b"DPUB", topic, ms.as_bytes()]);
            sized(out, body);
        }
    }
}

fn encode_all(cmds: &[Command]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in cmds {
        encode(c, &mut out);
    }
    out
}

/// Feeds `raw` in the pieces cut at `cuts`, decoding after each piece as
/// the connection does; any error fails.
fn decode_in_pieces(
    raw: &[u8],
    cuts: &[prop::sample::Index],
    ctx: &DecodeContext,
) -> Result<Vec<Command>, TestCaseError> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(raw.len() + 1)).collect();
    at.push(raw.len());
    at.sort_unstable();
    let (mut buf, mut got, mut from) = (BytesMut::new(), Vec::new(), 0);
    for to in at {
        buf.extend_from_slice(&raw[from..to]);
        from = to;
        loop {
            match decode(&mut buf, ctx) {
                Ok(Some(cmd)) => got.push(cmd),
                Ok(None) => break,
                Err(e) => return Err(TestCaseError::fail(format!("{e:?} at {to}"))),
            }
        }
    }
    prop_assert!(buf.is_empty(), "left over: {buf:?}");
    Ok(got)
}

fn identify_options() -> Options {
    match Options::parse_from_args([OsString::from("ringsqd")]) {
        Ok(o) => o,
        Err(e) => panic!("default options: {e}"),
    }
}

/// JSON of any shape, IDENTIFY's keys among others.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    const KEYS: [&str; 10] = [
        "heartbeat_interval",
        "Output_Buffer_Size",
        "output_buffer_timeout",
        "feature_negotiation",
        "deflate",
        "deflate_level",
        "snappy",
        "sample_rate",
        "msg_timeout",
        "client_id",
    ];
    let key = prop_oneof![
        prop::sample::select(&KEYS[..]).prop_map(String::from),
        "[a-z_]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(-1i64), Just(0), Just(1000), Just(64), Just(99)].prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((key.clone(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

// ---- properties ----

proptest! {
    #![proptest_config(config())]

    /// Encode any command, decode it: the same command, nothing left.
    #[test]
    fn every_command_round_trips((state, cmds) in stream()) {
        for cmd in cmds {
            let mut buf = BytesMut::from(&encode_all(std::slice::from_ref(&cmd))[..]);
            prop_assert_eq!(decode(&mut buf, &ctx(state)), Ok(Some(cmd)));
            prop_assert!(buf.is_empty());
        }
    }

    /// A stream cut anywhere decodes to the same commands: each piece is
    /// incomplete until its command is whole, never an error.
    #[test]
    fn any_split_decodes_the_same(
        (state, cmds) in stream(),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let raw = encode_all(&cmds);
        prop_assert_eq!(decode_in_pieces(&raw, &cuts, &ctx(state))?, cmds);
    }

    /// While a command is incomplete, `wanted_len` asks for more than is
    /// there and never for more than the command (or the connection would
    /// wait for bytes an honest client never sends).
    #[test]
    fn wanted_len_is_within_the_command((state, cmds) in stream()) {
        let c = ctx(state);
        for cmd in &cmds {
            let raw = encode_all(std::slice::from_ref(cmd));
            for cut in 0..raw.len() {
                let mut buf = BytesMut::from(&raw[..cut]);
                prop_assert_eq!(decode(&mut buf, &c), Ok(None));
                let want = wanted_len(&raw[..cut], &c);
                prop_assert!(cut < want && want <= raw.len(), "{} of {}: {}", cut, raw.len(), want);
            }
        }
    }

    /// No input panics the decoder, whatever the state and limits; what
    /// it accepts it consumes.
    #[test]
    fn arbitrary_bytes_never_panic(
        raw in prop_oneof![
            vec(any::<u8>(), 0..300),
            (stream(), vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)).prop_map(
                |((_, cmds), flips)| {
                    let mut raw = encode_all(&cmds);
                    for (at, b) in flips {
                        if !raw.is_empty() {
                            let i = at.index(raw.len());
                            raw[i] = b;
                        }
                    }
                    raw
                }
            ),
        ],
        state in prop_oneof![
            Just(ConnState::Init),
            Just(ConnState::Subscribed),
            Just(ConnState::Closing),
        ],
        heartbeats_enabled in any::<bool>(),
        limits in (any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>()),
    ) {
        let c = DecodeContext {
            state,
            heartbeats_enabled,
            max_msg_size: limits.0 % 4096,
            max_body_size: limits.1 % 4096,
            max_rdy_count: limits.2,
            max_req_timeout_ms: limits.3,
        };
        let mut buf = BytesMut::from(&raw[..]);
        loop {
            let before = buf.len();
            match decode(&mut buf, &c) {
                Ok(Some(_)) => prop_assert!(buf.len() < before),
                _ => break,
            }
        }
        let _ = wanted_len(&buf, &c);
        let _ = decode_eof(&buf, &c);
    }

    /// HTTP's binary /mpub body splits back into its messages; the text
    /// form does too when no message holds a newline.
    #[test]
    fn mpub_bodies_round_trip(bodies in vec(body(64), 1..20)) {
        let limits = MpubLimits { max_msg_size: 64, max_body_size: 2000 };
        let raw = Bytes::from(mpub_messages(&bodies));
        prop_assert_eq!(mpub::split_bytes(&raw, &limits), Ok(bodies.clone()));
        let lines: Vec<Bytes> = bodies
            .iter()
            .map(|b| b.iter().map(|&c| if c == b'\n' { b'.' } else { c }).collect())
            .collect();
        let text = Bytes::from(lines.join(&b'\n'));
        prop_assert_eq!(mpub::split_lines(&text, 64), Ok(lines));
    }

    /// A binary /mpub body cut short is an error, never a panic or a
    /// shorter batch.
    #[test]
    fn mpub_cut_short_is_an_error(bodies in vec(body(64), 1..8), cut in any::<prop::sample::Index>()) {
        let limits = MpubLimits { max_msg_size: 64, max_body_size: 2000 };
        let raw = mpub_messages(&bodies);
        let short = Bytes::copy_from_slice(&raw[..cut.index(raw.len())]);
        let err = mpub::split_bytes(&short, &limits);
        prop_assert!(matches!(err, Err(e) if e.is_incomplete()), "{:?}", err);
    }

    /// IDENTIFY of any JSON shape, or any bytes, answers OK or an error;
    /// it never panics.
    #[test]
    fn identify_of_any_shape_never_panics(
        body in prop_oneof![
            json().prop_map(|v| v.to_string().into_bytes()),
            vec(any::<u8>(), 0..64),
        ],
    ) {
        let opts = identify_options();
        let mut settings = ClientSettings::defaults(&opts, "127.0.0.1");
        let _ = apply_identify(&body, &opts, &mut settings);
    }
}
