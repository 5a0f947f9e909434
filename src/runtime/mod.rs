//! Start-up and shutdown: one pinned glommio executor per core, memlock and
//! io_uring checks turned into one-line errors, signals.

pub mod core;
pub mod event;
pub mod listen;
pub mod report;

use std::panic;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;

use crate::config::Options;
use crate::route::{build_mesh, CoreWaker};
use crate::storage::metadata::{self, TopicMeta};
use crate::system::{self, Limit, Limits};
use listen::ListenAddr;

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
    /// Changed at run time through PUT /config (H21).
    pub lookupd_addresses: Arc<std::sync::Mutex<Vec<String>>>,
    /// The nsqlookupd client thread (L1-L6).
    pub lookup: crate::lookup::LookupHandle,
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

/// L3: what nsqlookupd is told; ports 0 mean the real listening ports.
fn lookup_identity(
    opts: &Options,
    tcp: &ListenAddr,
    http: Option<&ListenAddr>,
) -> crate::lookup::Identity {
    crate::lookup::Identity {
        broadcast_address: opts.effective_broadcast_address(),
        hostname: crate::config::hostname(),
        tcp_port: opts.effective_broadcast_tcp_port(tcp.port()),
        http_port: opts.effective_broadcast_http_port(http.and_then(ListenAddr::port)),
        max_response: opts.max_body_size.max(0) as u64,
    }
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

/// Runs the broker until SIGINT/SIGTERM. Returns once every core stopped.
pub fn run(opts: Options) -> Result<(), StartError> {
    let allowed = system::allowed_cpus();
    if opts.cores > allowed.len() {
        return Err(StartError::TooManyCores {
            wanted: opts.cores,
            allowed: allowed.len(),
        });
    }
    let io_memory = prepare_memlock(opts.cores)?;
    report::raise_open_files();
    // Small: its registered buffers may stay counted against the
    // memlock limit a while after it exits.
    probe_io_uring(MIN_IO_MEMORY)?;
    stop_on_core_panic();
    let data_path = opts.effective_data_path();
    let _data_lock = crate::storage::lock_data_path(&data_path, true)?;
    // An export to nsqd that was interrupted after it committed is finished
    // first, or its queues would be read twice.
    crate::storage::nsqd_export::finish_interrupted(&data_path)?;
    let mut restored =
        metadata::load(&data_path).map_err(|e| StartError::Metadata(e.to_string()))?;
    metadata::add_queues_found_on_disk(&mut restored, &data_path);
    system::ignore_file_size_signal();
    let tcp_addr = check_listen_address(&opts.tcp_address)?;
    let http_addr = if opts.http_address.is_empty() {
        None
    } else {
        Some(check_listen_address(&opts.http_address)?)
    };

    let cores = opts.cores;
    let node_id = opts.effective_node_id();
    let (routers, inboxes, wakers) = build_mesh(cores);
    let lookupd_addresses = Arc::new(std::sync::Mutex::new(opts.lookupd_tcp_address.clone()));
    let (lookup, lookup_thread) = crate::lookup::start(
        lookup_identity(&opts, &tcp_addr, http_addr.as_ref()),
        lookupd_addresses.clone(),
    )
    .map_err(|e| StartError::Executor {
        core: 0,
        err: format!("lookup thread: {e}"),
    })?;
    let shared = Arc::new(Shared {
        node_id,
        start_time: std::time::SystemTime::now(),
        tcp_port: tcp_addr.port(),
        http_port: http_addr.as_ref().and_then(ListenAddr::port),
        lookupd_addresses,
        lookup: lookup.clone(),
        log_level: std::sync::Mutex::new(opts.log_level.to_ascii_lowercase()),
        data_path: data_path.clone(),
        // C3: nsqd persists the metadata right after loading it.
        metadata_dirty: Arc::new(AtomicBool::new(true)),
        exit_metadata: std::sync::Mutex::new(Vec::new()),
        opts: Arc::new(opts),
        shutdown: AtomicBool::new(false),
        health: Arc::new(crate::storage::Health::default()),
        client_ids: Arc::new(AtomicU64::new(0)),
        wakers,
        tally: report::Tally::default(),
    });

    let signals =
        signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM]).map_err(|e| {
            StartError::Executor {
                core: 0,
                err: format!("signal handler: {e}"),
            }
        })?;
    let signal_handle = signals.handle();

    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StartError>>();
    let mut serve_signals = Vec::with_capacity(cores);
    let mut handles = Vec::new();
    let spin = shared.opts.spin_before_park;
    let mut restore_per_core: Vec<Vec<TopicMeta>> = vec![Vec::new(); cores];
    for t in restored {
        restore_per_core[crate::route::owner_core(t.name.as_bytes(), cores)].push(t);
    }
    for ((core, (router, inbox)), restore) in routers
        .into_iter()
        .zip(inboxes)
        .enumerate()
        .zip(restore_per_core)
    {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let (tcp_addr, http_addr) = (tcp_addr.clone(), http_addr.clone());
        let (serve_tx, serve) = futures::channel::oneshot::channel();
        serve_signals.push(serve_tx);
        let handle = LocalExecutorBuilder::new(Placement::Fixed(allowed[core]))
            .name(&format!("ringsq-core-{core}"))
            .io_memory(io_memory)
            .spin_before_park(spin)
            .spawn(move || {
                core::run_core(core::CoreSetup {
                    id: core,
                    shared,
                    router,
                    inbox,
                    tcp_addr,
                    http_addr,
                    restore,
                    ready,
                    serve,
                })
            })
            .map_err(|e| StartError::Executor {
                core,
                err: e.to_string(),
            })?;
        handles.push(handle);
    }
    drop(ready_tx);

    let mut startup_error = None;
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                startup_error.get_or_insert(e);
            }
            Err(_) => {
                startup_error.get_or_insert(StartError::Executor {
                    core: 0,
                    err: "a core stopped during start-up".into(),
                });
                break;
            }
        }
    }

    if startup_error.is_none() {
        // All cores ready: every core has its listeners bound and its
        // queues opened. This is the one place readiness is declared: the
        // cores start accepting (TCP and HTTP, so /ping answers OK only
        // now), and the log line below (and the service manager) say so.
        for serve in serve_signals.drain(..) {
            let _ = serve.send(());
        }
        tracing::info!(
            "TCP: listening on {tcp_addr} with {cores} core(s), version {}",
            crate::config::NSQD_COMPAT_VERSION
        );
        if let Some(http) = &http_addr {
            tracing::info!("HTTP: listening on {http}");
        }
        report::serving(&shared.tally, cores, &data_path, io_memory);
        let mut signals = signals;
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
    signal_handle.close();
    // Start-up failed: the cores waiting to serve stop instead.
    drop(serve_signals);
    let stop_started = Instant::now();

    shared.shutdown.store(true, Ordering::SeqCst);
    for w in &shared.wakers {
        w.wake();
    }
    for (core, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            tracing::error!(core, error = %e, "core stopped with an error");
        }
    }
    // Closing the connections makes nsqlookupd forget this broker.
    lookup.stop();
    let _ = lookup_thread.join();
    if startup_error.is_none() {
        let topics = std::mem::take(
            &mut *shared
                .exit_metadata
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let channels = topics.iter().map(|t| t.channels.len()).sum();
        let written = match metadata::persist(&data_path, &topics) {
            Ok(()) => Some((topics.len(), channels)),
            Err(e) => {
                tracing::error!(error = %e, "failed to persist metadata at exit");
                None
            }
        };
        let clean = written.is_some() && !CORE_PANICKED.load(Ordering::SeqCst);
        report::log_stopped(&shared.tally, written, stop_started, clean);
    }
    // Shutdown is quick; give log lines a chance to be written.
    std::thread::sleep(Duration::from_millis(1));
    match startup_error {
        Some(e) => Err(e),
        None if CORE_PANICKED.load(Ordering::SeqCst) => Err(StartError::CorePanicked),
        None => Ok(()),
    }
}
