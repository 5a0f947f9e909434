//! NSQ protocol V2 framing helpers (client side) and a tiny HTTP/1.1 response parser.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub const FRAME_RESPONSE: u32 = 0;
pub const FRAME_ERROR: u32 = 1;
pub const FRAME_MESSAGE: u32 = 2;

/// Largest frame we accept from a server (nsqd's limit is max-msg-size = 1 MiB + header).
const MAX_FRAME: usize = 64 << 20;

/// Poll interval of blocking reads: lets threads notice stop flags.
pub const READ_POLL: Duration = Duration::from_millis(100);

/// Wall-clock nanoseconds (CLOCK_REALTIME): comparable between threads/processes on one machine.
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn io_err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

#[inline]
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

/// A growable receive buffer that never loses bytes on read timeouts (unlike
/// `BufReader` + `read_exact`).
pub struct RecvBuf {
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
}

impl RecvBuf {
    pub fn new(cap: usize) -> Self {
        RecvBuf { buf: vec![0; cap], start: 0, end: 0 }
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
    }

    /// Make sure at least `need` contiguous bytes fit from `start`.
    fn reserve(&mut self, need: usize) {
        if self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if need > self.buf.len() {
                self.buf.resize(need.next_power_of_two(), 0);
            }
        }
    }

    /// One read() from the socket. Ok(false) on read timeout; Err on EOF / error.
    pub fn fill<R: Read>(&mut self, r: &mut R) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < self.buf.len() / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        match r.read(&mut self.buf[self.end..]) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by server")),
            Ok(n) => {
                self.end += n;
                Ok(true)
            }
            Err(e) if is_timeout(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Next complete NSQ frame already in the buffer: (frame type, payload). No IO.
    #[inline]
    pub fn next_frame(&mut self) -> io::Result<Option<(u32, &[u8])>> {
        let avail = self.end - self.start;
        if avail < 8 {
            if avail >= 4 {
                let size = be32(&self.buf[self.start..]) as usize;
                if !(4..=MAX_FRAME).contains(&size) {
                    return Err(io_err(format!("bad frame size {size}")));
                }
                self.reserve(4 + size);
            }
            return Ok(None);
        }
        let b = &self.buf[self.start..self.end];
        let size = be32(b) as usize;
        if !(4..=MAX_FRAME).contains(&size) {
            return Err(io_err(format!("bad frame size {size}")));
        }
        if avail < 4 + size {
            self.reserve(4 + size);
            return Ok(None);
        }
        let ty = be32(&b[4..]);
        let s = self.start + 8;
        let e = self.start + 4 + size;
        self.start = e;
        Ok(Some((ty, &self.buf[s..e])))
    }
}

#[inline]
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[inline]
pub fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

pub fn tcp_connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io_err(format!("cannot resolve {addr}"));
    for sa in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(READ_POLL))?;
                s.set_write_timeout(Some(Duration::from_secs(30)))?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Reads one frame, blocking up to `timeout`; answers heartbeats.
pub fn read_frame_blocking<S: Read + Write>(s: &mut S, rb: &mut RecvBuf, timeout: Duration) -> io::Result<(u32, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((ty, data)) = rb.next_frame()? {
            if ty == FRAME_RESPONSE && data == b"_heartbeat_" {
                s.write_all(b"NOP\n")?;
                continue;
            }
            return Ok((ty, data.to_vec()));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for a response frame"));
        }
        rb.fill(s)?;
    }
}

pub fn identify_body(role: &str, extra: &[(String, serde_json::Value)]) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("client_id".into(), format!("nsq-load-{role}").into());
    m.insert("hostname".into(), "nsq-load".into());
    m.insert("user_agent".into(), "nsq-load/0.1".into());
    m.insert("feature_negotiation".into(), true.into());
    for (k, v) in extra {
        m.insert(k.clone(), v.clone());
    }
    serde_json::to_vec(&serde_json::Value::Object(m)).unwrap()
}

/// Sends magic + IDENTIFY and waits for the answer (OK or feature JSON).
pub fn handshake(s: &mut TcpStream, rb: &mut RecvBuf, ident: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(16 + ident.len());
    out.extend_from_slice(b"  V2IDENTIFY\n");
    out.extend_from_slice(&(ident.len() as u32).to_be_bytes());
    out.extend_from_slice(ident);
    s.write_all(&out)?;
    let (ty, data) = read_frame_blocking(s, rb, timeout)?;
    if ty != FRAME_RESPONSE {
        return Err(io_err(format!("IDENTIFY failed: {}", String::from_utf8_lossy(&data))));
    }
    Ok(data)
}

pub fn subscribe<S: Read + Write>(s: &mut S, rb: &mut RecvBuf, topic: &str, channel: &str, timeout: Duration) -> io::Result<()> {
    s.write_all(format!("SUB {topic} {channel}\n").as_bytes())?;
    let (ty, data) = read_frame_blocking(s, rb, timeout)?;
    if ty != FRAME_RESPONSE || data != b"OK" {
        return Err(io_err(format!("SUB {topic} {channel} failed: {}", String::from_utf8_lossy(&data))));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 responses (keep-alive): Content-Length or chunked bodies.

pub struct HttpResp {
    pub status: u16,
    pub close: bool,
    /// First bytes of the body (for error messages).
    pub body_head: [u8; 64],
    pub body_len: usize,
}

fn find_crlfcrlf(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses one complete HTTP response at the front of `rb`, consuming it.
pub fn next_http_response(rb: &mut RecvBuf) -> io::Result<Option<HttpResp>> {
    let d = rb.data();
    let Some(hend) = find_crlfcrlf(d) else {
        if d.len() > 64 * 1024 {
            return Err(io_err("HTTP response headers too large"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&d[..hend]).map_err(|_| io_err("non-UTF-8 HTTP headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let ver = parts.next().unwrap_or("");
    if !ver.starts_with("HTTP/1.") {
        return Err(io_err(format!("bad HTTP status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| io_err(format!("bad HTTP status line {status_line:?}")))?;
    let mut clen: Option<usize> = None;
    let mut chunked = false;
    let mut close = ver == "HTTP/1.0";
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            clen = v.parse().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            let v = v.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    let body_start = hend + 4;
    let mut head_buf = [0u8; 64];
    if chunked {
        // Walk chunks; need all of them present.
        let mut p = body_start;
        let mut total = 0usize;
        loop {
            let rest = &d[p..];
            let Some(le) = rest.windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let sz_str = std::str::from_utf8(&rest[..le]).unwrap_or("");
            let sz_str = sz_str.split(';').next().unwrap_or("").trim();
            let sz = usize::from_str_radix(sz_str, 16).map_err(|_| io_err("bad chunk size"))?;
            let cstart = p + le + 2;
            if sz == 0 {
                // trailers until empty line
                let rest = &d[cstart..];
                if rest.len() >= 2 && &rest[..2] == b"\r\n" {
                    p = cstart + 2;
                    break;
                }
                let Some(te) = find_crlfcrlf(rest) else {
                    return Ok(None);
                };
                p = cstart + te + 4;
                break;
            }
            if d.len() < cstart + sz + 2 {
                return Ok(None);
            }
            if total < 64 {
                let n = sz.min(64 - total);
                head_buf[total..total + n].copy_from_slice(&d[cstart..cstart + n]);
            }
            total += sz;
            p = cstart + sz + 2;
        }
        rb.consume(p);
        return Ok(Some(HttpResp { status, close, body_head: head_buf, body_len: total }));
    }
    let len = clen.unwrap_or(0);
    if d.len() < body_start + len {
        return Ok(None);
    }
    let n = len.min(64);
    head_buf[..n].copy_from_slice(&d[body_start..body_start + n]);
    rb.consume(body_start + len);
    Ok(Some(HttpResp { status, close, body_head: head_buf, body_len: len }))
}
