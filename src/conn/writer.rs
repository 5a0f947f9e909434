//! The writer task: flushes a connection's output buffer to its socket
//! under the flush policy (T34), compressing it once IDENTIFY turned
//! compression on (T19), and sends heartbeats (T33).

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use futures_lite::{future, AsyncWriteExt};

use super::compress::Encoder;
use super::output::OutputBuffer;
use super::stream::{with_deadline, ByteStream, WriteHalf};
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

/// What a writer hands back when it stops cleanly: the stream half and the
/// compressor state, so a moving connection keeps both.
pub type WriterParts<S> = (WriteHalf<S>, Option<Encoder>);

/// Writes `plain` (compressed if an encoder is set); Err on socket failure.
/// nsqd's write deadline is one heartbeat interval.
async fn send<S: ByteStream>(
    stream: &mut WriteHalf<S>,
    encoder: &mut Option<Encoder>,
    plain: &[u8],
    scratch: &mut Vec<u8>,
    deadline: Option<std::time::Duration>,
) -> std::io::Result<()> {
    let bytes = match encoder {
        None => plain,
        Some(enc) => {
            scratch.clear();
            enc.encode(plain, scratch).map_err(std::io::Error::other)?;
            &scratch[..]
        }
    };
    // The flush pushes out what a TLS layer still holds (a no-op in clear).
    with_deadline::<S, _>(deadline, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
}

/// Runs until the buffer is closed and drained (Some) or the socket fails
/// (None).
pub async fn run<S: ByteStream>(
    out: Rc<OutputBuffer>,
    mut stream: WriteHalf<S>,
    mut encoder: Option<Encoder>,
) -> Option<WriterParts<S>> {
    let mut spare: Vec<u8> = Vec::new();
    let mut scratch: Vec<u8> = Vec::new();
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
            let written = match out.take_into(&mut spare) {
                // The IDENTIFY answer goes in clear, the rest compressed.
                Some((at, enc)) => {
                    let at = at.min(spare.len());
                    let hb = policy.heartbeat;
                    let clear =
                        send(&mut stream, &mut encoder, &spare[..at], &mut scratch, hb).await;
                    encoder = Some(enc);
                    match clear {
                        Ok(()) => {
                            send(&mut stream, &mut encoder, &spare[at..], &mut scratch, hb).await
                        }
                        Err(e) => Err(e),
                    }
                }
                None => {
                    send(
                        &mut stream,
                        &mut encoder,
                        &spare,
                        &mut scratch,
                        policy.heartbeat,
                    )
                    .await
                }
            };
            spare.clear();
            out.write_done();
            // Idle connections should not keep a large buffer around.
            if spare.capacity() > 256 * 1024 {
                spare = Vec::new();
                scratch = Vec::new();
            }
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
            return Some((stream, encoder));
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
