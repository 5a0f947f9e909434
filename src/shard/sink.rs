//! What a channel needs from a consumer's connection: somewhere to put
//! message frames and a say in when they are flushed (T24, T34). The
//! connection layer implements it on its output buffer; unit tests use a
//! fake that records what was delivered.

use crate::protocol::Message;

pub trait ConsumerSink {
    /// Buffers one message frame; its flush waits for the client's flush
    /// policy (output_buffer_size / output_buffer_timeout).
    fn push_message(&self, msg: &Message);

    /// The client can take no more messages for now: nsqd flushes what is
    /// buffered at that point rather than waiting for the timeout.
    fn flush_soon(&self);

    /// The connection's writer has stopped: deliver nothing more to it.
    fn is_dead(&self) -> bool;
}
