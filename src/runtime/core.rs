//! One core: its shard, its listener, its inbox from the other cores, and
//! its timers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_lite::future;

use super::event::LocalEvent;
use super::listen::{Accepted, ListenAddr, Listener};
use super::{Shared, StartError};
use crate::conn;
use crate::conn::info::ClientInfo;
use crate::lookup::discovery::Discovery;
use crate::route::{AdminOp, AdminReply, AdminRequest, CoreMsg, Inbox, PublishBatch, Router};
use crate::shard::AdminError;
use crate::shard::{Shard, ShardConfig};
use crate::stats::{CoreCounters, CoreStats, StatsFilter};
use crate::storage::metadata::{self, MetadataError, TopicMeta};
use crate::storage::{CoreStorage, StorageConfig};
use bytes::Bytes;
use futures::channel::oneshot;

/// How often in-flight timeouts and deferred messages are checked (nsqd's
/// QueueScanInterval).
const TIMER_TICK: Duration = Duration::from_millis(100);
/// How soon a created or deleted topic reaches nsqd.dat.
const METADATA_CHECK: Duration = Duration::from_millis(100);
/// How long shutdown waits for connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a task on this core reaches through `Rc<Core>`.
pub struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub shard: RefCell<Shard>,
    pub router: Router,
    /// Live connections, for /stats, forced disconnects and shutdown.
    pub conns: RefCell<HashMap<u64, Rc<ClientInfo>>>,
    pub stopping: LocalEvent,
    /// Set last, once this core's connections are gone: the inbox stops.
    pub exited: std::cell::Cell<bool>,
    pub counters: CoreCounters,
    /// Disk queues' group commit, read-ahead notices and health.
    pub storage: Rc<CoreStorage>,
}

impl Core {
    pub fn opts(&self) -> &crate::config::Options {
        &self.shared.opts
    }

    /// Publishes on the topic's owning core; Ok once the owner took the
    /// batch. The error text follows "PUB failed " in nsqd's answers.
    pub async fn publish(
        &self,
        topic: Bytes,
        bodies: Vec<Bytes>,
        defer: Option<Duration>,
    ) -> Result<(), String> {
        let owner = self.router.owner(&topic);
        if owner == self.id {
            let name = String::from_utf8_lossy(&topic);
            let result = self.shard.borrow_mut().publish(&name, &bodies, defer);
            if self.storage.over_limit() {
                self.storage.wait_for_room().await;
            }
            return match result {
                Ok(()) if self.storage.config.durable() => {
                    self.storage.sync.commit().await.map_err(|e| e.to_string())
                }
                other => other,
            };
        }
        CoreCounters::add(&self.counters.forwarded_batches, 1);
        CoreCounters::add(&self.counters.forwarded_messages, bodies.len() as u64);
        let (reply, rx) = oneshot::channel();
        let batch = PublishBatch {
            topic,
            bodies,
            defer,
            reply,
        };
        self.router.send(owner, CoreMsg::Publish(batch)).await;
        rx.await.unwrap_or_else(|_| Err("exiting".to_string()))
    }

    /// Runs an admin operation here, on this core's shard.
    pub fn execute_admin(&self, op: AdminOp) -> AdminReply {
        let mut shard = self.shard.borrow_mut();
        let done = match op {
            AdminOp::Metadata => return AdminReply::Metadata(shard.metadata()),
            AdminOp::Stats(filter) => {
                let topics = shard.stats(&filter);
                let producers = if filter.include_clients {
                    self.conns
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
                snapshot.connections = self.conns.borrow().len() as u64;
                snapshot.disk_unwritten_bytes = self.storage.unwritten_bytes();
                snapshot.disk_sync = self.storage.sync.figures();
                return AdminReply::Stats(CoreStats {
                    topics,
                    producers,
                    cores: vec![snapshot],
                });
            }
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
        let owner = self.router.owner(op.topic().unwrap_or_default().as_bytes());
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
        metadata::persist(&self.shared.data_path, &topics)
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

/// Everything a core starts with.
pub struct CoreSetup {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub router: Router,
    pub inbox: Inbox,
    pub tcp_addr: ListenAddr,
    pub http_addr: Option<ListenAddr>,
    /// The topics of nsqd.dat that this core owns.
    pub restore: Vec<TopicMeta>,
    /// Told once the listeners are bound and the queues opened (or failed).
    pub ready: mpsc::Sender<Result<(), StartError>>,
    /// Fires once every core is ready (`runtime::run`); dropped when
    /// start-up failed. Nothing is accepted before: a client connecting
    /// meanwhile waits in the listen backlog, as with nsqd, whose
    /// listeners accept only once its metadata and queues are loaded.
    pub serve: oneshot::Receiver<()>,
}

pub async fn run_core(setup: CoreSetup) {
    let CoreSetup {
        id,
        shared,
        router,
        inbox,
        tcp_addr,
        http_addr,
        restore,
        ready,
        serve,
    } = setup;
    let opts = shared.opts.clone();
    // A unix socket is served by core 0 alone; TCP by every core.
    let bind = |addr: &ListenAddr| -> Result<Option<Listener>, StartError> {
        if !addr.listens_on(id) {
            return Ok(None);
        }
        Listener::bind(addr)
            .map(Some)
            .map_err(|e| StartError::Listen {
                addr: addr.to_string(),
                err: e.to_string(),
            })
    };
    let listeners = bind(&tcp_addr).and_then(|tcp| {
        let http = match &http_addr {
            Some(a) => bind(a)?,
            None => None,
        };
        Ok((tcp, http))
    });
    let (listener, http_listener) = match listeners {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let storage = CoreStorage::new(StorageConfig::from_options(&opts), shared.health.clone());
    crate::storage::probe_direct_reads(&storage.config.dir, id).await;
    let discovery = Rc::new(Discovery::new(
        shared.lookup.clone(),
        opts.http_client_connect_timeout,
        opts.http_client_request_timeout,
    ));
    let mut shard_config = ShardConfig::from_options(
        &opts,
        shared.node_id,
        shared.metadata_dirty.clone(),
        Some(storage.clone()),
        Some(shared.lookup.clone()),
    );
    shard_config.discovery = Some(discovery.clone());
    let core = Rc::new(Core {
        id,
        shard: RefCell::new(Shard::new(id, shard_config)),
        storage: storage.clone(),
        shared,
        router,
        conns: RefCell::new(HashMap::new()),
        stopping: LocalEvent::default(),
        exited: std::cell::Cell::new(false),
        counters: CoreCounters::default(),
    });
    storage.prepare_queues(queue_names(&restore)).await;
    core.shard.borrow_mut().restore(&restore);
    super::report::opened(&core.shared.tally, id, &core.shard.borrow());
    let _ = ready.send(Ok(()));
    let serving = serve.await.is_ok();

    let inbox_task = glommio::spawn_local(inbox_loop(core.clone(), inbox));
    let sync_task = glommio::spawn_local(storage.clone().sync_loop());
    let refill_task = glommio::spawn_local(refill_loop(core.clone()));
    // L7: a weak handle, so the detached task never keeps the core alive.
    let weak = Rc::downgrade(&core);
    glommio::spawn_local(discovery.run(move |topic, channels| {
        if let Some(core) = weak.upgrade() {
            core.shard.borrow_mut().channels_discovered(topic, channels);
        }
    }))
    .detach();
    let timer_task = glommio::spawn_local(timer_loop(core.clone()));
    let http_task = http_listener
        .filter(|_| serving)
        .map(|l| glommio::spawn_local(crate::http::serve(core.clone(), l)));
    let metadata_task = (id == 0).then(|| glommio::spawn_local(metadata_loop(core.clone())));
    let statsd_task =
        (id == 0).then(|| glommio::spawn_local(crate::metrics::statsd::run(core.clone())));

    match listener {
        Some(listener) if serving => accept_loop(&core, listener).await,
        _ => core.stopping.wait().await,
    }

    // Close every client (D10 order: listener, then clients).
    for info in core.conns.borrow().values() {
        info.disconnect();
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !core.conns.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    timer_task.await;
    if let Some(t) = http_task {
        t.await;
    }
    if let Some(t) = statsd_task {
        t.await;
    }
    if let Some(t) = metadata_task {
        t.await;
    }
    // D10: memory, in-flight and deferred messages to disk, then every
    // queue synced with its consume position saved.
    core.storage.begin_close();
    refill_task.await;
    let held = core.shard.borrow().stats(&StatsFilter::default());
    super::report::stopping(&core.shared.tally, &held);
    let queues = core.shard.borrow_mut().persist_for_shutdown();
    super::report::closed_queues(&core.shared.tally, queues.len());
    for q in &queues {
        match q.sync(true).await {
            Ok(()) => q.trim_tail().await,
            Err(e) => {
                tracing::error!(queue = %q.name, error = %e, "could not write the queue out at shutdown")
            }
        }
    }
    core.storage.close();
    sync_task.await;
    core.shared
        .exit_metadata
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(core.shard.borrow().metadata());
    core.exited.set(true);
    core.shared.wakers[id].wake();
    inbox_task.await;
}

/// The disk queues restoring `topics` opens: each topic's and each of its
/// channels' (`topic:channel`), ephemeral ones aside (they have none).
fn queue_names(topics: &[TopicMeta]) -> Vec<String> {
    use crate::protocol::names::is_ephemeral;
    let mut names = Vec::new();
    for t in topics.iter().filter(|t| !is_ephemeral(&t.name)) {
        names.push(t.name.clone());
        for c in t.channels.iter().filter(|c| !is_ephemeral(&c.name)) {
            names.push(format!("{}:{}", t.name, c.name));
        }
    }
    names
}

async fn inbox_loop(core: Rc<Core>, mut inbox: Inbox) {
    let mut batch = Vec::with_capacity(256);
    loop {
        inbox.drain(&mut batch, 256);
        if batch.is_empty() {
            if core.shared.shutdown.load(Ordering::SeqCst) && !core.stopping.is_set() {
                core.stopping.set();
            }
            // Other cores may still forward work while this one stops: keep
            // answering until run_core is done with its connections.
            if core.exited.get() {
                return;
            }
            let c = core.clone();
            inbox
                .wait(move || {
                    (c.shared.shutdown.load(Ordering::SeqCst) && !c.stopping.is_set())
                        || c.exited.get()
                })
                .await;
            continue;
        }
        for msg in batch.drain(..) {
            match msg {
                CoreMsg::Publish(p) => {
                    CoreCounters::add(&core.counters.received_batches, 1);
                    CoreCounters::add(&core.counters.received_messages, p.bodies.len() as u64);
                    // Names were validated by the sender: ASCII.
                    let topic = String::from_utf8_lossy(&p.topic);
                    if core.storage.is_closing() {
                        // Queues are being written out: too late to take it.
                        let _ = p.reply.send(Err("exiting".to_string()));
                        continue;
                    }
                    let result = core.shard.borrow_mut().publish(&topic, &p.bodies, p.defer);
                    let durable = result.is_ok() && core.storage.config.durable();
                    if durable || core.storage.over_limit() {
                        // OK once on disk (the group commit batches these),
                        // or once the disk has caught up (backpressure).
                        let storage = core.storage.clone();
                        glommio::spawn_local(async move {
                            storage.wait_for_room().await;
                            let r = if durable {
                                storage.sync.commit().await.map_err(|e| e.to_string())
                            } else {
                                result
                            };
                            let _ = p.reply.send(r);
                        })
                        .detach();
                    } else {
                        let _ = p.reply.send(result);
                    }
                }
                CoreMsg::Handoff(h) => {
                    CoreCounters::add(&core.counters.handoffs_in, 1);
                    if core.stopping.is_set() {
                        drop(h); // closes the socket: the client reconnects elsewhere
                    } else {
                        glommio::spawn_local(conn::resume(core.clone(), h)).detach();
                    }
                }
                CoreMsg::Admin(req) => {
                    let _ = req.reply.send(core.execute_admin(req.op));
                }
            }
        }
        glommio::yield_if_needed().await;
    }
}

async fn accept_loop(core: &Rc<Core>, listener: Listener) {
    listener
        .serve_until(&core.stopping, |client| match client {
            Accepted::Tcp(stream) => {
                glommio::spawn_local(conn::serve_tcp(core.clone(), stream)).detach();
            }
            Accepted::Unix(stream) => {
                glommio::spawn_local(conn::serve_unix(core.clone(), stream)).detach();
            }
        })
        .await;
}

/// D2: rewrites nsqd.dat when a topic or channel came or went (core 0).
async fn metadata_loop(core: Rc<Core>) {
    while !core.stopping.is_set() {
        future::or(glommio::timer::sleep(METADATA_CHECK), core.stopping.wait()).await;
        if core.shared.metadata_dirty.swap(false, Ordering::AcqRel) && !core.stopping.is_set() {
            if let Err(e) = core.persist_metadata().await {
                tracing::error!(error = %e, "failed to persist metadata");
            }
        }
    }
}

/// Disk queues that read backlog into memory: deliver it.
async fn refill_loop(core: Rc<Core>) {
    loop {
        let names = core.storage.next_refills().await;
        if names.is_empty() {
            return; // storage closed
        }
        let mut shard = core.shard.borrow_mut();
        for name in names {
            shard.refilled(&name);
        }
    }
}

async fn timer_loop(core: Rc<Core>) {
    while !core.stopping.is_set() {
        future::or(glommio::timer::sleep(TIMER_TICK), core.stopping.wait()).await;
        core.shard.borrow_mut().process_timers(Instant::now());
    }
}
