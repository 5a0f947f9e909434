//! The nsqlookupd client (L1-L6): tells every `--lookupd-tcp-address` which
//! topics and channels this broker has, so that consumers and nsqadmin that
//! discover nsqd through nsqlookupd find it.
//!
//! Like nsqd's lookup loop, this is one control-plane thread with blocking
//! sockets (1 s deadlines), not a task on a core: it carries a few commands
//! a minute, and a slow or dead lookupd must never stall a core. Cores send
//! it topic and channel events (`LookupHandle::register`/`unregister`); it
//! keeps its own mirror of what exists, to re-register everything whenever a
//! peer connection is (re)made.
//!
//! `discovery` is the core side of L7: a topic created at run time asks the
//! nsqlookupds which channels it has elsewhere and creates them before its
//! first message moves on.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::NSQD_COMPAT_VERSION;

pub mod discovery;

/// L6: nsqd pings every peer this often.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// L1: dial timeout and the deadline of every read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(1);

enum Event {
    Register(String, Option<String>),
    Unregister(String, Option<String>),
    /// PUT /config/nsqlookupd_tcp_addresses changed the peer list.
    PeersChanged,
    Stop,
}

/// How cores and the HTTP API reach the lookup thread. Cheap to clone; all
/// calls are fire-and-forget (a send on a channel).
#[derive(Clone)]
pub struct LookupHandle {
    tx: Sender<Event>,
    /// Set by `stop`: events still queued are dropped, not sent (each could
    /// wait a second on a dead peer and hold up the exit).
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
        tx,
        stopping: Default::default(),
        http: Default::default(),
    };
    let mut lookup = LookupLoop::new(identity, peers, rx, handle.stopping.clone());
    lookup.http = handle.http.clone();
    let thread = std::thread::Builder::new()
        .name("ringsq-lookup".into())
        .spawn(move || lookup.run())?;
    Ok((handle, thread))
}

struct LookupLoop {
    identity: Identity,
    peer_list: Arc<std::sync::Mutex<Vec<String>>>,
    rx: Receiver<Event>,
    peers: Vec<Peer>,
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
        rx: Receiver<Event>,
        stopping: Arc<AtomicBool>,
    ) -> LookupLoop {
        LookupLoop {
            identity,
            peer_list,
            rx,
            peers: Vec::new(),
            known: BTreeMap::new(),
            stopping,
            http: Default::default(),
        }
    }

    fn run(mut self) {
        // Let the cores' start-up registrations (restored topics) arrive
        // first, so the first connection registers them all at once.
        std::thread::sleep(Duration::from_millis(50));
        if !self.drain_pending() {
            return;
        }
        self.reconcile_peers();
        let mut next_ping = Instant::now() + PING_INTERVAL;
        while !self.stopping.load(Ordering::Acquire) {
            let wait = next_ping.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Event::PeersChanged) => self.reconcile_peers(),
                Ok(event) => {
                    if let Some(cmd) = self.apply(event) {
                        self.send_all(&cmd);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    next_ping = Instant::now() + PING_INTERVAL;
                    // A failed ping closes the connection; the next command
                    // reconnects (L6).
                    self.send_all(&command("PING", &[]));
                }
            }
        }
        for peer in &mut self.peers {
            peer.close();
        }
    }

    /// Folds queued events into `known` without sending them: the
    /// connection made next registers everything anyway. False once the
    /// broker is stopping.
    fn drain_pending(&mut self) -> bool {
        while let Ok(event) = self.rx.try_recv() {
            match event {
                Event::Register(..) | Event::Unregister(..) => {
                    self.apply(event);
                }
                Event::PeersChanged => {}
                Event::Stop => return false,
            }
        }
        true
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
            Event::PeersChanged | Event::Stop => None,
        }
    }

    fn send_all(&mut self, cmd: &[u8]) {
        for peer in &mut self.peers {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = peer.command(Some(cmd), &self.identity, &self.known) {
                tracing::error!(peer = %peer.addr, command = %command_name(cmd), error = %e, "LOOKUPD: command failed");
            }
        }
        self.publish_http();
    }

    /// Like nsqd, a lookupd's HTTP address stays known after its connection
    /// drops, until it leaves the peer list.
    fn publish_http(&self) {
        let addrs = self.peers.iter().filter_map(|p| p.http.clone()).collect();
        *self.http.lock().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    /// L1: peers follow the configured list; new ones connect right away.
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
        for addr in wanted {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            if self.peers.iter().any(|p| p.addr == addr) {
                continue;
            }
            tracing::info!(peer = %addr, "LOOKUP: adding peer");
            let mut peer = Peer {
                addr,
                conn: None,
                http: None,
            };
            if let Err(e) = peer.command(None, &self.identity, &self.known) {
                tracing::error!(peer = %peer.addr, error = %e, "LOOKUPD: cannot connect");
            }
            self.peers.push(peer);
        }
        self.publish_http();
    }
}

/// One nsqlookupd, connected lazily: any command reconnects a closed peer,
/// identifies and registers everything first (nsqd's lookupPeer).
struct Peer {
    addr: String,
    conn: Option<TcpStream>,
    /// From the last IDENTIFY response.
    http: Option<LookupdHttp>,
}

impl Peer {
    fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Sends `cmd` (None: only make sure the connection is up) and returns
    /// the response. Any error closes the connection.
    fn command(
        &mut self,
        cmd: Option<&[u8]>,
        identity: &Identity,
        known: &BTreeMap<String, BTreeSet<String>>,
    ) -> std::io::Result<Vec<u8>> {
        let result = self.command_inner(cmd, identity, known);
        if result.is_err() {
            self.close();
        }
        result
    }

    fn command_inner(
        &mut self,
        cmd: Option<&[u8]>,
        identity: &Identity,
        known: &BTreeMap<String, BTreeSet<String>>,
    ) -> std::io::Result<Vec<u8>> {
        if self.conn.is_none() {
            self.connect(identity, known)?;
        }
        match cmd {
            Some(cmd) => self.round_trip(cmd, identity.max_response),
            None => Ok(Vec::new()),
        }
    }

    fn connect(
        &mut self,
        identity: &Identity,
        known: &BTreeMap<String, BTreeSet<String>>,
    ) -> std::io::Result<()> {
        tracing::info!(peer = %self.addr, "LOOKUP connecting");
        // Every address the name resolves to, in turn (localhost may be
        // ::1 first while nsqlookupd listens on 127.0.0.1).
        let mut last_error = std::io::Error::other("address resolves to nothing");
        let mut connected = None;
        for addr in self.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                Ok(c) => {
                    connected = Some(c);
                    break;
                }
                Err(e) => last_error = e,
            }
        }
        let conn = connected.ok_or(last_error)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        let _ = conn.set_nodelay(true);
        self.conn = Some(conn);
        self.write(b"  V1")?;

        // L3
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
        let resp = self.round_trip(&identify, identity.max_response)?;
        if resp.starts_with(b"E_") {
            return Err(std::io::Error::other(format!(
                "lookupd returned {}",
                String::from_utf8_lossy(&resp)
            )));
        }
        match serde_json::from_slice::<serde_json::Value>(&resp) {
            Ok(info) => {
                tracing::info!(peer = %self.addr, %info, "LOOKUPD: peer info");
                self.http = lookupd_http(&info);
                if self.http.is_none() {
                    tracing::error!(peer = %self.addr, "LOOKUPD: no broadcast address");
                }
            }
            Err(_) => {
                return Err(std::io::Error::other(format!(
                    "parsing response - {}",
                    String::from_utf8_lossy(&resp)
                )))
            }
        }

        // L4: a topic without channels is registered alone; a channel
        // registers its topic too.
        for (topic, channels) in known {
            if channels.is_empty() {
                self.round_trip(&register("REGISTER", topic, None), identity.max_response)?;
            }
            for channel in channels {
                self.round_trip(
                    &register("REGISTER", topic, Some(channel)),
                    identity.max_response,
                )?;
            }
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.conn {
            Some(c) => c.write_all(bytes),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    /// L2: a response is `[4-byte BE size][data]`, errors included.
    fn round_trip(&mut self, cmd: &[u8], max: u64) -> std::io::Result<Vec<u8>> {
        self.write(cmd)?;
        let Some(conn) = &mut self.conn else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        let mut size = [0u8; 4];
        conn.read_exact(&mut size)?;
        let size = i32::from_be_bytes(size);
        if size < 0 || size as u64 > max {
            return Err(std::io::Error::other(format!(
                "response body size ({size}) is greater than limit ({max})"
            )));
        }
        let mut data = vec![0u8; size as usize];
        conn.read_exact(&mut data)?;
        Ok(data)
    }
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
    fn known_follows_the_events() {
        let (_tx, rx) = mpsc::channel();
        let identity = Identity {
            broadcast_address: "h".into(),
            hostname: "h".into(),
            tcp_port: 1,
            http_port: 2,
            max_response: 1024,
        };
        let mut l = LookupLoop::new(identity, Default::default(), rx, Default::default());
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
