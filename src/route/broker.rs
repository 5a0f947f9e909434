//! `Broker`: what a connection or an HTTP request on one core reaches —
//! publish, subscribe, the in-flight operations, admin and /stats — without
//! knowing which core owns a topic. The shard stays behind it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;

use super::msg::{
    AdminOp, AdminReply, AdminRequest, CoreMsg, Handoff, PublishReplies, PublishRequest,
};
use super::publish::{Pending, PublishError, PublishResult, PublishSink, ReplyTo};
use super::ring::Router;
use crate::config::{Options, TlsRequired};
use crate::shard::ClientInfo;
use crate::shard::{AdminError, Channel, Shard, Subscriber};
use crate::stats::CoreCounters;
use crate::stats::{CoreStats, StatsFilter};
use crate::storage::metadata::{self, MetadataError};
use crate::storage::CoreStorage;

/// Everything a core's broker is built from.
pub struct BrokerParts {
    pub id: usize,
    pub opts: Arc<Options>,
    pub shard: Shard,
    pub router: Router,
    pub storage: Rc<CoreStorage>,
    pub client_ids: Arc<AtomicU64>,
    pub data_path: PathBuf,
    /// nsqd's tlsConfig: set when --tls-cert/--tls-key are (T18).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// nsqd's clientTLSConfig, for https:// auth servers (A1); built at
    /// start-up whatever the flags, as nsqd does.
    pub auth_tls: Arc<rustls::ClientConfig>,
}

pub struct Broker {
    pub id: usize,
    pub opts: Arc<Options>,
    /// The topics this core owns. Borrowed only inside one call, never
    /// across an await.
    pub shard: RefCell<Shard>,
    pub router: Router,
    /// Disk queues' group commit, read-ahead notices and health.
    pub storage: Rc<CoreStorage>,
    pub counters: CoreCounters,
    /// Live connections, for /stats, forced disconnects and shutdown.
    pub clients: RefCell<HashMap<u64, Rc<ClientInfo>>>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth_tls: Arc<rustls::ClientConfig>,
    /// `--tls-required`, read once: it is checked before every command of
    /// a plain connection.
    pub tls_required: TlsRequired,
    client_ids: Arc<AtomicU64>,
    data_path: PathBuf,
    /// Publishes forwarded to other cores, waiting for their answer.
    pending: Pending,
    /// Answers to other cores' publishes, sent in one ring item per core.
    replies_out: RefCell<Vec<PublishReplies>>,
    flush_scheduled: Cell<bool>,
    /// The shutdown, waiting for the last connection to go.
    no_clients: Cell<Option<Waker>>,
}

impl Broker {
    pub fn new(p: BrokerParts) -> Broker {
        let cores = p.router.cores;
        // Validated at start-up; should it ever fail, fail closed.
        let tls_required = p.opts.tls_required_mode().unwrap_or(TlsRequired::Yes);
        Broker {
            id: p.id,
            opts: p.opts,
            shard: RefCell::new(p.shard),
            router: p.router,
            storage: p.storage,
            counters: CoreCounters::default(),
            clients: RefCell::new(HashMap::new()),
            tls: p.tls,
            auth_tls: p.auth_tls,
            tls_required,
            client_ids: p.client_ids,
            data_path: p.data_path,
            pending: Pending::default(),
            replies_out: RefCell::new((0..cores).map(|_| Vec::new()).collect()),
            flush_scheduled: Cell::new(false),
            no_clients: Cell::new(None),
        }
    }

    pub fn next_client_id(&self) -> u64 {
        self.client_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn owner(&self, topic: &[u8]) -> usize {
        self.router.owner(topic)
    }

    /// Publishes on the topic's owning core. `Some(result)` when known at
    /// once; otherwise `None`, and `reply` gets it later (a durable write,
    /// disk backpressure, or another core's answer over the ring). Waits
    /// only while the ring to the owner is full.
    /// `owner` is `self.owner(&topic)`, which the caller has computed.
    pub async fn publish(
        self: &Rc<Self>,
        owner: usize,
        topic: Bytes,
        bodies: Vec<Bytes>,
        defer: Option<Duration>,
        reply: ReplyTo,
    ) -> Option<PublishResult> {
        if owner == self.id {
            return self.accept(&topic, &bodies, defer, move |r| reply.send(r));
        }
        CoreCounters::add(&self.counters.forwarded_batches, 1);
        CoreCounters::add(&self.counters.forwarded_messages, bodies.len() as u64);
        let token = self.pending.insert(reply);
        // A caller that goes away while the ring is full (an HTTP request
        // cancelled) must not leave its slot behind.
        let unsent = Unsent {
            pending: &self.pending,
            token,
        };
        let request = PublishRequest {
            topic,
            bodies,
            defer,
            from: self.id,
            token,
        };
        self.router.send(owner, CoreMsg::Publish(request)).await;
        std::mem::forget(unsent);
        None
    }

    /// `publish`, waiting for the outcome (HTTP).
    pub async fn publish_wait(
        self: &Rc<Self>,
        topic: Bytes,
        bodies: Vec<Bytes>,
        defer: Option<Duration>,
    ) -> PublishResult {
        let slot = Rc::new(OneReply::default());
        let reply = ReplyTo {
            sink: slot.clone(),
            seq: 0,
        };
        let owner = self.owner(&topic);
        if let Some(r) = self.publish(owner, topic, bodies, defer, reply).await {
            return r;
        }
        poll_fn(|cx| match slot.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                slot.waker.replace(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// The owning core's one policy for a batch, local or forwarded: not
    /// while the queues are written out for shutdown; OK once on disk in
    /// durable mode (the group commit batches these), and only once the
    /// disk has caught up when it lags (backpressure). `done` is called
    /// later if the answer is not known now.
    fn accept(
        self: &Rc<Self>,
        topic: &[u8],
        bodies: &[Bytes],
        defer: Option<Duration>,
        done: impl FnOnce(PublishResult) + 'static,
    ) -> Option<PublishResult> {
        if self.storage.is_closing() {
            return Some(Err(PublishError::Exiting));
        }
        // Names were validated by the decoder: ASCII.
        let name = std::str::from_utf8(topic).unwrap_or_default();
        let result = self.shard.borrow_mut().publish(name, bodies, defer);
        let durable = result.is_ok() && self.storage.config.durable();
        if !durable && !self.storage.over_limit() {
            return Some(result.map_err(PublishError::from));
        }
        let storage = self.storage.clone();
        glommio::spawn_local(async move {
            storage.wait_for_room().await;
            let r = match result {
                Ok(()) if durable => storage.sync.commit().await,
                other => other,
            };
            done(r.map_err(PublishError::from));
        })
        .detach();
        None
    }

    /// Another core's batch for a topic this core owns.
    pub fn on_publish_request(self: &Rc<Self>, req: PublishRequest) {
        CoreCounters::add(&self.counters.received_batches, 1);
        CoreCounters::add(&self.counters.received_messages, req.bodies.len() as u64);
        let (from, token) = (req.from, req.token);
        let me = self.clone();
        let now = self.accept(&req.topic, &req.bodies, req.defer, move |r| {
            me.queue_reply(from, token, r)
        });
        if let Some(r) = now {
            self.queue_reply(from, token, r);
        }
    }

    /// Answers from owning cores to this core's forwarded publishes.
    pub fn on_replies(&self, replies: PublishReplies) {
        for (token, result) in replies {
            match self.pending.take(token) {
                Some(reply) => reply.send(result),
                None => tracing::error!(token, "publish answer for nothing waiting"),
            }
        }
    }

    /// Queues an answer for core `to`; every answer queued before the
    /// flush task runs goes in the same ring item.
    fn queue_reply(self: &Rc<Self>, to: usize, token: u64, result: PublishResult) {
        self.replies_out.borrow_mut()[to].push((token, result));
        if !self.flush_scheduled.replace(true) {
            let me = self.clone();
            glommio::spawn_local(async move { me.flush_replies().await }).detach();
        }
    }

    async fn flush_replies(&self) {
        self.flush_scheduled.set(false);
        for to in 0..self.router.cores {
            let batch = std::mem::take(&mut self.replies_out.borrow_mut()[to]);
            if !batch.is_empty() {
                self.router.send(to, CoreMsg::Replies(batch)).await;
            }
        }
    }

    /// Moves a connection to core `to` (see `conn`).
    pub async fn hand_off(&self, to: usize, handoff: Handoff) {
        CoreCounters::add(&self.counters.handoffs_out, 1);
        self.router.send(to, CoreMsg::Handoff(handoff)).await;
    }

    pub fn subscribe(
        &self,
        topic: &str,
        channel: &str,
        subscriber: Rc<Subscriber>,
    ) -> Result<(), crate::protocol::ClientError> {
        self.shard
            .borrow_mut()
            .subscribe(topic, channel, subscriber)
    }

    pub fn unsubscribe(&self, topic: &str, channel: &str, client_id: u64) {
        self.shard
            .borrow_mut()
            .unsubscribe(topic, channel, client_id);
    }

    /// Runs `f` on a channel of a topic this core owns.
    pub fn with_channel<T>(
        &self,
        topic: &str,
        channel: &str,
        f: impl FnOnce(&mut Channel) -> T,
    ) -> Option<T> {
        self.shard.borrow_mut().channel_mut(topic, channel).map(f)
    }

    pub fn add_client(&self, info: Rc<ClientInfo>) {
        self.clients.borrow_mut().insert(info.id, info);
    }

    pub fn remove_client(&self, id: u64) {
        let mut clients = self.clients.borrow_mut();
        clients.remove(&id);
        if clients.is_empty() {
            if let Some(w) = self.no_clients.take() {
                w.wake();
            }
        }
    }

    /// Resolves once no connection is left on this core (shutdown).
    pub async fn clients_gone(&self) {
        poll_fn(|cx| {
            if self.clients.borrow().is_empty() {
                Poll::Ready(())
            } else {
                self.no_clients.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Runs an admin operation here, on this core's shard.
    pub fn execute_admin(&self, op: AdminOp) -> AdminReply {
        let mut shard = self.shard.borrow_mut();
        let done = match op {
            AdminOp::Metadata => return AdminReply::Metadata(shard.metadata()),
            AdminOp::Stats(filter) => return AdminReply::Stats(self.core_stats(&shard, &filter)),
            AdminOp::CreateTopic(t) => {
                shard.create_topic(&t);
                Ok(())
            }
            AdminOp::DeleteTopic(t) => shard.delete_topic(&t),
            AdminOp::EmptyTopic(t) => shard.empty_topic(&t),
            AdminOp::PauseTopic(t, p) => shard.pause_topic(&t, p),
            AdminOp::CreateChannel(t, c) => shard.create_channel(&t, &c),
            AdminOp::DeleteChannel(t, c) => shard.delete_channel(&t, &c),
            AdminOp::EmptyChannel(t, c) => shard.empty_channel(&t, &c),
            AdminOp::PauseChannel(t, c, p) => shard.pause_channel(&t, &c, p),
        };
        AdminReply::Done(done)
    }

    fn core_stats(&self, shard: &Shard, filter: &StatsFilter) -> CoreStats {
        let topics = shard.stats(filter);
        let producers = if filter.include_clients {
            self.clients
                .borrow()
                .values()
                .filter(|c| c.is_producer())
                .map(|c| c.stats(filter.topic.as_deref()))
                .collect()
        } else {
            Vec::new()
        };
        let mut snapshot = self.counters.snapshot(self.id);
        snapshot.ring_occupancy = self.router.occupancy();
        snapshot.connections = self.clients.borrow().len() as u64;
        snapshot.disk_unwritten_bytes = self.storage.unwritten_bytes();
        snapshot.disk_sync = self.storage.sync.figures();
        CoreStats {
            topics,
            producers,
            cores: vec![snapshot],
        }
    }

    /// Runs an admin operation on core `core` (here or over the ring).
    pub async fn admin_on(&self, core: usize, op: AdminOp) -> AdminReply {
        if core == self.id {
            return self.execute_admin(op);
        }
        let (reply, rx) = oneshot::channel();
        self.router
            .send(core, CoreMsg::Admin(AdminRequest { op, reply }))
            .await;
        rx.await
            .unwrap_or(AdminReply::Done(Err(AdminError::TopicNotFound)))
    }

    /// A topic or channel operation, on the topic's owning core.
    pub async fn admin(&self, op: AdminOp) -> Result<(), AdminError> {
        let owner = self.owner(op.topic().unwrap_or_default().as_bytes());
        match self.admin_on(owner, op).await {
            AdminReply::Done(r) => r,
            AdminReply::Stats(_) | AdminReply::Metadata(_) => Ok(()),
        }
    }

    /// Writes nsqd.dat from every core's topics (D1, D2).
    pub async fn persist_metadata(&self) -> Result<(), MetadataError> {
        let mut topics = Vec::new();
        for core in 0..self.router.cores {
            if let AdminReply::Metadata(part) = self.admin_on(core, AdminOp::Metadata).await {
                topics.extend(part);
            }
        }
        // The write and its fsyncs run on the core's blocking pool.
        let dir = self.data_path.clone();
        glommio::executor()
            .spawn_blocking(move || metadata::persist(&dir, &topics))
            .await
    }

    /// /stats over every core: topics merged and sorted by name.
    pub async fn stats(&self, filter: StatsFilter) -> CoreStats {
        let mut all = CoreStats::default();
        for core in 0..self.router.cores {
            if let AdminReply::Stats(part) =
                self.admin_on(core, AdminOp::Stats(filter.clone())).await
            {
                all.topics.extend(part.topics);
                all.producers.extend(part.producers);
                all.cores.extend(part.cores);
            }
        }
        all.topics.sort_by(|a, b| a.topic_name.cmp(&b.topic_name));
        all
    }
}

/// A forwarded publish's slot while its request is not in the ring yet.
struct Unsent<'a> {
    pending: &'a Pending,
    token: u64,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        drop(self.pending.take(self.token));
    }
}

/// The answer to one publish, for a caller that waits for it.
#[derive(Default)]
struct OneReply {
    result: Cell<Option<PublishResult>>,
    waker: Cell<Option<Waker>>,
}

impl PublishSink for OneReply {
    fn publish_done(&self, _seq: u64, result: PublishResult) {
        self.result.set(Some(result));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}
