//! AUTH (T21) and the permission checks of SUB, PUB, MPUB and DPUB (T22).
//!
//! An auth query runs inside the connection's task: the core goes on with
//! its other connections, while this one reads no further command until
//! the answer is in, so commands keep their order. Granted permissions
//! expire after the reply's TTL and are asked for again only when one of
//! the four commands needs them (an idle connection never re-queries).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::authd;
use super::stream::ByteStream;
use super::Connection;
use crate::protocol::auth::{AuthQuery, AuthState};
use crate::protocol::codec::mpub_line_topic;
use crate::protocol::names::go_quote;
use crate::protocol::{ClientError, ErrorCode};
use crate::shard::ClientAuth;

/// A connection's AUTH: the secret it sent and what it was granted. It
/// moves with the connection between cores.
#[derive(Debug, Default)]
pub(super) struct AuthSession {
    secret: Vec<u8>,
    state: Option<AuthState>,
    /// When `state` must be asked for again; None: a TTL past the clock's
    /// end never expires.
    expires: Option<Instant>,
    /// The MPUB whose line is at the front of the read buffer has passed
    /// its check (nsqd checks before reading MPUB's body).
    mpub_checked: bool,
    /// The last topic `state` let this connection publish on: a run of
    /// publishes to one topic skips the regexes (about 180 ns each).
    publish_allowed_on: Vec<u8>,
}

impl AuthSession {
    fn has_authorizations(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(AuthState::has_authorizations)
    }

    fn is_expired(&self) -> bool {
        self.expires.is_some_and(|e| e < Instant::now())
    }

    /// What /stats shows (H11).
    pub(super) fn stats(&self) -> ClientAuth {
        ClientAuth {
            authed: self.has_authorizations(),
            identity: self
                .state
                .as_ref()
                .map(|s| s.identity.clone())
                .unwrap_or_default(),
            identity_url: self
                .state
                .as_ref()
                .map(|s| s.identity_url.clone())
                .unwrap_or_default(),
        }
    }
}

/// What TLS knows of the client, for the auth query.
#[derive(Debug, Default)]
pub(super) struct TlsPeer {
    pub tls: bool,
    /// The client certificate's subject CN, empty without one.
    pub common_name: String,
}

fn auth_failed() -> ClientError {
    ClientError::new(ErrorCode::AuthFailed, "AUTH failed")
}

impl<S: ByteStream> Connection<S> {
    fn auth_enabled(&self) -> bool {
        !self.broker.opts.auth_http_address.is_empty()
    }

    /// TLS state of the connection for the auth query.
    pub(super) fn tls_peer(&self) -> TlsPeer {
        match &self.info.settings.borrow().tls {
            Some(t) => TlsPeer {
                tls: true,
                common_name: t.peer_common_name.clone(),
            },
            None => TlsPeer::default(),
        }
    }

    /// T21, after the decoder's checks of state, parameters and body.
    pub(super) async fn auth_command(&mut self, secret: Bytes) -> Result<(), ClientError> {
        if self.auth.has_authorizations() {
            return Err(ClientError::invalid("AUTH already set"));
        }
        if !self.auth_enabled() {
            return Err(ClientError::new(ErrorCode::AuthDisabled, "AUTH disabled"));
        }
        self.auth.secret = secret.to_vec();
        self.query_authd().await?;
        if !self.auth.has_authorizations() {
            return Err(ClientError::new(
                ErrorCode::Unauthorized,
                "AUTH no authorizations found",
            ));
        }
        if let Some(state) = &self.auth.state {
            self.out.push_response(&state.ok_response());
        }
        Ok(())
    }

    /// nsqd's `CheckAuth` for `cmd` on `topic` and `channel` (empty for a
    /// publish), re-querying expired permissions first.
    pub(super) async fn check_auth(
        &mut self,
        cmd: &str,
        topic: &[u8],
        channel: &[u8],
    ) -> Result<(), ClientError> {
        if !self.auth_enabled() {
            return Ok(());
        }
        if !self.auth.has_authorizations() {
            return Err(ClientError::new(
                ErrorCode::AuthFirst,
                format!("AUTH required before {cmd}"),
            ));
        }
        if self.auth.is_expired() {
            self.query_authd().await?;
        }
        if channel.is_empty() && !topic.is_empty() && self.auth.publish_allowed_on == topic {
            return Ok(());
        }
        // Valid names are ASCII: the decoder checked them.
        let (t, c) = (
            std::str::from_utf8(topic).unwrap_or_default(),
            std::str::from_utf8(channel).unwrap_or_default(),
        );
        let allowed = self.auth.state.as_ref().is_some_and(|s| s.is_allowed(t, c));
        if allowed && channel.is_empty() {
            self.auth.publish_allowed_on.clear();
            self.auth.publish_allowed_on.extend_from_slice(topic);
        }
        if !allowed {
            return Err(ClientError::new(
                ErrorCode::Unauthorized,
                format!(
                    "AUTH failed for {cmd} on {} {}",
                    go_quote(topic),
                    go_quote(channel)
                ),
            ));
        }
        Ok(())
    }

    /// T22: MPUB is checked once its line is in, before its body is read.
    /// Run before each decode; a no-op unless an unchecked MPUB line with a
    /// valid topic is at the front of the buffer.
    pub(super) async fn check_mpub_line(&mut self) -> Result<(), ClientError> {
        if !self.auth_enabled() || self.auth.mpub_checked {
            return Ok(());
        }
        let ctx = self.decode_context();
        let Some(topic) = mpub_line_topic(&self.read_buf, &ctx) else {
            return Ok(());
        };
        let topic = topic.to_vec();
        self.check_auth("MPUB", &topic, b"").await?;
        self.auth.mpub_checked = true;
        Ok(())
    }

    /// A command was decoded: the next MPUB line is a new one.
    pub(super) fn auth_command_decoded(&mut self) {
        self.auth.mpub_checked = false;
    }

    /// nsqd's `QueryAuthd`: on success the reply replaces what was granted;
    /// on failure the old grant stays and the client gets `E_AUTH_FAILED`
    /// (the reason is only logged).
    async fn query_authd(&mut self) -> Result<(), ClientError> {
        let remote_ip = self
            .info
            .remote
            .parse::<SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let tls = self.tls_peer();
        let query = AuthQuery {
            remote_ip: &remote_ip,
            tls: tls.tls,
            secret: &self.auth.secret,
            common_name: &tls.common_name,
        };
        let o = &self.broker.opts;
        let client = authd::Client {
            connect_timeout: o.http_client_connect_timeout,
            request_timeout: o.http_client_request_timeout,
            tls: self.broker.auth_tls.clone(),
        };
        let state = match authd::query_any(&o.auth_http_address, &query, &client).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(error = %e, "AUTH failed");
                return Err(auth_failed());
            }
        };
        self.auth.expires = Instant::now().checked_add(state.ttl);
        self.auth.publish_allowed_on.clear();
        self.auth.state = Some(state);
        *self.info.auth.borrow_mut() = self.auth.stats();
        Ok(())
    }
}
