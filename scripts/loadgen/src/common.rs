//! State shared by all worker threads, message body layout, exactly-once verifier, /proc readers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use hdrhistogram::Histogram;

/// Counters updated by the workers, read by the progress loop.
#[derive(Default)]
pub struct Shared {
    /// Publishers: stop sending new commands (wait for outstanding acks).
    pub stop_pub: AtomicBool,
    /// Consumers: leave.
    pub stop_sub: AtomicBool,
    /// Consumers: send RDY (gated for the drain scenario).
    pub go_rdy: AtomicBool,
    /// Everyone: give up immediately.
    pub abort: AtomicBool,

    pub published: AtomicU64,
    pub pub_bytes: AtomicU64,
    pub consumed: AtomicU64,
    pub cons_bytes: AtomicU64,
    /// Messages older than this run (left over in the broker), not counted in `consumed`.
    pub stale: AtomicU64,
    pub duplicates: AtomicU64,
    /// Messages delivered with attempts > 1.
    pub redelivered: AtomicU64,
    /// Bodies that do not carry our header or an unknown publisher id.
    pub foreign: AtomicU64,

    pub error_frames: AtomicU64,
    pub fin_failed: AtomicU64,
    pub disconnects: AtomicU64,
    pub http_errors: AtomicU64,
    pub errors: Mutex<Vec<String>>,

    pub http_reconnects: AtomicU64,

    /// Publishers: connected and waiting / failed to connect.
    pub pub_ready: AtomicUsize,
    pub pub_failed: AtomicUsize,
    /// Publishers: start sending.
    pub go_pub: AtomicBool,
    pub subscribed: AtomicUsize,
    pub sub_failed: AtomicUsize,
    pub pubs_running: AtomicUsize,
    /// ns timestamp of the last message a consumer received.
    pub last_consume_ns: AtomicU64,
    /// ns timestamp of the first message a consumer received.
    pub first_consume_ns: AtomicU64,
}

impl Shared {
    pub fn record_error(&self, what: String) {
        let mut e = self.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(what);
        }
    }
}

pub fn new_hist() -> Histogram<u64> {
    // ns, 3 significant digits, auto-resizing (starts small).
    let mut h = Histogram::<u64>::new(3).unwrap();
    h.auto(true);
    h
}

// ---------------------------------------------------------------------------------------------
// Body header.
//
// TCP modes (binary): [8B BE send ts ns][4B BE publisher id][4B BE sequence][filler 'm'...]
// HTTP modes (text, because /mpub splits on '\n'):
//     '#' [16 hex ts][8 hex publisher id][8 hex sequence] [filler 'm'...]
// A binary timestamp never starts with '#' (0x23) before year 2290.

pub const BIN_HDR: usize = 16;
pub const TXT_HDR: usize = 33;

const HEX: &[u8; 16] = b"0123456789abcdef";

#[inline]
fn put_hex(dst: &mut [u8], v: u64, digits: usize) {
    for i in 0..digits {
        dst[digits - 1 - i] = HEX[((v >> (4 * i)) & 0xf) as usize];
    }
}

#[inline]
fn get_hex(src: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in src {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | d as u64;
    }
    Some(v)
}

#[inline]
pub fn write_header(dst: &mut [u8], text: bool, ts: u64, pubid: u32, seq: u32) {
    if text {
        dst[0] = b'#';
        put_hex(&mut dst[1..17], ts, 16);
        put_hex(&mut dst[17..25], pubid as u64, 8);
        put_hex(&mut dst[25..33], seq as u64, 8);
    } else if dst.len() >= BIN_HDR {
        dst[..8].copy_from_slice(&ts.to_be_bytes());
        dst[8..12].copy_from_slice(&pubid.to_be_bytes());
        dst[12..16].copy_from_slice(&seq.to_be_bytes());
    } else {
        dst[..8].copy_from_slice(&ts.to_be_bytes());
    }
}

/// (send ts, Some((publisher id, seq))) or None when the body is not ours.
#[inline]
pub fn parse_header(b: &[u8]) -> Option<(u64, Option<(u32, u32)>)> {
    if b.len() >= TXT_HDR && b[0] == b'#' {
        let ts = get_hex(&b[1..17])?;
        let p = get_hex(&b[17..25])? as u32;
        let s = get_hex(&b[25..33])? as u32;
        return Some((ts, Some((p, s))));
    }
    if b.len() >= BIN_HDR {
        let ts = crate::proto::be64(b);
        let p = crate::proto::be32(&b[8..]);
        let s = crate::proto::be32(&b[12..]);
        return Some((ts, Some((p, s))));
    }
    if b.len() >= 8 {
        return Some((crate::proto::be64(b), None));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Exactly-once verifier: one bit per (channel index, publisher id, sequence number), shared by
// all consumers, so duplicates are seen across connections of a channel as they happen, and
// missing messages are counted at the end against each publisher's acknowledged count.

const CHUNK_BITS_LOG: usize = 20;
const CHUNK_BITS: usize = 1 << CHUNK_BITS_LOG;
const CHUNK_WORDS: usize = CHUNK_BITS / 64;
const MAX_CHUNKS: usize = 1024; // 2^30 messages per publisher connection

pub struct Verifier {
    chans: usize,
    pubs: usize,
    slots: Vec<OnceLock<Box<[AtomicU64]>>>,
}

impl Verifier {
    pub fn new(chans: usize, pubs: usize) -> Self {
        let n = chans * pubs * MAX_CHUNKS;
        let mut slots = Vec::with_capacity(n);
        slots.resize_with(n, OnceLock::new);
        Verifier { chans, pubs, slots }
    }

    /// Marks a delivery; returns Some(true) for a duplicate, None if the ids are out of range.
    #[inline]
    pub fn mark(&self, chan: usize, pubid: u32, seq: u32) -> Option<bool> {
        let p = pubid as usize;
        let chunk = seq as usize >> CHUNK_BITS_LOG;
        if p >= self.pubs || chan >= self.chans || chunk >= MAX_CHUNKS {
            return None;
        }
        let slot = &self.slots[(chan * self.pubs + p) * MAX_CHUNKS + chunk];
        let words = slot.get_or_init(|| (0..CHUNK_WORDS).map(|_| AtomicU64::new(0)).collect());
        let bit = seq as usize & (CHUNK_BITS - 1);
        let m = 1u64 << (bit & 63);
        Some(words[bit >> 6].fetch_or(m, Relaxed) & m != 0)
    }

    /// Number of sequence numbers in [0, acked) never delivered on `chan` for publisher `p`.
    pub fn missing(&self, chan: usize, p: usize, acked: u64) -> u64 {
        let mut present = 0u64;
        let mut left = acked;
        let mut chunk = 0;
        while left > 0 && chunk < MAX_CHUNKS {
            let take = left.min(CHUNK_BITS as u64);
            if let Some(words) = self.slots[(chan * self.pubs + p) * MAX_CHUNKS + chunk].get() {
                let full = (take / 64) as usize;
                for w in &words[..full] {
                    present += w.load(Relaxed).count_ones() as u64;
                }
                let rem = take % 64;
                if rem > 0 {
                    let mask = (1u64 << rem) - 1;
                    present += (words[full].load(Relaxed) & mask).count_ones() as u64;
                }
            }
            left -= take;
            chunk += 1;
        }
        acked - present
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readers for the broker process.

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf is always safe to call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in seconds.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime = field 14, stime = field 15.
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((ut + st) as f64 / clk_tck())
}

/// A `Vm*:` value of /proc/PID/status in KiB.
pub fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    for l in s.lines() {
        if let Some(v) = l.strip_prefix(key) {
            let v = v.trim_start_matches(':').trim();
            return v.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// (read_bytes, write_bytes) of /proc/PID/io: bytes the process caused to be read from / sent
/// to the storage layer (writes are counted when pages are dirtied, so page-cache writes count).
pub fn proc_io_bytes(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let (mut r, mut w) = (None, None);
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("read_bytes:") {
            r = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("write_bytes:") {
            w = v.trim().parse().ok();
        }
    }
    Some((r?, w?))
}

pub fn proc_threads(pid: u32) -> Option<u64> {
    proc_status_kb(pid, "Threads")
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit.
pub fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        }
    }
    rl.rlim_cur
}
