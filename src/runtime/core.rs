//! One core: its shard, its listener, its inbox from the other cores, and
//! its timers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::net::TcpListener;

use super::event::LocalEvent;
use super::{Shared, StartError};
use crate::conn;
use crate::route::{CoreMsg, Inbox, Router};
use crate::shard::Shard;

/// How often in-flight timeouts and deferred messages are checked (nsqd's
/// QueueScanInterval).
const TIMER_TICK: Duration = Duration::from_millis(100);
/// How long shutdown waits for connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a task on this core reaches through `Rc<Core>`.
pub struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub shard: RefCell<Shard>,
    pub router: Router,
    /// Live connections' fds, to shut them down on exit.
    pub conns: RefCell<HashMap<u64, RawFd>>,
    pub stopping: LocalEvent,
}

impl Core {
    pub fn opts(&self) -> &crate::config::Options {
        &self.shared.opts
    }
}

pub async fn run_core(
    id: usize,
    shared: Arc<Shared>,
    router: Router,
    inbox: Inbox,
    tcp_addr: SocketAddr,
    ready: mpsc::Sender<Result<(), StartError>>,
) {
    let opts = shared.opts.clone();
    let listener = match TcpListener::bind(tcp_addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(StartError::Listen {
                addr: tcp_addr.to_string(),
                err: e.to_string(),
            }));
            return;
        }
    };
    let core = Rc::new(Core {
        id,
        shard: RefCell::new(Shard::new(
            id,
            shared.node_id,
            opts.mem_queue_size as usize,
            opts.max_channel_consumers.max(0) as usize,
        )),
        shared,
        router,
        conns: RefCell::new(HashMap::new()),
        stopping: LocalEvent::default(),
    });
    let _ = ready.send(Ok(()));

    let inbox_task = glommio::spawn_local(inbox_loop(core.clone(), inbox));
    let timer_task = glommio::spawn_local(timer_loop(core.clone()));

    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            core.stopping.wait().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                glommio::spawn_local(conn::serve(core.clone(), stream)).detach();
            }
            Some(Err(e)) => {
                tracing::warn!(core = id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    drop(listener);

    // Close every client (D10 order: listener, then clients).
    for (_, fd) in core.conns.borrow().iter() {
        // SAFETY: shutdown on an fd a live connection owns; it only
        // makes its pending reads return EOF.
        unsafe {
            libc::shutdown(*fd, libc::SHUT_RDWR);
        }
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !core.conns.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    timer_task.await;
    inbox_task.await;
}

async fn inbox_loop(core: Rc<Core>, mut inbox: Inbox) {
    let mut batch = Vec::with_capacity(256);
    loop {
        inbox.drain(&mut batch, 256);
        if batch.is_empty() {
            if core.shared.shutdown.load(Ordering::SeqCst) {
                core.stopping.set();
                return;
            }
            let shared = core.shared.clone();
            inbox
                .wait(move || shared.shutdown.load(Ordering::SeqCst))
                .await;
            continue;
        }
        for msg in batch.drain(..) {
            match msg {
                CoreMsg::Publish(p) => {
                    // Names were validated by the sender: ASCII.
                    let topic = String::from_utf8_lossy(&p.topic);
                    let result = core.shard.borrow_mut().publish(&topic, &p.bodies, p.defer);
                    let _ = p.reply.send(result);
                }
                CoreMsg::Handoff(h) => {
                    glommio::spawn_local(conn::resume(core.clone(), h)).detach();
                }
            }
        }
        glommio::yield_if_needed().await;
    }
}

async fn timer_loop(core: Rc<Core>) {
    while !core.stopping.is_set() {
        future::or(glommio::timer::sleep(TIMER_TICK), core.stopping.wait()).await;
        core.shard.borrow_mut().process_timers(Instant::now());
    }
}
