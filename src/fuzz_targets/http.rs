//! The HTTP API's own parsing: the `#` escaping that follows request
//! framing over a connection's bytes (`http::Framer`, hand-written: hyper
//! parses the rest), and `/pub` and `/mpub`'s query string and body (H6,
//! H7, binary and text). Framing scanned in pieces must escape exactly as
//! scanned at once; what a route accepts must be publishable.

use bytes::Bytes;

use super::{pieces, Choices};
use crate::http::{escape_into, publish_args, Framer, HttpError};
use crate::protocol::mpub::MpubLimits;
use crate::protocol::names::is_valid_name;

/// The connection's bytes as hyper reads them, fed in `cuts`.
fn escaped(stream: &[u8], cuts: &[std::ops::Range<usize>]) -> Vec<u8> {
    let mut framer = Framer::default();
    let (mut out, mut hashes, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    let mut seen = 0;
    for cut in cuts {
        let piece = &stream[cut.clone()];
        hashes.clear();
        framer.scan(piece, &mut hashes);
        assert!(
            hashes.windows(2).all(|w| w[0] < w[1]),
            "hashes out of order"
        );
        assert!(
            hashes.iter().all(|&h| piece.get(h) == Some(&b'#')),
            "not a #"
        );
        seen += hashes.len();
        let mut buf = vec![0u8; piece.len()];
        let n = escape_into(piece, &hashes, &mut buf, &mut pending);
        out.extend_from_slice(&buf[..n]);
        out.append(&mut pending);
    }
    assert_eq!(out.len(), stream.len() + 2 * seen);
    out
}

fn check_framing(stream: &[u8], seed: u8, max_piece: usize) {
    let whole = escaped(stream, &pieces(stream.len(), 0, stream.len()));
    let cut = escaped(stream, &pieces(stream.len(), seed, max_piece));
    assert_eq!(
        String::from_utf8_lossy(&cut),
        String::from_utf8_lossy(&whole),
        "escaping depends on where reads split"
    );
}

/// Go's `url.ParseQuery`, which nsqd's routes use, written from its
/// documented rules as the oracle: `&`-separated, empty parts skipped, a
/// `;` or a bad `%`-escape anywhere fails, `+` is a space, bytes stay bytes.
fn go_parse_query(raw: &str) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    fn unescape(s: &[u8]) -> Option<Vec<u8>> {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'%' => {
                    let hi = hex(*s.get(i + 1)?)?;
                    let lo = hex(*s.get(i + 2)?)?;
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                b'+' => out.push(b' '),
                b => out.push(b),
            }
            i += 1;
        }
        Some(out)
    }
    let mut ok = true;
    let mut pairs = Vec::new();
    for part in raw.as_bytes().split(|&b| b == b'&') {
        if part.contains(&b';') {
            ok = false;
            continue;
        }
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.iter().position(|&b| b == b'=') {
            Some(at) => (&part[..at], &part[at + 1..]),
            None => (part, &b""[..]),
        };
        match (unescape(k), unescape(v)) {
            (Some(k), Some(v)) => pairs.push((k, v)),
            _ => ok = false,
        }
    }
    ok.then_some(pairs)
}

/// The first value of `key`, as the routes see it (lossy UTF-8).
fn go_get(pairs: &[(Vec<u8>, Vec<u8>)], key: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| String::from_utf8_lossy(k) == key)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn check_publish(mpub: bool, query: &str, body: &[u8], limits: &MpubLimits) {
    let max_ms = 3_600_000;
    let body_bytes = Bytes::copy_from_slice(body);
    let got = publish_args(mpub, Some(query), body_bytes, limits, max_ms);
    let Some(go) = go_parse_query(query) else {
        // nsqd's /pub checks the body before it parses the query.
        if !mpub && body.is_empty() {
            assert_eq!(got, Err(HttpError::MsgEmpty), "empty body first: {query:?}");
        } else {
            assert_eq!(got, Err(HttpError::InvalidRequest), "Go refuses {query:?}");
        }
        return;
    };
    assert_ne!(got, Err(HttpError::InvalidRequest), "Go accepts {query:?}");
    let Ok((topic, bodies, defer)) = got else {
        return;
    };
    assert_eq!(Some(&topic), go_get(&go, "topic").as_ref(), "another topic");
    assert!(is_valid_name(topic.as_bytes()), "published to {topic:?}");

    // A text `/mpub` of empty lines publishes nothing, and answers OK.
    assert!(bodies.iter().all(|b| !b.is_empty()), "an empty message");
    if mpub {
        assert!(bodies.iter().all(|b| b.len() as i64 <= limits.max_msg_size));
        assert!(defer.is_none());
    } else {
        assert_eq!(bodies.len(), 1);
        assert_eq!(&bodies[0][..], body);
    }
    assert!(defer.is_none_or(|d| d.as_millis() <= max_ms as u128));
    if !mpub {
        let ms = go_get(&go, "defer").and_then(|d| d.parse::<i64>().ok());
        let go_defer = ms.map(|ms| std::time::Duration::from_millis(ms as u64));
        assert_eq!(go_defer, defer, "another defer");
    }
}

pub fn http(data: &[u8]) {
    let mut c = Choices::new(data);
    let flags = c.byte();
    let limits = MpubLimits {
        max_msg_size: c.pick(&[1024, 16, 1, 0, -1]),
        max_body_size: c.pick(&[5000, 100, 9, 4, 0, -1]),
    };
    let seed = c.byte();
    let max_piece = c.pick(&[1, 3, 7, 64, 4096]);
    let query_len = c.byte() as usize;
    let rest = c.rest();
    let (query, body) = rest.split_at(query_len.min(rest.len()));
    check_publish(
        flags & 1 == 1,
        &String::from_utf8_lossy(query),
        body,
        &limits,
    );
    check_framing(rest, seed, max_piece);
}
