//! The byte stream under a connection. The connection is generic over it so
//! that TLS and compression (a later issue) wrap it without touching the
//! command handlers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Sized + 'static {
    /// The socket, for shutdown and for moving the connection between cores.
    fn raw_fd(&self) -> RawFd;
    /// A second handle on the same socket, for the writer task.
    fn duplicate(&self) -> io::Result<Self>;
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
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn duplicate(&self) -> io::Result<Self> {
        let fd = dup_fd(self.as_raw_fd())?;
        // SAFETY: `fd` is a fresh, owned duplicate of a connected TCP socket.
        Ok(unsafe { TcpStream::from_raw_fd(fd) })
    }

    fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, dur).map_err(|e| io::Error::other(e.to_string()))
    }

    fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, dur).map_err(|e| io::Error::other(e.to_string()))
    }
}
