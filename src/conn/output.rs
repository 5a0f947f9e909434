//! A connection's output buffer, shared on one core by the command handler
//! (responses), the channel that delivers messages, and the writer task
//! that flushes it to the socket (T34).

use std::cell::{Cell, RefCell};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::compress::Encoder;
use crate::protocol::message::{
    put_frame, put_message_frame, FRAME_TYPE_ERROR, FRAME_TYPE_RESPONSE,
};
use crate::protocol::Message;
use crate::shard::ConsumerSink;

/// When the writer must flush, as IDENTIFY set it.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    pub buffer_size: usize,
    /// Zero: flush at once.
    pub timeout: Duration,
    pub heartbeat: Option<Duration>,
}

#[derive(Default)]
pub struct OutputBuffer {
    buf: RefCell<Vec<u8>>,
    /// A response or error frame is waiting: flush now.
    urgent: Cell<bool>,
    /// When the oldest unflushed message frame was buffered.
    buffered_since: Cell<Option<Instant>>,
    /// No more writes will come: flush what is left and stop.
    closing: Cell<bool>,
    /// The writer has stopped (socket error or close): drop writes.
    dead: Cell<bool>,
    writer_waker: Cell<Option<Waker>>,
    /// The reading task, waiting for the writer to make room.
    reader_waker: Cell<Option<Waker>>,
    policy: Cell<Option<FlushPolicy>>,
    /// The writer must re-read the policy (IDENTIFY changed it).
    policy_changed: Cell<bool>,
    /// The writer holds bytes taken from `buf` that are not written yet.
    in_write: Cell<bool>,
    /// Compression starts at this offset of `buf` (after the IDENTIFY
    /// answer, which goes out in clear).
    switch: RefCell<Option<(usize, Encoder)>>,
}

impl OutputBuffer {
    pub fn new(policy: FlushPolicy) -> OutputBuffer {
        let out = OutputBuffer::default();
        out.policy.set(Some(policy));
        out
    }

    pub fn policy(&self) -> FlushPolicy {
        self.policy.get().unwrap_or(FlushPolicy {
            buffer_size: 16 * 1024,
            timeout: Duration::from_millis(250),
            heartbeat: Some(Duration::from_secs(30)),
        })
    }

    pub fn set_policy(&self, policy: FlushPolicy) {
        self.policy.set(Some(policy));
        self.policy_changed.set(true);
        self.wake();
    }

    pub fn take_policy_changed(&self) -> bool {
        self.policy_changed.replace(false)
    }

    fn wake(&self) {
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }

    pub fn register_writer(&self, waker: &Waker) {
        self.writer_waker.set(Some(waker.clone()));
    }

    pub fn is_dead(&self) -> bool {
        self.dead.get()
    }

    pub fn mark_dead(&self) {
        self.dead.set(true);
        self.buf.borrow_mut().clear();
        self.wake_reader();
    }

    fn wake_reader(&self) {
        if let Some(w) = self.reader_waker.take() {
            w.wake();
        }
    }

    /// Resolves once at most `limit` bytes wait for the socket, or the
    /// writer died: a client that does not read its answers stops being
    /// read (nsqd blocks on the socket the same way).
    pub async fn room_for(&self, limit: usize) {
        std::future::poll_fn(|cx| {
            if self.buffered_len() <= limit || self.dead.get() {
                std::task::Poll::Ready(())
            } else {
                self.reader_waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Flush everything, then stop the writer.
    pub fn close(&self) {
        self.closing.set(true);
        self.wake();
    }

    /// Response and error frames are flushed at once.
    pub fn push_response(&self, data: &[u8]) {
        self.push_frame(FRAME_TYPE_RESPONSE, data);
    }

    pub fn push_error(&self, data: &[u8]) {
        self.push_frame(FRAME_TYPE_ERROR, data);
    }

    fn push_frame(&self, frame_type: i32, data: &[u8]) {
        if self.dead.get() {
            return;
        }
        put_frame(&mut self.buf.borrow_mut(), frame_type, data);
        self.urgent.set(true);
        self.wake();
    }

    /// Message frames wait for the flush policy.
    pub fn push_message(&self, msg: &Message) {
        if self.dead.get() {
            return;
        }
        let len = {
            let mut buf = self.buf.borrow_mut();
            put_message_frame(&mut buf, msg);
            buf.len()
        };
        if self.buffered_since.get().is_none() {
            self.buffered_since.set(Some(Instant::now()));
        }
        let policy = self.policy();
        if len >= policy.buffer_size || policy.timeout.is_zero() {
            self.urgent.set(true);
        }
        self.wake();
    }

    /// The client is no longer ready for messages: nsqd flushes then.
    pub fn flush_soon(&self) {
        if !self.buf.borrow().is_empty() {
            self.urgent.set(true);
            self.wake();
        }
    }

    pub fn buffered_len(&self) -> usize {
        self.buf.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.borrow().is_empty()
    }

    /// When the buffered bytes must go out: `Some(now)` if at once.
    pub fn flush_due(&self, now: Instant) -> Option<Instant> {
        if self.buf.borrow().is_empty() {
            return None;
        }
        if self.urgent.get() || self.closing.get() {
            return Some(now);
        }
        let since = self.buffered_since.get().unwrap_or(now);
        Some(since + self.policy().timeout)
    }

    /// Everything written from now on is compressed with `encoder`.
    pub fn start_compression(&self, encoder: Encoder) {
        let at = self.buf.borrow().len();
        *self.switch.borrow_mut() = Some((at, encoder));
        self.urgent.set(true);
        self.wake();
    }

    /// Resolves once everything pushed so far is on the socket (or the
    /// writer died): the TLS upgrade starts only after the IDENTIFY answer
    /// went out in clear.
    pub async fn written(&self) {
        std::future::poll_fn(|cx| {
            let done = self.buf.borrow().is_empty() && !self.in_write.get();
            if done || self.dead.get() {
                std::task::Poll::Ready(())
            } else {
                self.reader_waker.set(Some(cx.waker().clone()));
                self.urgent.set(true);
                self.wake();
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// The writer finished writing what it took.
    pub fn write_done(&self) {
        self.in_write.set(false);
        self.wake_reader();
    }

    /// Swaps the buffered bytes into `spare` (empty) for writing; returns a
    /// compression switch that falls inside them.
    pub fn take_into(&self, spare: &mut Vec<u8>) -> Option<(usize, Encoder)> {
        debug_assert!(spare.is_empty());
        std::mem::swap(&mut *self.buf.borrow_mut(), spare);
        self.in_write.set(true);
        self.urgent.set(false);
        self.buffered_since.set(None);
        self.wake_reader();
        self.switch.borrow_mut().take()
    }
}

/// How a channel delivers to this connection.
impl ConsumerSink for OutputBuffer {
    fn push_message(&self, msg: &Message) {
        OutputBuffer::push_message(self, msg)
    }

    fn flush_soon(&self) {
        OutputBuffer::flush_soon(self)
    }

    fn is_dead(&self) -> bool {
        OutputBuffer::is_dead(self)
    }
}
