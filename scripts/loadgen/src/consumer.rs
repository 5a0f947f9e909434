//! Consumer connections: SUB + RDY, FIN every message, end-to-end latency from the body header.

use std::io::{self, BufWriter, Write};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::common::{new_hist, parse_header, Shared, Verifier};
use crate::proto::{self, RecvBuf, FRAME_ERROR, FRAME_MESSAGE, FRAME_RESPONSE};
use crate::tls::{self, Stream};

pub struct SubCfg {
    pub id: usize,
    pub topic: String,
    pub channel: String,
    pub chan_idx: usize,
    pub rdy: u32,
    pub tcp_addr: String,
    pub identify: Vec<u8>,
    /// Messages with a send timestamp before this are leftovers of an earlier run.
    pub run_start_ns: u64,
    /// `--tls-ca`: upgrade to TLS after IDENTIFY (tls_v1 is in `identify`)
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

pub struct SubResult {
    pub e2e: Histogram<u64>,
    pub consumed: u64,
}

pub fn run(cfg: SubCfg, sh: Arc<Shared>, ver: Option<Arc<Verifier>>) -> SubResult {
    let mut res = SubResult { e2e: new_hist(), consumed: 0 };
    if let Err(e) = consume(&cfg, &sh, ver.as_deref(), &mut res) {
        if !sh.abort.load(Relaxed) {
            sh.disconnects.fetch_add(1, Relaxed);
            sh.record_error(format!("consumer {} ({}/{}): {e}", cfg.id, cfg.topic, cfg.channel));
        }
    }
    res
}

fn consume(cfg: &SubCfg, sh: &Shared, ver: Option<&Verifier>, res: &mut SubResult) -> io::Result<()> {
    let t = Duration::from_secs(10);
    let mut rb = RecvBuf::new(1 << 20);
    let setup = (|| {
        let mut raw = proto::tcp_connect(&cfg.tcp_addr, t)?;
        let answer = proto::handshake(&mut raw, &mut rb, &cfg.identify, t)?;
        // The socket's read timeout is set on `raw`; `s` may be TLS over it.
        let mut s = match &cfg.tls {
            None => Stream::plain(raw.try_clone()?),
            Some(config) => tls::upgrade_answered(raw.try_clone()?, &cfg.tcp_addr, &answer, config.clone(), &mut rb)?,
        };
        proto::subscribe(&mut s, &mut rb, &cfg.topic, &cfg.channel, t)?;
        Ok::<_, io::Error>((raw, s))
    })();
    let (raw, mut s) = match setup {
        Ok(s) => s,
        Err(e) => {
            sh.sub_failed.fetch_add(1, SeqCst);
            return Err(e);
        }
    };
    sh.subscribed.fetch_add(1, SeqCst);
    let mut w = BufWriter::with_capacity(256 * 1024, s.clone());
    let mut rdy_sent = false;
    // Poll the RDY gate often so the drain timing is not skewed by the read timeout.
    raw.set_read_timeout(Some(Duration::from_millis(2)))?;
    let mut fin = *b"FIN 0123456789abcdef\n";
    // local counters, published to `sh` before each blocking read
    let mut n_cons = 0u64;
    let mut n_bytes = 0u64;
    let mut n_stale = 0u64;
    let mut n_dup = 0u64;
    let mut n_redel = 0u64;
    let mut n_foreign = 0u64;
    let mut now = proto::now_ns();
    let mut first = true;

    loop {
        while let Some((ty, data)) = rb.next_frame()? {
            match ty {
                FRAME_MESSAGE => {
                    if data.len() < 26 {
                        return Err(proto::io_err(format!("short message frame ({} bytes)", data.len())));
                    }
                    let attempts = u16::from_be_bytes([data[8], data[9]]);
                    fin[4..20].copy_from_slice(&data[10..26]);
                    w.write_all(&fin)?;
                    let body = &data[26..];
                    if attempts > 1 {
                        n_redel += 1;
                    }
                    match parse_header(body) {
                        Some((ts, ids)) if ts >= cfg.run_start_ns => {
                            let _ = res.e2e.record(now.saturating_sub(ts).max(1));
                            n_cons += 1;
                            n_bytes += body.len() as u64;
                            if let (Some(v), Some((p, q))) = (ver, ids) {
                                match v.mark(cfg.chan_idx, p, q) {
                                    Some(true) => n_dup += 1,
                                    Some(false) => {}
                                    None => n_foreign += 1,
                                }
                            }
                        }
                        Some(_) => n_stale += 1,
                        None => {
                            n_foreign += 1;
                            n_cons += 1;
                            n_bytes += body.len() as u64;
                        }
                    }
                }
                FRAME_RESPONSE => {
                    if data == b"_heartbeat_" {
                        w.write_all(b"NOP\n")?;
                    }
                }
                FRAME_ERROR => {
                    sh.error_frames.fetch_add(1, Relaxed);
                    let msg = String::from_utf8_lossy(data).into_owned();
                    if msg.starts_with("E_FIN_FAILED")
                        || msg.starts_with("E_REQ_FAILED")
                        || msg.starts_with("E_TOUCH_FAILED")
                    {
                        sh.fin_failed.fetch_add(1, Relaxed);
                        sh.record_error(format!("consumer {}: {msg}", cfg.id));
                    } else {
                        return Err(proto::io_err(format!("error frame: {msg}")));
                    }
                }
                _ => return Err(proto::io_err(format!("unknown frame type {ty}"))),
            }
        }
        // Buffer drained: send FINs, publish counters, then block.
        w.flush()?;
        if n_cons + n_stale + n_foreign > 0 {
            let t = proto::now_ns();
            if first {
                first = false;
                let _ = sh.first_consume_ns.compare_exchange(0, t, SeqCst, SeqCst);
            }
            sh.last_consume_ns.fetch_max(t, Relaxed);
            res.consumed += n_cons;
            sh.consumed.fetch_add(n_cons, Relaxed);
            sh.cons_bytes.fetch_add(n_bytes, Relaxed);
            if n_stale > 0 {
                sh.stale.fetch_add(n_stale, Relaxed);
            }
            if n_dup > 0 {
                sh.duplicates.fetch_add(n_dup, Relaxed);
            }
            if n_redel > 0 {
                sh.redelivered.fetch_add(n_redel, Relaxed);
            }
            if n_foreign > 0 {
                sh.foreign.fetch_add(n_foreign, Relaxed);
            }
            n_cons = 0;
            n_bytes = 0;
            n_stale = 0;
            n_dup = 0;
            n_redel = 0;
            n_foreign = 0;
        }
        if sh.stop_sub.load(Relaxed) || sh.abort.load(Relaxed) {
            return Ok(());
        }
        if !rdy_sent && sh.go_rdy.load(Relaxed) {
            w.write_all(format!("RDY {}\n", cfg.rdy).as_bytes())?;
            w.flush()?;
            rdy_sent = true;
            raw.set_read_timeout(Some(proto::READ_POLL))?;
        }
        rb.fill(&mut s)?;
        now = proto::now_ns();
    }
}
