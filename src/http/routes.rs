//! Every route of nsqd 1.3.0's HTTP API (H2-H22), with its status codes.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::Serialize;

use super::error::{publish_failed, HttpError};
use super::reply::{self, Reply};
use crate::config::NSQD_COMPAT_VERSION;
use crate::protocol::mpub::{self, MpubLimits};
use crate::protocol::names::is_valid_name;
use crate::route::AdminOp;
use crate::runtime::core::Core;
use crate::stats::{ClientStats, StatsFilter, TopicStats};

/// The query string as nsqd's `url.ParseQuery` sees it.
struct Query(Vec<(String, String)>);

impl Query {
    /// Go rejects bad %-escapes and `;` separators: 400 INVALID_REQUEST.
    fn parse(raw: Option<&str>) -> Result<Query, HttpError> {
        let raw = raw.unwrap_or("");
        let bytes = raw.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b';' => return Err(HttpError::InvalidRequest),
                b'%' => {
                    let hex = |b: Option<&u8>| b.is_some_and(|c| c.is_ascii_hexdigit());
                    if !hex(bytes.get(i + 1)) || !hex(bytes.get(i + 2)) {
                        return Err(HttpError::InvalidRequest);
                    }
                    i += 3;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        Ok(Query(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }

    /// The first value of `key`, like Go's `Values.Get` / `values[key][0]`.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// nsqd's `boolParams`: true/1/false/0.
fn bool_param(v: Option<&str>) -> Option<bool> {
    match v? {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Reads the body, at most `limit` bytes; None if it is longer.
async fn read_body(body: Incoming, limit: usize) -> Result<Option<Bytes>, HttpError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(None),
        Err(_) => Err(HttpError::Internal),
    }
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub async fn handle(core: Rc<Core>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let reply = route(&core, req, &path, &method).await;
    tracing::debug!(status = reply.status().as_u16(), %method, path, "http");
    Ok(reply)
}

async fn route(core: &Rc<Core>, req: Request<Incoming>, path: &str, method: &Method) -> Reply {
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let put = method == Method::PUT;
    let allowed = match path {
        "/ping"
        | "/info"
        | "/stats"
        | "/metrics"
        | "/debug/pprof/"
        | "/debug/pprof/cmdline"
        | "/debug/pprof/profile"
        | "/debug/pprof/heap"
        | "/debug/pprof/goroutine"
        | "/debug/pprof/block"
        | "/debug/pprof/threadcreate" => get,
        "/debug/pprof/symbol" => get || post,
        "/pub" | "/mpub" | "/topic/create" | "/topic/delete" | "/topic/empty" | "/topic/pause"
        | "/topic/unpause" | "/channel/create" | "/channel/delete" | "/channel/empty"
        | "/channel/pause" | "/channel/unpause" | "/debug/freememory" => post,
        "/debug/setblockrate" => put,
        p if p.starts_with("/config/") && p.len() > "/config/".len() && !p[8..].contains('/') => {
            get || put
        }
        _ => return HttpError::NotFound.reply(),
    };
    if !allowed {
        return HttpError::MethodNotAllowed.reply();
    }
    // nsqd's /pub reads and checks the body before it parses the query.
    let parsed = Query::parse(req.uri().query());
    if path == "/pub" {
        return publish(core, req, parsed).await;
    }
    let query = match parsed {
        Ok(q) => q,
        Err(e) => return e.reply(),
    };
    match path {
        "/ping" => ping(core),
        "/info" => info(core),
        "/stats" => stats(core, &query).await,
        "/metrics" => metrics(core).await,
        "/mpub" => mpublish(core, req, &query).await,
        "/topic/create" => match topic_arg(&query, HttpError::InvalidTopic) {
            Ok(t) => admin(core, AdminOp::CreateTopic(t)).await,
            Err(e) => e.reply(),
        },
        "/topic/delete" => match query.get("topic") {
            None => HttpError::MissingArgTopic.reply(),
            Some(t) => admin(core, AdminOp::DeleteTopic(t.to_string())).await,
        },
        "/topic/empty" => match topic_arg(&query, HttpError::InvalidTopic) {
            Ok(t) => admin(core, AdminOp::EmptyTopic(t)).await,
            Err(e) => e.reply(),
        },
        "/topic/pause" | "/topic/unpause" => match query.get("topic") {
            None => HttpError::MissingArgTopic.reply(),
            Some(t) => {
                let op = AdminOp::PauseTopic(t.to_string(), path == "/topic/pause");
                admin(core, op).await
            }
        },
        "/channel/create" | "/channel/delete" | "/channel/empty" | "/channel/pause"
        | "/channel/unpause" => {
            let (t, c) = match topic_channel_args(&query) {
                Ok(tc) => tc,
                Err(e) => return e.reply(),
            };
            let op = match path {
                "/channel/create" => AdminOp::CreateChannel(t, c),
                "/channel/delete" => AdminOp::DeleteChannel(t, c),
                "/channel/empty" => AdminOp::EmptyChannel(t, c),
                _ => AdminOp::PauseChannel(t, c, path == "/channel/pause"),
            };
            admin(core, op).await
        }
        "/debug/setblockrate" => match query.get("rate").map(str::parse::<i64>) {
            Some(Ok(_)) => reply::plain(200, ""),
            _ => reply::plain(400, "invalid block rate"),
        },
        "/debug/freememory" => reply::plain(200, ""),
        p if p.starts_with("/debug/pprof") => reply::plain(
            200,
            "ringsq is a Rust process: profile it with `perf record -g -p <pid>` (see perf/README.md)\n",
        ),
        p => config(core, req, &p["/config/".len()..], put).await,
    }
}

/// The `topic` argument; `invalid` is the route's error for a bad name.
fn topic_arg(query: &Query, invalid: HttpError) -> Result<String, HttpError> {
    let t = query.get("topic").ok_or(HttpError::MissingArgTopic)?;
    if !is_valid_name(t.as_bytes()) {
        return Err(invalid);
    }
    Ok(t.to_string())
}

/// nsqd's `GetTopicChannelArgs` (H18, H19).
fn topic_channel_args(query: &Query) -> Result<(String, String), HttpError> {
    let t = topic_arg(query, HttpError::InvalidArgTopic)?;
    let c = query.get("channel").ok_or(HttpError::MissingArgChannel)?;
    if !is_valid_name(c.as_bytes()) {
        return Err(HttpError::InvalidArgChannel);
    }
    Ok((t, c.to_string()))
}

async fn admin(core: &Rc<Core>, op: AdminOp) -> Reply {
    // H17, H19: pause and unpause are in nsqd.dat before the answer.
    let persist = matches!(op, AdminOp::PauseTopic(..) | AdminOp::PauseChannel(..));
    match core.broker.admin(op).await {
        Ok(()) => {
            if persist {
                if let Err(e) = core.broker.persist_metadata().await {
                    tracing::error!(error = %e, "failed to persist metadata");
                }
            }
            reply::ok_empty()
        }
        Err(e) => HttpError::from(e).reply(),
    }
}

/// H1: "OK", or 500 "NOK - <error>" while the disk is failing.
fn ping(core: &Rc<Core>) -> Reply {
    match core.shared.health.error() {
        None => reply::plain(200, "OK"),
        Some(err) => reply::plain(500, format!("NOK - {err}")),
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Serialize)]
struct Info {
    version: &'static str,
    broadcast_address: String,
    hostname: String,
    http_port: i64,
    tcp_port: i64,
    start_time: i64,
    max_heartbeat_interval: i64,
    max_output_buffer_size: i64,
    max_output_buffer_timeout: i64,
    max_deflate_level: i64,
}

fn info(core: &Rc<Core>) -> Reply {
    let o = core.opts();
    reply::ok_json(&Info {
        version: NSQD_COMPAT_VERSION,
        broadcast_address: o.effective_broadcast_address(),
        hostname: crate::config::hostname(),
        http_port: core.shared.http_port.map(i64::from).unwrap_or(-1),
        tcp_port: core.shared.tcp_port.map(i64::from).unwrap_or(-1),
        start_time: unix_secs(core.shared.start_time),
        max_heartbeat_interval: o.max_heartbeat_interval.as_nanos() as i64,
        max_output_buffer_size: o.max_output_buffer_size,
        max_output_buffer_timeout: o.max_output_buffer_timeout.as_nanos() as i64,
        max_deflate_level: o.max_deflate_level,
    })
}

/// H6: POST /pub?topic=T[&defer=ms], checked in nsqd's order: body size,
/// empty body, query, topic (created from here on, as nsqd's GetTopic
/// does), defer.
async fn publish(
    core: &Rc<Core>,
    req: Request<Incoming>,
    query: Result<Query, HttpError>,
) -> Reply {
    let max = core.opts().max_msg_size.max(0) as u64;
    if content_length(&req).is_some_and(|n| n > max) {
        return HttpError::MsgTooBig.reply();
    }
    let body = match read_body(req.into_body(), max as usize).await {
        Ok(Some(b)) => b,
        Ok(None) => return HttpError::MsgTooBig.reply(),
        Err(e) => return e.reply(),
    };
    if body.is_empty() {
        return HttpError::MsgEmpty.reply();
    }
    let query = match query {
        Ok(q) => q,
        Err(e) => return e.reply(),
    };
    let max_ms = core.opts().max_req_timeout.as_millis() as i64;
    let (topic, body, defer) = match pub_args(&query, body, max_ms) {
        Ok(args) => args,
        // The topic's name was valid: nsqd had created it by then.
        Err(e @ HttpError::InvalidDefer) => {
            let topic = query.get("topic").unwrap_or_default().to_string();
            return topic_then(core, topic, e).await;
        }
        Err(e) => return e.reply(),
    };
    match core
        .broker
        .publish_wait(Bytes::from(topic), vec![body], defer)
        .await
    {
        Ok(()) => reply::ok_text("OK"),
        Err(e) => publish_failed(&e).reply(),
    }
}

/// H7: POST /mpub?topic=T[&binary=true]
async fn mpublish(core: &Rc<Core>, req: Request<Incoming>, query: &Query) -> Reply {
    let limits = MpubLimits {
        max_msg_size: core.opts().max_msg_size,
        max_body_size: core.opts().max_body_size,
    };
    let max_body = limits.max_body_size.max(0) as u64;
    if content_length(&req).is_some_and(|n| n > max_body) {
        return HttpError::BodyTooBig.reply();
    }
    let topic = match topic_arg(query, HttpError::InvalidTopic) {
        Ok(t) => t,
        Err(e) => return e.reply(),
    };
    let binary = mpub_binary(query);
    let body = match read_body(req.into_body(), max_body as usize).await {
        Ok(Some(b)) => b,
        Ok(None) => return topic_then(core, topic, HttpError::BodyTooBig).await,
        Err(e) => return e.reply(),
    };
    let bodies = match mpub_bodies(&body, binary, &limits) {
        Ok(b) => b,
        Err(e) => return topic_then(core, topic, e).await,
    };
    match core
        .broker
        .publish_wait(Bytes::from(topic), bodies, None)
        .await
    {
        Ok(()) => reply::ok_text("OK"),
        Err(e) => publish_failed(&e).reply(),
    }
}

/// nsqd creates a publish's topic as soon as its name is read, so the
/// checks after that fail with the topic in place (H6, H7).
async fn topic_then(core: &Rc<Core>, topic: String, e: HttpError) -> Reply {
    if let Err(err) = core.broker.admin(AdminOp::CreateTopic(topic)).await {
        tracing::warn!(error = %err, "topic of a failed publish not created");
    }
    e.reply()
}

/// H6: the checks after the body is read, in nsqd's order: the body, the
/// topic, the defer.
fn pub_args(
    query: &Query,
    body: Bytes,
    max_req_timeout_ms: i64,
) -> Result<(String, Bytes, Option<Duration>), HttpError> {
    if body.is_empty() {
        return Err(HttpError::MsgEmpty);
    }
    let topic = topic_arg(query, HttpError::InvalidTopic)?;
    let defer = match query.get("defer") {
        None => None,
        Some(d) => match d.parse::<i64>() {
            Ok(ms) if (0..=max_req_timeout_ms).contains(&ms) => {
                Some(Duration::from_millis(ms as u64))
            }
            _ => return Err(HttpError::InvalidDefer),
        },
    };
    Ok((topic, body, defer))
}

/// H7: `binary`; a value other than true/false/1/0 still means binary.
fn mpub_binary(query: &Query) -> bool {
    match query.get("binary") {
        None => false,
        Some(v) => bool_param(Some(v)).unwrap_or_else(|| {
            tracing::warn!(value = v, "deprecated value used for /mpub binary param");
            true
        }),
    }
}

/// H7: the messages of a `/mpub` body.
fn mpub_bodies(body: &Bytes, binary: bool, limits: &MpubLimits) -> Result<Vec<Bytes>, HttpError> {
    if binary {
        mpub::split_bytes(body, limits).map_err(HttpError::from)
    } else {
        mpub::split_lines(body, limits.max_msg_size).map_err(HttpError::from)
    }
}

/// What `/pub` (`mpub == false`) or `/mpub` would publish for this query
/// (as hyper hands it) and body, through the routes' own checks in their
/// order, without a broker: the entry of the HTTP fuzz target.
#[doc(hidden)]
pub fn publish_args(
    mpub: bool,
    raw_query: Option<&str>,
    body: Bytes,
    limits: &MpubLimits,
    max_req_timeout_ms: i64,
) -> Result<(String, Vec<Bytes>, Option<Duration>), HttpError> {
    if !mpub && body.is_empty() {
        return Err(HttpError::MsgEmpty);
    }
    let query = Query::parse(raw_query)?;
    if !mpub {
        let (topic, body, defer) = pub_args(&query, body, max_req_timeout_ms)?;
        return Ok((topic, vec![body], defer));
    }
    let topic = topic_arg(&query, HttpError::InvalidTopic)?;
    let binary = mpub_binary(&query);
    Ok((topic, mpub_bodies(&body, binary, limits)?, None))
}

#[derive(Serialize)]
struct MemoryStats {
    heap_objects: u64,
    heap_idle_bytes: u64,
    heap_in_use_bytes: u64,
    heap_released_bytes: u64,
    gc_pause_usec_100: u64,
    gc_pause_usec_99: u64,
    gc_pause_usec_95: u64,
    next_gc_bytes: u64,
    gc_total_runs: u32,
}

/// H12: a Rust process has no GC; the heap figures are glibc malloc's
/// (the resident set size is on /metrics).
fn memory_stats() -> MemoryStats {
    let heap = crate::metrics::heap();
    MemoryStats {
        heap_objects: 0,
        heap_idle_bytes: heap.idle_bytes,
        heap_in_use_bytes: heap.in_use_bytes,
        heap_released_bytes: 0,
        gc_pause_usec_100: 0,
        gc_pause_usec_99: 0,
        gc_pause_usec_95: 0,
        next_gc_bytes: 0,
        gc_total_runs: 0,
    }
}

#[derive(Serialize)]
struct StatsDoc {
    version: &'static str,
    health: &'static str,
    start_time: i64,
    topics: Option<Vec<TopicStats>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<MemoryStats>,
    producers: Option<Vec<ClientStats>>,
}

/// Beyond nsqd (its issue #732): Prometheus text.
async fn metrics(core: &Rc<Core>) -> Reply {
    let all = core
        .broker
        .stats(StatsFilter {
            include_clients: false,
            ..StatsFilter::default()
        })
        .await;
    let body = crate::metrics::prometheus::render(
        &all,
        crate::metrics::resident_bytes(),
        core.shared.health.failing_queues(),
    );
    hyper::Response::builder()
        .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| HttpError::Internal.reply())
}

/// H8-H13: GET /stats
async fn stats(core: &Rc<Core>, query: &Query) -> Reply {
    let json = query.get("format") == Some("json");
    let topic = query
        .get("topic")
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let channel = query
        .get("channel")
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let include_clients = bool_param(query.get("include_clients")).unwrap_or(true);
    let include_mem = bool_param(query.get("include_mem")).unwrap_or(true);
    let topic_filter = topic.clone();
    let channel_filtered = channel.is_some();
    let all = core
        .broker
        .stats(StatsFilter {
            topic,
            channel,
            include_clients,
        })
        .await;
    // X3: a topic filter that matches no topic gives null topics and
    // producers; a channel filter that matches nothing gives [].
    let miss = match &topic_filter {
        None => false,
        Some(_) if !all.topics.is_empty() => false,
        Some(t) if channel_filtered => core
            .broker
            .stats(StatsFilter {
                topic: Some(t.clone()),
                channel: None,
                include_clients: false,
            })
            .await
            .topics
            .is_empty(),
        Some(_) => true,
    };
    let doc = StatsDoc {
        version: NSQD_COMPAT_VERSION,
        health: "OK",
        start_time: unix_secs(core.shared.start_time),
        topics: (!miss).then_some(all.topics),
        memory: include_mem.then(memory_stats),
        producers: (!miss && include_clients && !all.producers.is_empty()).then_some(all.producers),
    };
    if json {
        reply::ok_json(&doc)
    } else {
        reply::ok_text(stats_text(&doc, core.shared.start_time))
    }
}

fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn client_line(c: &ClientStats) -> String {
    let connected = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64 - c.connect_ts)
        .unwrap_or(0)
        .max(0);
    let port = c.remote_address.rsplit(':').next().unwrap_or("");
    let id = format!("{}:{} {}", c.hostname, port, c.user_agent);
    let since = go_duration(Duration::from_secs(connected as u64));
    if !c.pub_counts.is_empty() {
        let total: u64 = c.pub_counts.iter().map(|p| p.count).sum();
        let topics: Vec<String> = c
            .pub_counts
            .iter()
            .map(|p| format!("{}={}", p.topic, p.count))
            .collect();
        return format!(
            "[{} {:<21}] msgs: {:<8} topics: {} connected: {}",
            c.version,
            id,
            total,
            topics.join(","),
            since
        );
    }
    format!(
        "[{} {:<21}] state: {} inflt: {:<4} rdy: {:<4} fin: {:<8} re-q: {:<8} msgs: {:<8} connected: {}",
        c.version,
        id,
        c.state,
        c.in_flight_count,
        c.ready_count,
        c.finish_count,
        c.requeue_count,
        c.message_count,
        since
    )
}

/// H13: the text format.
fn stats_text(doc: &StatsDoc, start: SystemTime) -> String {
    let mut w = String::new();
    let uptime = SystemTime::now().duration_since(start).unwrap_or_default();
    let _ = writeln!(
        w,
        "nsqd v{} (built w/ringsq {})",
        doc.version,
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(w, "start_time {}", rfc3339(start));
    let _ = writeln!(w, "uptime {}", go_duration(uptime));
    let _ = writeln!(w, "\nHealth: {}", doc.health);
    if let Some(m) = &doc.memory {
        let _ = writeln!(w, "\nMemory:");
        for (k, v) in [
            ("heap_objects", m.heap_objects),
            ("heap_idle_bytes", m.heap_idle_bytes),
            ("heap_in_use_bytes", m.heap_in_use_bytes),
            ("heap_released_bytes", m.heap_released_bytes),
            ("gc_pause_usec_100", m.gc_pause_usec_100),
            ("gc_pause_usec_99", m.gc_pause_usec_99),
            ("gc_pause_usec_95", m.gc_pause_usec_95),
            ("next_gc_bytes", m.next_gc_bytes),
            ("gc_total_runs", u64::from(m.gc_total_runs)),
        ] {
            let _ = writeln!(w, "   {k:<25}\t{v}");
        }
    }
    let topics: &[TopicStats] = doc.topics.as_deref().unwrap_or(&[]);
    if topics.is_empty() {
        let _ = writeln!(w, "\nTopics: None");
    } else {
        let _ = write!(w, "\nTopics:");
    }
    for t in topics {
        let prefix = if t.paused { "*P " } else { "   " };
        let _ = writeln!(
            w,
            "\n{prefix}[{:<15}] depth: {:<5} be-depth: {:<5} msgs: {:<8} e2e%: ",
            t.topic_name, t.depth, t.backend_depth, t.message_count
        );
        for c in &t.channels {
            let prefix = if c.paused { "   *P " } else { "      " };
            let _ = writeln!(
                w,
                "{prefix}[{:<25}] depth: {:<5} be-depth: {:<5} inflt: {:<4} def: {:<4} re-q: {:<5} timeout: {:<5} msgs: {:<8} e2e%: ",
                c.channel_name,
                c.depth,
                c.backend_depth,
                c.in_flight_count,
                c.deferred_count,
                c.requeue_count,
                c.timeout_count,
                c.message_count
            );
            for client in c.clients.as_deref().unwrap_or(&[]) {
                let _ = writeln!(w, "        {}", client_line(client));
            }
        }
    }
    match doc.producers.as_deref() {
        None | Some([]) => {
            let _ = writeln!(w, "\nProducers: None");
        }
        Some(producers) => {
            let _ = writeln!(w, "\nProducers:");
            for p in producers {
                let _ = writeln!(w, "   {}", client_line(p));
            }
        }
    }
    w
}

/// RFC 3339 in UTC, as Go's time.RFC3339 prints it.
fn rfc3339(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// H20, H21: GET/PUT /config/:opt
async fn config(core: &Rc<Core>, req: Request<Incoming>, opt: &str, put: bool) -> Reply {
    if put {
        let max = core.opts().max_msg_size.max(0) as usize;
        let body = match read_body(req.into_body(), max).await {
            Ok(Some(b)) if !b.is_empty() => b,
            Ok(_) => return HttpError::ValueSize.reply(),
            Err(e) => return e.reply(),
        };
        match opt {
            "nsqlookupd_tcp_addresses" => match serde_json::from_slice::<Vec<String>>(&body) {
                Ok(addrs) => {
                    *core
                        .shared
                        .lookupd_addresses
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = addrs;
                    core.shared.services.lookupd_peers_changed();
                }
                Err(_) => return HttpError::InvalidValue.reply(),
            },
            "log_level" => {
                let level = String::from_utf8_lossy(&body).to_ascii_lowercase();
                if !crate::logging::set_level(&level) {
                    return HttpError::InvalidValue.reply();
                }
                *core
                    .shared
                    .log_level
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = level;
            }
            _ => return HttpError::InvalidOption.reply(),
        }
    }
    match config_value(core, opt) {
        Some(ConfigValue::Text(s)) => reply::ok_text(s),
        Some(ConfigValue::Json(v)) => reply::ok_json(&v),
        None => HttpError::InvalidOption.reply(),
    }
}

enum ConfigValue {
    Text(String),
    Json(serde_json::Value),
}

/// An option by its config-file name, as nsqd's `getOptByCfgName` returns
/// it: strings raw, everything else JSON (durations in nanoseconds).
fn config_value(core: &Rc<Core>, name: &str) -> Option<ConfigValue> {
    use serde_json::json;
    let o = core.opts();
    let ns = |d: Duration| json!(d.as_nanos() as u64);
    let text = |s: &str| Some(ConfigValue::Text(s.to_string()));
    let v = match name {
        // nsqd's log level is a number (lg.LogLevel: debug 1 ... fatal 5).
        "log_level" => {
            let level = core
                .shared
                .log_level
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            json!(crate::logging::level_number(&level).unwrap_or(2))
        }
        "log_prefix" => return text(&o.log_prefix),
        "id" => json!(o.effective_node_id()),
        "https_address" => return text(&o.https_address),
        "http_address" => return text(&o.http_address),
        "tcp_address" => return text(&o.tcp_address),
        "auth_http_addresses" => json!(o.auth_http_address),
        "broadcast_address" => return Some(ConfigValue::Text(o.effective_broadcast_address())),
        "broadcast_tcp_port" => json!(o.broadcast_tcp_port),
        "broadcast_http_port" => json!(o.broadcast_http_port),
        "nsqlookupd_tcp_addresses" => {
            json!(*core
                .shared
                .lookupd_addresses
                .lock()
                .unwrap_or_else(|e| e.into_inner()))
        }
        "http_client_connect_timeout" => ns(o.http_client_connect_timeout),
        "http_client_request_timeout" => ns(o.http_client_request_timeout),
        "data_path" => return text(&o.data_path),
        "mem_queue_size" => json!(o.mem_queue_size),
        "max_bytes_per_file" => json!(o.max_bytes_per_file),
        "sync_every" => json!(o.sync_every),
        "sync_timeout" => ns(o.sync_timeout),
        "queue_scan_worker_pool_max" => json!(o.queue_scan_worker_pool_max),
        "queue_scan_selection_count" => json!(o.queue_scan_selection_count),
        "msg_timeout" => ns(o.msg_timeout),
        "max_msg_timeout" => ns(o.max_msg_timeout),
        "max_msg_size" => json!(o.max_msg_size),
        "max_req_timeout" => ns(o.max_req_timeout),
        "max_body_size" => json!(o.max_body_size),
        "max_heartbeat_interval" => ns(o.max_heartbeat_interval),
        "max_rdy_count" => json!(o.max_rdy_count),
        "max_output_buffer_size" => json!(o.max_output_buffer_size),
        "max_output_buffer_timeout" => ns(o.max_output_buffer_timeout),
        "min_output_buffer_timeout" => ns(o.min_output_buffer_timeout),
        "output_buffer_timeout" => ns(o.output_buffer_timeout),
        "max_channel_consumers" => json!(o.max_channel_consumers),
        "statsd_address" => return text(&o.statsd_address),
        "statsd_prefix" => return text(&o.statsd_prefix),
        "statsd_interval" => ns(o.statsd_interval),
        "statsd_mem_stats" => json!(o.statsd_mem_stats),
        "statsd_udp_packet_size" => json!(o.statsd_udp_packet_size),
        "statsd_exclude_ephemeral" => json!(o.statsd_exclude_ephemeral),
        "e2e_processing_latency_window_time" => ns(o.e2e_processing_latency_window_time),
        "e2e_processing_latency_percentiles" => json!(o.e2e_processing_latency_percentile),
        "tls_cert" => return text(&o.tls_cert),
        "tls_key" => return text(&o.tls_key),
        "tls_client_auth_policy" => return text(&o.tls_client_auth_policy),
        "tls_root_ca_file" => return text(&o.tls_root_ca_file),
        "tls_required" => json!(match o.tls_required.as_str() {
            "true" => 1,
            "tcp-https" => 2,
            _ => 0,
        }),
        "tls_min_version" => json!(0x0301),
        "deflate" => json!(o.deflate),
        "max_deflate_level" => json!(o.max_deflate_level),
        "snappy" => json!(o.snappy),
        _ => return None,
    };
    Some(ConfigValue::Json(v))
}
