//! Topic → core ownership and the lock-free hand-offs between cores.
//!
//! Every ordered pair of cores has one SPSC ring (`ringbuf`). A core pushes
//! work for another core into its ring and wakes the other core only if it
//! is parked (a flag swapped from true), so under load almost no push pays
//! for a wake-up. The receiving core drains all its rings in one pass.

use std::cell::RefCell;
use std::future::poll_fn;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::protocol::identify::ClientSettings;
use crate::shard::AdminError;
use crate::stats::{CoreStats, StatsFilter};

/// Items in flight between two cores; capacity per ring.
const RING_CAPACITY: usize = 4096;

/// The owning core of a topic: a stable hash of its name.
pub fn owner_core(topic: &[u8], cores: usize) -> usize {
    (crc32fast::hash(topic) as usize) % cores
}

/// The result of a publish, as the publisher's connection reports it.
pub type PublishResult = Result<(), String>;

/// A batch of messages for one topic, published on another core.
pub struct PublishBatch {
    pub topic: Bytes,
    pub bodies: Vec<Bytes>,
    pub defer: Option<Duration>,
    pub reply: oneshot::Sender<PublishResult>,
}

/// Which kind of socket a moving connection's fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

/// A consumer connection moving to the core that owns its topic, so that
/// delivery, in-flight and timeouts stay core-local.
pub struct Handoff {
    /// The socket, duplicated for the receiving core; closed if the
    /// hand-off is dropped (shutdown) instead of resumed.
    pub fd: Option<OwnedFd>,
    pub client_id: u64,
    pub remote: String,
    pub transport: Transport,
    pub connected_at: std::time::SystemTime,
    pub settings: ClientSettings,
    pub pub_counts: Vec<(String, u64)>,
    /// Compression state, both ways, if IDENTIFY turned it on.
    pub decoder: Option<crate::conn::compress::Decoder>,
    pub encoder: Option<crate::conn::compress::Encoder>,
    /// Bytes read from the socket but not yet parsed.
    pub pending: BytesMut,
    /// The SUB that made it move, run on arrival; None for a publisher.
    pub sub: Option<(String, String)>,
    pub publisher_moved: bool,
}

/// Operator actions (HTTP API), run on the core that owns the topic, and
/// /stats, run on every core.
#[derive(Debug, Clone)]
pub enum AdminOp {
    Stats(StatsFilter),
    /// This core's topics and channels for nsqd.dat.
    Metadata,
    CreateTopic(String),
    DeleteTopic(String),
    EmptyTopic(String),
    PauseTopic(String, bool),
    CreateChannel(String, String),
    DeleteChannel(String, String),
    EmptyChannel(String, String),
    PauseChannel(String, String, bool),
}

impl AdminOp {
    /// The topic whose core must run this; None for every core.
    pub fn topic(&self) -> Option<&str> {
        match self {
            AdminOp::Stats(_) | AdminOp::Metadata => None,
            AdminOp::CreateTopic(t)
            | AdminOp::DeleteTopic(t)
            | AdminOp::EmptyTopic(t)
            | AdminOp::PauseTopic(t, _)
            | AdminOp::CreateChannel(t, _)
            | AdminOp::DeleteChannel(t, _)
            | AdminOp::EmptyChannel(t, _)
            | AdminOp::PauseChannel(t, _, _) => Some(t),
        }
    }
}

#[derive(Debug)]
pub enum AdminReply {
    Done(Result<(), AdminError>),
    Stats(CoreStats),
    Metadata(Vec<crate::storage::metadata::TopicMeta>),
}

pub struct AdminRequest {
    pub op: AdminOp,
    pub reply: oneshot::Sender<AdminReply>,
}

pub enum CoreMsg {
    Publish(PublishBatch),
    Handoff(Box<Handoff>),
    Admin(AdminRequest),
}

/// Wakes a parked core from any thread, only when it sleeps.
#[derive(Default)]
pub struct CoreWaker {
    waker: AtomicWaker,
    sleeping: AtomicBool,
}

impl CoreWaker {
    pub fn wake_if_sleeping(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    pub fn wake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        self.waker.wake();
    }
}

/// The sending side on one core: a producer per other core.
pub struct Router {
    pub core: usize,
    pub cores: usize,
    producers: Vec<Option<RefCell<HeapProd<CoreMsg>>>>,
    wakers: Vec<Arc<CoreWaker>>,
}

/// The receiving side on one core: a consumer per other core.
pub struct Inbox {
    consumers: Vec<HeapCons<CoreMsg>>,
    pub waker: Arc<CoreWaker>,
}

/// Builds the ring mesh for `cores` cores: one (Router, Inbox) per core.
pub fn build_mesh(cores: usize) -> (Vec<Router>, Vec<Inbox>, Vec<Arc<CoreWaker>>) {
    let wakers: Vec<Arc<CoreWaker>> = (0..cores).map(|_| Arc::new(CoreWaker::default())).collect();
    let mut producers: Vec<Vec<Option<RefCell<HeapProd<CoreMsg>>>>> = (0..cores)
        .map(|_| (0..cores).map(|_| None).collect())
        .collect();
    let mut consumers: Vec<Vec<HeapCons<CoreMsg>>> = (0..cores).map(|_| Vec::new()).collect();
    for (from, row) in producers.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from == to {
                continue;
            }
            let (prod, cons) = HeapRb::<CoreMsg>::new(RING_CAPACITY).split();
            *slot = Some(RefCell::new(prod));
            consumers[to].push(cons);
        }
    }
    let routers = producers
        .into_iter()
        .enumerate()
        .map(|(core, producers)| Router {
            core,
            cores,
            producers,
            wakers: wakers.clone(),
        })
        .collect();
    let inboxes = consumers
        .into_iter()
        .enumerate()
        .map(|(core, consumers)| Inbox {
            consumers,
            waker: wakers[core].clone(),
        })
        .collect();
    (routers, inboxes, wakers)
}

impl Router {
    /// Items waiting in this core's outgoing rings.
    pub fn occupancy(&self) -> u64 {
        self.producers
            .iter()
            .flatten()
            .map(|p| p.borrow().occupied_len() as u64)
            .sum()
    }

    pub fn owner(&self, topic: &[u8]) -> usize {
        owner_core(topic, self.cores)
    }

    /// Pushes `msg` to core `to`; waits (briefly sleeping) while its ring
    /// is full.
    pub async fn send(&self, to: usize, mut msg: CoreMsg) {
        let Some(Some(prod)) = self.producers.get(to) else {
            tracing::error!(to, "no ring to core");
            return;
        };
        loop {
            let pushed = prod.borrow_mut().try_push(msg);
            match pushed {
                Ok(()) => {
                    self.wakers[to].wake_if_sleeping();
                    return;
                }
                Err(back) => {
                    msg = back;
                    self.wakers[to].wake();
                    glommio::timer::sleep(Duration::from_micros(50)).await;
                }
            }
        }
    }
}

impl Inbox {
    /// Takes up to `max` items from every ring into `into`.
    pub fn drain(&mut self, into: &mut Vec<CoreMsg>, max: usize) {
        for cons in &mut self.consumers {
            into.extend(cons.pop_iter().take(max));
        }
    }

    fn is_empty(&self) -> bool {
        self.consumers.iter().all(|c| c.is_empty())
    }

    /// Parks until some ring has items or `stop()` says so.
    pub async fn wait(&self, stop: impl Fn() -> bool) {
        poll_fn(|cx| {
            if !self.is_empty() || stop() {
                return Poll::Ready(());
            }
            self.waker.waker.register(cx.waker());
            self.waker.sleeping.store(true, Ordering::SeqCst);
            // Re-check after announcing sleep: a push may have raced us.
            if !self.is_empty() || stop() {
                self.waker.sleeping.store(false, Ordering::SeqCst);
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_stable_and_spread() {
        assert_eq!(owner_core(b"test", 4), owner_core(b"test", 4));
        let mut seen = [0usize; 2];
        for i in 0..100 {
            seen[owner_core(format!("t{i}").as_bytes(), 2)] += 1;
        }
        assert!(seen[0] > 20 && seen[1] > 20, "{seen:?}");
    }

    #[test]
    fn mesh_connects_every_pair() {
        let (routers, mut inboxes, _) = build_mesh(3);
        for r in &routers {
            for to in 0..3 {
                if to != r.core {
                    let (tx, _rx) = oneshot::channel();
                    let batch = PublishBatch {
                        topic: Bytes::from_static(b"t"),
                        bodies: vec![],
                        defer: None,
                        reply: tx,
                    };
                    assert!(r.producers[to]
                        .as_ref()
                        .unwrap()
                        .borrow_mut()
                        .try_push(CoreMsg::Publish(batch))
                        .is_ok());
                }
            }
        }
        for inbox in &mut inboxes {
            let mut v = Vec::new();
            inbox.drain(&mut v, 100);
            assert_eq!(v.len(), 2);
        }
    }
}
