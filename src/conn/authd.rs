//! Asking the auth servers (A1): an HTTP/1.1 GET with hyper over a glommio
//! TcpStream, run inside the connection's task, so the core serves its
//! other tasks while the answer is awaited. nsqd's http client timeouts:
//! `--http-client-connect-timeout` for the dial (name lookup included),
//! `--http-client-request-timeout` for the whole exchange.
//!
//! Left out: `https://` addresses, redirects, and nsqd's retry over HTTPS
//! when an auth server answers 403 with an `https_port`.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use futures::future::Either;
use glommio::net::TcpStream;
use http_body_util::BodyExt;
use hyper::Uri;
use smol_hyper::rt::FuturesIo;
use thiserror::Error;

use crate::protocol::auth::{self, AuthQuery, AuthReplyError, AuthState};

/// An auth server's answer larger than this is refused (nsqd reads any size).
const MAX_REPLY: usize = 16 << 20;

/// Why one auth server gave no usable answer; only logged.
#[derive(Debug, Error)]
pub enum AuthdError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("unsupported protocol scheme {0:?}")]
    Scheme(String),
    #[error("lookup {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("dial tcp {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("dial tcp {0}: i/o timeout")]
    ConnectTimeout(String),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error("got response {status} {}", crate::protocol::names::go_quote(.body))]
    Status {
        status: hyper::StatusCode,
        body: Bytes,
    },
    #[error("reply larger than {MAX_REPLY} bytes")]
    TooLarge,
    #[error("Client.Timeout exceeded ({0:?})")]
    Timeout(Duration),
    #[error(transparent)]
    Reply(#[from] AuthReplyError),
}

/// Every auth server failed: nsqd's joined text.
#[derive(Debug)]
pub struct AuthdFailures(pub Vec<(String, AuthdError)>);

impl fmt::Display for AuthdFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (address, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "failed to auth against {address} - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AuthdFailures {}

/// nsqd's timeouts for its HTTP client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

/// nsqd's `QueryAnyAuthd`: the servers in turn from a random one until
/// one answers with a valid reply.
pub async fn query_any(
    addresses: &[String],
    query: &AuthQuery<'_>,
    timeouts: Timeouts,
) -> Result<AuthState, AuthdFailures> {
    let n = addresses.len();
    let start = if n > 1 { fastrand::usize(..n) } else { 0 };
    let mut failures = Vec::new();
    for i in 0..n {
        let address = &addresses[(start + i) % n];
        match query_one(address, query, timeouts).await {
            Ok(state) => return Ok(state),
            Err(e) => failures.push((address.clone(), e)),
        }
    }
    Err(AuthdFailures(failures))
}

async fn query_one(
    address: &str,
    query: &AuthQuery<'_>,
    timeouts: Timeouts,
) -> Result<AuthState, AuthdError> {
    let url = query.url(address);
    let request = futures_lite::future::or(get(&url, timeouts.connect), async {
        glommio::timer::sleep(timeouts.request).await;
        Err(AuthdError::Timeout(timeouts.request))
    });
    let body = request.await?;
    Ok(auth::parse(&body)?)
}

/// Where to connect for `url`, and what to ask there.
struct Target {
    host: String,
    port: u16,
    /// The Host header: the URL's authority.
    authority: String,
    path_and_query: String,
}

fn target(url: &str) -> Result<Target, AuthdError> {
    let uri: Uri = url.parse().map_err(|_| AuthdError::Url(url.to_string()))?;
    let scheme = uri.scheme_str().unwrap_or_default();
    if scheme != "http" {
        return Err(AuthdError::Scheme(scheme.to_string()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| AuthdError::Url(url.to_string()))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let path_and_query = match uri.path_and_query().map(|p| p.as_str()) {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
        None => "/".to_string(),
    };
    Ok(Target {
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_string(),
        path_and_query,
    })
}

/// The 200 answer's body for `GET url`.
async fn get(url: &str, connect_timeout: Duration) -> Result<Bytes, AuthdError> {
    let t = target(url)?;
    let stream = futures_lite::future::or(connect(&t), async {
        glommio::timer::sleep(connect_timeout).await;
        Err(AuthdError::ConnectTimeout(format!("{}:{}", t.host, t.port)))
    })
    .await?;
    let _ = stream.set_nodelay(true);
    // Header names as Go writes them (`Accept`, not `accept`).
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(FuturesIo::new(stream))
        .await?;
    let request = hyper::Request::get(t.path_and_query.as_str())
        .header(hyper::header::HOST, t.authority.as_str())
        .header(hyper::header::ACCEPT, "application/vnd.nsq; version=1.0")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => AuthdError::Http(*e),
                Err(_) => AuthdError::TooLarge,
            })?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            return Err(AuthdError::Status { status, body });
        }
        Ok(body)
    };
    // The connection is driven here, not in a task of its own, so that a
    // timeout drops the socket with the request.
    futures_lite::pin!(conn);
    futures_lite::pin!(exchange);
    match futures::future::select(conn, exchange).await {
        Either::Right((result, _)) => result,
        // The server closed; the answer may have arrived all the same.
        Either::Left((_, exchange)) => exchange.await,
    }
}

/// The first of the host's addresses that accepts; a name is looked up on
/// the blocking pool, never on the core.
async fn connect(t: &Target) -> Result<TcpStream, AuthdError> {
    let addrs = match t.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, t.port)],
        Err(_) => {
            let name = (t.host.clone(), t.port);
            glommio::executor()
                .spawn_blocking(move || name.to_socket_addrs().map(|a| a.collect::<Vec<_>>()))
                .await
                .map_err(|source| AuthdError::Resolve {
                    host: t.host.clone(),
                    source,
                })?
        }
    };
    let mut last = AuthdError::Resolve {
        host: t.host.clone(),
        source: io::Error::new(io::ErrorKind::NotFound, "no such host"),
    };
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                last = AuthdError::Connect {
                    addr,
                    source: io::Error::other(e.to_string()),
                }
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_of_plain_and_full_addresses() {
        let t = target("http://127.0.0.1:4181/auth?a=1").expect("valid");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 4181));
        assert_eq!(t.authority, "127.0.0.1:4181");
        assert_eq!(t.path_and_query, "/auth?a=1");
        let t = target("http://auth.example/x/y?q").expect("valid");
        assert_eq!((t.host.as_str(), t.port), ("auth.example", 80));
        assert_eq!(t.path_and_query, "/x/y?q");
        let t = target("http://[::1]:9?q").expect("valid");
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert_eq!(t.path_and_query, "/?q");
        assert!(matches!(
            target("https://h/auth?q"),
            Err(AuthdError::Scheme(s)) if s == "https"
        ));
        assert!(target("http://bad host/?q").is_err());
    }

    #[test]
    fn failures_join_as_nsqds() {
        let f = AuthdFailures(vec![
            ("a:1".into(), AuthdError::Scheme("ftp".into())),
            ("b:2".into(), AuthdError::Timeout(Duration::from_secs(5))),
        ]);
        assert_eq!(
            f.to_string(),
            "failed to auth against a:1 - unsupported protocol scheme \"ftp\"; \
             failed to auth against b:2 - Client.Timeout exceeded (5s)"
        );
    }
}
