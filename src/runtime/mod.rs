//! Start-up and shutdown: one pinned glommio executor per core, memlock and
//! io_uring checks turned into one-line errors, signals.

pub mod core;
pub mod event;
pub mod listen;
pub mod report;
pub mod services;

use std::panic;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;

use crate::config::Options;
use crate::route::{build_mesh, CoreWaker, Inbox, Router};
use crate::storage::metadata::{self, TopicMeta};
use crate::system::{self, Limit, Limits};
use listen::ListenAddr;
pub use services::{CoreServices, Listening, NoServices, Services};

/// glommio's own floor for the soft RLIMIT_MEMLOCK (non-root).
const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;
const MAX_IO_MEMORY: usize = 10 << 20;
const MIN_IO_MEMORY: usize = 64 << 10;
const MEMLOCK_RESERVE: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("--cores {wanted} exceeds the {allowed} CPUs this process may run on")]
    TooManyCores { wanted: usize, allowed: usize },
    #[error("locked memory limit too low: RLIMIT_MEMLOCK soft limit is {soft_kib} KiB and cannot be raised (hard limit {hard_kib} KiB); ringsqd needs at least 512 KiB: raise it with `ulimit -l` or systemd's LimitMEMLOCK=")]
    MemLock { soft_kib: u64, hard_kib: u64 },
    #[error("io_uring is not available on this machine ({0}); ringsqd needs Linux 5.8+ with io_uring enabled (sysctl kernel.io_uring_disabled=0)")]
    NoIoUring(String),
    #[error(transparent)]
    DataPathLocked(#[from] crate::storage::LockError),
    #[error(transparent)]
    Export(#[from] crate::storage::nsqd_export::ExportError),
    #[error(transparent)]
    Tls(#[from] crate::conn::tls::TlsConfigError),
    #[error("listen ({addr}) failed - {err}")]
    Listen { addr: String, err: String },
    #[error("{0}")]
    Metadata(String),
    #[error("failed to start core {core}: {err}")]
    Executor { core: usize, err: String },
    #[error("a core panicked (see the log above); the broker stopped")]
    CorePanicked,
}

/// Set by the panic hook: some thread (a core) panicked.
static CORE_PANICKED: AtomicBool = AtomicBool::new(false);

/// How long the other cores get to write out what they hold after a core
/// panicked; they may wait on the dead core forever.
const PANIC_STOP_GRACE: Duration = Duration::from_secs(30);

/// A core that panics must not leave a process that looks alive but serves
/// nothing: the panic stops the whole broker the way SIGTERM does (the other
/// cores write out what they hold), and the exit code says it failed.
fn stop_on_core_panic() {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!("{info}; stopping the broker");
        if !CORE_PANICKED.swap(true, Ordering::SeqCst) {
            system::terminate_self();
        }
    }));
}

/// State every core can see.
pub struct Shared {
    pub opts: Arc<Options>,
    pub node_id: u16,
    pub start_time: std::time::SystemTime,
    /// None for a unix socket.
    pub tcp_port: Option<u16>,
    /// None when HTTP is disabled (`--http-address=""`).
    pub http_port: Option<u16>,
    /// None without a certificate or with `--https-address=""`.
    pub https_port: Option<u16>,
    /// nsqd's tlsConfig (T18), for the TCP upgrade and HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// nsqd's clientTLSConfig, for `https://` auth servers (A1).
    pub auth_tls: Arc<rustls::ClientConfig>,
    /// What the layers above plug in (nsqlookupd, HTTP, statsd).
    pub services: Arc<dyn Services>,
    /// Changed at run time through PUT /config (H21).
    pub lookupd_addresses: Arc<std::sync::Mutex<Vec<String>>>,
    pub log_level: std::sync::Mutex<String>,
    pub data_path: std::path::PathBuf,
    /// Set by any core when nsqd.dat must be rewritten; core 0 writes it.
    pub metadata_dirty: Arc<AtomicBool>,
    /// Each core's topics as it stops; written to nsqd.dat at exit (D10).
    pub exit_metadata: std::sync::Mutex<Vec<TopicMeta>>,
    pub shutdown: AtomicBool,
    /// Disk failures, for /ping.
    pub health: Arc<crate::storage::Health>,
    /// Client ids, unique over every core.
    pub client_ids: Arc<AtomicU64>,
    pub wakers: Vec<Arc<CoreWaker>>,
    /// Queues and messages at start and stop, for the operator's log lines.
    pub tally: report::Tally,
}

/// Raises RLIMIT_MEMLOCK as far as allowed and picks each executor's
/// io_memory from what is locked-memory budget.
fn prepare_memlock(cores: usize) -> Result<usize, StartError> {
    let want = (cores * 3 * MAX_IO_MEMORY + (16 << 20)) as u64;
    if system::is_root() {
        // CAP_IPC_LOCK: glommio skips its check; raise anyway so that the
        // registered buffers count against a limit that fits them.
        let l = system::limits(Limit::LockedMemory);
        let target = Limits {
            soft: l.soft.max(want),
            hard: l.hard.max(want),
        };
        system::set_limits(Limit::LockedMemory, target);
        return Ok(MAX_IO_MEMORY);
    }
    let lim = system::raise_soft_limit(Limit::LockedMemory);
    if lim.soft >= want {
        return Ok(MAX_IO_MEMORY);
    }
    if lim.soft < GLOMMIO_MIN_MEMLOCK {
        return Err(StartError::MemLock {
            soft_kib: lim.soft / 1024,
            hard_kib: lim.hard / 1024,
        });
    }
    // Leave room for the rings and the probe's buffers, which the
    // kernel may still count for a moment after the probe exits.
    let budget = (lim.soft as usize).saturating_sub(MEMLOCK_RESERVE);
    let per_core = budget / (3 * cores);
    Ok(per_core.clamp(MIN_IO_MEMORY, MAX_IO_MEMORY))
}

/// Starts a throw-away executor to find out whether io_uring works; glommio
/// panics in its thread when it does not.
fn probe_io_uring(io_memory: usize) -> Result<(), StartError> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err(StartError::NoIoUring("kernel.io_uring_disabled=2".into()));
        }
    }
    let previous_hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let result = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(io_memory)
        .name("ringsq-probe")
        .spawn(|| async {})
        .map_err(|e| e.to_string())
        .and_then(|h| h.join().map_err(|e| e.to_string()));
    panic::set_hook(previous_hook);
    result.map_err(StartError::NoIoUring)
}

/// Listeners bind with SO_REUSEPORT, which would let a second broker share
/// a TCP port silently. A plain bind first fails as nsqd would if anything
/// holds the port; it also resolves port 0 to one port for all cores.
fn check_listen_address(addr: &str) -> Result<ListenAddr, StartError> {
    let listen_err = |err: String| StartError::Listen {
        addr: addr.to_string(),
        err,
    };
    match ListenAddr::parse(addr).map_err(|e| listen_err(e.to_string()))? {
        ListenAddr::Tcp(a) => {
            let probe = std::net::TcpListener::bind(a).map_err(|e| listen_err(e.to_string()))?;
            probe
                .local_addr()
                .map(ListenAddr::Tcp)
                .map_err(|e| listen_err(e.to_string()))
        }
        unix => Ok(unix),
    }
}

/// What start-up checked and loaded before any core starts.
struct Prepared {
    allowed_cpus: Vec<usize>,
    io_memory: usize,
    data_path: std::path::PathBuf,
    /// Held until the broker exits (C6).
    _data_lock: std::fs::File,
    restored: Vec<TopicMeta>,
    tcp_addr: ListenAddr,
    http_addr: Option<ListenAddr>,
    /// Opened only with a certificate, as nsqd.
    https_addr: Option<ListenAddr>,
    tls: Option<Arc<rustls::ServerConfig>>,
    auth_tls: Arc<rustls::ClientConfig>,
}

/// The started cores, waiting for the word to serve.
struct Cores {
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    serve_signals: Vec<futures::channel::oneshot::Sender<()>>,
    ready: mpsc::Receiver<Result<(), StartError>>,
}

/// Runs the broker until SIGINT/SIGTERM. Returns once every core stopped.
pub fn run(opts: Options, services: Arc<dyn Services>) -> Result<(), StartError> {
    let prepared = prepare(&opts)?;
    let signals =
        signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM]).map_err(|e| {
            StartError::Executor {
                core: 0,
                err: format!("signal handler: {e}"),
            }
        })?;
    let lookupd_addresses = Arc::new(std::sync::Mutex::new(opts.lookupd_tcp_address.clone()));
    services.start(&Listening {
        tcp: &prepared.tcp_addr,
        http: prepared.http_addr.as_ref(),
        lookupd_addresses: lookupd_addresses.clone(),
    })?;
    let signal_handle = signals.handle();
    let (routers, inboxes, wakers) = build_mesh(opts.cores);
    let shared = Arc::new(shared_state(
        opts,
        &prepared,
        wakers,
        services.clone(),
        lookupd_addresses,
    ));
    let mut cores = match start_cores(&shared, &prepared, routers, inboxes) {
        Ok(c) => c,
        Err(e) => {
            services.stop();
            return Err(e);
        }
    };
    let startup_error = wait_until_ready(&cores.ready, shared.opts.cores);
    if startup_error.is_none() {
        serve_until_signal(&shared, &prepared, &mut cores, signals);
    }
    signal_handle.close();
    // Start-up failed: the cores waiting to serve stop instead.
    drop(cores.serve_signals);
    let stop_started = Instant::now();
    shared.shutdown.store(true, Ordering::SeqCst);
    for w in &shared.wakers {
        w.wake();
    }
    for (core, h) in cores.handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            tracing::error!(core, error = %e, "core stopped with an error");
        }
    }
    // Closing the connections makes nsqlookupd forget this broker.
    services.stop();
    if startup_error.is_none() {
        write_metadata_at_exit(&shared, stop_started);
    }
    // Shutdown is quick; give log lines a chance to be written.
    std::thread::sleep(Duration::from_millis(1));
    match startup_error {
        Some(e) => Err(e),
        None if CORE_PANICKED.load(Ordering::SeqCst) => Err(StartError::CorePanicked),
        None => Ok(()),
    }
}

/// Limits, io_uring, the data path's lock and metadata, the addresses:
/// everything that can fail before a core starts, failing with one line.
fn prepare(opts: &Options) -> Result<Prepared, StartError> {
    let allowed_cpus = system::allowed_cpus();
    if opts.cores > allowed_cpus.len() {
        return Err(StartError::TooManyCores {
            wanted: opts.cores,
            allowed: allowed_cpus.len(),
        });
    }
    let io_memory = prepare_memlock(opts.cores)?;
    report::raise_open_files();
    // Small: its registered buffers may stay counted against the
    // memlock limit a while after it exits.
    probe_io_uring(MIN_IO_MEMORY)?;
    stop_on_core_panic();
    let data_path = opts.effective_data_path();
    let data_lock = crate::storage::lock_data_path(&data_path, true)?;
    // An export to nsqd that was interrupted after it committed is finished
    // first, or its queues would be read twice.
    crate::storage::nsqd_export::finish_interrupted(&data_path)?;
    let mut restored =
        metadata::load(&data_path).map_err(|e| StartError::Metadata(e.to_string()))?;
    metadata::add_queues_found_on_disk(&mut restored, &data_path);
    system::ignore_file_size_signal();
    let tls = crate::conn::tls::server_config(opts)?;
    let auth_tls = crate::conn::tls::auth_client_config(opts)?;
    let tcp_addr = check_listen_address(&opts.tcp_address)?;
    let http_addr = if opts.http_address.is_empty() {
        None
    } else {
        Some(check_listen_address(&opts.http_address)?)
    };
    let https_addr = match &tls {
        Some(_) if !opts.https_address.is_empty() => {
            match check_listen_address(&opts.https_address)? {
                // nsqd's tls.Listen("tcp", ...) takes host:port only.
                ListenAddr::Unix(_) => {
                    return Err(StartError::Listen {
                        addr: opts.https_address.clone(),
                        err: format!(
                            "listen tcp: address {}: missing port in address",
                            opts.https_address
                        ),
                    })
                }
                tcp => Some(tcp),
            }
        }
        _ => None,
    };
    Ok(Prepared {
        allowed_cpus,
        io_memory,
        data_path,
        _data_lock: data_lock,
        restored,
        tcp_addr,
        http_addr,
        https_addr,
        tls,
        auth_tls,
    })
}

fn shared_state(
    opts: Options,
    p: &Prepared,
    wakers: Vec<Arc<CoreWaker>>,
    services: Arc<dyn Services>,
    lookupd_addresses: Arc<std::sync::Mutex<Vec<String>>>,
) -> Shared {
    Shared {
        services,
        lookupd_addresses,
        node_id: opts.effective_node_id(),
        start_time: std::time::SystemTime::now(),
        tcp_port: p.tcp_addr.port(),
        http_port: p.http_addr.as_ref().and_then(ListenAddr::port),
        https_port: p.https_addr.as_ref().and_then(ListenAddr::port),
        tls: p.tls.clone(),
        auth_tls: p.auth_tls.clone(),
        log_level: std::sync::Mutex::new(opts.log_level.to_ascii_lowercase()),
        data_path: p.data_path.clone(),
        // C3: nsqd persists the metadata right after loading it.
        metadata_dirty: Arc::new(AtomicBool::new(true)),
        exit_metadata: std::sync::Mutex::new(Vec::new()),
        opts: Arc::new(opts),
        shutdown: AtomicBool::new(false),
        health: Arc::new(crate::storage::Health::default()),
        client_ids: Arc::new(AtomicU64::new(0)),
        wakers,
        tally: report::Tally::default(),
    }
}

/// One pinned executor per core, each with the topics of nsqd.dat it owns.
fn start_cores(
    shared: &Arc<Shared>,
    p: &Prepared,
    routers: Vec<Router>,
    inboxes: Vec<Inbox>,
) -> Result<Cores, StartError> {
    let cores = shared.opts.cores;
    let (ready_tx, ready) = mpsc::channel::<Result<(), StartError>>();
    let mut restore_per_core: Vec<Vec<TopicMeta>> = vec![Vec::new(); cores];
    for t in &p.restored {
        restore_per_core[crate::route::owner_core(t.name.as_bytes(), cores)].push(t.clone());
    }
    let mut started = Cores {
        handles: Vec::with_capacity(cores),
        serve_signals: Vec::with_capacity(cores),
        ready,
    };
    let setups = routers.into_iter().zip(inboxes).zip(restore_per_core);
    for (id, ((router, inbox), restore)) in setups.enumerate() {
        let (serve_tx, serve) = futures::channel::oneshot::channel();
        started.serve_signals.push(serve_tx);
        let setup = core::CoreSetup {
            id,
            shared: shared.clone(),
            router,
            inbox,
            tcp_addr: p.tcp_addr.clone(),
            http_addr: p.http_addr.clone(),
            https_addr: p.https_addr.clone(),
            restore,
            ready: ready_tx.clone(),
            serve,
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(p.allowed_cpus[id]))
            .name(&format!("ringsq-core-{id}"))
            .io_memory(p.io_memory)
            .spin_before_park(shared.opts.spin_before_park)
            .spawn(move || core::run_core(setup))
            .map_err(|e| StartError::Executor {
                core: id,
                err: e.to_string(),
            })?;
        started.handles.push(handle);
    }
    Ok(started)
}

/// Every core has bound its listeners and opened its queues; the first
/// error otherwise.
fn wait_until_ready(
    ready: &mpsc::Receiver<Result<(), StartError>>,
    cores: usize,
) -> Option<StartError> {
    let mut startup_error = None;
    for _ in 0..cores {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                startup_error.get_or_insert(e);
            }
            Err(_) => {
                return Some(StartError::Executor {
                    core: 0,
                    err: "a core stopped during start-up".into(),
                });
            }
        }
    }
    startup_error
}

/// The one place readiness is declared: the cores start accepting (TCP and
/// HTTP, so /ping answers OK only now), and the log line (and the service
/// manager) say so. Then waits for SIGINT/SIGTERM.
fn serve_until_signal(
    shared: &Shared,
    p: &Prepared,
    cores: &mut Cores,
    mut signals: signal_hook::iterator::Signals,
) {
    for serve in cores.serve_signals.drain(..) {
        let _ = serve.send(());
    }
    let n = shared.opts.cores;
    tracing::info!(
        "TCP: listening on {} with {n} core(s), version {}",
        p.tcp_addr,
        crate::config::NSQD_COMPAT_VERSION
    );
    if let Some(http) = &p.http_addr {
        tracing::info!("HTTP: listening on {http}");
    }
    if let Some(https) = &p.https_addr {
        tracing::info!("HTTPS: listening on {https}");
    }
    report::serving(&shared.tally, n, &p.data_path, p.io_memory);
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    report::sd_notify("STOPPING=1\nSTATUS=writing queues to disk");
    if CORE_PANICKED.load(Ordering::SeqCst) {
        std::thread::spawn(|| {
            std::thread::sleep(PANIC_STOP_GRACE);
            eprintln!("ringsqd: cores did not stop after a panic; exiting");
            std::process::exit(70);
        });
    }
}

/// D10: nsqd.dat from every core's topics as they stopped; the last lines.
fn write_metadata_at_exit(shared: &Shared, stop_started: Instant) {
    let topics = std::mem::take(
        &mut *shared
            .exit_metadata
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let channels = topics.iter().map(|t| t.channels.len()).sum();
    let written = match metadata::persist(&shared.data_path, &topics) {
        Ok(()) => Some((topics.len(), channels)),
        Err(e) => {
            tracing::error!(error = %e, "failed to persist metadata at exit");
            None
        }
    };
    let clean = written.is_some() && !CORE_PANICKED.load(Ordering::SeqCst);
    report::log_stopped(&shared.tally, written, stop_started, clean);
}
