//! Messages, their ids (T7) and the frames that carry them (T5, T6).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};

pub const FRAME_TYPE_RESPONSE: i32 = 0;
pub const FRAME_TYPE_ERROR: i32 = 1;
pub const FRAME_TYPE_MESSAGE: i32 = 2;

pub const MSG_ID_LEN: usize = 16;
/// timestamp (8) + attempts (2) + id (16)
pub const MSG_HEADER_LEN: usize = 8 + 2 + MSG_ID_LEN;

pub const HEARTBEAT: &[u8] = b"_heartbeat_";
pub const OK: &[u8] = b"OK";
pub const CLOSE_WAIT: &[u8] = b"CLOSE_WAIT";

/// 16 lowercase hex characters, exactly as they travel on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; MSG_ID_LEN]);

impl MessageId {
    pub fn from_slice(raw: &[u8]) -> Option<MessageId> {
        raw.try_into().ok().map(MessageId)
    }

    pub fn as_str(&self) -> &str {
        // Ids we generate are ASCII hex; ids from clients are only ever
        // compared, and shown lossily.
        std::str::from_utf8(&self.0).unwrap_or("<binary>")
    }
}

/// One message as it sits in a queue. The body is shared between channels.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: MessageId,
    /// Nanoseconds since the Unix epoch, set at publish.
    pub timestamp: i64,
    pub attempts: u16,
    pub body: Bytes,
    /// Set by DPUB while the message waits at a topic with no channel yet.
    pub deferred: Option<std::time::Duration>,
}

impl Message {
    pub fn new(id: MessageId, timestamp: i64, body: Bytes) -> Message {
        Message {
            id,
            timestamp,
            attempts: 0,
            body,
            deferred: None,
        }
    }

    /// Size of the message frame's payload (after size and frame type).
    pub fn payload_len(&self) -> usize {
        MSG_HEADER_LEN + self.body.len()
    }
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Appends `[size][type][data]`.
pub fn put_frame(out: &mut Vec<u8>, frame_type: i32, data: &[u8]) {
    out.reserve(8 + data.len());
    out.put_i32((data.len() + 4) as i32);
    out.put_i32(frame_type);
    out.put_slice(data);
}

/// Appends a message frame: `[size][2][timestamp][attempts][id][body]`.
pub fn put_message_frame(out: &mut Vec<u8>, msg: &Message) {
    out.reserve(8 + msg.payload_len());
    out.put_i32((msg.payload_len() + 4) as i32);
    out.put_i32(FRAME_TYPE_MESSAGE);
    out.put_i64(msg.timestamp);
    out.put_u16(msg.attempts);
    out.put_slice(&msg.id.0);
    out.put_slice(&msg.body);
}

/// nsqd's snowflake-style ids: `((ns >> 20) - epoch) << 22 | node << 12 | seq`.
///
/// One generator per topic (topics live on one core, so no lock). nsqd sleeps
/// when the 12-bit sequence runs out within one pseudo-millisecond; we borrow
/// the next pseudo-millisecond instead, which keeps ids unique and rising.
#[derive(Debug)]
pub struct IdGenerator {
    node_id: i64,
    last_ts: i64,
    sequence: i64,
}

const TWEPOCH: i64 = 1288834974288;
const SEQUENCE_MASK: i64 = (1 << 12) - 1;

impl IdGenerator {
    pub fn new(node_id: u16) -> IdGenerator {
        IdGenerator {
            node_id: (node_id & 0x3ff) as i64,
            last_ts: 0,
            sequence: 0,
        }
    }

    pub fn next_id(&mut self, now_ns: i64) -> MessageId {
        let ts = now_ns >> 20;
        if ts > self.last_ts {
            self.last_ts = ts;
            self.sequence = 0;
        } else {
            self.sequence = (self.sequence + 1) & SEQUENCE_MASK;
            if self.sequence == 0 {
                self.last_ts += 1;
            }
        }
        let raw = ((self.last_ts - TWEPOCH) << 22) | (self.node_id << 12) | self.sequence;
        let mut id = [0u8; MSG_ID_LEN];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, byte) in raw.to_be_bytes().iter().enumerate() {
            id[2 * i] = HEX[(byte >> 4) as usize];
            id[2 * i + 1] = HEX[(byte & 0xf) as usize];
        }
        MessageId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_lowercase_hex_even_past_the_sequence() {
        let mut g = IdGenerator::new(513);
        let now = now_nanos();
        let mut seen = HashSet::new();
        for _ in 0..20_000 {
            let id = g.next_id(now);
            assert!(id
                .0
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)));
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn message_frame_layout() {
        let msg = Message {
            id: MessageId(*b"0123456789abcdef"),
            timestamp: 42,
            attempts: 3,
            body: Bytes::from_static(b"hi"),
            deferred: None,
        };
        let mut out = Vec::new();
        put_message_frame(&mut out, &msg);
        assert_eq!(&out[0..4], &(4 + 26 + 2i32).to_be_bytes());
        assert_eq!(&out[4..8], &2i32.to_be_bytes());
        assert_eq!(&out[8..16], &42i64.to_be_bytes());
        assert_eq!(&out[16..18], &3u16.to_be_bytes());
        assert_eq!(&out[18..34], b"0123456789abcdef");
        assert_eq!(&out[34..], b"hi");
    }
}
