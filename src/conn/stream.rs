//! The byte stream under a connection. The connection is generic over it;
//! TLS (`tls::TlsStream`) wraps it without touching the command handlers.
//!
//! One socket, one fd: the reading task and the writer task share the stream
//! through `split`, each borrowing it only for the length of one poll
//! (glommio keeps separate read and write readiness sources and timeouts).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpStream, UnixStream};

/// Which kind of socket a moving connection's fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

/// A glommio unix stream and its fd (glommio's unix streams do not give
/// theirs out, and a moving connection needs it).
pub struct UnixConn {
    pub stream: UnixStream,
    pub fd: RawFd,
}

impl UnixConn {
    /// # Safety
    /// `fd` must be an open, connected unix stream socket that the caller owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> UnixConn {
        UnixConn {
            stream: UnixStream::from_raw_fd(fd),
            fd,
        }
    }
}

pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Sized + 'static {
    /// What kind of socket this is, for moving it to another core.
    const TRANSPORT: Transport;
    /// Whether `set_read_timeout`/`set_write_timeout` work; if not, the
    /// connection enforces its deadlines with timers of its own.
    /// The socket, for shutdown and for moving the connection between cores.
    fn raw_fd(&self) -> RawFd;
    const NATIVE_TIMEOUTS: bool;
    fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()>;
}

/// `fcntl(F_DUPFD_CLOEXEC)`: a new fd on the same socket.
pub fn dup_fd(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: fcntl on an fd we hold open; the result is a new fd we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(new)
    }
}

impl ByteStream for TcpStream {
    const TRANSPORT: Transport = Transport::Tcp;
    const NATIVE_TIMEOUTS: bool = true;

    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, dur).map_err(|e| io::Error::other(e.to_string()))
    }

    fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, dur).map_err(|e| io::Error::other(e.to_string()))
    }
}

impl AsyncRead for UnixConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for UnixConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

impl ByteStream for UnixConn {
    const TRANSPORT: Transport = Transport::Unix;
    const NATIVE_TIMEOUTS: bool = false;

    fn raw_fd(&self) -> RawFd {
        self.fd
    }

    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn set_write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `io` with a deadline when the stream has no native timeouts.
pub async fn with_deadline<S: ByteStream, T>(
    deadline: Option<Duration>,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match deadline {
        Some(d) if !S::NATIVE_TIMEOUTS => {
            futures_lite::future::or(io, async {
                glommio::timer::sleep(d).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
            })
            .await
        }
        _ => io.await,
    }
}

/// The reading side of a split stream.
pub struct ReadHalf<S>(Rc<RefCell<S>>);
/// The writing side of a split stream.
pub struct WriteHalf<S>(Rc<RefCell<S>>);

pub fn split<S: ByteStream>(stream: S) -> (ReadHalf<S>, WriteHalf<S>) {
    let shared = Rc::new(RefCell::new(stream));
    (ReadHalf(shared.clone()), WriteHalf(shared))
}

fn busy() -> io::Error {
    io::Error::other("stream borrowed by the other half")
}

impl<S: ByteStream> ReadHalf<S> {
    pub fn raw_fd(&self) -> RawFd {
        self.0.borrow().raw_fd()
    }

    pub fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.0.borrow().set_read_timeout(dur)
    }

    /// `f` on the whole stream, between polls (the TLS upgrade).
    pub fn with_stream<T>(&self, f: impl FnOnce(&mut S) -> T) -> io::Result<T> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Ok(f(&mut s)),
            Err(_) => Err(busy()),
        }
    }

    /// The whole stream back, once the write half has been dropped.
    pub fn into_inner(self) -> Option<S> {
        Rc::try_unwrap(self.0).ok().map(RefCell::into_inner)
    }
}

impl<S: ByteStream> WriteHalf<S> {
    pub fn raw_fd(&self) -> RawFd {
        self.0.borrow().raw_fd()
    }

    pub fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.0.borrow().set_write_timeout(dur)
    }
}

impl<S: ByteStream> AsyncRead for ReadHalf<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_read(cx, buf),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }
}

impl<S: ByteStream> AsyncWrite for WriteHalf<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_write(cx, buf),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_flush(cx),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_close(cx),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }
}
