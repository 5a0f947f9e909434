//! Listening sockets, one per core on the same address (SO_REUSEPORT: the
//! kernel spreads connections over the cores).
//!
//! glommio's own `bind` sets SO_REUSEPORT only. Accepted sockets inherit
//! the listener's options, and a restarted broker can only bind while old
//! connections sit in TIME_WAIT if those had SO_REUSEADDR, so both are set
//! here (nsqd restarts on a busy port the same way).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

use glommio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

/// Enough for bursts of thousands of connecting clients.
const BACKLOG: i32 = 4096;

pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    // SAFETY: a bound, listening socket whose ownership moves to glommio.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}
