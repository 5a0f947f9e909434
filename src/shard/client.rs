//! What the core knows about a client connection: identity, settings and
//! counters for /stats, and its socket for shutdown and forced disconnects
//! (a deleted topic or channel drops its consumers, Q13).

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::identify::ClientSettings;
use crate::protocol::ConnState;
use crate::stats::{ClientStats, PubCount};

pub struct ClientInfo {
    pub id: u64,
    /// `ip:port`, or `@` for a unix socket.
    pub remote: String,
    pub connected_at: SystemTime,
    /// The socket, for shutdown calls only; -1 once the connection closed
    /// or moved, since its number may then belong to another connection.
    pub fd: Cell<RawFd>,
    pub settings: RefCell<ClientSettings>,
    pub state: Cell<ConnState>,
    /// Messages published per topic (T37), in first-publish order.
    pub pub_counts: RefCell<Vec<(String, u64)>>,
    /// What AUTH granted, for /stats.
    pub auth: RefCell<ClientAuth>,
    pub deflate: Cell<bool>,
    pub snappy: Cell<bool>,
}

/// A client's AUTH as /stats shows it (H11).
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    /// AUTH succeeded with at least one authorization.
    pub authed: bool,
    pub identity: String,
    pub identity_url: String,
}

impl ClientInfo {
    pub fn add_published(&self, topic: &str, n: u64) {
        let mut counts = self.pub_counts.borrow_mut();
        match counts.iter_mut().find(|(t, _)| t == topic) {
            Some((_, c)) => *c += n,
            None => counts.push((topic.to_string(), n)),
        }
    }

    pub fn is_producer(&self) -> bool {
        !self.pub_counts.borrow().is_empty()
    }

    /// Closes the socket under the connection: its task sees EOF and cleans up.
    pub fn disconnect(&self) {
        self.shutdown(libc::SHUT_RDWR);
    }

    /// The connection is letting go of its socket: no shutdown after this.
    pub fn release_socket(&self) {
        self.fd.set(-1);
    }

    fn shutdown(&self, how: libc::c_int) {
        let fd = self.fd.get();
        if fd < 0 {
            return;
        }
        // SAFETY: shutdown on the connection's own socket, open until
        // `release_socket`; it changes the socket's state, not memory.
        unsafe {
            libc::shutdown(fd, how);
        }
    }

    /// Ends the reading side only: the connection's task sees EOF and
    /// closes, while what is buffered for the client still goes out.
    pub fn stop_reading(&self) {
        self.shutdown(libc::SHUT_RD);
    }

    /// nsqd's client stats; `topic` filters pub_counts and, as nsqd does,
    /// only one topic is listed (X1).
    pub fn stats(&self, topic: Option<&str>) -> ClientStats {
        let s = self.settings.borrow();
        let auth = self.auth.borrow().clone();
        let tls = s.tls.clone().unwrap_or_default();
        let pub_counts = self
            .pub_counts
            .borrow()
            .iter()
            .filter(|(t, _)| topic.is_none_or(|f| f == t))
            .take(1)
            .map(|(t, c)| PubCount {
                topic: t.clone(),
                count: *c,
            })
            .collect();
        ClientStats {
            client_id: s.client_id.clone(),
            hostname: s.hostname.clone(),
            version: "V2",
            remote_address: self.remote.clone(),
            state: match self.state.get() {
                ConnState::Init => 0,
                ConnState::Subscribed => 3,
                ConnState::Closing => 4,
            },
            ready_count: 0,
            in_flight_count: 0,
            message_count: 0,
            finish_count: 0,
            requeue_count: 0,
            connect_ts: self
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            sample_rate: s.sample_rate as i32,
            deflate: self.deflate.get(),
            snappy: self.snappy.get(),
            user_agent: s.user_agent.clone(),
            authed: auth.authed,
            auth_identity: auth.identity,
            auth_identity_url: auth.identity_url,
            pub_counts,
            tls: s.tls.is_some(),
            tls_cipher_suite: tls.cipher_suite,
            tls_version: tls.version,
            tls_negotiated_protocol: tls.negotiated_protocol,
            tls_negotiated_protocol_is_mutual: tls.negotiated_protocol_is_mutual,
        }
    }
}
