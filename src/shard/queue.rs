//! A topic's or channel's message queue: a bounded memory part
//! (`--mem-queue-size`, Q3) and a backend for what overflows it.
//!
//! The backend is the seam where the disk queue plugs in. Until it exists,
//! normal topics and channels spill into `SpillBackend`, an unbounded
//! in-memory list that keeps every message (never drop what was
//! acknowledged); ephemeral ones drop overflow, as nsqd does (Q14, Q15).

use std::collections::VecDeque;

use thiserror::Error;

use crate::protocol::Message;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("{0}")]
    Io(String),
}

/// Where messages beyond the memory queue go.
pub trait QueueBackend {
    fn put(&mut self, msg: Message) -> Result<(), BackendError>;
    fn pop(&mut self) -> Option<Message>;
    fn depth(&self) -> u64;
    /// Drops everything (topic/channel empty or delete).
    fn clear(&mut self);
}

/// Keeps overflow in memory until the disk backend replaces it.
#[derive(Default)]
pub struct SpillBackend {
    messages: VecDeque<Message>,
}

impl QueueBackend for SpillBackend {
    fn put(&mut self, msg: Message) -> Result<(), BackendError> {
        self.messages.push_back(msg);
        Ok(())
    }
    fn pop(&mut self) -> Option<Message> {
        self.messages.pop_front()
    }
    fn depth(&self) -> u64 {
        self.messages.len() as u64
    }
    fn clear(&mut self) {
        self.messages.clear();
    }
}

/// Ephemeral topics and channels: overflow is dropped (Q14, Q15).
#[derive(Default)]
pub struct DiscardBackend {
    pub dropped: u64,
}

impl QueueBackend for DiscardBackend {
    fn put(&mut self, _msg: Message) -> Result<(), BackendError> {
        self.dropped += 1;
        Ok(())
    }
    fn pop(&mut self) -> Option<Message> {
        None
    }
    fn depth(&self) -> u64 {
        0
    }
    fn clear(&mut self) {}
}

pub struct MessageQueue {
    memory: VecDeque<Message>,
    mem_limit: usize,
    backend: Box<dyn QueueBackend>,
}

impl MessageQueue {
    pub fn new(mem_limit: usize, ephemeral: bool) -> MessageQueue {
        let backend: Box<dyn QueueBackend> = if ephemeral {
            Box::<DiscardBackend>::default()
        } else {
            Box::<SpillBackend>::default()
        };
        MessageQueue {
            memory: VecDeque::new(),
            // nsqd hands ephemeral messages straight to a waiting consumer
            // even with --mem-queue-size=0; one slot here lets dispatch do
            // the same instead of dropping every message.
            mem_limit: if ephemeral {
                mem_limit.max(1)
            } else {
                mem_limit
            },
            backend,
        }
    }

    pub fn put(&mut self, msg: Message) -> Result<(), BackendError> {
        if self.memory.len() < self.mem_limit {
            self.memory.push_back(msg);
            Ok(())
        } else {
            self.backend.put(msg)
        }
    }

    pub fn pop(&mut self) -> Option<Message> {
        self.memory.pop_front().or_else(|| self.backend.pop())
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.backend.depth() == 0
    }

    /// Q21: memory + backend.
    pub fn depth(&self) -> u64 {
        self.memory.len() as u64 + self.backend.depth()
    }

    pub fn backend_depth(&self) -> u64 {
        self.backend.depth()
    }

    pub fn clear(&mut self) {
        self.memory.clear();
        self.backend.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageId;
    use bytes::Bytes;

    fn msg(i: u8) -> Message {
        Message::new(MessageId([i; 16]), 0, Bytes::new())
    }

    #[test]
    fn overflow_spills_and_comes_back() {
        let mut q = MessageQueue::new(2, false);
        for i in 0..5 {
            q.put(msg(i)).unwrap();
        }
        assert_eq!(q.depth(), 5);
        assert_eq!(q.backend_depth(), 3);
        let got: Vec<u8> = std::iter::from_fn(|| q.pop()).map(|m| m.id.0[0]).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn ephemeral_overflow_is_dropped() {
        let mut q = MessageQueue::new(1, true);
        q.put(msg(0)).unwrap();
        q.put(msg(1)).unwrap();
        assert_eq!(q.depth(), 1);
    }
}
