//! One core: its shard, its listener, its inbox from the other cores, and
//! its timers.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_lite::future;

use super::event::LocalEvent;
use super::listen::{Accepted, ListenAddr, Listener};
use super::{Shared, StartError};
use crate::conn;
use crate::route::{Broker, BrokerParts, CoreMsg, Inbox, Router};
use crate::shard::{Shard, ShardConfig};
use crate::stats::{CoreCounters, StatsFilter};
use crate::storage::metadata::TopicMeta;
use crate::storage::{CoreStorage, StorageConfig};
use futures::channel::oneshot;

/// How often in-flight timeouts and deferred messages are checked (nsqd's
/// QueueScanInterval).
const TIMER_TICK: Duration = Duration::from_millis(100);
/// How soon a created or deleted topic reaches nsqd.dat.
const METADATA_CHECK: Duration = Duration::from_millis(100);
/// How long shutdown waits for connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One core's lifecycle around its broker: what the runtime's tasks and
/// the layers above (HTTP, statsd) reach through `Rc<Core>`.
pub struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    /// Publish, subscribe, admin and /stats on any topic.
    pub broker: Rc<Broker>,
    pub stopping: LocalEvent,
    /// Set last, once this core's connections are gone: the inbox stops.
    pub exited: std::cell::Cell<bool>,
}

impl Core {
    pub fn opts(&self) -> &crate::config::Options {
        &self.shared.opts
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
    pub https_addr: Option<ListenAddr>,
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
        https_addr,
        restore,
        ready,
        serve,
    } = setup;
    let bound = bind_listeners(id, &tcp_addr, http_addr.as_ref(), https_addr.as_ref());
    let (listener, http_listener, https_listener) = match bound {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let services = shared.services.for_core(id);
    let core = build_core(id, shared, router, services.announce()).await;
    let broker = core.broker.clone();
    broker.storage.prepare_queues(queue_names(&restore)).await;
    broker.shard.borrow_mut().restore(&restore);
    super::report::opened(&core.shared.tally, id, &broker.shard.borrow());
    let _ = ready.send(Ok(()));
    let serving = serve.await.is_ok();

    let inbox_task = glommio::spawn_local(inbox_loop(core.clone(), inbox));
    let sync_task = glommio::spawn_local(broker.storage.clone().sync_loop());
    let refill_task = glommio::spawn_local(refill_loop(core.clone()));
    let timer_task = glommio::spawn_local(timer_loop(core.clone()));
    let metadata_task = (id == 0).then(|| glommio::spawn_local(metadata_loop(core.clone())));
    let service_tasks = if serving {
        services.serve(&core, http_listener, https_listener)
    } else {
        Vec::new()
    };
    match listener {
        Some(listener) if serving => accept_loop(&core, listener).await,
        _ => core.stopping.wait().await,
    }

    close_clients(&broker).await;
    timer_task.await;
    for t in service_tasks {
        t.await;
    }
    if let Some(t) = metadata_task {
        t.await;
    }
    broker.storage.begin_close();
    refill_task.await;
    write_out(&core).await;
    sync_task.await;
    core.exited.set(true);
    core.shared.wakers[id].wake();
    inbox_task.await;
}

/// TCP, HTTP and HTTPS; None where this core has none.
type CoreListeners = (Option<Listener>, Option<Listener>, Option<Listener>);

/// A unix socket is served by core 0 alone; TCP by every core.
fn bind_listeners(
    id: usize,
    tcp: &ListenAddr,
    http: Option<&ListenAddr>,
    https: Option<&ListenAddr>,
) -> Result<CoreListeners, StartError> {
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
    let tcp = bind(tcp)?;
    let http = match http {
        Some(a) => bind(a)?,
        None => None,
    };
    let https = match https {
        Some(a) => bind(a)?,
        None => None,
    };
    Ok((tcp, http, https))
}

async fn build_core(
    id: usize,
    shared: Arc<Shared>,
    router: Router,
    announce: Option<Rc<dyn crate::shard::Announce>>,
) -> Rc<Core> {
    let opts = &shared.opts;
    let storage = CoreStorage::new(StorageConfig::from_options(opts), shared.health.clone());
    crate::storage::probe_direct_reads(&storage.config.dir, id).await;
    let shard_config = ShardConfig::from_options(
        opts,
        shared.node_id,
        shared.metadata_dirty.clone(),
        Some(storage.clone()),
        announce,
    );
    let broker = Rc::new(Broker::new(BrokerParts {
        id,
        opts: opts.clone(),
        shard: Shard::new(id, shard_config),
        router,
        storage,
        client_ids: shared.client_ids.clone(),
        data_path: shared.data_path.clone(),
        tls: shared.tls.clone(),
        auth_tls: shared.auth_tls.clone(),
    }));
    Rc::new(Core {
        id,
        shared,
        broker,
        stopping: LocalEvent::default(),
        exited: std::cell::Cell::new(false),
    })
}

/// D10 order: the listener is closed, then every client.
async fn close_clients(broker: &Broker) {
    for info in broker.clients.borrow().values() {
        info.disconnect();
    }
    let gone = async {
        broker.clients_gone().await;
        true
    };
    let _ = futures_lite::future::or(gone, async {
        glommio::timer::sleep(DRAIN_TIMEOUT).await;
        false
    })
    .await;
}

/// D10: memory, in-flight and deferred messages to disk, then every queue
/// synced with its consume position saved; this core's topics for nsqd.dat.
async fn write_out(core: &Core) {
    let broker = &core.broker;
    let held = broker.shard.borrow().stats(&StatsFilter::default());
    super::report::stopping(&core.shared.tally, &held);
    let queues = broker.shard.borrow_mut().persist_for_shutdown();
    super::report::closed_queues(&core.shared.tally, queues.len());
    for q in &queues {
        match q.sync(true).await {
            Ok(()) => q.trim_tail().await,
            Err(e) => {
                tracing::error!(queue = %q.name, error = %e, "could not write the queue out at shutdown")
            }
        }
    }
    // Segments consumed by the last syncs go before the core stops.
    broker.storage.removals_done().await;
    broker.storage.close();
    core.shared
        .exit_metadata
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(broker.shard.borrow().metadata());
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
            handle_core_msg(&core, msg);
        }
        glommio::yield_if_needed().await;
    }
}

/// One item from another core's ring.
fn handle_core_msg(core: &Rc<Core>, msg: CoreMsg) {
    let broker = &core.broker;
    match msg {
        CoreMsg::Publish(p) => broker.on_publish_request(p),
        CoreMsg::Replies(r) => broker.on_replies(r),
        CoreMsg::Handoff(h) => {
            CoreCounters::add(&broker.counters.handoffs_in, 1);
            if core.stopping.is_set() {
                drop(h); // closes the socket: the client reconnects elsewhere
            } else {
                glommio::spawn_local(conn::resume(broker.clone(), h)).detach();
            }
        }
        CoreMsg::Admin(req) => {
            let _ = req.reply.send(broker.execute_admin(req.op));
        }
    }
}

async fn accept_loop(core: &Rc<Core>, mut listener: Listener) {
    listener
        .serve_until(&core.stopping, |client| match client {
            Accepted::Tcp(stream) => {
                glommio::spawn_local(conn::serve_tcp(core.broker.clone(), stream)).detach();
            }
            Accepted::Unix(stream) => {
                glommio::spawn_local(conn::serve_unix(core.broker.clone(), stream)).detach();
            }
        })
        .await;
}

/// D2: rewrites nsqd.dat when a topic or channel came or went (core 0).
async fn metadata_loop(core: Rc<Core>) {
    while !core.stopping.is_set() {
        future::or(glommio::timer::sleep(METADATA_CHECK), core.stopping.wait()).await;
        if core.shared.metadata_dirty.swap(false, Ordering::AcqRel) && !core.stopping.is_set() {
            if let Err(e) = core.broker.persist_metadata().await {
                tracing::error!(error = %e, "failed to persist metadata");
            }
        }
    }
}

/// Disk queues that read backlog into memory: deliver it.
async fn refill_loop(core: Rc<Core>) {
    loop {
        let names = core.broker.storage.next_refills().await;
        if names.is_empty() {
            return; // storage closed
        }
        let mut shard = core.broker.shard.borrow_mut();
        for name in names {
            shard.refilled(&name);
        }
    }
}

async fn timer_loop(core: Rc<Core>) {
    while !core.stopping.is_set() {
        future::or(glommio::timer::sleep(TIMER_TICK), core.stopping.wait()).await;
        core.broker
            .shard
            .borrow_mut()
            .process_timers(Instant::now());
    }
}
