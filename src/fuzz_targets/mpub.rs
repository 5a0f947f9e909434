//! MPUB bodies through the one splitter TCP's `MPUB` and HTTP's `/mpub`
//! share (T31, H7): a prefix of a body either splits the same, or is only
//! short of bytes, or fails as the whole does; the TCP command gives the
//! same messages as HTTP's binary form; text-mode lines are what they say.

use bytes::{Bytes, BytesMut};

use super::Choices;
use crate::protocol::codec::{decode, Command, ConnState, DecodeContext};
use crate::protocol::mpub::{split, split_bytes, split_lines, MpubError, MpubLimits};

fn check_prefixes(
    body: &[u8],
    limits: &MpubLimits,
    whole: &Result<(Vec<std::ops::Range<usize>>, usize), MpubError>,
) {
    // Every cut is checked for short bodies; long ones at a spread of cuts.
    let step = (body.len() / 64).max(1);
    for cut in (0..body.len()).step_by(step) {
        match (split(&body[..cut], 0, limits), whole) {
            (Ok(p), Ok(w)) => assert_eq!(&p, w, "a prefix of {cut} split as the whole"),
            (Ok(_), Err(e)) => panic!("a prefix of {cut} splits but the whole fails with {e}"),
            (Err(e), _) if e.is_incomplete() => {}
            (Err(e), Err(w)) => assert_eq!(&e, w, "a prefix of {cut} fails otherwise"),
            (Err(e), Ok(_)) => panic!("a prefix of {cut} fails with {e} but the whole splits"),
        }
    }
}

/// The same body as a TCP `MPUB t` command (with its leading size)
/// decodes to the same messages, or fails.
fn check_tcp(body: &Bytes, limits: &MpubLimits, http: &Result<Vec<Bytes>, MpubError>) {
    let mut raw = BytesMut::from(&b"MPUB t\n"[..]);
    raw.extend_from_slice(&(body.len() as i32).to_be_bytes());
    raw.extend_from_slice(body);
    let ctx = DecodeContext {
        state: ConnState::Init,
        heartbeats_enabled: true,
        max_msg_size: limits.max_msg_size,
        max_body_size: limits.max_body_size,
        max_rdy_count: 2500,
        max_req_timeout_ms: 3_600_000,
    };
    let body_size_ok = !body.is_empty() && body.len() as i64 <= limits.max_body_size;
    match (decode(&mut raw, &ctx), http) {
        (Ok(Some(Command::Mpub { bodies, .. })), Ok(h)) => assert_eq!(&bodies, h),
        (Ok(Some(other)), _) => panic!("MPUB decoded as {other:?}"),
        (Ok(None), Err(e)) => assert!(e.is_incomplete(), "TCP waits where HTTP fails: {e}"),
        (Ok(None), Ok(_)) => panic!("TCP waits for a body HTTP splits"),
        (Err(_), Ok(_)) => assert!(!body_size_ok, "TCP refuses what HTTP splits"),
        (Err(_), Err(_)) => {}
    }
}

fn check_lines(body: &Bytes, max: i64) {
    let Ok(lines) = split_lines(body, max) else {
        return;
    };
    let want: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), want.len());
    for (l, w) in lines.iter().zip(want) {
        assert_eq!(&l[..], w);
        assert!(l.len() as i64 <= max);
    }
}

pub fn mpub(data: &[u8]) {
    let mut c = Choices::new(data);
    let limits = MpubLimits {
        max_msg_size: c.pick(&[1024, 16, 1, 0, -1, 1 << 20]),
        max_body_size: c.pick(&[5000, 100, 9, 5 << 20, 4, 0, -1]),
    };
    let body = Bytes::copy_from_slice(c.rest());
    let whole = split(&body, 0, &limits);
    if let Ok((ranges, end)) = &whole {
        assert!(*end <= body.len());
        assert!(ranges.iter().all(|r| r.start < r.end && r.end <= *end));
    }
    check_prefixes(&body, &limits, &whole);
    let http = split_bytes(&body, &limits);
    check_tcp(&body, &limits, &http);
    check_lines(&body, limits.max_msg_size);
}
