//! Listening sockets. A `host:port` address gets one TCP listener per core
//! on the same port (SO_REUSEPORT: the kernel spreads connections over the
//! cores); anything else is a unix socket path, as in nsqd (T1, H1), served
//! by core 0 alone.
//!
//! glommio's own `bind` sets SO_REUSEPORT only. Accepted sockets inherit
//! the listener's options, and a restarted broker can only bind while old
//! connections sit in TIME_WAIT if those had SO_REUSEADDR, so both are set
//! here (nsqd restarts on a busy port the same way).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

use super::event::LocalEvent;
use crate::conn::stream::UnixConn;

/// Enough for bursts of thousands of connecting clients.
const BACKLOG: i32 = 4096;

/// Where to listen, resolved once at start-up.
#[derive(Debug, Clone)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// nsqd's `TypeOfAddr`: host:port is TCP, the rest a unix socket path.
    pub fn parse(addr: &str) -> io::Result<ListenAddr> {
        let looks_tcp = match addr.rsplit_once(':') {
            Some((_, port)) => !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
            None => false,
        };
        if !looks_tcp {
            return Ok(ListenAddr::Unix(PathBuf::from(addr)));
        }
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
        // Go's ":4150" means every interface.
        let addr = if host.is_empty() {
            format!("0.0.0.0{addr}")
        } else {
            addr.to_string()
        };
        addr.to_socket_addrs()?
            .next()
            .map(ListenAddr::Tcp)
            .ok_or_else(|| io::Error::other("address resolves to nothing"))
    }

    /// The TCP port, or None for a unix socket (/info reports -1).
    pub fn port(&self) -> Option<u16> {
        match self {
            ListenAddr::Tcp(a) => Some(a.port()),
            ListenAddr::Unix(_) => None,
        }
    }

    /// Whether core `core` runs a listener for this address.
    pub fn listens_on(&self, core: usize) -> bool {
        matches!(self, ListenAddr::Tcp(_)) || core == 0
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixAcceptor),
}

/// A unix-socket listener. glommio's unix streams do not give out their
/// fd, which a moving connection needs, so a thread of its own accepts
/// (blocking, no polling) and hands each socket to core 0, which wraps it
/// in a glommio stream.
pub struct UnixAcceptor {
    accepted: futures::channel::mpsc::UnboundedReceiver<io::Result<OwnedFd>>,
    listener: Arc<std::os::unix::net::UnixListener>,
    path: PathBuf,
}

impl UnixAcceptor {
    fn bind(path: &Path) -> io::Result<UnixAcceptor> {
        let listener = Arc::new(std::os::unix::net::UnixListener::bind(path)?);
        let (tx, accepted) = futures::channel::mpsc::unbounded();
        let l = listener.clone();
        std::thread::Builder::new()
            .name("ringsq-unix-accept".into())
            .spawn(move || loop {
                let r = l.accept().map(|(s, _)| OwnedFd::from(s));
                let failed = r.is_err();
                if tx.unbounded_send(r).is_err() {
                    return; // the listener was dropped
                }
                if failed {
                    // Out of fds, say: back off as the TCP listeners do.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })?;
        Ok(UnixAcceptor {
            accepted,
            listener,
            path: path.to_path_buf(),
        })
    }

    async fn accept(&mut self) -> io::Result<UnixConn> {
        use futures::StreamExt;
        let fd = match self.accepted.next().await {
            Some(r) => r?,
            None => return Err(io::Error::other("unix accept thread stopped")),
        };
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        // SAFETY: a connected socket whose ownership we take.
        Ok(unsafe { UnixConn::from_raw_fd(s.into_raw_fd()) })
    }
}

impl Drop for UnixAcceptor {
    /// Wakes the accepting thread (its accept fails, it sees the channel
    /// closed and ends) and, like Go's unix listener, removes the socket
    /// file, so that a restart can bind it again.
    fn drop(&mut self) {
        self.accepted.close();
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A new client.
pub enum Accepted {
    Tcp(TcpStream),
    Unix(UnixConn),
}

impl Listener {
    pub fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => bind_tcp(*a).map(Listener::Tcp),
            ListenAddr::Unix(p) => UnixAcceptor::bind(p).map(Listener::Unix),
        }
    }

    pub async fn accept(&mut self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l
                .accept()
                .await
                .map(Accepted::Tcp)
                .map_err(|e| io::Error::other(e.to_string())),
            Listener::Unix(u) => u.accept().await.map(Accepted::Unix),
        }
    }
}

impl Listener {
    /// Accepts until `stopping` is set, handing each client to `serve`.
    /// A failed accept (out of fds, say) is logged and retried shortly.
    pub async fn serve_until(&mut self, stopping: &LocalEvent, mut serve: impl FnMut(Accepted)) {
        loop {
            let accepted = futures_lite::future::or(async { Some(self.accept().await) }, async {
                stopping.wait().await;
                None
            })
            .await;
            match accepted {
                None => return,
                Some(Ok(client)) => serve(client),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "accept failed");
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    // SAFETY: a bound, listening socket whose ownership moves to glommio.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_or_unix_like_nsqd() {
        assert!(matches!(
            ListenAddr::parse("127.0.0.1:4150").unwrap(),
            ListenAddr::Tcp(_)
        ));
        assert!(
            matches!(ListenAddr::parse(":4150").unwrap(), ListenAddr::Tcp(a) if a.port() == 4150)
        );
        assert!(matches!(
            ListenAddr::parse("[::1]:4150").unwrap(),
            ListenAddr::Tcp(_)
        ));
        assert!(matches!(
            ListenAddr::parse("/tmp/nsqd.sock").unwrap(),
            ListenAddr::Unix(_)
        ));
        assert!(matches!(
            ListenAddr::parse("nsqd.sock").unwrap(),
            ListenAddr::Unix(_)
        ));
    }
}
