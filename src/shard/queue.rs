//! A topic's or channel's message queue: a bounded memory part
//! (`--mem-queue-size`, Q3) and a backend for what overflows it: the disk
//! queue for normal topics and channels, nothing for ephemeral ones (they
//! drop overflow, Q14, Q15, D12).

use std::collections::VecDeque;
use std::rc::Rc;

use crate::protocol::Message;
use crate::storage::{CoreStorage, DiskPos, DiskQueue, StorageError};

/// Where messages beyond the memory queue go.
pub enum Backend {
    Disk(DiskQueue),
    /// Ephemeral: overflow is dropped.
    Discard,
    /// Unit tests and start-up without a data path: kept in memory.
    Memory(VecDeque<Message>),
}

impl Backend {
    /// The disk queue of a non-ephemeral topic or channel: opened from what
    /// is on disk when restoring, empty otherwise.
    pub fn for_queue(
        storage: Option<&Rc<CoreStorage>>,
        name: &str,
        ephemeral: bool,
        ack_on_pop: bool,
        restore: bool,
    ) -> Backend {
        if ephemeral {
            return Backend::Discard;
        }
        let Some(storage) = storage else {
            return Backend::Memory(VecDeque::new());
        };
        if restore {
            match DiskQueue::open(storage, name, ack_on_pop) {
                Ok(q) => return Backend::Disk(q),
                Err(e) => {
                    tracing::error!(queue = name, error = %e, "cannot open disk queue; new messages go to new segments");
                    return Backend::Disk(DiskQueue::create_after_failed_open(
                        storage, name, ack_on_pop,
                    ));
                }
            }
        }
        Backend::Disk(DiskQueue::create(storage, name, ack_on_pop))
    }
}

/// A message in a queue's care, with its place in the disk queue when it
/// was read from there: that position is consumed only at FIN.
#[derive(Debug)]
pub struct Queued {
    pub msg: Message,
    pub origin: Option<DiskPos>,
}

impl Queued {
    /// A message that is in no disk queue (published, or from a snapshot).
    pub fn fresh(msg: Message) -> Queued {
        Queued { msg, origin: None }
    }
}

pub struct MessageQueue {
    memory: VecDeque<Queued>,
    mem_limit: usize,
    backend: Backend,
}

impl MessageQueue {
    pub fn new(mem_limit: usize, backend: Backend) -> MessageQueue {
        let mem_limit = match backend {
            // nsqd hands ephemeral messages straight to a waiting consumer
            // even with --mem-queue-size=0; one slot here lets dispatch do
            // the same instead of dropping every message.
            Backend::Discard => mem_limit.max(1),
            _ => mem_limit,
        };
        MessageQueue {
            memory: VecDeque::new(),
            mem_limit,
            backend,
        }
    }

    /// A published message; fails while the disk is failing (E_PUB_FAILED).
    pub fn put(&mut self, msg: Message) -> Result<(), StorageError> {
        if self.memory.len() < self.mem_limit {
            self.memory.push_back(Queued::fresh(msg));
            return Ok(());
        }
        match &mut self.backend {
            Backend::Disk(d) => d.put(&msg),
            Backend::Discard => Ok(()),
            Backend::Memory(m) => {
                m.push_back(msg);
                Ok(())
            }
        }
    }

    /// A message that was delivered and came back (REQ, timeout): it was
    /// acknowledged long ago, so it is never dropped. One read from disk
    /// stays in memory, keeping its disk position until FIN.
    pub fn put_back(&mut self, q: Queued) {
        if q.origin.is_some() || self.memory.len() < self.mem_limit {
            self.memory.push_back(q);
            return;
        }
        match &mut self.backend {
            Backend::Disk(d) => {
                if d.put(&q.msg).is_err() {
                    self.memory.push_back(q);
                }
            }
            Backend::Discard => {}
            Backend::Memory(m) => m.push_back(q.msg),
        }
    }

    pub fn pop(&mut self) -> Option<Queued> {
        if let Some(q) = self.memory.pop_front() {
            return Some(q);
        }
        match &mut self.backend {
            Backend::Disk(d) => d.pop().map(|(msg, origin)| Queued { msg, origin }),
            Backend::Discard => None,
            Backend::Memory(m) => m.pop_front().map(Queued::fresh),
        }
    }

    /// FIN: the disk position of a message read from disk is consumed.
    pub fn ack(&self, pos: DiskPos) {
        if let Backend::Disk(d) = &self.backend {
            d.ack(pos);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.depth() == 0
    }

    /// Q21: memory + backend.
    pub fn depth(&self) -> u64 {
        self.memory.len() as u64 + self.backend_depth()
    }

    pub fn backend_depth(&self) -> u64 {
        match &self.backend {
            Backend::Disk(d) => d.depth(),
            Backend::Discard => 0,
            Backend::Memory(m) => m.len() as u64,
        }
    }

    pub fn clear(&mut self) {
        self.memory.clear();
        match &mut self.backend {
            Backend::Disk(d) => d.clear(),
            Backend::Discard => {}
            Backend::Memory(m) => m.clear(),
        }
    }

    /// Topic or channel deleted: its files go too.
    pub fn destroy(&mut self) {
        self.memory.clear();
        if let Backend::Disk(d) = &self.backend {
            d.destroy();
        }
    }

    /// The disk part is failing (full disk): stop handing it more.
    pub fn disk_failing(&self) -> bool {
        self.disk().is_some_and(|d| d.is_failing())
    }

    pub fn disk(&self) -> Option<&DiskQueue> {
        match &self.backend {
            Backend::Disk(d) => Some(d),
            _ => None,
        }
    }

    /// Shutdown: the memory part, to be written to disk.
    pub fn drain_memory(&mut self) -> Vec<Message> {
        let mut out: Vec<Message> = self.memory.drain(..).map(|q| q.msg).collect();
        if let Backend::Memory(m) = &mut self.backend {
            out.extend(m.drain(..));
        }
        out
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
        let mut q = MessageQueue::new(2, Backend::Memory(VecDeque::new()));
        for i in 0..5 {
            q.put(msg(i)).unwrap();
        }
        assert_eq!(q.depth(), 5);
        assert_eq!(q.backend_depth(), 3);
        let got: Vec<u8> = std::iter::from_fn(|| q.pop())
            .map(|q| q.msg.id.0[0])
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn ephemeral_overflow_is_dropped() {
        let mut q = MessageQueue::new(1, Backend::Discard);
        q.put(msg(0)).unwrap();
        q.put(msg(1)).unwrap();
        assert_eq!(q.depth(), 1);
    }
}
