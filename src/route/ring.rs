//! The ring mesh: one lock-free SPSC ring (`ringbuf`) per ordered pair of
//! cores, and the wake-ups that let a core sleep while nothing arrives.
//!
//! A core pushes work for another core into its ring and wakes the other
//! core only if it is parked (a flag swapped from true), so under load
//! almost no push pays for a wake-up. The receiving core drains all its
//! rings in one pass. A sender that finds a ring full parks until the
//! receiver has drained it (the same flag-and-waker pattern the other way),
//! instead of polling.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use super::msg::CoreMsg;

/// Items in flight between two cores; capacity per ring.
const RING_CAPACITY: usize = 4096;

/// The owning core of a topic: a stable hash of its name.
pub fn owner_core(topic: &[u8], cores: usize) -> usize {
    (crc32fast::hash(topic) as usize) % cores
}

/// Wakes a parked task from any thread, only when it sleeps.
///
/// Both sides store then load other locations (the sleeper: its flag, then
/// the ring; the waker: the ring, then the flag), the pattern in which
/// weakly ordered CPUs (aarch64) may let each load pass the store before
/// it, so that each misses the other's and the sleeper never wakes. A
/// SeqCst fence between the store and the load on both sides rules that
/// out; ringbuf's own orderings are only acquire/release.
#[derive(Default)]
pub struct CoreWaker {
    waker: AtomicWaker,
    sleeping: AtomicBool,
}

impl CoreWaker {
    /// After a push (or a drain) to the ring this flag guards.
    pub fn wake_if_sleeping(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Announces sleep, then orders that before the caller's re-check.
    fn announce_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    pub fn wake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Parks until `ready()`: registers, announces sleep, re-checks (a
    /// push may have raced the announcement).
    async fn park_until(&self, ready: impl Fn() -> bool) {
        poll_fn(|cx| {
            if ready() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            self.announce_sleep();
            if ready() {
                self.sleeping.store(false, Ordering::SeqCst);
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// One ring's sending end, with the waker its sender parks on when full.
struct Outgoing {
    prod: RefCell<HeapProd<CoreMsg>>,
    space: Arc<CoreWaker>,
    /// Every task of this core waiting for room: the cross-core waker holds
    /// only the last one, which wakes the others.
    waiting: RefCell<Vec<Waker>>,
}

impl Outgoing {
    fn is_full(&self) -> bool {
        self.prod.borrow().is_full()
    }

    fn wake_waiting(&self) {
        for w in self.waiting.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// Parks a sender until its ring has room.
struct RoomFor<'a>(&'a Outgoing);

impl Future for RoomFor<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let out = self.0;
        if !out.is_full() {
            return Poll::Ready(());
        }
        {
            let mut waiting = out.waiting.borrow_mut();
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
        }
        out.space.waker.register(cx.waker());
        out.space.announce_sleep();
        if out.is_full() {
            return Poll::Pending;
        }
        out.space.sleeping.store(false, Ordering::SeqCst);
        Poll::Ready(())
    }
}

impl Drop for RoomFor<'_> {
    /// Whoever got woken passes it on: the others re-check (and one of them
    /// registers for the next drain), also if this wait was abandoned.
    fn drop(&mut self) {
        self.0.wake_waiting();
    }
}

/// One ring's receiving end.
struct Incoming {
    cons: HeapCons<CoreMsg>,
    /// The sending core's task waiting for room in this ring.
    space: Arc<CoreWaker>,
}

/// The sending side on one core: a producer per other core.
pub struct Router {
    pub core: usize,
    pub cores: usize,
    outgoing: Vec<Option<Outgoing>>,
    wakers: Vec<Arc<CoreWaker>>,
}

/// The receiving side on one core: a consumer per other core.
pub struct Inbox {
    incoming: Vec<Incoming>,
    pub waker: Arc<CoreWaker>,
}

/// Builds the ring mesh for `cores` cores: one (Router, Inbox) per core,
/// and the waker of each core's inbox.
pub fn build_mesh(cores: usize) -> (Vec<Router>, Vec<Inbox>, Vec<Arc<CoreWaker>>) {
    let wakers: Vec<Arc<CoreWaker>> = (0..cores).map(|_| Arc::default()).collect();
    let mut outgoing: Vec<Vec<Option<Outgoing>>> = (0..cores)
        .map(|_| (0..cores).map(|_| None).collect())
        .collect();
    let mut incoming: Vec<Vec<Incoming>> = (0..cores).map(|_| Vec::new()).collect();
    for (from, row) in outgoing.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from == to {
                continue;
            }
            let (prod, cons) = HeapRb::<CoreMsg>::new(RING_CAPACITY).split();
            let space = Arc::new(CoreWaker::default());
            *slot = Some(Outgoing {
                prod: RefCell::new(prod),
                space: space.clone(),
                waiting: RefCell::new(Vec::new()),
            });
            incoming[to].push(Incoming { cons, space });
        }
    }
    let routers = outgoing
        .into_iter()
        .enumerate()
        .map(|(core, outgoing)| Router {
            core,
            cores,
            outgoing,
            wakers: wakers.clone(),
        })
        .collect();
    let inboxes = incoming
        .into_iter()
        .enumerate()
        .map(|(core, incoming)| Inbox {
            incoming,
            waker: wakers[core].clone(),
        })
        .collect();
    (routers, inboxes, wakers)
}

impl Router {
    /// Items waiting in this core's outgoing rings.
    pub fn occupancy(&self) -> u64 {
        self.outgoing
            .iter()
            .flatten()
            .map(|o| o.prod.borrow().occupied_len() as u64)
            .sum()
    }

    pub fn owner(&self, topic: &[u8]) -> usize {
        owner_core(topic, self.cores)
    }

    /// Pushes `msg` to core `to`; parks while its ring is full, until that
    /// core has drained it.
    pub async fn send(&self, to: usize, msg: CoreMsg) {
        let Some(Some(out)) = self.outgoing.get(to) else {
            tracing::error!(to, "no ring to core");
            return;
        };
        let mut msg = Some(msg);
        loop {
            let Some(m) = msg.take() else { return };
            match out.prod.borrow_mut().try_push(m) {
                Ok(()) => {
                    self.wakers[to].wake_if_sleeping();
                    return;
                }
                Err(back) => msg = Some(back),
            }
            // Full: make sure the receiver runs, then wait for its drain.
            self.wakers[to].wake();
            RoomFor(out).await;
        }
    }
}

impl Inbox {
    /// Takes up to `max` items from every ring into `into`, and wakes a
    /// sender that waits for room.
    pub fn drain(&mut self, into: &mut Vec<CoreMsg>, max: usize) {
        for ring in &mut self.incoming {
            let before = into.len();
            into.extend(ring.cons.pop_iter().take(max));
            if into.len() > before {
                ring.space.wake_if_sleeping();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.incoming.iter().all(|r| r.cons.is_empty())
    }

    /// Parks until some ring has items or `stop()` says so.
    pub async fn wait(&self, stop: impl Fn() -> bool) {
        self.waker.park_until(|| !self.is_empty() || stop()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::msg::PublishRequest;
    use bytes::Bytes;

    #[test]
    fn ownership_is_stable_and_spread() {
        assert_eq!(owner_core(b"test", 4), owner_core(b"test", 4));
        let mut seen = [0usize; 2];
        for i in 0..100 {
            seen[owner_core(format!("t{i}").as_bytes(), 2)] += 1;
        }
        assert!(seen[0] > 20 && seen[1] > 20, "{seen:?}");
    }

    fn request(from: usize) -> CoreMsg {
        CoreMsg::Publish(PublishRequest {
            topic: Bytes::from_static(b"t"),
            bodies: vec![],
            defer: None,
            from,
            token: 0,
        })
    }

    #[test]
    fn mesh_connects_every_pair() {
        let (routers, mut inboxes, _) = build_mesh(3);
        for r in &routers {
            for to in 0..3 {
                if to != r.core {
                    let out = r.outgoing[to].as_ref().expect("ring");
                    assert!(out.prod.borrow_mut().try_push(request(r.core)).is_ok());
                }
            }
        }
        for inbox in &mut inboxes {
            let mut v = Vec::new();
            inbox.drain(&mut v, 100);
            assert_eq!(v.len(), 2);
        }
    }

    #[test]
    fn a_full_ring_parks_its_sender_until_drained() {
        let (routers, mut inboxes, _) = build_mesh(2);
        let out = routers[0].outgoing[1].as_ref().expect("ring");
        while out.prod.borrow_mut().try_push(request(0)).is_ok() {}
        // A parked sender announces it; draining wakes it (flag cleared).
        out.space.sleeping.store(true, Ordering::SeqCst);
        let mut v = Vec::new();
        inboxes[1].drain(&mut v, 10);
        assert_eq!(v.len(), 10);
        assert!(!out.space.sleeping.load(Ordering::SeqCst));
        assert!(!out.prod.borrow().is_full());
    }
}
