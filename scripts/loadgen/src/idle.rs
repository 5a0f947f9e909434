//! Idle connections: magic + IDENTIFY, then nothing but answering heartbeats (one thread for all).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::Shared;
use crate::proto::{self, RecvBuf};

/// Opens `n` idle connections (pipelined in groups), returns them once all are IDENTIFYed.
pub fn open(addr: &str, n: usize, ident: &[u8], sh: &Shared) -> io::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    let mut hello = Vec::new();
    hello.extend_from_slice(b"  V2IDENTIFY\n");
    hello.extend_from_slice(&(ident.len() as u32).to_be_bytes());
    hello.extend_from_slice(ident);
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(256);
        let mut group = Vec::with_capacity(k);
        for _ in 0..k {
            let mut s = proto::tcp_connect(addr, Duration::from_secs(10))
                .map_err(|e| proto::io_err(format!("idle connection {}: {e}", conns.len() + group.len())))?;
            s.write_all(&hello)?;
            group.push(s);
        }
        for mut s in group {
            let mut rb = RecvBuf::new(4096);
            let (ty, data) = proto::read_frame_blocking(&mut s, &mut rb, Duration::from_secs(10))
                .map_err(|e| proto::io_err(format!("idle connection {} (IDENTIFY): {e}", conns.len())))?;
            if ty != proto::FRAME_RESPONSE {
                sh.error_frames.fetch_add(1, Relaxed);
                return Err(proto::io_err(format!("idle IDENTIFY: {}", String::from_utf8_lossy(&data))));
            }
            conns.push(s);
        }
        i += k;
        if sh.abort.load(Relaxed) || t0.elapsed() > Duration::from_secs(120) {
            return Err(proto::io_err("opening idle connections took too long"));
        }
    }
    Ok(conns)
}

/// Keeps the connections alive: every 500 ms, non-blocking reads; heartbeats get a NOP.
pub fn keep(conns: Vec<TcpStream>, sh: Arc<Shared>) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut conns: Vec<Option<TcpStream>> = conns
            .into_iter()
            .map(|s| {
                let _ = s.set_nonblocking(true);
                Some(s)
            })
            .collect();
        let mut buf = [0u8; 4096];
        let mut dead = 0usize;
        while !sh.stop_sub.load(Relaxed) && !sh.abort.load(Relaxed) {
            for slot in conns.iter_mut() {
                let Some(s) = slot.as_mut() else { continue };
                let mut close = false;
                match s.read(&mut buf) {
                    Ok(0) => close = true,
                    Ok(n) => {
                        let d = &buf[..n];
                        if d.windows(11).any(|w| w == b"_heartbeat_") && s.write_all(b"NOP\n").is_err() {
                            close = true;
                        }
                    }
                    Err(e) if proto::is_timeout(&e) => {}
                    Err(_) => close = true,
                }
                if close {
                    *slot = None;
                    dead += 1;
                    sh.disconnects.fetch_add(1, Relaxed);
                }
            }
            // sleep 500 ms in small steps
            for _ in 0..10 {
                if sh.stop_sub.load(Relaxed) || sh.abort.load(Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if dead > 0 {
            sh.record_error(format!("{dead} idle connections were closed by the server"));
        }
        dead
    })
}
