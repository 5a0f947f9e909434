//! One client connection: the protocol V2 state machine (T2-T37) on top of
//! a byte stream. Reading and command handling run in the connection's task;
//! a writer task flushes its output buffer.
//!
//! Publishes are pipelined: the connection goes on reading and decoding
//! while earlier publishes wait for the disk or another core, and their
//! answers leave in command order (`replies`). Any other command waits until
//! the publishes before it are answered.
//!
//! A SUB for a topic owned by another core moves the whole connection there
//! (its socket fd, unparsed bytes and state travel over the core ring as an
//! opaque `route::Handoff`), so that delivery, in-flight tracking and
//! timeouts are plain core-local code.

mod auth;
mod authd;
pub mod compress;
pub mod output;
pub mod replies;
pub mod stream;
pub mod tls;
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

use crate::protocol::codec::{decode_eof, Wanted};
use crate::protocol::identify::{apply_identify, ClientSettings, StreamCompression};
use crate::protocol::message::{CLOSE_WAIT, OK};
use crate::protocol::{
    decode, ClientError, Command, ConnState, DecodeContext, DecodeError, ErrorCode, MessageId,
    MAGIC_V2,
};
use crate::route::{Broker, Handoff, PublishCommand, PublishSink, ReplyTo};
use crate::shard::{ClientInfo, InFlightError, Subscriber};
use compress::{Decoder, Encoder};
use output::{FlushPolicy, OutputBuffer};
use replies::Replies;
use stream::{ByteStream, ReadHalf, Transport, UnixConn};
use tls::TlsStream;
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
/// Measured with pipelined publishing (perf/pub-single.md): without the
/// move, 4 synchronous publishers of one topic get 22k instead of 33k msg/s
/// at twice the broker CPU per PUB (55-68 vs 29-31 µs).
const MOVE_PUBLISHER_AFTER: u32 = 16;
const MAX_READ_CHUNK: usize = 256 * 1024;
/// A client read in chunks of MAX_READ_CHUNK is a bulk publisher: it is
/// read into blocks this large, which the allocator backs with one huge
/// page each (crate::hugepages), so the bodies that stay queued cost one
/// page fault per 2 MiB instead of one per 4 KiB.
const BULK_BLOCK: usize = crate::hugepages::HUGE_PAGE;

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
    broker: Rc<Broker>,
    client_id: u64,
    info: Rc<ClientInfo>,
    reader: ReadHalf<TlsStream<S>>,
    /// Plain protocol bytes not parsed yet.
    read_buf: BytesMut,
    /// How much to read at once: grows while reads fill it, shrinks back
    /// when they do not, so idle connections stay small.
    read_chunk: usize,
    /// Set once IDENTIFY turned on snappy or deflate.
    decoder: Option<Decoder>,
    out: Rc<OutputBuffer>,
    /// Answers to publishes, in command order.
    replies: Rc<Replies>,
    writer: Option<Task<Option<WriterParts<TlsStream<S>>>>>,
    state: ConnState,
    sub: Option<Subscription>,
    /// (owning core, count) of the current run of small publishes.
    pub_streak: (usize, u32),
    /// A publisher moves between cores at most once.
    publisher_moved: bool,
    /// What `read_buf` must hold before decoding again.
    wanted: Wanted,
    auth: auth::AuthSession,
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
    auth: auth::AuthSession,
    /// The TLS session, which moves with the connection (T18).
    tls: Option<Box<rustls::ServerConnection>>,
}

/// The state of a connection moving to another core: `Handoff::state`.
struct Moving {
    identity: Identity,
    transport: Transport,
    /// Bytes read from the socket but not yet parsed.
    pending: BytesMut,
    /// The SUB that made it move, run on arrival; None for a publisher.
    sub: Option<(String, String)>,
}

/// A new TCP client accepted on this core.
pub async fn serve_tcp(broker: Rc<Broker>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (remote, ip) = match stream.peer_addr() {
        Ok(a) => (a.to_string(), a.ip().to_string()),
        Err(_) => (String::new(), String::new()),
    };
    serve(broker, stream, remote, ip).await
}

/// A new client on the unix socket (T1); nsqd names it by an empty address.
pub async fn serve_unix(broker: Rc<Broker>, stream: UnixConn) {
    serve(broker, stream, "@".to_string(), String::new()).await
}

async fn serve<S: ByteStream>(broker: Rc<Broker>, stream: S, remote: String, ip: String) {
    let client_id = broker.next_client_id();
    let settings = ClientSettings::defaults(&broker.opts, &ip);
    let span = tracing::info_span!("client", id = client_id, remote = %remote, core = broker.id);
    let identity = Identity {
        client_id,
        remote,
        connected_at: SystemTime::now(),
        settings,
        pub_counts: Vec::new(),
        decoder: None,
        encoder: None,
        publisher_moved: false,
        auth: Default::default(),
        tls: None,
    };
    let conn = Connection::start(broker, identity, stream, BytesMut::new());
    conn.run(true, None).instrument(span).await;
}

/// A connection moved here from another core.
pub async fn resume(broker: Rc<Broker>, h: Handoff) {
    let Ok(moving) = h.state.downcast::<Moving>() else {
        tracing::error!("hand-off of something not a connection");
        return;
    };
    let fd = h.fd.into_raw_fd();
    match moving.transport {
        // SAFETY: the sending core duplicated this fd for us and closed its own.
        Transport::Tcp => resume_on(broker, unsafe { TcpStream::from_raw_fd(fd) }, *moving).await,
        // SAFETY: as above.
        Transport::Unix => resume_on(broker, unsafe { UnixConn::from_raw_fd(fd) }, *moving).await,
    }
}

async fn resume_on<S: ByteStream>(broker: Rc<Broker>, stream: S, m: Moving) {
    let id = &m.identity;
    let span =
        tracing::info_span!("client", id = id.client_id, remote = %id.remote, core = broker.id);
    let conn = Connection::start(broker, m.identity, stream, m.pending);
    conn.run(false, m.sub).instrument(span).await;
}

fn is_publish(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Pub { .. } | Command::Mpub { .. } | Command::Dpub { .. }
    )
}

fn flush_policy(s: &ClientSettings) -> FlushPolicy {
    FlushPolicy {
        buffer_size: s.output_buffer_size,
        timeout: s.output_buffer_timeout,
        heartbeat: s.heartbeat_interval,
    }
}

impl<S: ByteStream> Connection<S> {
    fn start(broker: Rc<Broker>, id: Identity, stream: S, pending: BytesMut) -> Connection<S> {
        let _ = stream.set_read_timeout(id.settings.heartbeat_interval.map(|hb| hb * 2));
        let (reader, write_half) = stream::split(TlsStream::new(stream, id.tls));
        let out = Rc::new(OutputBuffer::new(flush_policy(&id.settings)));
        let writer = glommio::spawn_local(writer::run(out.clone(), write_half, id.encoder));
        let info = Rc::new(ClientInfo {
            id: id.client_id,
            remote: id.remote,
            connected_at: id.connected_at,
            fd: Cell::new(reader.raw_fd()),
            settings: RefCell::new(id.settings),
            state: Cell::new(ConnState::Init),
            pub_counts: RefCell::new(id.pub_counts),
            auth: RefCell::new(id.auth.stats()),
            deflate: Cell::new(matches!(id.decoder, Some(Decoder::Deflate(_)))),
            snappy: Cell::new(matches!(id.decoder, Some(Decoder::Snappy(_)))),
        });
        broker.add_client(info.clone());
        let replies = Rc::new(Replies::new(out.clone(), info.clone()));
        Connection {
            broker,
            client_id: id.client_id,
            info,
            reader,
            read_buf: pending,
            read_chunk: MIN_READ_CHUNK,
            decoder: id.decoder,
            out,
            replies,
            writer: Some(writer),
            state: ConnState::Init,
            sub: None,
            pub_streak: (0, 0),
            publisher_moved: id.publisher_moved,
            wanted: Wanted::default(),
            auth: id.auth,
        }
    }

    fn decode_context(&self) -> DecodeContext {
        let o = &self.broker.opts;
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
        if chunk < MAX_READ_CHUNK && raw.is_empty() && raw.capacity() > 2 * MAX_READ_CHUNK {
            // The burst is over: let go of the rest of a bulk block.
            raw = BytesMut::new();
        }
        if raw.capacity() - raw.len() < chunk {
            let block = if chunk == MAX_READ_CHUNK {
                BULK_BLOCK
            } else {
                0
            };
            raw.reserve(chunk.max(block.saturating_sub(raw.len())));
        }
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
        if expect_magic && !self.read_magic().await {
            return Flow::Close;
        }
        if let Some((topic, channel)) = first_sub {
            if let Err(e) = self.subscribe_here(topic, channel) {
                self.out.push_error(&e.to_frame_body());
                return Flow::Close;
            }
        }
        loop {
            if let Some(flow) = self.handle_buffered().await {
                return flow;
            }
            self.out.room_for(OUTPUT_BACKPRESSURE).await;
            if self.out.is_dead() {
                return Flow::Close;
            }
            if !self.fill().await {
                return self.end_of_input().await;
            }
        }
    }

    /// T2: the 4-byte protocol magic.
    async fn read_magic(&mut self) -> bool {
        while self.read_buf.len() < MAGIC_V2.len() {
            if !self.fill().await {
                return false;
            }
        }
        if &self.read_buf[..4] != MAGIC_V2 {
            tracing::info!("bad protocol magic");
            self.out
                .push_error(ErrorCode::BadProtocol.as_str().as_bytes());
            return false;
        }
        let _ = self.read_buf.split_to(4);
        true
    }

    /// Runs every complete command in the read buffer; `Some` when the
    /// connection ends or moves.
    async fn handle_buffered(&mut self) -> Option<Flow> {
        let mut since_yield = 0u32;
        loop {
            // Let the other connections of this core run between commands
            // of a client that sends many at once.
            since_yield += 1;
            if since_yield >= COMMANDS_PER_YIELD {
                since_yield = 0;
                glommio::yield_if_needed().await;
            }
            // A failed publish ends the connection; its error frame goes
            // out after the answers before it (`close`).
            if self.replies.is_failing() {
                return Some(Flow::Close);
            }
            if !self.wanted.is_met(&self.read_buf) {
                return None;
            }
            // Checked before each command, not after a publish: a client
            // that waits for each OK has no answer outstanding by then.
            if let Some(core) = self.publisher_move() {
                return Some(Flow::MoveTo { core, sub: None });
            }
            if let Some(e) = self.tls_policy_violation() {
                self.fail(e).await;
                return Some(Flow::Close);
            }
            if let Err(e) = self.check_mpub_line().await {
                self.fail(e).await;
                return Some(Flow::Close);
            }
            let ctx = self.decode_context();
            let cmd = match decode(&mut self.read_buf, &ctx) {
                Ok(Some(cmd)) => cmd,
                Ok(None) => {
                    // Re-parse once enough bytes are there for it to finish
                    // (a 5 MiB MPUB arriving in small pieces).
                    self.wanted = Wanted::after_incomplete(&self.read_buf, &ctx);
                    return None;
                }
                Err(DecodeError::Client(e)) => {
                    self.fail(e).await;
                    return Some(Flow::Close);
                }
                Err(DecodeError::LineTooLong) => {
                    tracing::info!("command line too long; closing");
                    self.replies.drained().await;
                    return Some(Flow::Close);
                }
            };
            self.wanted = Wanted::default();
            self.auth_command_decoded();
            tracing::trace!(command = cmd.name(), "command");
            if !is_publish(&cmd) {
                // Its answer (and its effect) come after those publishes'.
                self.replies.drained().await;
                if self.replies.is_failing() {
                    return Some(Flow::Close);
                }
            }
            match self.handle(cmd).await {
                Ok(Flow::Continue) => {}
                Ok(flow) => return Some(flow),
                Err(e) if e.is_fatal() => {
                    self.fail(e).await;
                    return Some(Flow::Close);
                }
                Err(e) => {
                    tracing::info!(error = %e, "client error");
                    self.out.push_error(&e.to_frame_body());
                }
            }
        }
    }

    /// A fatal error: its frame goes out after the answers before it.
    async fn fail(&mut self, e: ClientError) {
        self.replies.drained().await;
        if self.replies.is_failing() {
            return;
        }
        tracing::info!(error = %e, "client error");
        self.out.push_error(&e.to_frame_body());
    }

    /// The client closed (or timed out, T33) its side.
    async fn end_of_input(&mut self) -> Flow {
        if self.replies.is_failing() {
            return Flow::Close; // we closed the reading side ourselves
        }
        // In the middle of a command nsqd answers with the read failure (T4).
        if let Some(e) = decode_eof(&self.read_buf, &self.decode_context()) {
            self.fail(e).await;
        }
        Flow::Close
    }

    async fn handle(&mut self, cmd: Command) -> Result<Flow, ClientError> {
        match cmd {
            Command::Nop => {}
            Command::Identify(body) => {
                let outcome = {
                    let mut settings = self.info.settings.borrow_mut();
                    let outcome = apply_identify(&body, &self.broker.opts, &mut settings)?;
                    self.out.set_policy(flush_policy(&settings));
                    let _ = self
                        .reader
                        .set_read_timeout(settings.heartbeat_interval.map(|hb| hb * 2));
                    outcome
                };
                self.out.push_response(&outcome.response);
                if outcome.tls {
                    self.upgrade_tls().await?;
                }
                if let Some(c) = outcome.compression {
                    self.start_compression(c)?;
                }
            }
            Command::Auth(secret) => self.auth_command(secret).await?,
            Command::Sub { topic, channel } => {
                self.check_auth("SUB", &topic, &channel).await?;
                let topic = String::from_utf8_lossy(&topic).into_owned();
                let channel = String::from_utf8_lossy(&channel).into_owned();
                let owner = self.broker.owner(topic.as_bytes());
                if owner == self.broker.id {
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
                let max = self.broker.opts.max_msg_timeout;
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
                self.check_auth("PUB", &topic, b"").await?;
                self.publish(PublishCommand::Pub, topic, vec![body], None)
                    .await;
            }
            Command::Mpub { topic, bodies } => {
                self.publish(PublishCommand::Mpub, topic, bodies, None)
                    .await;
            }
            Command::Dpub { topic, defer, body } => {
                self.check_auth("DPUB", &topic, b"").await?;
                self.publish(PublishCommand::Dpub, topic, vec![body], Some(defer))
                    .await;
            }
        }
        Ok(Flow::Continue)
    }

    /// T20: with TLS required, a plain connection may only IDENTIFY.
    fn tls_policy_violation(&self) -> Option<ClientError> {
        if self.broker.tls_required == crate::config::TlsRequired::No
            || self.info.settings.borrow().tls.is_some()
        {
            return None;
        }
        tls::policy_violation(&self.read_buf)
    }

    /// T18: after the IDENTIFY answer went out in clear, the TLS handshake
    /// (5 s), then `OK` over TLS. A refused handshake leaves the alert,
    /// then a clear E_IDENTIFY_FAILED frame, as nsqd's does.
    async fn upgrade_tls(&mut self) -> Result<(), ClientError> {
        let Some(config) = self.broker.tls.clone() else {
            return Ok(());
        };
        self.out.written().await;
        tracing::info!("upgrading connection to TLS");
        // Bytes read past the IDENTIFY are the client's first records.
        let early = std::mem::take(&mut self.read_buf);
        let summary = tls::upgrade(&self.reader, config, &early).await?;
        self.info.settings.borrow_mut().tls = Some(summary);
        self.out.push_response(OK);
        Ok(())
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
        self.broker.with_channel(&sub.topic, &sub.channel, f)
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

    /// PUB/MPUB/DPUB: into the shard if this core owns the topic, else
    /// over the ring to its owner. The answer takes its place in line in
    /// `replies` and goes out when known; the next command is read at once.
    async fn publish(
        &mut self,
        cmd: PublishCommand,
        topic: Bytes,
        bodies: Vec<Bytes>,
        defer: Option<Duration>,
    ) {
        // Bounded pipelining: a publisher whose answers lag (a slow disk
        // or core) is not read further until some leave.
        self.replies.room().await;
        if self.replies.is_failing() {
            return; // nothing runs after a failed publish (T13-T15)
        }
        let count = bodies.len();
        let bytes = bodies.iter().map(Bytes::len).sum();
        let owner = self.broker.owner(&topic);
        let seq = self.replies.reserve(cmd, topic.clone(), count, bytes);
        let reply = ReplyTo {
            sink: self.replies.clone(),
            seq,
        };
        if let Some(result) = self
            .broker
            .publish(owner, topic, bodies, defer, reply)
            .await
        {
            self.replies.publish_done(seq, result);
        }
        self.note_publish(owner, count);
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
        self.broker
            .subscribe(&topic, &channel, subscriber.clone())?;
        self.replies.watch(subscriber.clone());
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
    /// Only between answers: a move with publishes still waiting would
    /// have to wait for them, or drop them if they take long.
    fn publisher_move(&self) -> Option<usize> {
        let (owner, streak) = self.pub_streak;
        (streak >= MOVE_PUBLISHER_AFTER
            && owner != self.broker.id
            && self.state == ConnState::Init
            && !self.publisher_moved
            && self.replies.is_empty())
        .then_some(owner)
    }

    async fn move_to(mut self, core: usize, sub: Option<(String, String)>) {
        // Publishes answered here first: their replies come to this core.
        if !self.wait_for_replies().await || self.replies.is_failing() {
            return self.close().await;
        }
        self.out.close();
        let parts = match self.writer.take() {
            Some(w) => bounded(w).await.flatten(),
            None => None,
        };
        self.let_go();
        let Some((write_half, encoder)) = parts else {
            return; // the socket failed while flushing
        };
        drop(write_half);
        let tls = self.reader.with_stream(|s| s.take_session()).ok().flatten();
        let fd = match stream::dup_fd(self.reader.raw_fd()) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "cannot move connection");
                return;
            }
        };
        tracing::debug!(to = core, "moving connection to the topic's core");
        let moving = Moving {
            identity: Identity {
                client_id: self.client_id,
                remote: self.info.remote.clone(),
                connected_at: self.info.connected_at,
                settings: self.info.settings.borrow().clone(),
                pub_counts: self.info.pub_counts.borrow().clone(),
                decoder: self.decoder.take(),
                encoder,
                publisher_moved: self.publisher_moved || sub.is_none(),
                auth: std::mem::take(&mut self.auth),
                tls,
            },
            transport: S::TRANSPORT,
            pending: std::mem::take(&mut self.read_buf),
            sub,
        };
        let handoff = Handoff {
            // SAFETY: `fd` was just duplicated and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            state: Box::new(moving),
        };
        // The duplicate travels; this core's fd closes with the stream.
        self.broker.hand_off(core, handoff).await;
    }

    /// Waits (bounded) until every publish so far is answered; false if
    /// that took too long.
    async fn wait_for_replies(&self) -> bool {
        self.replies.is_empty()
            || self.out.is_dead()
            || bounded(self.replies.drained()).await.is_some()
    }

    async fn close(mut self) {
        if let Some(sub) = self.sub.take() {
            sub.subscriber.closing.set(true);
            self.broker
                .unsubscribe(&sub.topic, &sub.channel, self.client_id);
        }
        // A client that half-closed after publishing still gets its OKs.
        self.wait_for_replies().await;
        self.out.close();
        if let Some(w) = self.writer.take() {
            // Bounded by the write deadline; without heartbeats, cap it.
            let _ = bounded(w).await;
        }
        self.let_go();
        tracing::info!("connection closed");
    }

    /// This core is done with the connection: answers that still come
    /// (after `wait_for_replies` gave up) and forced disconnects must not
    /// reach the fd, which closes with `self` and may be reused.
    fn let_go(&self) {
        self.replies.abandon();
        self.info.release_socket();
        self.broker.remove_client(self.client_id);
    }
}

/// How long closing or moving waits for the writer or for answers: a
/// client that never reads cannot pin a connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `fut`, or None after CLOSE_TIMEOUT.
async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(CLOSE_TIMEOUT).await;
        None
    })
    .await
}
