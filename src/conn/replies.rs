//! A connection's answers to its publishes, in command order.
//!
//! A connection does not wait for a publish before reading the next
//! command: each publish takes the next sequence number here, and its
//! outcome (known at once, after a durable write, or when another core
//! answers over the ring) fills that slot. Answers leave for the output
//! buffer strictly in order. A failed publish is fatal in nsqd (T13-T15):
//! its error frame is the last thing written, and the socket's read side is
//! shut so that the reading task stops.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::Bytes;

use super::output::OutputBuffer;
use crate::protocol::message::OK;
use crate::route::{PublishCommand, PublishResult, PublishSink};
use crate::shard::ClientInfo;

/// What the answer of one publish needs besides its outcome.
struct Waiting {
    cmd: PublishCommand,
    topic: Bytes,
    messages: u64,
    outcome: Option<PublishResult>,
}

pub struct Replies {
    out: Rc<OutputBuffer>,
    info: Rc<ClientInfo>,
    /// Publishes not answered yet; the front one has sequence `head`.
    queue: RefCell<VecDeque<Waiting>>,
    head: Cell<u64>,
    /// A publish failed: its error frame went out, nothing follows.
    failed: Cell<bool>,
    /// The reading task, waiting for the queue to empty.
    drained: Cell<Option<Waker>>,
}

impl Replies {
    pub fn new(out: Rc<OutputBuffer>, info: Rc<ClientInfo>) -> Replies {
        Replies {
            out,
            info,
            queue: RefCell::new(VecDeque::new()),
            head: Cell::new(0),
            failed: Cell::new(false),
            drained: Cell::new(None),
        }
    }

    /// Takes the next place in line for a publish's answer.
    pub fn reserve(&self, cmd: PublishCommand, topic: Bytes, messages: usize) -> u64 {
        let mut queue = self.queue.borrow_mut();
        queue.push_back(Waiting {
            cmd,
            topic,
            messages: messages as u64,
            outcome: None,
        });
        self.head.get() + queue.len() as u64 - 1
    }

    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    pub fn has_failed(&self) -> bool {
        self.failed.get()
    }

    /// Resolves once every publish so far has been answered (or one failed).
    pub async fn drained(&self) {
        poll_fn(|cx| {
            if self.is_empty() || self.failed.get() {
                Poll::Ready(())
            } else {
                self.drained.replace(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Writes the answers at the front that are known, in order.
    fn release(&self) {
        loop {
            let next = {
                let mut queue = self.queue.borrow_mut();
                if queue.front().is_none_or(|w| w.outcome.is_none()) {
                    break;
                }
                queue.pop_front()
            };
            let Some(w) = next else { break };
            self.head.set(self.head.get() + 1);
            if self.failed.get() {
                continue; // nothing follows a fatal error
            }
            match w.outcome {
                Some(Ok(())) => {
                    // Names were validated by the decoder: ASCII.
                    let topic = std::str::from_utf8(&w.topic).unwrap_or_default();
                    self.info.add_published(topic, w.messages);
                    self.out.push_response(OK);
                }
                Some(Err(e)) => {
                    let err = e.to_client_error(w.cmd);
                    tracing::info!(error = %err, "client error");
                    self.out.push_error(&err.to_frame_body());
                    self.failed.set(true);
                    // The reading task sees EOF and closes; the writer
                    // still sends the error frame.
                    self.info.stop_reading();
                }
                None => {}
            }
        }
        if self.is_empty() || self.failed.get() {
            if let Some(w) = self.drained.take() {
                w.wake();
            }
        }
    }
}

impl PublishSink for Replies {
    fn publish_done(&self, seq: u64, result: PublishResult) {
        let Some(index) = seq.checked_sub(self.head.get()) else {
            return;
        };
        if let Some(w) = self.queue.borrow_mut().get_mut(index as usize) {
            w.outcome = Some(result);
        }
        self.release();
    }
}
