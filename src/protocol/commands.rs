//! One parse function per command (T13-T32), and the table that says for
//! each command the states it is allowed in, how many parameters it needs
//! and which limit its body is checked against. The generic checks run in
//! nsqd's order (state, heartbeats, parameter count) before the command's
//! own function; every text here is nsqd's, byte for byte.

use std::ops::Range;
use std::time::Duration;

use super::codec::{ConnState, DecodeContext, DecodeError};
use super::error::{ClientError, ErrorCode};
use super::message::MessageId;
use super::mpub;
use super::names::{go_quote, is_valid_name};

/// A fully read command with its bodies as ranges of the buffer.
pub(super) enum Parsed {
    Simple(super::codec::Command),
    Identify(Range<usize>),
    Auth(Range<usize>),
    Sub(Range<usize>, Range<usize>),
    Pub(Range<usize>, Range<usize>),
    Mpub(Range<usize>, Vec<Range<usize>>),
    Dpub(Range<usize>, i64, Range<usize>),
}

impl Parsed {
    /// From the first range's start to the last one's end (empty for a
    /// command without ranges).
    pub(super) fn span(&self) -> Range<usize> {
        let (first, last) = match self {
            Parsed::Simple(_) => return 0..0,
            Parsed::Identify(b) | Parsed::Auth(b) => (b, b),
            Parsed::Sub(t, c) => (t, c),
            Parsed::Pub(t, b) | Parsed::Dpub(t, _, b) => (t, b),
            Parsed::Mpub(t, bodies) => (t, bodies.last().unwrap_or(t)),
        };
        first.start.min(last.start)..first.end.max(last.end)
    }
}

/// A parsed command and where it ends; `None` while bytes are missing.
pub(super) type Step = Result<Option<(Parsed, usize)>, DecodeError>;

/// The connection states a command is accepted in (T9).
#[derive(Debug, Clone, Copy)]
enum States {
    Any,
    Init,
    Subscribed,
    SubscribedOrClosing,
}

impl States {
    fn allow(self, state: ConnState) -> bool {
        match self {
            States::Any => true,
            States::Init => state == ConnState::Init,
            States::Subscribed => state == ConnState::Subscribed,
            States::SubscribedOrClosing => state != ConnState::Init,
        }
    }
}

/// How many space-separated parts, the name included, a command needs,
/// and nsqd's text when it has the wrong number.
#[derive(Debug, Clone, Copy)]
enum Arity {
    Any,
    AtLeast(usize, &'static str),
    Exactly(usize, &'static str),
}

/// The option a body length is checked against.
#[derive(Debug, Clone, Copy)]
enum Limit {
    MaxBody,
    MaxMsg,
}

impl Limit {
    fn of(self, ctx: &DecodeContext) -> i64 {
        match self {
            Limit::MaxBody => ctx.max_body_size,
            Limit::MaxMsg => ctx.max_msg_size,
        }
    }
}

/// A `[4B len][body]` and nsqd's words for what can be wrong with it.
struct BodyRule {
    limit: Limit,
    code: ErrorCode,
    /// IDENTIFY and AUTH test "too big" before "invalid"; the publishes
    /// the other way round (it shows only with a negative limit).
    too_big_first: bool,
    too_big: &'static str,
    invalid: &'static str,
    no_size: &'static str,
    no_body: &'static str,
}

impl BodyRule {
    fn check(&self, len: i32, ctx: &DecodeContext) -> Result<(), DecodeError> {
        let max = self.limit.of(ctx);
        let big = i64::from(len) > max;
        let bad = len <= 0;
        if big && (self.too_big_first || !bad) {
            return Err(err(self.code, format!("{} {len} > {max}", self.too_big)));
        }
        if bad {
            return Err(err(self.code, format!("{} {len}", self.invalid)));
        }
        Ok(())
    }
}

const IDENTIFY_BODY: BodyRule = BodyRule {
    limit: Limit::MaxBody,
    code: ErrorCode::BadBody,
    too_big_first: true,
    too_big: "IDENTIFY body too big",
    invalid: "IDENTIFY invalid body size",
    no_size: "IDENTIFY failed to read body size",
    no_body: "IDENTIFY failed to read body",
};
const AUTH_BODY: BodyRule = BodyRule {
    limit: Limit::MaxBody,
    code: ErrorCode::BadBody,
    too_big_first: true,
    too_big: "AUTH body too big",
    invalid: "AUTH invalid body size",
    no_size: "AUTH failed to read body size",
    no_body: "AUTH failed to read body",
};
const PUB_BODY: BodyRule = BodyRule {
    limit: Limit::MaxMsg,
    code: ErrorCode::BadMessage,
    too_big_first: false,
    too_big: "PUB message too big",
    invalid: "PUB invalid message body size",
    no_size: "PUB failed to read message body size",
    no_body: "PUB failed to read message body",
};
const DPUB_BODY: BodyRule = BodyRule {
    limit: Limit::MaxMsg,
    code: ErrorCode::BadMessage,
    too_big_first: false,
    too_big: "DPUB message too big",
    invalid: "DPUB invalid message body size",
    no_size: "DPUB failed to read message body size",
    no_body: "DPUB failed to read message body",
};
/// MPUB's leading body size; what follows it is split by `mpub::split`
/// and is not checked against it (T31).
const MPUB_BODY: BodyRule = BodyRule {
    limit: Limit::MaxBody,
    code: ErrorCode::BadBody,
    too_big_first: false,
    too_big: "MPUB body too big",
    invalid: "MPUB invalid body size",
    no_size: "MPUB failed to read body size",
    no_body: "",
};

/// What the table knows of one command.
struct Rule {
    name: &'static str,
    states: States,
    /// SUB needs heartbeats (T23), checked after the state.
    needs_heartbeats: bool,
    arity: Arity,
    /// The body after the line, if any (for `codec::Wanted`).
    body: Option<&'static BodyRule>,
    parse: fn(&Input) -> Step,
}

/// Every command, the publishes first (the hot path looks them up).
const RULES: [Rule; 12] = [
    Rule {
        name: "PUB",
        states: States::Any,
        needs_heartbeats: false,
        arity: Arity::AtLeast(2, "PUB insufficient number of parameters"),
        body: Some(&PUB_BODY),
        parse: parse_pub,
    },
    Rule {
        name: "MPUB",
        states: States::Any,
        needs_heartbeats: false,
        arity: Arity::AtLeast(2, "MPUB insufficient number of parameters"),
        body: Some(&MPUB_BODY),
        parse: parse_mpub,
    },
    Rule {
        name: "FIN",
        states: States::SubscribedOrClosing,
        needs_heartbeats: false,
        arity: Arity::AtLeast(2, "FIN insufficient number of params"),
        body: None,
        parse: parse_fin,
    },
    Rule {
        name: "RDY",
        // After CLS an RDY is accepted and ignored (see `parse_rdy`).
        states: States::SubscribedOrClosing,
        needs_heartbeats: false,
        arity: Arity::Any,
        body: None,
        parse: parse_rdy,
    },
    Rule {
        name: "DPUB",
        states: States::Any,
        needs_heartbeats: false,
        arity: Arity::AtLeast(3, "DPUB insufficient number of parameters"),
        body: Some(&DPUB_BODY),
        parse: parse_dpub,
    },
    Rule {
        name: "REQ",
        states: States::SubscribedOrClosing,
        needs_heartbeats: false,
        arity: Arity::AtLeast(3, "REQ insufficient number of params"),
        body: None,
        parse: parse_req,
    },
    Rule {
        name: "TOUCH",
        states: States::SubscribedOrClosing,
        needs_heartbeats: false,
        arity: Arity::AtLeast(2, "TOUCH insufficient number of params"),
        body: None,
        parse: parse_touch,
    },
    Rule {
        name: "NOP",
        states: States::Any,
        needs_heartbeats: false,
        arity: Arity::Any,
        body: None,
        parse: |i| i.line_only(super::codec::Command::Nop),
    },
    Rule {
        name: "IDENTIFY",
        states: States::Init,
        needs_heartbeats: false,
        arity: Arity::Any,
        body: Some(&IDENTIFY_BODY),
        parse: |i| i.with_body(&IDENTIFY_BODY, Parsed::Identify),
    },
    Rule {
        name: "AUTH",
        states: States::Init,
        needs_heartbeats: false,
        arity: Arity::Exactly(1, "AUTH invalid number of parameters"),
        body: Some(&AUTH_BODY),
        parse: |i| i.with_body(&AUTH_BODY, Parsed::Auth),
    },
    Rule {
        name: "SUB",
        states: States::Init,
        needs_heartbeats: true,
        arity: Arity::AtLeast(3, "SUB insufficient number of parameters"),
        body: None,
        parse: parse_sub,
    },
    Rule {
        name: "CLS",
        states: States::Subscribed,
        needs_heartbeats: false,
        arity: Arity::Any,
        body: None,
        parse: |i| i.line_only(super::codec::Command::Cls),
    },
];

fn rule(name: &[u8]) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.name.as_bytes() == name)
}

impl Rule {
    /// The checks every command gets, in nsqd's order.
    fn admit(&self, line: &Line, ctx: &DecodeContext) -> Result<(), DecodeError> {
        if !self.states.allow(ctx.state) {
            return Err(invalid(format!("cannot {} in current state", self.name)));
        }
        if self.needs_heartbeats && !ctx.heartbeats_enabled {
            return Err(invalid(format!(
                "cannot {} with heartbeats disabled",
                self.name
            )));
        }
        match self.arity {
            Arity::AtLeast(n, text) if line.count < n => Err(invalid(text)),
            Arity::Exactly(n, text) if line.count != n => Err(invalid(text)),
            _ => Ok(()),
        }
    }
}

/// The topic of an `MPUB` line that has passed every check before the
/// body (T22: MPUB's auth check comes next, before the body is read).
pub(super) fn mpub_topic(buf: &[u8], line_end: usize, ctx: &DecodeContext) -> Option<Range<usize>> {
    let line = Line::split(buf, line_end);
    if &buf[line.parts[0].clone()] != b"MPUB" {
        return None;
    }
    rule(b"MPUB")?.admit(&line, ctx).ok()?;
    let topic = line.parts[1].clone();
    is_valid_name(&buf[topic.clone()]).then_some(topic)
}

/// The limit a command's body length is checked against, if it has one.
pub(super) fn body_limit(name: &[u8], ctx: &DecodeContext) -> Option<i64> {
    rule(name)?.body.map(|b| b.limit.of(ctx))
}

fn invalid(text: impl Into<Vec<u8>>) -> DecodeError {
    ClientError::invalid(text).into()
}

fn err(code: ErrorCode, text: impl Into<Vec<u8>>) -> DecodeError {
    ClientError::new(code, text).into()
}

/// `E_INVALID <prefix><raw bytes>`: nsqd's `%s` of a client's bytes.
fn invalid_raw(prefix: &str, raw: &[u8]) -> DecodeError {
    let mut text = prefix.as_bytes().to_vec();
    text.extend_from_slice(raw);
    invalid(text)
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

pub(super) fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    buf.get(at..at + 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The command line split on single spaces (nsqd's `bytes.Split`): the
/// number of parts and the first three as ranges (no command reads more).
struct Line {
    parts: [Range<usize>; 3],
    count: usize,
}

impl Line {
    fn split(buf: &[u8], line_end: usize) -> Line {
        let mut parts = [0..0, 0..0, 0..0];
        let mut count = 0;
        let mut start = 0;
        for space in memchr::memchr_iter(b' ', &buf[..line_end]) {
            if let Some(p) = parts.get_mut(count) {
                *p = start..space;
            }
            count += 1;
            start = space + 1;
        }
        if let Some(p) = parts.get_mut(count) {
            *p = start..line_end;
        }
        Line {
            parts,
            count: count + 1,
        }
    }
}

/// What a parse function reads: the buffer, its line, where the body
/// starts, the connection's limits, and whether the client has closed.
struct Input<'a> {
    buf: &'a [u8],
    line: Line,
    body_at: usize,
    ctx: &'a DecodeContext,
    eof: bool,
}

impl Input<'_> {
    fn range(&self, i: usize) -> Range<usize> {
        self.line.parts[i].clone()
    }

    fn param(&self, i: usize) -> &[u8] {
        &self.buf[self.range(i)]
    }

    fn line_only(&self, cmd: super::codec::Command) -> Step {
        Ok(Some((Parsed::Simple(cmd), self.body_at)))
    }

    /// Bytes are missing: wait for them, or nsqd's "failed to read" error
    /// if the client has closed its side.
    fn cut_short<T>(&self, code: ErrorCode, text: &str) -> Result<Option<T>, DecodeError> {
        if self.eof {
            Err(err(code, text))
        } else {
            Ok(None)
        }
    }

    /// A `[4B len][body]` after the line, checked by `rule`.
    fn body(&self, rule: &BodyRule) -> Result<Option<Range<usize>>, DecodeError> {
        let Some(len) = read_i32(self.buf, self.body_at) else {
            return self.cut_short(rule.code, rule.no_size);
        };
        rule.check(len, self.ctx)?;
        let start = self.body_at + 4;
        let end = start + len as usize;
        if self.buf.len() < end {
            return self.cut_short(rule.code, rule.no_body);
        }
        Ok(Some(start..end))
    }

    fn with_body(&self, rule: &BodyRule, make: impl FnOnce(Range<usize>) -> Parsed) -> Step {
        Ok(self.body(rule)?.map(|b| {
            let end = b.end;
            (make(b), end)
        }))
    }

    /// The topic in parameter 1; `who` starts nsqd's error text.
    fn topic(&self, who: &str) -> Result<Range<usize>, DecodeError> {
        let name = self.param(1);
        if !is_valid_name(name) {
            let text = format!("{who} topic name {} is not valid", go_quote(name));
            return Err(err(ErrorCode::BadTopic, text));
        }
        Ok(self.range(1))
    }

    fn message_id(&self) -> Result<MessageId, DecodeError> {
        MessageId::from_slice(self.param(1)).ok_or_else(|| invalid("invalid message ID"))
    }
}

/// Parses the command whose line ends at `line_end` and whose body (if
/// any) starts at `body_at`.
pub(super) fn parse(
    buf: &[u8],
    line_end: usize,
    body_at: usize,
    ctx: &DecodeContext,
    eof: bool,
) -> Step {
    let line = Line::split(buf, line_end);
    let name = &buf[line.parts[0].clone()];
    let Some(rule) = rule(name) else {
        return Err(invalid_raw("invalid command ", name));
    };
    rule.admit(&line, ctx)?;
    (rule.parse)(&Input {
        buf,
        line,
        body_at,
        ctx,
        eof,
    })
}

fn parse_sub(i: &Input) -> Step {
    let topic = i.topic("SUB")?;
    let channel = i.param(2);
    if !is_valid_name(channel) {
        let text = format!("SUB channel name {} is not valid", go_quote(channel));
        return Err(err(ErrorCode::BadChannel, text));
    }
    Ok(Some((Parsed::Sub(topic, i.range(2)), i.body_at)))
}

fn parse_rdy(i: &Input) -> Step {
    use super::codec::Command::Rdy;
    if i.ctx.state == ConnState::Closing {
        return i.line_only(Rdy(None));
    }
    let count = if i.line.count > 1 {
        match parse_base10(i.param(1)) {
            Some(n) => n as i64,
            None => return Err(invalid_raw("RDY could not parse count ", i.param(1))),
        }
    } else {
        1
    };
    let max = i.ctx.max_rdy_count;
    if count < 0 || count > max {
        return Err(invalid(format!("RDY count {count} out of range 0-{max}")));
    }
    i.line_only(Rdy(Some(count)))
}

fn parse_fin(i: &Input) -> Step {
    i.line_only(super::codec::Command::Fin(i.message_id()?))
}

fn parse_touch(i: &Input) -> Step {
    i.line_only(super::codec::Command::Touch(i.message_id()?))
}

fn parse_req(i: &Input) -> Step {
    let id = i.message_id()?;
    let Some(requested_ms) = parse_base10(i.param(2)) else {
        return Err(invalid_raw("REQ could not parse timeout ", i.param(2)));
    };
    // nsqd: time.Duration(ms) * time.Millisecond wraps, then clamps (T26);
    // `max(0)` last, so a negative limit cannot make a Duration panic.
    let timeout_ns = (requested_ms as i64)
        .wrapping_mul(1_000_000)
        .max(0)
        .min(i.ctx.max_req_timeout_ms.saturating_mul(1_000_000))
        .max(0);
    i.line_only(super::codec::Command::Req {
        id,
        timeout: Duration::from_nanos(timeout_ns as u64),
        requested_ms,
    })
}

fn parse_pub(i: &Input) -> Step {
    let topic = i.topic("PUB")?;
    i.with_body(&PUB_BODY, |b| Parsed::Pub(topic, b))
}

fn parse_dpub(i: &Input) -> Step {
    let topic = i.topic("DPUB")?;
    let Some(defer_ms) = parse_base10(i.param(2)) else {
        return Err(invalid_raw("DPUB could not parse timeout ", i.param(2)));
    };
    // Go multiplies into a Duration (int64 ns): huge values wrap negative,
    // and are then out of range, not clamped (T32).
    let defer_ns = (defer_ms as i64).wrapping_mul(1_000_000);
    let max_ms = i.ctx.max_req_timeout_ms;
    if defer_ns < 0 || defer_ns > max_ms.saturating_mul(1_000_000) {
        return Err(invalid(format!(
            "DPUB timeout {defer_ms} out of range 0-{max_ms}"
        )));
    }
    i.with_body(&DPUB_BODY, |b| Parsed::Dpub(topic, defer_ns, b))
}

/// `[4B body size]` then the messages (`mpub::split`).
fn parse_mpub(i: &Input) -> Step {
    // X2: nsqd doubles the code in this one text.
    let topic = i.topic("E_BAD_TOPIC MPUB")?;
    let Some(len) = read_i32(i.buf, i.body_at) else {
        return i.cut_short(MPUB_BODY.code, MPUB_BODY.no_size);
    };
    MPUB_BODY.check(len, i.ctx)?;
    match mpub::split(i.buf, i.body_at + 4, &i.ctx.mpub_limits()) {
        Ok((bodies, end)) => Ok(Some((Parsed::Mpub(topic, bodies), end))),
        Err(e) if e.is_incomplete() && !i.eof => Ok(None),
        Err(e) => Err(ClientError::from(e).into()),
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
            max_req_timeout_ms: 60_000,
        }
    }

    fn text(raw: &[u8], ctx: &DecodeContext) -> String {
        let nl = raw.iter().position(|&b| b == b'\n').unwrap_or(raw.len());
        match parse(raw, nl, nl + 1, ctx, true) {
            Err(DecodeError::Client(e)) => e.to_string(),
            Err(e) => format!("{e:?}"),
            Ok(_) => "accepted".into(),
        }
    }

    #[test]
    fn generic_checks_run_in_nsqds_order() {
        let mut c = ctx(ConnState::Init);
        c.heartbeats_enabled = false;
        // State, then heartbeats, then the parameter count (T23).
        assert_eq!(
            text(b"SUB\n", &c),
            "E_INVALID cannot SUB with heartbeats disabled"
        );
        c.state = ConnState::Subscribed;
        assert_eq!(text(b"SUB\n", &c), "E_INVALID cannot SUB in current state");
        let c = ctx(ConnState::Init);
        assert_eq!(
            text(b"SUB t\n", &c),
            "E_INVALID SUB insufficient number of parameters"
        );
        assert_eq!(
            text(b"AUTH x\n", &c),
            "E_INVALID AUTH invalid number of parameters"
        );
        assert_eq!(text(b"FIN\n", &c), "E_INVALID cannot FIN in current state");
        let s = ctx(ConnState::Subscribed);
        assert_eq!(
            text(b"FIN\n", &s),
            "E_INVALID FIN insufficient number of params"
        );
        assert_eq!(text(b"TOUCH abc\n", &s), "E_INVALID invalid message ID");
    }

    #[test]
    fn rdy_after_cls_is_ignored_whatever_it_says() {
        let c = ctx(ConnState::Closing);
        let step = parse(b"RDY x!\n", 6, 7, &c, false);
        assert!(matches!(
            step,
            Ok(Some((
                Parsed::Simple(super::super::codec::Command::Rdy(None)),
                7
            )))
        ));
        let i = ctx(ConnState::Init);
        assert_eq!(
            text(b"RDY 1\n", &i),
            "E_INVALID cannot RDY in current state"
        );
    }

    #[test]
    fn body_checks_keep_each_commands_order() {
        // Only a negative limit shows the order: IDENTIFY says too big,
        // PUB says invalid, for the same length.
        let mut c = ctx(ConnState::Init);
        c.max_body_size = -5;
        c.max_msg_size = -5;
        assert_eq!(
            text(b"IDENTIFY\n\xff\xff\xff\xff", &c),
            "E_BAD_BODY IDENTIFY body too big -1 > -5"
        );
        assert_eq!(
            text(b"PUB t\n\xff\xff\xff\xff", &c),
            "E_BAD_MESSAGE PUB invalid message body size -1"
        );
        let c = ctx(ConnState::Init);
        assert_eq!(
            text(b"DPUB t 5\n\0\0", &c),
            "E_BAD_MESSAGE DPUB failed to read message body size"
        );
        assert_eq!(
            text(b"AUTH\n\0\0\0\x09abc", &c),
            "E_BAD_BODY AUTH failed to read body"
        );
        assert_eq!(
            text(b"MPUB t\n\0\0\0\x09\0\0", &c),
            "E_BAD_BODY MPUB failed to read message count"
        );
    }

    #[test]
    fn every_command_has_one_rule() {
        for name in [
            "IDENTIFY", "AUTH", "SUB", "RDY", "FIN", "REQ", "TOUCH", "CLS", "NOP", "PUB", "MPUB",
            "DPUB",
        ] {
            assert_eq!(RULES.iter().filter(|r| r.name == name).count(), 1, "{name}");
        }
        assert_eq!(body_limit(b"MPUB", &ctx(ConnState::Init)), Some(5000));
        assert_eq!(body_limit(b"DPUB", &ctx(ConnState::Init)), Some(1024));
        assert_eq!(body_limit(b"FIN", &ctx(ConnState::Init)), None);
    }
}
