//! nsqd's HTTP API (section 3 of the reference) on hyper 1.x, served by
//! every core from its own SO_REUSEPORT listener. Handlers run on the core
//! that accepted the request and reach topics through the same routing as
//! TCP publishers.

mod error;
mod reply;
mod routes;
mod target;

#[doc(hidden)]
pub use error::HttpError;
#[doc(hidden)]
pub use routes::publish_args;
#[doc(hidden)]
pub use target::{escape_into, Framer};

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use smol_hyper::rt::FuturesIo;

use crate::config::TlsRequired;
use crate::conn::tls::TlsStream;
use crate::runtime::core::Core;
use crate::runtime::listen::{Accepted, Listener};

/// hyper needs a timer for its header-read timeout and for closing idle
/// keep-alive connections; glommio's timers are core-local (`!Send`).
#[derive(Clone, Copy)]
struct CoreTimer;

/// A glommio sleep that hyper may treat as `Send`: hyper's HTTP/1 server
/// connection is driven by one `spawn_local` task and never leaves this
/// core, so the sleep is polled and dropped on the thread that made it.
struct CoreSleep(Pin<Box<dyn Future<Output = ()>>>);

// SAFETY: see above; the value never crosses threads.
unsafe impl Send for CoreSleep {}
// SAFETY: no shared access happens; hyper only polls through Pin<&mut>.
unsafe impl Sync for CoreSleep {}

impl Future for CoreSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for CoreSleep {}

impl hyper::rt::Timer for CoreTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoreSleep(Box::pin(glommio::timer::sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// Accepts HTTP connections on this core until shutdown.
pub async fn serve(core: Rc<Core>, mut listener: Listener) {
    // H3: `--tls-required=true` closes plain HTTP (not `tcp-https`).
    let refuse = core
        .opts()
        .tls_required_mode()
        .is_ok_and(|m| m == TlsRequired::Yes);
    listener
        .serve_until(&core.stopping, |client| match client {
            Accepted::Tcp(stream) => {
                let _ = stream.set_nodelay(true);
                glommio::spawn_local(serve_connection(core.clone(), stream, refuse)).detach();
            }
            Accepted::Unix(conn) => {
                glommio::spawn_local(serve_connection(core.clone(), conn.stream, refuse)).detach();
            }
        })
        .await;
}

/// The HTTPS listener (nsqd's `--https-address`): the same routes behind
/// TLS with the TCP port's certificate and client-certificate policy.
pub async fn serve_tls(core: Rc<Core>, mut listener: Listener) {
    let Some(config) = core.shared.tls.clone() else {
        return;
    };
    listener
        .serve_until(&core.stopping, |client| {
            let Accepted::Tcp(stream) = client else {
                return;
            };
            let _ = stream.set_nodelay(true);
            match TlsStream::accept(stream, config.clone()) {
                // hyper's reads drive the handshake.
                Ok(tls) => {
                    glommio::spawn_local(serve_connection(core.clone(), tls, false)).detach();
                }
                Err(e) => tracing::warn!(error = %e, "cannot start a TLS session"),
            }
        })
        .await;
}

/// nsqd's answer to every request on plain HTTP when TLS is required (H3).
fn tls_required(core: &Core) -> reply::Reply {
    let port = core.shared.https_port.unwrap_or(0);
    reply::json_text(
        403,
        format!("{{\"message\": \"TLS_REQUIRED\", \"https_port\": {port}}}"),
    )
}

/// One keep-alive HTTP/1.1 connection (TCP, unix socket or TLS).
async fn serve_connection<S>(core: Rc<Core>, stream: S, refuse: bool)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let service = service_fn(move |req| {
        let core = core.clone();
        async move {
            if refuse {
                return Ok(tls_required(&core));
            }
            routes::handle(core, req).await
        }
    });
    let conn = http1::Builder::new()
        .timer(CoreTimer)
        .keep_alive(true)
        .serve_connection(FuturesIo::new(target::EscapeHash::new(stream)), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended");
    }
}
