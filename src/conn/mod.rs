//! One client connection: the protocol V2 state machine (T2-T37) on top of
//! a byte stream. Reading and command handling run in the connection's task;
//! a writer task flushes its output buffer.
//!
//! A SUB for a topic owned by another core moves the whole connection there
//! (its socket fd and unparsed bytes travel over the core ring), so that
//! delivery, in-flight tracking and timeouts are plain core-local code.

pub mod compress;
pub mod info;
pub mod output;
pub mod stream;
pub mod writer;

use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use glommio::Task;
use tracing::Instrument;

use crate::protocol::codec::{decode_eof, wanted_len};
use crate::protocol::identify::{apply_identify, ClientSettings, StreamCompression};
use crate::protocol::message::{CLOSE_WAIT, OK};
use crate::protocol::{
    decode, ClientError, Command, ConnState, DecodeContext, DecodeError, ErrorCode, MessageId,
    MAGIC_V2,
};
use crate::route::{CoreMsg, Handoff, Transport};
use crate::runtime::core::Core;
use crate::runtime::listen::UnixConn;
use crate::shard::{InFlightError, Subscriber};
use compress::{Decoder, Encoder};
use info::ClientInfo;
use output::{FlushPolicy, OutputBuffer};
use stream::{ByteStream, ReadHalf};
use writer::WriterParts;

/// Reads start small (idle connections cost little) and grow while a
/// client sends faster than one read takes in.
const MIN_READ_CHUNK: usize = 4 * 1024;
/// How much compressed input is decoded per step.
const DECODE_BUDGET: usize = 256 * 1024;
/// Stop reading a client whose unsent answers exceed this.
const OUTPUT_BACKPRESSURE: usize = 16 << 20;
/// Commands handled before giving other tasks of the core a turn.
const COMMANDS_PER_YIELD: u32 = 64;
/// Publishes of fewer messages than this count towards moving a publisher.
const SMALL_PUBLISH: usize = 8;
/// How many small publishes in a row to one other core before moving there.
const MOVE_PUBLISHER_AFTER: u32 = 16;
const MAX_READ_CHUNK: usize = 256 * 1024;

struct Subscription {
    topic: String,
    channel: String,
    subscriber: Rc<Subscriber>,
}

/// What the read loop does after a command.
enum Flow {
    Continue,
    Close,
    /// SUB for another core's topic: move there.
    /// Move to another core: a consumer at SUB (with its subscription), or
    /// a publisher that keeps publishing single messages there.
    MoveTo {
        core: usize,
        sub: Option<(String, String)>,
    },
}

struct Connection<S: ByteStream> {
    core: Rc<Core>,
    client_id: u64,
    info: Rc<ClientInfo>,
    reader: ReadHalf<S>,
    /// Plain protocol bytes not parsed yet.
    read_buf: BytesMut,
    /// How much to read at once: grows while reads fill it, shrinks back
    /// when they do not, so idle connections stay small.
    read_chunk: usize,
    /// Set once IDENTIFY turned on snappy or deflate.
    decoder: Option<Decoder>,
    out: Rc<OutputBuffer>,
    writer: Option<Task<Option<WriterParts<S>>>>,
    state: ConnState,
    sub: Option<Subscription>,
    /// (owning core, count) of the current run of small publishes.
    pub_streak: (usize, u32),
    /// A publisher moves between cores at most once.
    publisher_moved: bool,
    /// Do not decode again before `read_buf` holds this many bytes.
    wanted: usize,
}

/// Who the connection is, carried along when it moves between cores.
struct Identity {
    client_id: u64,
    remote: String,
    connected_at: SystemTime,
    settings: ClientSettings,
    pub_counts: Vec<(String, u64)>,
    decoder: Option<Decoder>,
    encoder: Option<Encoder>,
    publisher_moved: bool,
}

/// A new TCP client accepted on this core.
pub async fn serve_tcp(core: Rc<Core>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (remote, ip) = match stream.peer_addr() {
        Ok(a) => (a.to_string(), a.ip().to_string()),
        Err(_) => (String::new(), String::new()),
    };
    serve(core, stream, remote, ip).await
}

/// A new client on the unix socket (T1); nsqd names it by an empty address.
pub async fn serve_unix(core: Rc<Core>, stream: UnixConn) {
    serve(core, stream, "@".to_string(), String::new()).await
}

async fn serve<S: ByteStream>(core: Rc<Core>, stream: S, remote: String, ip: String) {
    let client_id = core.shared.next_client_id();
    let settings = ClientSettings::defaults(core.opts(), &ip);
    let span = tracing::info_span!("client", id = client_id, remote = %remote, core = core.id);
    let identity = Identity {
        client_id,
        remote,
        connected_at: SystemTime::now(),
        settings,
        pub_counts: Vec::new(),
        decoder: None,
        encoder: None,
        publisher_moved: false,
    };
    let Some(conn) = Connection::start(core, identity, stream, BytesMut::new()) else {
        return;
    };
    conn.run(true, None).instrument(span).await;
}

/// A connection moved here from another core at SUB.
pub async fn resume(core: Rc<Core>, mut h: Box<Handoff>) {
    let Some(fd) = h.fd.take() else {
        return;
    };
    let fd = fd.into_raw_fd();
    match h.transport {
        // SAFETY: the sending core duplicated this fd for us and closed its own.
        Transport::Tcp => resume_on(core, unsafe { TcpStream::from_raw_fd(fd) }, h).await,
        // SAFETY: as above.
        Transport::Unix => resume_on(core, unsafe { UnixConn::from_raw_fd(fd) }, h).await,
    }
}

async fn resume_on<S: ByteStream>(core: Rc<Core>, stream: S, h: Box<Handoff>) {
    let h = *h;
    let span = tracing::info_span!("client", id = h.client_id, remote = %h.remote, core = core.id);
    let identity = Identity {
        client_id: h.client_id,
        remote: h.remote,
        connected_at: h.connected_at,
        settings: h.settings,
        pub_counts: h.pub_counts,
        decoder: h.decoder,
        encoder: h.encoder,
        publisher_moved: h.publisher_moved,
    };
    let Some(conn) = Connection::start(core, identity, stream, h.pending) else {
        return;
    };
    conn.run(false, h.sub).instrument(span).await;
}

fn flush_policy(s: &ClientSettings) -> FlushPolicy {
    FlushPolicy {
        buffer_size: s.output_buffer_size,
        timeout: s.output_buffer_timeout,
        heartbeat: s.heartbeat_interval,
    }
}

impl<S: ByteStream> Connection<S> {
    fn start(core: Rc<Core>, id: Identity, stream: S, pending: BytesMut) -> Option<Connection<S>> {
        let _ = stream.set_read_timeout(id.settings.heartbeat_interval.map(|hb| hb * 2));
        let (reader, write_half) = stream::split(stream);
        let out = Rc::new(OutputBuffer::new(flush_policy(&id.settings)));
        let writer = glommio::spawn_local(writer::run(out.clone(), write_half, id.encoder));
        let info = Rc::new(ClientInfo {
            id: id.client_id,
            remote: id.remote,
            connected_at: id.connected_at,
            fd: reader.raw_fd(),
            settings: RefCell::new(id.settings),
            state: Cell::new(ConnState::Init),
            pub_counts: RefCell::new(id.pub_counts),
            deflate: Cell::new(matches!(id.decoder, Some(Decoder::Deflate(_)))),
            snappy: Cell::new(matches!(id.decoder, Some(Decoder::Snappy(_)))),
        });
        core.conns.borrow_mut().insert(id.client_id, info.clone());
        Some(Connection {
            core,
            client_id: id.client_id,
            info,
            reader,
            read_buf: pending,
            read_chunk: MIN_READ_CHUNK,
            decoder: id.decoder,
            out,
            writer: Some(writer),
            state: ConnState::Init,
            sub: None,
            pub_streak: (0, 0),
            publisher_moved: id.publisher_moved,
            wanted: 0,
        })
    }

    fn decode_context(&self) -> DecodeContext {
        let o = self.core.opts();
        DecodeContext {
            state: self.state,
            heartbeats_enabled: self.info.settings.borrow().heartbeat_interval.is_some(),
            max_msg_size: o.max_msg_size,
            max_body_size: o.max_body_size,
            max_rdy_count: o.max_rdy_count,
            max_req_timeout_ms: o.max_req_timeout.as_millis() as i64,
        }
    }

    /// Reads more bytes; false on EOF, error or read deadline (T33).
    async fn fill(&mut self) -> bool {
        // Compressed input already received decodes in bounded steps first.
        if let Some(dec) = self.decoder.as_mut().filter(|d| d.has_pending()) {
            let before = self.read_buf.len();
            if let Err(e) = dec.decode(&[], &mut self.read_buf, DECODE_BUDGET) {
                tracing::info!(error = %e, "bad compressed stream; closing");
                return false;
            }
            if self.read_buf.len() > before {
                return true;
            }
        }
        let chunk = self.read_chunk;
        let mut raw = match self.decoder {
            None => std::mem::take(&mut self.read_buf),
            Some(_) => BytesMut::new(),
        };
        raw.reserve(chunk);
        let start = raw.len();
        // Only the part a read may fill is zeroed, not the whole capacity.
        let room = chunk;
        raw.resize(start + room, 0);
        // nsqd's read deadline: two heartbeat intervals (T33).
        let deadline = self
            .info
            .settings
            .borrow()
            .heartbeat_interval
            .map(|hb| hb * 2);
        let result =
            stream::with_deadline::<S, _>(deadline, self.reader.read(&mut raw[start..])).await;
        let n = match result {
            Ok(n) => n,
            Err(ref e) => {
                tracing::debug!(error = %e, "read failed");
                0
            }
        };
        raw.truncate(start + n);
        self.read_chunk = if n == room {
            (chunk * 2).min(MAX_READ_CHUNK)
        } else if n < chunk / 4 {
            (chunk / 2).max(MIN_READ_CHUNK)
        } else {
            chunk
        };
        match &mut self.decoder {
            None => self.read_buf = raw,
            Some(dec) => {
                if let Err(e) = dec.decode(&raw, &mut self.read_buf, DECODE_BUDGET) {
                    tracing::info!(error = %e, "bad compressed stream; closing");
                    return false;
                }
            }
        }
        n > 0
    }

    async fn run(mut self, expect_magic: bool, first_sub: Option<(String, String)>) {
        let flow = self.serve_commands(expect_magic, first_sub).await;
        match flow {
            Flow::MoveTo { core, sub } => self.move_to(core, sub).await,
            _ => self.close().await,
        }
    }

    async fn serve_commands(
        &mut self,
        expect_magic: bool,
        first_sub: Option<(String, String)>,
    ) -> Flow {
        if expect_magic {
            while self.read_buf.len() < MAGIC_V2.len() {
                if !self.fill().await {
                    return Flow::Close;
                }
            }
            if &self.read_buf[..4] != MAGIC_V2 {
                tracing::info!("bad protocol magic");
                self.out
                    .push_error(ErrorCode::BadProtocol.as_str().as_bytes());
                return Flow::Close;
            }
            let _ = self.read_buf.split_to(4);
        }
        if let Some((topic, channel)) = first_sub {
            if let Err(e) = self.subscribe_here(topic, channel) {
                self.out.push_error(&e.to_frame_body());
                return Flow::Close;
            }
        }
        let mut since_yield = 0u32;
        loop {
            loop {
                // Let the other connections of this core run between
                // commands of a client that sends many at once.
                since_yield += 1;
                if since_yield >= COMMANDS_PER_YIELD {
                    since_yield = 0;
                    glommio::yield_if_needed().await;
                }
                if self.read_buf.len() < self.wanted {
                    break;
                }
                let ctx = self.decode_context();
                match decode(&mut self.read_buf, &ctx) {
                    Ok(Some(cmd)) => {
                        self.wanted = 0;
                        tracing::trace!(command = cmd.name(), "command");
                        match self.handle(cmd).await {
                            Ok(Flow::Continue) => {
                                if let Some(core) = self.publisher_move() {
                                    return Flow::MoveTo { core, sub: None };
                                }
                            }
                            Ok(flow) => return flow,
                            Err(e) => {
                                tracing::info!(error = %e, "client error");
                                self.out.push_error(&e.to_frame_body());
                                if e.is_fatal() {
                                    return Flow::Close;
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        // Re-parse once enough bytes are there for it to
                        // finish (a 5 MiB MPUB arriving in small pieces).
                        self.wanted = wanted_len(&self.read_buf, &ctx);
                        break;
                    }
                    Err(DecodeError::Client(e)) => {
                        tracing::info!(error = %e, "client error");
                        self.out.push_error(&e.to_frame_body());
                        return Flow::Close;
                    }
                    Err(DecodeError::LineTooLong) => {
                        tracing::info!("command line too long; closing");
                        return Flow::Close;
                    }
                }
            }
            // A client that does not read its answers stops being read
            // (nsqd blocks on the socket the same way).
            while self.out.buffered_len() > OUTPUT_BACKPRESSURE && !self.out.is_dead() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            if self.out.is_dead() {
                return Flow::Close;
            }
            if !self.fill().await {
                // Closed (or timed out) in the middle of a command: nsqd
                // answers with the read failure (T4).
                if let Some(e) = decode_eof(&self.read_buf, &self.decode_context()) {
                    tracing::info!(error = %e, "client error");
                    self.out.push_error(&e.to_frame_body());
                }
                return Flow::Close;
            }
        }
    }

    async fn handle(&mut self, cmd: Command) -> Result<Flow, ClientError> {
        match cmd {
            Command::Nop => {}
            Command::Identify(body) => {
                let outcome = {
                    let mut settings = self.info.settings.borrow_mut();
                    let outcome = apply_identify(&body, self.core.opts(), &mut settings)?;
                    self.out.set_policy(flush_policy(&settings));
                    let _ = self
                        .reader
                        .set_read_timeout(settings.heartbeat_interval.map(|hb| hb * 2));
                    outcome
                };
                self.out.push_response(&outcome.response);
                if let Some(c) = outcome.compression {
                    self.start_compression(c)?;
                }
            }
            Command::Auth(_) => {
                return Err(ClientError::new(ErrorCode::AuthDisabled, "AUTH disabled"));
            }
            Command::Sub { topic, channel } => {
                let topic = String::from_utf8_lossy(&topic).into_owned();
                let channel = String::from_utf8_lossy(&channel).into_owned();
                let owner = self.core.router.owner(topic.as_bytes());
                if owner == self.core.id {
                    self.subscribe_here(topic, channel)?;
                } else {
                    return Ok(Flow::MoveTo {
                        core: owner,
                        sub: Some((topic, channel)),
                    });
                }
            }
            Command::Rdy(None) => {}
            Command::Rdy(Some(count)) => {
                if let Some(sub) = &self.sub {
                    sub.subscriber.rdy.set(count);
                    if !sub.subscriber.is_ready() {
                        self.out.flush_soon();
                    }
                    self.with_channel(|ch| ch.dispatch());
                }
            }
            Command::Fin(id) => {
                self.in_flight_op(id, "FIN", ErrorCode::FinFailed, |ch, cid| {
                    ch.finish(cid, &id)
                })?;
            }
            Command::Req {
                id,
                timeout: delay,
                requested_ms,
            } => {
                if delay.as_millis() != u128::from(requested_ms) {
                    tracing::info!(requested_ms, ?delay, "REQ timeout out of range; clamped");
                }
                self.in_flight_op(id, "REQ", ErrorCode::ReqFailed, |ch, cid| {
                    ch.requeue(cid, &id, delay)
                })?;
            }
            Command::Touch(id) => {
                let max = self.core.opts().max_msg_timeout;
                self.in_flight_op(id, "TOUCH", ErrorCode::TouchFailed, |ch, cid| {
                    ch.touch(cid, &id, max)
                })?;
            }
            Command::Cls => {
                if let Some(sub) = &self.sub {
                    sub.subscriber.rdy.set(0);
                    sub.subscriber.closing.set(true);
                }
                self.set_state(ConnState::Closing);
                self.out.push_response(CLOSE_WAIT);
            }
            Command::Pub { topic, body } => {
                self.publish(topic, vec![body], None, "PUB", ErrorCode::PubFailed)
                    .await?;
            }
            Command::Mpub { topic, bodies } => {
                self.publish(topic, bodies, None, "MPUB", ErrorCode::MpubFailed)
                    .await?;
            }
            Command::Dpub { topic, defer, body } => {
                let defer = Some(defer);
                self.publish(topic, vec![body], defer, "DPUB", ErrorCode::DpubFailed)
                    .await?;
            }
        }
        Ok(Flow::Continue)
    }

    /// T19: the IDENTIFY answer went out in clear; everything after it is
    /// compressed both ways, starting with a compressed `OK`.
    fn start_compression(&mut self, c: StreamCompression) -> Result<(), ClientError> {
        let (encoder, mut decoder) = match c {
            StreamCompression::Deflate { level } => (Encoder::deflate(level), Decoder::deflate()),
            StreamCompression::Snappy => (Encoder::snappy(), Decoder::snappy()),
        };
        // Bytes already read past the IDENTIFY are compressed too.
        let pending = std::mem::take(&mut self.read_buf);
        decoder
            .decode(&pending, &mut self.read_buf, DECODE_BUDGET)
            .map_err(|e| {
                ClientError::new(ErrorCode::IdentifyFailed, format!("IDENTIFY failed {e}"))
            })?;
        self.decoder = Some(decoder);
        self.out.start_compression(encoder);
        self.out.push_response(OK);
        match c {
            StreamCompression::Deflate { .. } => self.info.deflate.set(true),
            StreamCompression::Snappy => self.info.snappy.set(true),
        }
        Ok(())
    }

    fn with_channel<T>(&self, f: impl FnOnce(&mut crate::shard::Channel) -> T) -> Option<T> {
        let sub = self.sub.as_ref()?;
        let mut shard = self.core.shard.borrow_mut();
        shard.channel_mut(&sub.topic, &sub.channel).map(f)
    }

    /// FIN / REQ / TOUCH: non-fatal failures (T25-T27).
    fn in_flight_op(
        &self,
        id: MessageId,
        name: &str,
        code: ErrorCode,
        op: impl FnOnce(&mut crate::shard::Channel, u64) -> Result<(), InFlightError>,
    ) -> Result<(), ClientError> {
        let client_id = self.client_id;
        let result = self
            .with_channel(|ch| {
                let r = op(ch, client_id);
                if r.is_ok() {
                    ch.dispatch();
                }
                r
            })
            .unwrap_or(Err(InFlightError::NotInFlight));
        result.map_err(|e| {
            ClientError::new(
                code,
                format!("{name} {} failed {}", id.as_str(), e.as_str()),
            )
        })
    }

    /// PUB/MPUB/DPUB: straight into the shard if this core owns the topic,
    /// else over the ring to its owner; OK only once the owner took it.
    async fn publish(
        &mut self,
        topic: Bytes,
        bodies: Vec<Bytes>,
        defer: Option<Duration>,
        name: &str,
        code: ErrorCode,
    ) -> Result<(), ClientError> {
        let count = bodies.len();
        let owner = self.core.router.owner(&topic);
        let result = self.core.publish(topic.clone(), bodies, defer).await;
        match result {
            Ok(()) => {
                // Names were validated: ASCII.
                self.info.add_published(
                    std::str::from_utf8(&topic).unwrap_or_default(),
                    count as u64,
                );
                self.note_publish(owner, count);
                self.out.push_response(OK);
                Ok(())
            }
            Err(e) => Err(ClientError::new(code, format!("{name} failed {e}"))),
        }
    }

    fn subscribe_here(&mut self, topic: String, channel: String) -> Result<(), ClientError> {
        let (msg_timeout, sample_rate) = {
            let s = self.info.settings.borrow();
            (s.msg_timeout, s.sample_rate)
        };
        let subscriber = Rc::new(Subscriber::new(
            self.info.clone(),
            self.out.clone(),
            msg_timeout,
            sample_rate,
        ));
        self.core
            .shard
            .borrow_mut()
            .subscribe(&topic, &channel, subscriber.clone())?;
        tracing::info!(topic, channel, "subscribed");
        self.sub = Some(Subscription {
            topic,
            channel,
            subscriber,
        });
        self.set_state(ConnState::Subscribed);
        self.out.push_response(OK);
        Ok(())
    }

    fn set_state(&mut self, state: ConnState) {
        self.state = state;
        self.info.state.set(state);
    }

    /// Flushes what is pending, then ships the socket to `core`.
    /// Records a publish to `owner`'s topic: single messages (or tiny
    /// batches) pay a cross-core round trip each, batches amortise it.
    fn note_publish(&mut self, owner: usize, messages: usize) {
        if messages >= SMALL_PUBLISH {
            self.pub_streak = (owner, 0);
        } else if self.pub_streak.0 == owner {
            self.pub_streak.1 = self.pub_streak.1.saturating_add(1);
        } else {
            self.pub_streak = (owner, 1);
        }
    }

    /// A publisher that keeps sending single messages to another core's
    /// topic moves there once (measured: single PUB round trips halve).
    fn publisher_move(&self) -> Option<usize> {
        let (owner, streak) = self.pub_streak;
        (streak >= MOVE_PUBLISHER_AFTER
            && owner != self.core.id
            && self.state == ConnState::Init
            && !self.publisher_moved)
            .then_some(owner)
    }

    async fn move_to(mut self, core: usize, sub: Option<(String, String)>) {
        self.out.close();
        // Bounded like close(): a client that never reads cannot pin us here.
        let parts = match self.writer.take() {
            Some(w) => {
                futures_lite::future::or(w, async {
                    glommio::timer::sleep(Duration::from_secs(5)).await;
                    None
                })
                .await
            }
            None => None,
        };
        self.core.conns.borrow_mut().remove(&self.client_id);
        let Some((write_half, encoder)) = parts else {
            return; // the socket failed while flushing
        };
        drop(write_half);
        let fd = match stream::dup_fd(self.reader.raw_fd()) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "cannot move connection");
                return;
            }
        };
        tracing::debug!(to = core, "moving connection to the topic's core");
        crate::stats::CoreCounters::add(&self.core.counters.handoffs_out, 1);
        let handoff = Handoff {
            // SAFETY: `fd` was just duplicated and is owned by nobody else.
            fd: Some(unsafe { OwnedFd::from_raw_fd(fd) }),
            client_id: self.client_id,
            remote: self.info.remote.clone(),
            transport: S::TRANSPORT,
            connected_at: self.info.connected_at,
            settings: self.info.settings.borrow().clone(),
            pub_counts: self.info.pub_counts.borrow().clone(),
            pending: std::mem::take(&mut self.read_buf),
            decoder: self.decoder.take(),
            encoder,
            publisher_moved: self.publisher_moved || sub.is_none(),
            sub,
        };
        // The duplicate travels; this core's fd closes with the stream.
        self.core
            .router
            .send(core, CoreMsg::Handoff(Box::new(handoff)))
            .await;
    }

    async fn close(mut self) {
        if let Some(sub) = self.sub.take() {
            sub.subscriber.closing.set(true);
            self.core
                .shard
                .borrow_mut()
                .unsubscribe(&sub.topic, &sub.channel, self.client_id);
        }
        self.out.close();
        if let Some(w) = self.writer.take() {
            // Bounded by the write deadline; without heartbeats, cap it.
            let _ = futures_lite::future::or(w, async {
                glommio::timer::sleep(Duration::from_secs(5)).await;
                None
            })
            .await;
        }
        self.core.conns.borrow_mut().remove(&self.client_id);
        tracing::info!("connection closed");
    }
}
