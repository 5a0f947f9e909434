//! Property tests of the disk records (ringsq's format and nsqd's, D4):
//! encode/decode round trips with padding, any cut into read chunks, one
//! damaged byte costing one record, and no panic on any bytes.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::record::{self, Format, Record, Walk, Walker, ALIGN};
use crate::protocol::message::MSG_HEADER_LEN;
use crate::protocol::{Message, MessageId};

const MAX_BODY: u64 = 2048;

fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::with_cases(256)
    }
}

/// One record to write: a message, its due time if deferred, and whether
/// the writer pads to the next block after it (a flush does).
#[derive(Debug, Clone)]
struct Planned {
    msg: Message,
    due: Option<i64>,
    pad_after: bool,
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<[u8; 16]>(),
        any::<i64>(),
        any::<u16>(),
        vec(any::<u8>(), 0..MAX_BODY as usize),
    )
        .prop_map(|(id, timestamp, attempts, body)| {
            let mut m = Message::new(MessageId(id), timestamp, Bytes::from(body));
            m.attempts = attempts;
            m
        })
}

fn planned() -> impl Strategy<Value = Planned> {
    (message(), proptest::option::of(any::<i64>()), any::<bool>()).prop_map(
        |(msg, due, pad_after)| Planned {
            msg,
            due,
            pad_after,
        },
    )
}

/// The bytes a ringsq segment body holds for `plan`, and each record's start.
fn encode_ringsq(plan: &[Planned]) -> (Vec<u8>, Vec<u64>) {
    let mut buf = Vec::new();
    let mut starts = Vec::new();
    for p in plan {
        let at = buf.len();
        starts.push(at as u64);
        buf.resize(at + record::encoded_len(&p.msg, p.due), 0);
        record::encode(&mut buf[at..], &p.msg, p.due);
        if p.pad_after {
            buf.resize(record::align_up(buf.len() as u64) as usize, 0);
        }
    }
    (buf, starts)
}

/// nsqd's diskqueue layout (D4): `[i32 BE size][ts][attempts][id][body]`.
fn encode_nsqd(msgs: &[Message]) -> (Vec<u8>, Vec<u64>) {
    let mut buf = Vec::new();
    let mut starts = Vec::new();
    for m in msgs {
        starts.push(buf.len() as u64);
        buf.extend_from_slice(&((MSG_HEADER_LEN + m.body.len()) as i32).to_be_bytes());
        buf.extend_from_slice(&m.timestamp.to_be_bytes());
        buf.extend_from_slice(&m.attempts.to_be_bytes());
        buf.extend_from_slice(&m.id.0);
        buf.extend_from_slice(&m.body);
    }
    (buf, starts)
}

/// What a walk over `buf` found: records with their starts, and the
/// damaged ranges. Reads the file in chunks that end at `cuts` (offsets,
/// any order), resuming each read at the walker's position as the backlog
/// reader does.
/// Records found with their starts, and the damaged ranges skipped.
type Walked = (Vec<(u64, Record)>, Vec<(u64, u64)>);

fn walk(format: Format, buf: &[u8], cuts: &[usize]) -> Walked {
    let limit = buf.len() as u64;
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (buf.len() + 1)).collect();
    ends.push(buf.len());
    ends.sort_unstable();
    let mut walker = Walker::new(format, 0);
    let (mut recs, mut damaged) = (Vec::new(), Vec::new());
    let mut end_i = 0;
    loop {
        let from = walker.pos() as usize;
        while end_i + 1 < ends.len() && ends[end_i] <= from {
            end_i += 1;
        }
        let chunk = Bytes::copy_from_slice(&buf[from..ends[end_i].max(from)]);
        match walker.next(&chunk, from as u64, limit, MAX_BODY) {
            Walk::Record { record, at } => recs.push((at, record)),
            Walk::Damaged { from, to } => damaged.push((from, to)),
            Walk::NeedMore if end_i + 1 < ends.len() => end_i += 1,
            // The whole rest of the file is read and still not enough.
            Walk::NeedMore => walker.skip_damaged(limit),
            Walk::End => break,
        }
    }
    if let Some(from) = walker.open_damage() {
        damaged.push((from, limit));
    }
    (recs, damaged)
}

fn same_message(a: &Message, b: &Message) -> bool {
    a.id == b.id && a.timestamp == b.timestamp && a.attempts == b.attempts && a.body == b.body
}

proptest! {
    #![proptest_config(config())]

    /// Every record written comes back byte for byte, at its position, in
    /// order, whatever the padding between and however the reads are cut.
    #[test]
    fn ringsq_records_round_trip(
        plan in vec(planned(), 0..24),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        let (buf, starts) = encode_ringsq(&plan);
        let (recs, damaged) = walk(Format::Ringsq, &buf, &cuts);
        prop_assert_eq!(damaged, vec![]);
        prop_assert_eq!(recs.len(), plan.len());
        for ((at, rec), (p, start)) in recs.iter().zip(plan.iter().zip(&starts)) {
            prop_assert_eq!(at, start);
            prop_assert!(same_message(&rec.msg, &p.msg));
            prop_assert_eq!(rec.due, p.due);
        }
    }

    /// nsqd's records (no checksum) round trip the same way (D4).
    #[test]
    fn nsqd_records_round_trip(
        msgs in vec(message(), 0..24),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        let (buf, starts) = encode_nsqd(&msgs);
        let (recs, damaged) = walk(Format::Nsqd, &buf, &cuts);
        prop_assert_eq!(damaged, vec![]);
        prop_assert_eq!(recs.len(), msgs.len());
        for ((at, rec), (m, start)) in recs.iter().zip(msgs.iter().zip(&starts)) {
            prop_assert_eq!(at, start);
            prop_assert!(same_message(&rec.msg, m));
            prop_assert_eq!(rec.due, None);
        }
    }

    /// One changed byte inside a record loses that record and no other:
    /// the crc catches it and the walk resyncs at the next record.
    #[test]
    fn one_bad_byte_costs_one_record(
        plan in vec(planned(), 1..16),
        which in any::<prop::sample::Index>(),
        offset in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        let (mut buf, starts) = encode_ringsq(&plan);
        let k = which.index(plan.len());
        let len = record::encoded_len(&plan[k].msg, plan[k].due);
        buf[starts[k] as usize + offset.index(len)] ^= flip;
        let (recs, damaged) = walk(Format::Ringsq, &buf, &[]);
        prop_assert_eq!(damaged.len(), 1, "damaged {:?}, starts {:?}, k {}, at {}, found at {:?}, buf {}",
            &damaged, &starts, k, offset.index(len), recs.iter().map(|r| r.0).collect::<Vec<_>>(), buf.len());
        prop_assert_eq!(damaged[0].0, starts[k]);
        let kept: Vec<&Planned> =
            plan.iter().enumerate().filter(|(i, _)| *i != k).map(|(_, p)| p).collect();
        prop_assert_eq!(recs.len(), kept.len());
        for ((_, rec), p) in recs.iter().zip(kept) {
            prop_assert!(same_message(&rec.msg, &p.msg));
            prop_assert_eq!(rec.due, p.due);
        }
    }

    /// Any bytes, either format, any start: the walk ends without a panic,
    /// always moving forward, and never yields a record past the limit.
    #[test]
    fn any_bytes_walk_to_the_end(
        bytes in vec(any::<u8>(), 0..3 * ALIGN as usize),
        nsqd in any::<bool>(),
        cuts in vec(any::<usize>(), 0..6),
    ) {
        let format = if nsqd { Format::Nsqd } else { Format::Ringsq };
        let (recs, damaged) = walk(format, &bytes, &cuts);
        let limit = bytes.len() as u64;
        for (at, rec) in &recs {
            prop_assert!(*at + rec.msg.body.len() as u64 <= limit);
        }
        for (from, to) in damaged {
            prop_assert!(from < to && to <= limit);
        }
    }

    /// A segment header names its segment; any other header bytes are
    /// refused, never misread.
    #[test]
    fn headers_round_trip_and_damage_is_refused(
        segment in any::<u64>(),
        at in 0..28usize,
        flip in 1..=255u8,
    ) {
        let mut h = vec![0u8; record::HEADER_LEN as usize];
        record::encode_header(&mut h, segment);
        prop_assert_eq!(record::check_header(&h), Ok(record::HEADER_LEN));
        prop_assert_eq!(u64::from_le_bytes(h[16..24].try_into().unwrap()), segment);
        h[at] ^= flip;
        prop_assert!(record::check_header(&h).is_err());
    }
}

/// A length field damaged to zero is not padding: the records after it in
/// the same block are still found.
#[test]
fn a_zeroed_length_is_damage_not_padding() {
    let plan: Vec<Planned> = (0..5u8)
        .map(|i| Planned {
            msg: Message::new(
                MessageId([b'a' + i; 16]),
                i as i64,
                Bytes::from(vec![i; 40]),
            ),
            due: None,
            pad_after: false,
        })
        .collect();
    let (mut buf, starts) = encode_ringsq(&plan);
    buf[starts[1] as usize] = 0; // the length's low byte; the others are 0
    let (recs, damaged) = walk(Format::Ringsq, &buf, &[]);
    assert_eq!(damaged, vec![(starts[1], starts[2])]);
    let ids: Vec<u8> = recs.iter().map(|(_, r)| r.msg.id.0[0]).collect();
    assert_eq!(ids, b"acde");
}
