//! nsqd's HTTP API (section 3 of the reference) on hyper 1.x, served by
//! every core from its own SO_REUSEPORT listener. Handlers run on the core
//! that accepted the request and reach topics through the same routing as
//! TCP publishers.

mod reply;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::net::TcpListener;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use smol_hyper::rt::FuturesIo;

use crate::runtime::core::Core;

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
pub async fn serve(core: Rc<Core>, listener: TcpListener) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            core.stopping.wait().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let core = core.clone();
                glommio::spawn_local(async move {
                    let service = service_fn(move |req| routes::handle(core.clone(), req));
                    let conn = http1::Builder::new()
                        .timer(CoreTimer)
                        .keep_alive(true)
                        .serve_connection(FuturesIo::new(stream), service);
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "http connection ended");
                    }
                })
                .detach();
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "http accept failed");
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Binds this core's HTTP listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::runtime::listen::bind(addr)
}
