//! Publisher connections: PUB / MPUB / DPUB over TCP, /pub and /mpub over HTTP/1.1 keep-alive.

use std::collections::VecDeque;
use std::io::{self, BufWriter, Write};
use crate::tls::{self, Stream};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::common::{new_hist, write_header, Shared};
use crate::proto::{self, RecvBuf, FRAME_ERROR, FRAME_RESPONSE};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Pub,
    Mpub,
    Dpub,
    HttpPub,
    HttpMpub,
}

impl Mode {
    pub fn is_http(self) -> bool {
        matches!(self, Mode::HttpPub | Mode::HttpMpub)
    }
    pub fn is_batch(self) -> bool {
        matches!(self, Mode::Mpub | Mode::HttpMpub)
    }
}

/// Pre-encoded commands: one prefix per topic + one payload buffer, patched in place with
/// (timestamp, publisher id, sequence) before each send. No allocation per message.
struct Encoder {
    n: usize,
    text: bool,
    prefixes: Vec<Vec<u8>>,
    payload: Vec<u8>,
    offsets: Vec<usize>,
    size: usize,
}

impl Encoder {
    fn new(mode: Mode, topics: &[String], n: usize, size: usize, dpub_ms: u64, host: &str) -> Self {
        let text = mode.is_http();
        let mut payload = Vec::new();
        let mut offsets = Vec::with_capacity(n);
        let body = vec![b'm'; size];
        let prefixes: Vec<Vec<u8>>;
        match mode {
            Mode::Pub | Mode::Dpub => {
                prefixes = topics
                    .iter()
                    .map(|t| {
                        let mut p = if mode == Mode::Pub {
                            format!("PUB {t}\n").into_bytes()
                        } else {
                            format!("DPUB {t} {dpub_ms}\n").into_bytes()
                        };
                        p.extend_from_slice(&(size as u32).to_be_bytes());
                        p
                    })
                    .collect();
                offsets.push(0);
                payload.extend_from_slice(&body);
            }
            Mode::Mpub => {
                prefixes = topics.iter().map(|t| format!("MPUB {t}\n").into_bytes()).collect();
                let total = 4 + n * (4 + size);
                payload.reserve(4 + total);
                payload.extend_from_slice(&(total as u32).to_be_bytes());
                payload.extend_from_slice(&(n as u32).to_be_bytes());
                for _ in 0..n {
                    payload.extend_from_slice(&(size as u32).to_be_bytes());
                    offsets.push(payload.len());
                    payload.extend_from_slice(&body);
                }
            }
            Mode::HttpPub => {
                prefixes = topics
                    .iter()
                    .map(|t| {
                        format!("POST /pub?topic={t} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n")
                            .into_bytes()
                    })
                    .collect();
                offsets.push(0);
                payload.extend_from_slice(&body);
            }
            Mode::HttpMpub => {
                let len = n * size + (n - 1);
                prefixes = topics
                    .iter()
                    .map(|t| {
                        format!("POST /mpub?topic={t} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\n\r\n")
                            .into_bytes()
                    })
                    .collect();
                for i in 0..n {
                    if i > 0 {
                        payload.push(b'\n');
                    }
                    offsets.push(payload.len());
                    payload.extend_from_slice(&body);
                }
            }
        }
        Encoder { n, text, prefixes, payload, offsets, size }
    }

    #[inline]
    fn patch(&mut self, ts: u64, pubid: u32, seq0: u32) {
        for (i, &off) in self.offsets.iter().enumerate() {
            write_header(&mut self.payload[off..off + self.size], self.text, ts, pubid, seq0.wrapping_add(i as u32));
        }
    }
}

pub struct PubCfg {
    pub id: u32,
    pub mode: Mode,
    pub topics: Vec<String>,
    pub start_topic: usize,
    pub batch: usize,
    pub size: usize,
    pub inflight: usize,
    /// messages per second for this connection (open loop), None = flat out.
    pub rate: Option<f64>,
    pub quota: Option<u64>,
    pub dpub_ms: u64,
    pub tcp_addr: String,
    pub http_addr: String,
    pub identify: Vec<u8>,
    /// give up when no acknowledgement arrives for this long
    pub ack_timeout: Duration,
    /// `--tls-ca`: upgrade to TLS after IDENTIFY (tls_v1 is in `identify`)
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

pub struct PubResult {
    pub id: u32,
    pub acked: u64,
    pub rtt: Histogram<u64>,
    pub start: Option<Instant>,
    pub end: Option<Instant>,
}

struct Conn {
    s: Stream,
    w: BufWriter<Stream>,
    rb: RecvBuf,
}

fn connect(cfg: &PubCfg) -> io::Result<Conn> {
    let t = Duration::from_secs(10);
    if cfg.mode.is_http() {
        let s = Stream::plain(proto::tcp_connect(&cfg.http_addr, t)?);
        let w = BufWriter::with_capacity(256 * 1024, s.clone());
        return Ok(Conn { s, w, rb: RecvBuf::new(64 * 1024) });
    }
    let mut s = proto::tcp_connect(&cfg.tcp_addr, t)?;
    let mut rb = RecvBuf::new(64 * 1024);
    let answer = proto::handshake(&mut s, &mut rb, &cfg.identify, t)?;
    let s = match &cfg.tls {
        None => Stream::plain(s),
        Some(config) => tls::upgrade_answered(s, &cfg.tcp_addr, &answer, config.clone(), &mut rb)?,
    };
    let w = BufWriter::with_capacity(256 * 1024, s.clone());
    Ok(Conn { s, w, rb })
}

pub fn run(cfg: PubCfg, sh: Arc<Shared>) -> PubResult {
    let mut res = PubResult { id: cfg.id, acked: 0, rtt: new_hist(), start: None, end: None };
    let mut c = match connect(&cfg) {
        Ok(c) => c,
        Err(e) => {
            sh.record_error(format!("publisher {}: connect: {e}", cfg.id));
            sh.pub_failed.fetch_add(1, SeqCst);
            return res;
        }
    };
    sh.pub_ready.fetch_add(1, SeqCst);
    while !sh.go_pub.load(SeqCst) {
        if sh.abort.load(Relaxed) || sh.stop_pub.load(Relaxed) {
            return res;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sh.pubs_running.fetch_add(1, SeqCst);
    if let Err(e) = pump(&cfg, &sh, &mut c, &mut res) {
        sh.disconnects.fetch_add(1, Relaxed);
        sh.record_error(format!("publisher {}: {e}", cfg.id));
    }
    res.end = Some(Instant::now());
    sh.pubs_running.fetch_sub(1, SeqCst);
    res
}

fn pump(cfg: &PubCfg, sh: &Shared, c: &mut Conn, res: &mut PubResult) -> io::Result<()> {
    let host = cfg.http_addr.clone();
    let n_full = if cfg.mode.is_batch() { cfg.batch.max(1) } else { 1 };
    let mut enc = Encoder::new(cfg.mode, &cfg.topics, n_full, cfg.size, cfg.dpub_ms, &host);
    let ntopics = cfg.topics.len();
    let mut topic = cfg.start_topic % ntopics;
    let inflight = cfg.inflight.max(1);
    // (send ts, number of messages) per outstanding command
    let mut outstanding: VecDeque<(u64, u32)> = VecDeque::with_capacity(inflight + 1);
    let mut seq: u32 = 0;
    let mut sent: u64 = 0;
    let mut done_sending = false;
    let start = Instant::now();
    res.start = Some(start);
    let mut due_s = 0.0f64; // open-loop schedule, seconds since start
    let mut last_progress = Instant::now();

    loop {
        // ---- send as much as the window allows
        while outstanding.len() < inflight && !done_sending {
            if sh.stop_pub.load(Relaxed) || sh.abort.load(Relaxed) {
                done_sending = true;
                break;
            }
            let n = match cfg.quota {
                Some(q) if sent >= q => {
                    done_sending = true;
                    break;
                }
                Some(q) => ((q - sent) as usize).min(n_full),
                None => n_full,
            };
            if let Some(rate) = cfg.rate {
                let now_s = start.elapsed().as_secs_f64();
                if due_s > now_s {
                    if !outstanding.is_empty() {
                        break; // go read acks meanwhile
                    }
                    c.w.flush()?;
                    let wait = (due_s - now_s).min(0.05);
                    std::thread::sleep(Duration::from_secs_f64(wait));
                    continue; // re-check stop flags
                }
                due_s += n as f64 / rate;
            }
            if n != enc.n {
                enc = Encoder::new(cfg.mode, &cfg.topics, n, cfg.size, cfg.dpub_ms, &host);
            }
            let ts = proto::now_ns();
            enc.patch(ts, cfg.id, seq);
            c.w.write_all(&enc.prefixes[topic])?;
            c.w.write_all(&enc.payload)?;
            outstanding.push_back((ts, n as u32));
            seq = seq.wrapping_add(n as u32);
            sent += n as u64;
            topic += 1;
            if topic == ntopics {
                topic = 0;
            }
        }
        c.w.flush()?;
        if outstanding.is_empty() {
            if done_sending {
                return Ok(());
            }
            continue;
        }
        // ---- read acks: at least one, then whatever else is already buffered
        let mut got = 0usize;
        loop {
            if cfg.mode.is_http() {
                while let Some(r) = proto::next_http_response(&mut c.rb)? {
                    let (ts, n) = outstanding.pop_front().ok_or_else(|| proto::io_err("unexpected HTTP response"))?;
                    if r.status != 200 {
                        sh.http_errors.fetch_add(1, Relaxed);
                        let b = String::from_utf8_lossy(&r.body_head[..r.body_len.min(64)]).into_owned();
                        return Err(proto::io_err(format!("HTTP {} {}", r.status, b.trim())));
                    }
                    ack(sh, res, ts, n, cfg.size);
                    got += 1;
                    if r.close {
                        if !outstanding.is_empty() {
                            return Err(proto::io_err("server closed a pipelined HTTP connection"));
                        }
                        sh.http_reconnects.fetch_add(1, Relaxed);
                        *c = connect(cfg)?;
                        break;
                    }
                }
            } else {
                let mut nop = false;
                while let Some((ty, data)) = c.rb.next_frame()? {
                    match ty {
                        FRAME_RESPONSE if data == b"_heartbeat_" => nop = true,
                        FRAME_RESPONSE if data == b"OK" => {
                            let (ts, n) = outstanding.pop_front().ok_or_else(|| proto::io_err("unexpected OK"))?;
                            ack(sh, res, ts, n, cfg.size);
                            got += 1;
                        }
                        FRAME_ERROR => {
                            sh.error_frames.fetch_add(1, Relaxed);
                            return Err(proto::io_err(format!("error frame: {}", String::from_utf8_lossy(data))));
                        }
                        _ => {
                            return Err(proto::io_err(format!(
                                "unexpected frame type {ty}: {}",
                                String::from_utf8_lossy(&data[..data.len().min(64)])
                            )))
                        }
                    }
                }
                if nop {
                    c.w.write_all(b"NOP\n")?;
                    c.w.flush()?;
                }
            }
            if got > 0 {
                last_progress = Instant::now();
                break;
            }
            if outstanding.is_empty() {
                break;
            }
            if sh.abort.load(Relaxed) {
                return Ok(());
            }
            if last_progress.elapsed() > cfg.ack_timeout {
                return Err(proto::io_err(format!("no response for {:?}", cfg.ack_timeout)));
            }
            c.rb.fill(&mut c.s)?;
        }
    }
}

#[inline]
fn ack(sh: &Shared, res: &mut PubResult, ts: u64, n: u32, size: usize) {
    let rtt = proto::now_ns().saturating_sub(ts).max(1);
    let _ = res.rtt.record(rtt);
    res.acked += n as u64;
    sh.published.fetch_add(n as u64, Relaxed);
    sh.pub_bytes.fetch_add(n as u64 * size as u64, Relaxed);
}
