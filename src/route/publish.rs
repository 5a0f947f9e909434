//! The one publish path's vocabulary: its typed error, how a publisher is
//! told the outcome, and the table of publishes waiting for another core.
//!
//! TCP (PUB/MPUB/DPUB), HTTP (/pub, /mpub) and forwarded batches all go
//! through `Broker::publish`; the owning core applies one policy
//! (`Broker::accept`) whether the batch came from its own connections or
//! over a ring, and a forwarded batch's answer comes back over the reverse
//! ring.

use std::cell::RefCell;
use std::rc::Rc;

use thiserror::Error;

use crate::protocol::{ClientError, ErrorCode};
use crate::storage::StorageError;

/// Why a publish was not taken. The text follows "PUB failed " in nsqd's
/// error frames.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The topic's core is writing its queues out for shutdown.
    #[error("exiting")]
    Exiting,
    /// The disk failed to take it (durable mode, disk full, I/O error).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Which command published: its error code and name in nsqd's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishCommand {
    Pub,
    Mpub,
    Dpub,
}

impl PublishCommand {
    pub fn name(self) -> &'static str {
        match self {
            PublishCommand::Pub => "PUB",
            PublishCommand::Mpub => "MPUB",
            PublishCommand::Dpub => "DPUB",
        }
    }

    fn code(self) -> ErrorCode {
        match self {
            PublishCommand::Pub => ErrorCode::PubFailed,
            PublishCommand::Mpub => ErrorCode::MpubFailed,
            PublishCommand::Dpub => ErrorCode::DpubFailed,
        }
    }
}

impl PublishError {
    /// nsqd's fatal `E_PUB_FAILED PUB failed <why>` (and MPUB, DPUB: T13-T15).
    pub fn to_client_error(&self, cmd: PublishCommand) -> ClientError {
        ClientError::new(cmd.code(), format!("{} failed {self}", cmd.name()))
    }
}

pub type PublishResult = Result<(), PublishError>;

/// Where a publish's outcome goes once known: a connection's ordered
/// replies, or an HTTP request waiting.
pub trait PublishSink {
    fn publish_done(&self, seq: u64, result: PublishResult);
}

/// A publisher to answer: its sink and which of its publishes this is.
pub struct ReplyTo {
    pub sink: Rc<dyn PublishSink>,
    pub seq: u64,
}

impl ReplyTo {
    pub fn send(self, result: PublishResult) {
        self.sink.publish_done(self.seq, result);
    }
}

/// Publishes forwarded to other cores, waiting for their answer; a token
/// is a slot index, reused once answered.
#[derive(Default)]
pub struct Pending {
    slots: RefCell<Vec<Option<ReplyTo>>>,
    free: RefCell<Vec<u64>>,
}

impl Pending {
    pub fn insert(&self, reply: ReplyTo) -> u64 {
        let mut slots = self.slots.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(token) => {
                slots[token as usize] = Some(reply);
                token
            }
            None => {
                slots.push(Some(reply));
                (slots.len() - 1) as u64
            }
        }
    }

    pub fn take(&self, token: u64) -> Option<ReplyTo> {
        let reply = self.slots.borrow_mut().get_mut(token as usize)?.take()?;
        self.free.borrow_mut().push(token);
        Some(reply)
    }

    pub fn len(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Default)]
    struct Last(Cell<Option<(u64, bool)>>);

    impl PublishSink for Last {
        fn publish_done(&self, seq: u64, result: PublishResult) {
            self.0.set(Some((seq, result.is_ok())));
        }
    }

    #[test]
    fn tokens_are_reused_once_answered() {
        let sink = Rc::new(Last::default());
        let pending = Pending::default();
        let a = pending.insert(ReplyTo {
            sink: sink.clone(),
            seq: 7,
        });
        let b = pending.insert(ReplyTo {
            sink: sink.clone(),
            seq: 8,
        });
        assert_ne!(a, b);
        assert_eq!(pending.len(), 2);
        pending.take(a).expect("waiting").send(Ok(()));
        assert_eq!(sink.0.get(), Some((7, true)));
        assert!(pending.take(a).is_none(), "answered once");
        let c = pending.insert(ReplyTo {
            sink: sink.clone(),
            seq: 9,
        });
        assert_eq!(c, a);
        pending
            .take(b)
            .expect("waiting")
            .send(Err(PublishError::Exiting));
        assert_eq!(sink.0.get(), Some((8, false)));
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn errors_read_as_nsqd_writes_them() {
        let e = PublishError::Exiting.to_client_error(PublishCommand::Mpub);
        assert_eq!(e.to_frame_body(), b"E_MPUB_FAILED MPUB failed exiting");
        assert!(e.is_fatal());
    }
}
