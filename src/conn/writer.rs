//! The writer task: flushes a connection's output buffer to its socket
//! under the flush policy (T34), and sends heartbeats (T33).

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use futures_lite::{future, AsyncWriteExt};

use super::output::OutputBuffer;
use super::stream::ByteStream;
use crate::protocol::message::HEARTBEAT;

/// Resolves on the next wake-up of the output buffer.
async fn notified(out: &OutputBuffer) {
    let mut registered = false;
    poll_fn(|cx| {
        if registered {
            Poll::Ready(())
        } else {
            out.register_writer(cx.waker());
            registered = true;
            Poll::Pending
        }
    })
    .await
}

/// Runs until the buffer is closed and drained (returns the stream, so a
/// moving connection can hand it over) or the socket fails (None).
pub async fn run<S: ByteStream>(out: Rc<OutputBuffer>, mut stream: S) -> Option<S> {
    let mut spare: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut policy = out.policy();
    let _ = stream.set_write_timeout(policy.heartbeat);
    let mut next_heartbeat = policy.heartbeat.map(|hb| Instant::now() + hb);
    loop {
        if out.take_policy_changed() {
            policy = out.policy();
            // nsqd's write deadline is one heartbeat interval.
            let _ = stream.set_write_timeout(policy.heartbeat);
            next_heartbeat = policy.heartbeat.map(|hb| Instant::now() + hb);
        }
        let now = Instant::now();
        if let (Some(at), Some(hb)) = (next_heartbeat, policy.heartbeat) {
            if now >= at {
                out.push_response(HEARTBEAT);
                next_heartbeat = Some(now + hb);
            }
        }
        let due = out.flush_due(now);
        if due.is_some_and(|d| d <= now) {
            out.take_into(&mut spare);
            let written = stream.write_all(&spare).await;
            spare.clear();
            if let Err(e) = written {
                tracing::debug!(error = %e, "write failed; closing");
                out.mark_dead();
                // SAFETY: shutdown of our own socket: the reader sees EOF.
                unsafe {
                    libc::shutdown(stream.raw_fd(), libc::SHUT_RDWR);
                }
                return None;
            }
            continue;
        }
        if out.is_closing() && out.is_empty() {
            let _ = stream.flush().await;
            return Some(stream);
        }
        let wake_at = [due, next_heartbeat].into_iter().flatten().min();
        match wake_at {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                future::or(notified(&out), async {
                    glommio::timer::sleep(wait).await;
                })
                .await
            }
            None => notified(&out).await,
        }
    }
}
