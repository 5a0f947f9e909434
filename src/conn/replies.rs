//! A connection's answers to its publishes, in command order.
//!
//! A connection does not wait for a publish before reading the next
//! command: each publish takes the next sequence number here, and its
//! outcome (known at once, after a durable write, or when another core
//! answers over the ring) fills that slot. Answers leave for the output
//! buffer strictly in order. A failed publish is fatal in nsqd (T13-T15):
//! its error frame is the last thing written, and the socket's read side is
//! shut so that the reading task stops.
//!
//! Three limits keep pipelining inside nsqd's rules:
//! - At most `MAX_WAITING` publishes (or `MAX_WAITING_BYTES` of bodies)
//!   wait per connection; the reading task stops (`room`) until answers
//!   drain, so a disk that lags or a slow core holds a pipelining
//!   publisher back instead of letting its memory grow.
//! - As soon as any publish fails, even one behind others still waiting,
//!   no further publish is started (`is_failing`). Publishes already
//!   started before the failure was known cannot be recalled: their
//!   messages are kept but not answered, and a client that retries them
//!   publishes them twice (at-least-once, as NSQ promises; nsqd, which runs
//!   one command at a time, has no such window).
//! - Once the connection is closed, answers still arriving are dropped
//!   (`abandon`): they must not touch a socket whose fd number may
//!   already belong to another connection.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::Bytes;

use super::output::OutputBuffer;
use crate::protocol::message::OK;
use crate::route::{PublishCommand, PublishResult, PublishSink};
use crate::shard::{ClientInfo, Subscriber};

/// Publishes that may wait for their answer on one connection.
pub const MAX_WAITING: usize = 64;
/// Body bytes that may wait for their answer on one connection (one
/// publish of any size is always let through).
pub const MAX_WAITING_BYTES: usize = 4 << 20;

/// What the answer of one publish needs besides its outcome.
struct Waiting {
    cmd: PublishCommand,
    topic: Bytes,
    messages: u64,
    bytes: usize,
    outcome: Option<PublishResult>,
}

pub struct Replies {
    out: Rc<OutputBuffer>,
    info: Rc<ClientInfo>,
    /// Publishes not answered yet; the front one has sequence `head`.
    queue: RefCell<VecDeque<Waiting>>,
    head: Cell<u64>,
    /// Body bytes of the publishes in `queue`.
    bytes: Cell<usize>,
    /// Some publish failed; its error may still wait for earlier answers.
    failing: Cell<bool>,
    /// A publish failed: its error frame went out, nothing follows.
    failed: Cell<bool>,
    /// The connection is gone: answers are dropped.
    abandoned: Cell<bool>,
    /// The reading task, waiting for answers (`drained` or `room`).
    waiter: Cell<Option<Waker>>,
    /// The connection's subscription, if any: no MESSAGE may follow the
    /// error frame of a failed publish.
    subscriber: RefCell<Option<Rc<Subscriber>>>,
}

impl Replies {
    pub fn new(out: Rc<OutputBuffer>, info: Rc<ClientInfo>) -> Replies {
        Replies {
            out,
            info,
            queue: RefCell::new(VecDeque::new()),
            head: Cell::new(0),
            bytes: Cell::new(0),
            failing: Cell::new(false),
            failed: Cell::new(false),
            abandoned: Cell::new(false),
            waiter: Cell::new(None),
            subscriber: RefCell::new(None),
        }
    }

    /// The connection subscribed: stop its deliveries if a publish fails.
    pub fn watch(&self, subscriber: Rc<Subscriber>) {
        self.subscriber.replace(Some(subscriber));
    }

    /// Takes the next place in line for a publish's answer; `bytes` is the
    /// size of its bodies.
    pub fn reserve(&self, cmd: PublishCommand, topic: Bytes, messages: usize, bytes: usize) -> u64 {
        let mut queue = self.queue.borrow_mut();
        queue.push_back(Waiting {
            cmd,
            topic,
            messages: messages as u64,
            bytes,
            outcome: None,
        });
        self.bytes.set(self.bytes.get() + bytes);
        self.head.get() + queue.len() as u64 - 1
    }

    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    pub fn has_failed(&self) -> bool {
        self.failed.get()
    }

    /// A publish failed, answered or not yet: start nothing more.
    pub fn is_failing(&self) -> bool {
        self.failing.get()
    }

    /// The connection closed: later answers go nowhere.
    pub fn abandon(&self) {
        self.abandoned.set(true);
        self.queue.borrow_mut().clear();
        self.bytes.set(0);
    }

    /// Resolves once every publish so far has been answered (or one failed).
    pub async fn drained(&self) {
        self.wait_until(|r| r.is_empty() || r.failed.get()).await
    }

    /// Resolves once another publish may start: fewer than the limits are
    /// waiting, or one failed (the caller then stops).
    pub async fn room(&self) {
        self.wait_until(|r| {
            let queue = r.queue.borrow();
            queue.is_empty()
                || r.failing.get()
                || (queue.len() < MAX_WAITING && r.bytes.get() < MAX_WAITING_BYTES)
        })
        .await
    }

    async fn wait_until(&self, ready: impl Fn(&Self) -> bool) {
        poll_fn(|cx| {
            if ready(self) {
                Poll::Ready(())
            } else {
                self.waiter.replace(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Writes the answers at the front that are known, in order.
    fn release(&self) {
        let mut released = false;
        loop {
            let next = {
                let mut queue = self.queue.borrow_mut();
                if queue.front().is_none_or(|w| w.outcome.is_none()) {
                    break;
                }
                queue.pop_front()
            };
            let Some(w) = next else { break };
            released = true;
            self.head.set(self.head.get() + 1);
            self.bytes.set(self.bytes.get().saturating_sub(w.bytes));
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
                    if let Some(sub) = self.subscriber.borrow().as_ref() {
                        sub.closing.set(true);
                    }
                    self.out.push_error(&err.to_frame_body());
                    self.failed.set(true);
                    // The reading task sees EOF and closes; the writer
                    // still sends the error frame.
                    self.info.stop_reading();
                }
                None => {}
            }
        }
        if released || self.failing.get() {
            if let Some(w) = self.waiter.take() {
                w.wake();
            }
        }
    }
}

impl PublishSink for Replies {
    fn publish_done(&self, seq: u64, result: PublishResult) {
        if self.abandoned.get() {
            return;
        }
        let Some(index) = seq.checked_sub(self.head.get()) else {
            return;
        };
        if let Some(w) = self.queue.borrow_mut().get_mut(index as usize) {
            if result.is_err() {
                self.failing.set(true);
            }
            w.outcome = Some(result);
        }
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::output::FlushPolicy;
    use crate::protocol::identify::ClientSettings;
    use crate::protocol::ConnState;
    use crate::route::PublishError;
    use std::time::{Duration, SystemTime};

    fn replies() -> (Rc<Replies>, Rc<OutputBuffer>, Rc<ClientInfo>) {
        let out = Rc::new(OutputBuffer::new(FlushPolicy {
            buffer_size: 16 * 1024,
            timeout: Duration::from_millis(250),
            heartbeat: None,
        }));
        let info = Rc::new(ClientInfo {
            id: 1,
            remote: "127.0.0.1:1".into(),
            connected_at: SystemTime::now(),
            fd: Cell::new(-1), // no socket: stop_reading is a no-op
            settings: RefCell::new(ClientSettings {
                client_id: "t".into(),
                hostname: "t".into(),
                user_agent: String::new(),
                heartbeat_interval: None,
                output_buffer_size: 16 * 1024,
                output_buffer_timeout: Duration::from_millis(250),
                sample_rate: 0,
                msg_timeout: Duration::from_secs(60),
                tls: None,
            }),
            state: Cell::new(ConnState::Init),
            pub_counts: RefCell::new(Vec::new()),
            auth: Default::default(),
            deflate: Cell::new(false),
            snappy: Cell::new(false),
        });
        (Rc::new(Replies::new(out.clone(), info.clone())), out, info)
    }

    /// The frames written so far, as (type, body).
    fn frames(out: &OutputBuffer) -> Vec<(i32, Vec<u8>)> {
        let mut bytes = Vec::new();
        let _ = out.take_into(&mut bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let size = i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
            let ftype = i32::from_be_bytes(bytes[at + 4..at + 8].try_into().expect("4"));
            frames.push((ftype, bytes[at + 8..at + 4 + size].to_vec()));
            at += 4 + size;
        }
        frames
    }

    const OK_FRAME: (i32, &[u8]) = (0, b"OK");

    #[test]
    fn answers_leave_in_command_order_whatever_order_they_come_in() {
        let (r, out, info) = replies();
        let a = r.reserve(PublishCommand::Pub, Bytes::from_static(b"a"), 1, 1);
        let b = r.reserve(PublishCommand::Mpub, Bytes::from_static(b"b"), 3, 3);
        let c = r.reserve(PublishCommand::Pub, Bytes::from_static(b"a"), 1, 1);
        r.publish_done(c, Ok(()));
        r.publish_done(b, Ok(()));
        assert!(frames(&out).is_empty(), "the first is not answered yet");
        r.publish_done(a, Ok(()));
        let got = frames(&out);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(t, d)| (*t, d.as_slice()) == OK_FRAME));
        assert!(r.is_empty());
        // T37: counted per topic once answered.
        assert_eq!(
            *info.pub_counts.borrow(),
            [("a".to_string(), 2), ("b".to_string(), 3)]
        );
    }

    #[test]
    fn a_failed_publish_is_the_last_answer() {
        let (r, out, info) = replies();
        let a = r.reserve(PublishCommand::Pub, Bytes::from_static(b"t"), 1, 1);
        let b = r.reserve(PublishCommand::Dpub, Bytes::from_static(b"t"), 1, 1);
        let c = r.reserve(PublishCommand::Pub, Bytes::from_static(b"t"), 1, 1);
        r.publish_done(b, Err(PublishError::Exiting));
        r.publish_done(c, Ok(()));
        r.publish_done(a, Ok(()));
        assert_eq!(
            frames(&out),
            [
                (0, b"OK".to_vec()),
                (1, b"E_DPUB_FAILED DPUB failed exiting".to_vec())
            ]
        );
        assert!(r.has_failed());
        assert_eq!(*info.pub_counts.borrow(), [("t".to_string(), 1)]);
    }

    #[test]
    fn answers_for_nothing_waiting_are_ignored() {
        let (r, out, _) = replies();
        r.publish_done(5, Ok(()));
        let a = r.reserve(PublishCommand::Pub, Bytes::from_static(b"t"), 1, 1);
        r.publish_done(a, Ok(()));
        r.publish_done(a, Ok(())); // twice: already gone
        assert_eq!(frames(&out), [(0, b"OK".to_vec())]);
    }

    #[test]
    fn drained_waits_for_the_last_answer() {
        use futures::FutureExt;
        let (r, _, _) = replies();
        assert!(r.drained().now_or_never().is_some());
        let a = r.reserve(PublishCommand::Pub, Bytes::from_static(b"t"), 1, 1);
        let mut wait = Box::pin(r.drained());
        assert!(wait.as_mut().now_or_never().is_none());
        r.publish_done(a, Ok(()));
        assert!(wait.as_mut().now_or_never().is_some());
    }

    #[test]
    fn room_waits_at_the_count_limit_until_an_answer_leaves() {
        use futures::FutureExt;
        let (r, _, _) = replies();
        let seqs: Vec<u64> = (0..MAX_WAITING)
            .map(|_| r.reserve(PublishCommand::Pub, Bytes::from_static(b"t"), 1, 10))
            .collect();
        let mut wait = Box::pin(r.room());
        assert!(wait.as_mut().now_or_never().is_none(), "full: must wait");
        // An answer behind the first frees nothing: answers leave in order.
        r.publish_done(seqs[1], Ok(()));
        assert!(wait.as_mut().now_or_never().is_none());
        r.publish_done(seqs[0], Ok(()));
        assert!(wait.as_mut().now_or_never().is_some());
    }

    #[test]
    fn room_waits_at_the_byte_limit_but_lets_one_big_publish_through() {
        use futures::FutureExt;
        let (r, _, _) = replies();
        assert!(r.room().now_or_never().is_some());
        let big = r.reserve(
            PublishCommand::Mpub,
            Bytes::from_static(b"t"),
            9,
            MAX_WAITING_BYTES,
        );
        assert!(r.room().now_or_never().is_none(), "over the byte limit");
        r.publish_done(big, Ok(()));
        assert!(r.room().now_or_never().is_some());
    }

    #[test]
    fn a_failure_behind_unanswered_publishes_stops_new_ones_at_once() {
        use futures::FutureExt;
        let (r, out, _) = replies();
        let a = r.reserve(PublishCommand::Pub, Bytes::from_static(b"t"), 1, 1);
        let seqs: Vec<u64> = (1..MAX_WAITING)
            .map(|_| r.reserve(PublishCommand::Pub, Bytes::from_static(b"t"), 1, 1))
            .collect();
        let mut wait = Box::pin(r.room());
        assert!(wait.as_mut().now_or_never().is_none());
        r.publish_done(seqs[0], Err(PublishError::Exiting));
        assert!(r.is_failing() && !r.has_failed(), "known, not yet answered");
        assert!(
            wait.as_mut().now_or_never().is_some(),
            "the reader must stop"
        );
        assert!(frames(&out).is_empty());
        r.publish_done(a, Ok(()));
        assert_eq!(
            frames(&out),
            [
                (0, b"OK".to_vec()),
                (1, b"E_PUB_FAILED PUB failed exiting".to_vec())
            ]
        );
    }

    #[test]
    fn answers_after_abandon_write_nothing() {
        let (r, out, _) = replies();
        let a = r.reserve(PublishCommand::Pub, Bytes::from_static(b"t"), 1, 1);
        r.abandon();
        r.publish_done(a, Err(PublishError::Exiting));
        assert!(frames(&out).is_empty());
        assert!(!r.is_failing() && !r.has_failed());
    }

    #[test]
    fn a_failed_publish_stops_the_connections_deliveries() {
        let (r, out, info) = replies();
        let sub = Rc::new(Subscriber::new(
            info,
            out.clone(),
            Duration::from_secs(60),
            0,
        ));
        sub.rdy.set(10);
        r.watch(sub.clone());
        let a = r.reserve(PublishCommand::Pub, Bytes::from_static(b"t"), 1, 1);
        assert!(sub.is_ready());
        r.publish_done(a, Err(PublishError::Exiting));
        assert!(!sub.is_ready(), "no MESSAGE may follow E_PUB_FAILED");
    }
}
