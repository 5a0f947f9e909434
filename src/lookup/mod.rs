//! The nsqlookupd client (L1-L6): tells every `--lookupd-tcp-address` which
//! topics and channels this broker has, so that consumers and nsqadmin that
//! discover nsqd through nsqlookupd find it.
//!
//! One control-plane thread owns the peers and never blocks on the network
//! for long: dials (name resolution and connect, 1 s timeout) run on a
//! short-lived thread each, and every live connection has a reader thread
//! that hands its responses, or its end (EOF, reset), back as events. So a
//! lookupd that restarts or closes an idle connection is noticed at once, not
//! at the next PING (L6 waits up to 15 s; nsqd re-registers 15-30 s after an
//! nsqlookupd restart): the peer is dialled again after a short jittered
//! back-off (100 ms doubling to 2 s) and, once connected, gets IDENTIFY and a
//! REGISTER for everything that exists now (L3, L4). Cores send topic and
//! channel events (`LookupHandle::register`/`unregister`); the thread keeps
//! its own mirror of what exists, so events that arrive while a peer is down
//! are folded into that full re-registration and none is lost.
//!
//! Commands are pipelined: nsqlookupd answers in order, so each connection
//! keeps the commands that await an answer and fails when the oldest has
//! waited 1 s (L1's deadline).
//!
//! `discovery` is the core side of L7: a topic created at run time asks the
//! nsqlookupds which channels it has elsewhere and creates them before its
//! first message moves on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::NSQD_COMPAT_VERSION;

pub mod discovery;

/// Events handled before the timers are looked at again.
const MAX_EVENTS_PER_PASS: usize = 10_000;
/// L6: nsqd pings every peer this often.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// L1: dial timeout, write deadline, and how long an owed answer may take.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// First delay before dialling a peer again after its connection failed.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// The back-off doubles up to this, so a lookupd that comes back after any
/// outage is dialled within 2 s of answering (issue 12: registrations back
/// within 3 s).
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A connection that lasted this long was healthy: losing it starts the
/// back-off again from `RETRY_MIN`. One that fails sooner (a lookupd that
/// accepts and drops) keeps doubling, so it is not dialled 10 times a second.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);

/// Why a lookupd connection failed.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("address resolves to nothing")]
    NoAddress,
    #[error("connection closed by nsqlookupd")]
    Closed,
    #[error("response body size ({size}) is greater than limit ({max})")]
    TooLarge { size: i32, max: u64 },
    #[error("lookupd returned {0}")]
    Rejected(String),
    #[error("parsing response - {0}")]
    BadResponse(String),
    #[error("no response to {0} within {IO_TIMEOUT:?}")]
    Timeout(String),
    #[error("a response nothing was sent for")]
    Unsolicited,
}

enum Event {
    Register(String, Option<String>),
    Unregister(String, Option<String>),
    /// PUT /config/nsqlookupd_tcp_addresses changed the peer list.
    PeersChanged,
    Stop,
    /// The dial thread of connection `attempt` finished.
    Dialed {
        attempt: u64,
        result: Result<TcpStream, PeerError>,
    },
    /// The reader thread of connection `attempt` read one response.
    Response {
        attempt: u64,
        data: Vec<u8>,
    },
    /// Connection `attempt` ended: EOF, reset, or an oversized response.
    Lost {
        attempt: u64,
        error: PeerError,
    },
}

/// How cores and the HTTP API reach the lookup thread. Cheap to clone; all
/// calls are fire-and-forget (a send on a channel).
#[derive(Clone)]
pub struct LookupHandle {
    tx: Sender<Event>,
    /// Set by `stop`: events still queued are dropped, not sent.
    stopping: Arc<AtomicBool>,
    http: Arc<std::sync::Mutex<Vec<LookupdHttp>>>,
}

/// A lookupd's HTTP address, as its IDENTIFY response gave it
/// (`broadcast_address:http_port`), resolved by the lookup thread so that
/// cores never block on name resolution.
#[derive(Clone, Debug)]
pub struct LookupdHttp {
    /// `host:port`, for the Host header and logs.
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

impl LookupHandle {
    /// A topic (`channel` None) or channel now exists (L5).
    pub fn register(&self, topic: &str, channel: Option<&str>) {
        let _ = self.tx.send(Event::Register(
            topic.to_string(),
            channel.map(str::to_string),
        ));
    }

    /// A topic or channel was deleted (L5).
    pub fn unregister(&self, topic: &str, channel: Option<&str>) {
        let _ = self.tx.send(Event::Unregister(
            topic.to_string(),
            channel.map(str::to_string),
        ));
    }

    pub fn peers_changed(&self) {
        let _ = self.tx.send(Event::PeersChanged);
    }

    /// Ends the lookup thread promptly: it closes its connections and
    /// returns without waiting for dials or back-off timers.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.tx.send(Event::Stop);
    }

    /// The HTTP addresses of the lookupds identified so far (L7).
    pub fn http_addresses(&self) -> Vec<LookupdHttp> {
        self.http.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the broker tells nsqlookupd about itself (L3).
#[derive(Clone, Debug)]
pub struct Identity {
    pub broadcast_address: String,
    pub hostname: String,
    pub tcp_port: u16,
    pub http_port: u16,
    /// --max-body-size: a longer response is an error.
    pub max_response: u64,
}

/// Starts the lookup thread. `peers` is read again on `peers_changed`.
pub fn start(
    identity: Identity,
    peers: Arc<std::sync::Mutex<Vec<String>>>,
) -> std::io::Result<(LookupHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let handle = LookupHandle {
        tx: tx.clone(),
        stopping: Default::default(),
        http: Default::default(),
    };
    let mut lookup = LookupLoop::new(identity, peers, tx, rx, handle.stopping.clone());
    lookup.http = handle.http.clone();
    let thread = std::thread::Builder::new()
        .name("ringsq-lookup".into())
        .spawn(move || lookup.run())?;
    Ok((handle, thread))
}

struct LookupLoop {
    identity: Identity,
    peer_list: Arc<std::sync::Mutex<Vec<String>>>,
    /// For the dial and reader threads.
    tx: Sender<Event>,
    rx: Receiver<Event>,
    peers: Vec<Peer>,
    /// The last connection attempt's number; events carry theirs.
    attempts: u64,
    /// topic -> its channels: what a (re)connected peer is told (L4).
    known: BTreeMap<String, BTreeSet<String>>,
    stopping: Arc<AtomicBool>,
    /// Where cores read the lookupds' HTTP addresses (L7).
    http: Arc<std::sync::Mutex<Vec<LookupdHttp>>>,
}

impl LookupLoop {
    fn new(
        identity: Identity,
        peer_list: Arc<std::sync::Mutex<Vec<String>>>,
        tx: Sender<Event>,
        rx: Receiver<Event>,
        stopping: Arc<AtomicBool>,
    ) -> LookupLoop {
        LookupLoop {
            identity,
            peer_list,
            tx,
            rx,
            peers: Vec::new(),
            attempts: 0,
            known: BTreeMap::new(),
            stopping,
            http: Default::default(),
        }
    }

    fn run(mut self) {
        self.reconcile_peers();
        let mut next_ping = Instant::now() + PING_INTERVAL;
        while !self.stopping.load(Ordering::Acquire) {
            if !self.handle_ready() {
                break;
            }
            let now = Instant::now();
            if now >= next_ping {
                next_ping = now + PING_INTERVAL;
                self.send_all(&command("PING", &[]));
            }
            self.run_timers(now);
            let wake = self.next_timer().map_or(next_ping, |t| t.min(next_ping));
            match self
                .rx
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        for peer in &mut self.peers {
            peer.close();
        }
    }

    /// Handles the events already waiting, so that answers which arrived
    /// while this thread was busy (writing a long REGISTER burst, resolving
    /// a lookupd's broadcast address) count before any deadline is judged.
    /// False once stopping.
    fn handle_ready(&mut self) -> bool {
        // Bounded, so a flood of events cannot hold the timers off forever.
        for _ in 0..MAX_EVENTS_PER_PASS {
            match self.rx.try_recv() {
                Ok(Event::Stop) | Err(TryRecvError::Disconnected) => return false,
                Ok(event) => self.handle(event),
                Err(TryRecvError::Empty) => break,
            }
        }
        true
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::PeersChanged => self.reconcile_peers(),
            Event::Dialed { attempt, result } => {
                if let Some(i) = self.peer_of(attempt) {
                    self.dialed(i, result);
                }
            }
            Event::Response { attempt, data } => {
                if let Some(i) = self.peer_of(attempt) {
                    self.response(i, data);
                }
            }
            Event::Lost { attempt, error } => {
                if let Some(i) = self.peer_of(attempt) {
                    if matches!(self.peers[i].state, State::Connected(_)) {
                        self.peers[i].failed(&error);
                    }
                }
            }
            Event::Register(..) | Event::Unregister(..) => {
                if let Some(cmd) = self.apply(event) {
                    self.send_all(&cmd);
                }
            }
            Event::Stop => {}
        }
    }

    /// The peer whose current dial or connection is `attempt`; an event of
    /// an earlier one (closed since) is stale.
    fn peer_of(&self, attempt: u64) -> Option<usize> {
        self.peers.iter().position(|p| p.attempt == attempt)
    }

    /// Dials peers whose back-off is over; fails connections whose owed
    /// answer is late.
    fn run_timers(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            match &self.peers[i].state {
                State::Waiting(at) if *at <= now => self.dial(i),
                State::Connected(conn) => {
                    if let Some(late) = conn.overdue(now) {
                        let error = PeerError::Timeout(late);
                        self.peers[i].failed(&error);
                    }
                }
                _ => {}
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.peers
            .iter()
            .filter_map(|p| match &p.state {
                State::Waiting(at) => Some(*at),
                State::Connected(conn) => conn.deadline(),
                State::Dialing => None,
            })
            .min()
    }

    /// Starts connection attempt on a thread of its own, so that neither
    /// name resolution nor a 1 s connect timeout holds up this loop (or the
    /// broker's stop).
    fn dial(&mut self, i: usize) {
        self.attempts += 1;
        let attempt = self.attempts;
        let peer = &mut self.peers[i];
        peer.attempt = attempt;
        peer.state = State::Dialing;
        if peer.failures == 0 {
            tracing::info!(peer = %peer.addr, "LOOKUP connecting");
        } else {
            tracing::debug!(peer = %peer.addr, attempt = peer.failures + 1, "LOOKUP connecting");
        }
        let addr = peer.addr.clone();
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("ringsq-lookup-dial".into())
            .spawn(move || {
                let _ = tx.send(Event::Dialed {
                    attempt,
                    result: dial(&addr),
                });
            });
        if let Err(e) = spawned {
            peer.failed(&e.into());
        }
    }

    fn dialed(&mut self, i: usize, result: Result<TcpStream, PeerError>) {
        if !matches!(self.peers[i].state, State::Dialing) {
            return;
        }
        let established = result.and_then(|stream| {
            let peer = &self.peers[i];
            let reader = stream.try_clone()?;
            spawn_reader(reader, peer.attempt, self.identity.max_response, &self.tx)?;
            let mut conn = Conn::new(stream);
            if let Err(e) = conn.identify_and_register(&self.identity, &self.known) {
                // The reader thread holds a clone: end it too.
                let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                return Err(e);
            }
            Ok(conn)
        });
        let peer = &mut self.peers[i];
        match established {
            Ok(conn) => peer.state = State::Connected(conn),
            Err(e) => peer.failed(&e),
        }
    }

    fn response(&mut self, i: usize, data: Vec<u8>) {
        let peer = &mut self.peers[i];
        let State::Connected(conn) = &mut peer.state else {
            return;
        };
        let outcome = match conn.answered() {
            Some(sent) if sent.identify => {
                let identified = peer.identified(&data);
                self.publish_http();
                identified
            }
            Some(sent) => {
                if data.starts_with(b"E_") {
                    tracing::warn!(peer = %peer.addr, command = %sent.name, response = %String::from_utf8_lossy(&data), "LOOKUPD: command refused");
                }
                Ok(())
            }
            None => Err(PeerError::Unsolicited),
        };
        if let Err(e) = outcome {
            self.peers[i].failed(&e);
        }
    }

    /// Updates `known`; returns the command that tells the peers.
    fn apply(&mut self, event: Event) -> Option<Vec<u8>> {
        match event {
            Event::Register(topic, channel) => {
                let channels = self.known.entry(topic.clone()).or_default();
                if let Some(c) = &channel {
                    channels.insert(c.clone());
                }
                Some(register("REGISTER", &topic, channel.as_deref()))
            }
            Event::Unregister(topic, channel) => {
                match &channel {
                    Some(c) => {
                        if let Some(channels) = self.known.get_mut(&topic) {
                            channels.remove(c);
                        }
                    }
                    None => {
                        self.known.remove(&topic);
                    }
                }
                Some(register("UNREGISTER", &topic, channel.as_deref()))
            }
            _ => None,
        }
    }

    /// Sends `cmd` to every connected peer. A peer being dialled or waiting
    /// to be gets no copy: it registers the whole of `known` once connected.
    fn send_all(&mut self, cmd: &[u8]) {
        for peer in &mut self.peers {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let State::Connected(conn) = &mut peer.state else {
                continue;
            };
            if let Err(e) = conn.send(cmd, command_name(cmd), false) {
                tracing::error!(peer = %peer.addr, command = %command_name(cmd), error = %e, "LOOKUPD: command failed");
                peer.failed(&e);
            }
        }
    }

    /// Like nsqd, a lookupd's HTTP address stays known after its connection
    /// drops, until it leaves the peer list.
    fn publish_http(&self) {
        let addrs = self.peers.iter().filter_map(|p| p.http.clone()).collect();
        *self.http.lock().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    /// L1: peers follow the configured list; new ones are dialled right
    /// away.
    fn reconcile_peers(&mut self) {
        let wanted = self
            .peer_list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.peers.retain_mut(|p| {
            let keep = wanted.contains(&p.addr);
            if !keep {
                tracing::info!(peer = %p.addr, "LOOKUP: removing peer");
                p.close();
            }
            keep
        });
        let now = Instant::now();
        for addr in wanted {
            if !self.peers.iter().any(|p| p.addr == addr) {
                tracing::info!(peer = %addr, "LOOKUP: adding peer");
                self.peers.push(Peer::new(addr, now));
            }
        }
        self.run_timers(now);
        self.publish_http();
    }
}

/// One nsqlookupd (nsqd's lookupPeer).
struct Peer {
    addr: String,
    /// The current dial or connection (0: none yet).
    attempt: u64,
    state: State,
    retry: Backoff,
    /// Failed attempts in a row, for the logs.
    failures: u32,
    /// From the last IDENTIFY response.
    http: Option<LookupdHttp>,
}

enum State {
    /// Not connected: dial at this instant.
    Waiting(Instant),
    Dialing,
    Connected(Conn),
}

impl Peer {
    fn new(addr: String, now: Instant) -> Peer {
        Peer {
            addr,
            attempt: 0,
            state: State::Waiting(now),
            retry: Backoff::default(),
            failures: 0,
            http: None,
        }
    }

    fn close(&mut self) {
        if let State::Connected(conn) = &self.state {
            // Also ends the reader thread (its read returns 0).
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        self.state = State::Waiting(Instant::now() + RETRY_MAX);
    }

    /// Closes the connection and schedules the next dial. The first
    /// failure of a streak is an error; the retries that follow are quiet.
    fn failed(&mut self, error: &PeerError) {
        if let State::Connected(conn) = &self.state {
            if conn.since.elapsed() >= HEALTHY_AFTER {
                self.retry = Backoff::default();
            }
        }
        self.close();
        let delay = self.retry.next_delay();
        if self.failures == 0 {
            tracing::error!(peer = %self.addr, %error, retry_in = ?delay, "LOOKUPD: connection failed");
        } else {
            tracing::debug!(peer = %self.addr, %error, retry_in = ?delay, "LOOKUPD: connection failed again");
        }
        self.failures = self.failures.saturating_add(1);
        self.state = State::Waiting(Instant::now() + delay);
    }

    /// L3: the IDENTIFY response names the lookupd's HTTP address.
    fn identified(&mut self, data: &[u8]) -> Result<(), PeerError> {
        if data.starts_with(b"E_") {
            return Err(PeerError::Rejected(
                String::from_utf8_lossy(data).into_owned(),
            ));
        }
        let info = serde_json::from_slice::<serde_json::Value>(data)
            .map_err(|_| PeerError::BadResponse(String::from_utf8_lossy(data).into_owned()))?;
        tracing::info!(peer = %self.addr, %info, "LOOKUPD: peer info");
        self.http = lookupd_http(&info);
        if self.http.is_none() {
            tracing::error!(peer = %self.addr, "LOOKUPD: no broadcast address");
        }
        if self.failures > 0 {
            tracing::info!(peer = %self.addr, attempts = self.failures + 1, "LOOKUPD: reconnected");
        }
        self.failures = 0;
        Ok(())
    }
}

/// Reconnect delays: `RETRY_MIN` doubling to `RETRY_MAX`, each drawn from
/// 50-100% of the nominal value so that brokers that lost a lookupd together
/// do not all dial it in the same instant.
struct Backoff {
    nominal: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { nominal: RETRY_MIN }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.nominal.mul_f64(0.5 + fastrand::f64() * 0.5);
        self.nominal = (self.nominal * 2).min(RETRY_MAX);
        delay
    }
}

/// A live connection: written by the lookup thread, read by its reader
/// thread.
struct Conn {
    stream: TcpStream,
    since: Instant,
    /// Commands written whose answers have not come yet, oldest first.
    awaiting: VecDeque<Sent>,
    /// When the last answer came (or the connection was made).
    progress: Instant,
}

struct Sent {
    name: String,
    identify: bool,
    at: Instant,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        let now = Instant::now();
        Conn {
            stream,
            since: now,
            awaiting: VecDeque::new(),
            progress: now,
        }
    }

    /// L2-L4: magic, IDENTIFY, then a REGISTER for every topic without
    /// channels and every channel (which registers its topic too), written
    /// at once; the answers come back through the reader thread.
    fn identify_and_register(
        &mut self,
        identity: &Identity,
        known: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<(), PeerError> {
        self.stream.write_all(b"  V1")?;
        let body = serde_json::json!({
            "version": NSQD_COMPAT_VERSION,
            "tcp_port": identity.tcp_port,
            "http_port": identity.http_port,
            "hostname": identity.hostname,
            "broadcast_address": identity.broadcast_address,
        })
        .to_string();
        let mut identify = b"IDENTIFY\n".to_vec();
        identify.extend_from_slice(&(body.len() as u32).to_be_bytes());
        identify.extend_from_slice(body.as_bytes());
        self.send(&identify, "IDENTIFY".into(), true)?;
        for (topic, channels) in known {
            if channels.is_empty() {
                let cmd = register("REGISTER", topic, None);
                self.send(&cmd, command_name(&cmd), false)?;
            }
            for channel in channels {
                let cmd = register("REGISTER", topic, Some(channel));
                self.send(&cmd, command_name(&cmd), false)?;
            }
        }
        Ok(())
    }

    fn send(&mut self, cmd: &[u8], name: String, identify: bool) -> Result<(), PeerError> {
        self.stream.write_all(cmd)?;
        self.awaiting.push_back(Sent {
            name,
            identify,
            at: Instant::now(),
        });
        Ok(())
    }

    /// The command an answer that just came belongs to.
    fn answered(&mut self) -> Option<Sent> {
        self.progress = Instant::now();
        self.awaiting.pop_front()
    }

    /// When the oldest command owed an answer times out: 1 s after it was
    /// sent or after the answer before it, whichever is later.
    fn deadline(&self) -> Option<Instant> {
        let oldest = self.awaiting.front()?;
        Some(oldest.at.max(self.progress) + IO_TIMEOUT)
    }

    fn overdue(&self, now: Instant) -> Option<String> {
        match (self.deadline(), self.awaiting.front()) {
            (Some(deadline), Some(oldest)) if deadline <= now => Some(oldest.name.clone()),
            _ => None,
        }
    }
}

/// L1: every address the name resolves to, in turn (localhost may be ::1
/// first while nsqlookupd listens on 127.0.0.1). No read timeout: the
/// reader thread waits for answers (their deadline is the lookup loop's).
fn dial(addr: &str) -> Result<TcpStream, PeerError> {
    let mut last_error = PeerError::NoAddress;
    for addr in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(stream) => {
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last_error = e.into(),
        }
    }
    Err(last_error)
}

/// Reads responses until the connection ends, which it reports at once: a
/// lookupd that closes an idle connection is dialled again without waiting
/// for the next command to find out.
fn spawn_reader(
    mut stream: TcpStream,
    attempt: u64,
    max: u64,
    tx: &Sender<Event>,
) -> std::io::Result<()> {
    let tx = tx.clone();
    std::thread::Builder::new()
        .name("ringsq-lookup-read".into())
        .spawn(move || {
            let error = loop {
                match read_response(&mut stream, max) {
                    Ok(data) => {
                        if tx.send(Event::Response { attempt, data }).is_err() {
                            return;
                        }
                    }
                    Err(error) => break error,
                }
            };
            let _ = tx.send(Event::Lost { attempt, error });
        })?;
    Ok(())
}

/// L2: a response is `[4-byte BE size][data]`, errors included.
fn read_response(stream: &mut TcpStream, max: u64) -> Result<Vec<u8>, PeerError> {
    let eof_is_close = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PeerError::Closed,
        _ => PeerError::Io(e),
    };
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(eof_is_close)?;
    let size = i32::from_be_bytes(size);
    if size < 0 || size as u64 > max {
        return Err(PeerError::TooLarge { size, max });
    }
    let mut data = vec![0u8; size as usize];
    stream.read_exact(&mut data).map_err(eof_is_close)?;
    Ok(data)
}

/// `broadcast_address:http_port` of an IDENTIFY response, resolved.
fn lookupd_http(info: &serde_json::Value) -> Option<LookupdHttp> {
    let address = info.get("broadcast_address")?.as_str()?;
    let port = info.get("http_port")?.as_u64()?;
    if address.is_empty() {
        return None;
    }
    let host = if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    let addrs: Vec<SocketAddr> = host.to_socket_addrs().ok()?.collect();
    (!addrs.is_empty()).then_some(LookupdHttp { host, addrs })
}

/// `NAME[ param]*\n`.
fn command(name: &str, params: &[&str]) -> Vec<u8> {
    let mut out = name.as_bytes().to_vec();
    for p in params {
        out.push(b' ');
        out.extend_from_slice(p.as_bytes());
    }
    out.push(b'\n');
    out
}

fn register(name: &str, topic: &str, channel: Option<&str>) -> Vec<u8> {
    match channel {
        Some(c) => command(name, &[topic, c]),
        None => command(name, &[topic]),
    }
}

fn command_name(cmd: &[u8]) -> String {
    let line = cmd.split(|b| *b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_on_the_wire() {
        assert_eq!(command("PING", &[]), b"PING\n");
        assert_eq!(register("REGISTER", "t", None), b"REGISTER t\n");
        assert_eq!(register("UNREGISTER", "t", Some("c")), b"UNREGISTER t c\n");
        assert_eq!(command_name(b"REGISTER t c\n"), "REGISTER t c");
    }

    #[test]
    fn reconnect_delays_start_near_100ms_double_and_stop_at_2s() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let nominal = (RETRY_MIN * 2u32.pow(i as u32)).min(RETRY_MAX);
            assert!(
                *d >= nominal / 2 && *d <= nominal,
                "{i}: {d:?} vs {nominal:?}"
            );
        }
        assert_eq!(b.nominal, RETRY_MAX);
    }

    #[test]
    fn known_follows_the_events() {
        let (tx, rx) = mpsc::channel();
        let identity = Identity {
            broadcast_address: "h".into(),
            hostname: "h".into(),
            tcp_port: 1,
            http_port: 2,
            max_response: 1024,
        };
        let mut l = LookupLoop::new(identity, Default::default(), tx, rx, Default::default());
        l.apply(Event::Register("t".into(), None));
        l.apply(Event::Register("t".into(), Some("a".into())));
        l.apply(Event::Register("t".into(), Some("b".into())));
        l.apply(Event::Unregister("t".into(), Some("a".into())));
        l.apply(Event::Register("u".into(), None));
        assert_eq!(l.known["t"].iter().collect::<Vec<_>>(), ["b"]);
        assert!(l.known["u"].is_empty());
        l.apply(Event::Unregister("t".into(), None));
        assert!(!l.known.contains_key("t"));
    }
}
