//! Asking the auth servers (A1): an HTTP/1.1 GET with hyper over a glommio
//! TcpStream, run inside the connection's task, so the core serves its
//! other tasks while the answer is awaited. nsqd's http client timeouts:
//! `--http-client-connect-timeout` for the dial (name lookup included),
//! `--http-client-request-timeout` for each exchange. `https://` servers
//! are asked over rustls with nsqd's client TLS config, and a plain server
//! that answers 403 with an `https_port` is asked again there, as nsqd's
//! `GETV1` does. Redirects are followed as Go's client does: at most 10
//! requests in all, within one request timeout.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::Either;
use futures::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use http_body_util::BodyExt;
use hyper::{StatusCode, Uri};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use smol_hyper::rt::FuturesIo;
use thiserror::Error;

use crate::protocol::auth::{self, AuthQuery, AuthReplyError, AuthState};

/// An auth server's answer larger than this is refused (nsqd reads any size).
const MAX_REPLY: usize = 16 << 20;

/// Go's default redirect policy: at most this many requests in a row.
const MAX_REQUESTS: usize = 10;

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
    #[error("tls: {0}")]
    Tls(io::Error),
    #[error("address {0}: missing port in address")]
    MissingPort(String),
    #[error("403 answer: {0}")]
    ForbiddenBody(serde_json::Error),
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
    #[error("failed to parse Location header {0:?}")]
    Location(String),
    #[error("stopped after {MAX_REQUESTS} redirects")]
    TooManyRedirects,
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

/// nsqd's HTTP client: its timeouts and its TLS config.
#[derive(Debug, Clone)]
pub struct Client {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub tls: Arc<ClientConfig>,
}

/// nsqd's `QueryAnyAuthd`: the servers in turn from a random one until
/// one answers with a valid reply.
pub async fn query_any(
    addresses: &[String],
    query: &AuthQuery<'_>,
    client: &Client,
) -> Result<AuthState, AuthdFailures> {
    let n = addresses.len();
    let start = if n > 1 { fastrand::usize(..n) } else { 0 };
    let mut failures = Vec::new();
    for i in 0..n {
        let address = &addresses[(start + i) % n];
        match query_one(address, query, client).await {
            Ok(state) => return Ok(state),
            Err(e) => failures.push((address.clone(), e)),
        }
    }
    Err(AuthdFailures(failures))
}

async fn query_one(
    address: &str,
    query: &AuthQuery<'_>,
    client: &Client,
) -> Result<AuthState, AuthdError> {
    let mut url = query.url(address);
    loop {
        let request = futures_lite::future::or(get_following(&url, client), async {
            glommio::timer::sleep(client.request_timeout).await;
            Err(AuthdError::Timeout(client.request_timeout))
        });
        match request.await {
            // The server wants HTTPS: ask again on the port it names.
            Err(AuthdError::Status { status, body })
                if status == StatusCode::FORBIDDEN && !url.starts_with("https") =>
            {
                url = https_endpoint(&url, &body)?;
            }
            answer => return Ok(auth::parse(&answer?)?),
        }
    }
}

/// nsqd's `httpsEndpoint`: `url` with scheme https and the port of the 403
/// answer's `https_port` (0 when it names none, Go's zero value).
fn https_endpoint(url: &str, body: &[u8]) -> Result<String, AuthdError> {
    #[derive(serde::Deserialize)]
    struct Forbidden {
        #[serde(default)]
        https_port: i64,
    }
    let forbidden: Forbidden = serde_json::from_slice(body).map_err(AuthdError::ForbiddenBody)?;
    let uri: Uri = url.parse().map_err(|_| AuthdError::Url(url.to_string()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| AuthdError::Url(url.to_string()))?;
    if authority.port().is_none() {
        return Err(AuthdError::MissingPort(authority.to_string()));
    }
    let path_and_query = uri.path_and_query().map_or("", |p| p.as_str());
    Ok(format!(
        "https://{}:{}{path_and_query}",
        authority.host(),
        forbidden.https_port
    ))
}

/// Where to connect for `url`, and what to ask there.
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// The Host header: the URL's authority.
    authority: String,
    path_and_query: String,
}

fn target(url: &str) -> Result<Target, AuthdError> {
    let uri: Uri = url.parse().map_err(|_| AuthdError::Url(url.to_string()))?;
    let https = match uri.scheme_str().unwrap_or_default() {
        "http" => false,
        "https" => true,
        scheme => return Err(AuthdError::Scheme(scheme.to_string())),
    };
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
        https,
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        authority: authority.as_str().to_string(),
        path_and_query,
    })
}

/// The 200 answer's body for `GET url`, following redirects as Go's
/// client does.
async fn get_following(url: &str, client: &Client) -> Result<Bytes, AuthdError> {
    let mut url = url.to_string();
    for _ in 0..MAX_REQUESTS {
        let answer = get(&url, client).await?;
        match answer.redirect() {
            Some(location) => url = resolve(&url, location)?,
            None if answer.status == StatusCode::OK => return Ok(answer.body),
            None => {
                return Err(AuthdError::Status {
                    status: answer.status,
                    body: answer.body,
                })
            }
        }
    }
    Err(AuthdError::TooManyRedirects)
}

/// `location` read against the URL that answered with it (RFC 3986's
/// reference resolution, as Go's `URL.ResolveReference`).
fn resolve(base: &str, location: &str) -> Result<String, AuthdError> {
    let base = url::Url::parse(base).map_err(|_| AuthdError::Url(base.to_string()))?;
    base.join(location)
        .map(String::from)
        .map_err(|_| AuthdError::Location(location.to_string()))
}

/// One server's answer to one GET.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: Bytes,
}

impl Answer {
    /// Where a redirect points: Go follows 301, 302, 303, 307 and 308 for
    /// a GET, and returns one without a Location as it is.
    fn redirect(&self) -> Option<&str> {
        let code = self.status.as_u16();
        if matches!(code, 301 | 302 | 303 | 307 | 308) {
            self.location.as_deref().filter(|l| !l.is_empty())
        } else {
            None
        }
    }
}

/// One `GET url`, without following redirects.
async fn get(url: &str, client: &Client) -> Result<Answer, AuthdError> {
    let t = target(url)?;
    let stream = futures_lite::future::or(connect(&t), async {
        glommio::timer::sleep(client.connect_timeout).await;
        Err(AuthdError::ConnectTimeout(format!("{}:{}", t.host, t.port)))
    })
    .await?;
    let _ = stream.set_nodelay(true);
    if !t.https {
        return exchange(stream, &t).await;
    }
    let name =
        ServerName::try_from(t.host.clone()).map_err(|_| AuthdError::Url(url.to_string()))?;
    let stream = futures_rustls::TlsConnector::from(client.tls.clone())
        .connect(name, stream)
        .await
        .map_err(AuthdError::Tls)?;
    exchange(stream, &t).await
}

/// One GET over `io`, plain or TLS.
async fn exchange<IO>(io: IO, t: &Target) -> Result<Answer, AuthdError>
where
    IO: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // Header names as Go writes them (`Accept`, not `accept`).
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(FuturesIo::new(io))
        .await?;
    let request = hyper::Request::get(t.path_and_query.as_str())
        .header(hyper::header::HOST, t.authority.as_str())
        .header(hyper::header::ACCEPT, "application/vnd.nsq; version=1.0")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let location = response
            .headers()
            .get(hyper::header::LOCATION)
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
        let body = http_body_util::Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => AuthdError::Http(*e),
                Err(_) => AuthdError::TooLarge,
            })?
            .to_bytes();
        Ok(Answer {
            status,
            location,
            body,
        })
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
        let t = target("https://h/auth?q").expect("valid");
        assert!(t.https);
        assert_eq!((t.host.as_str(), t.port), ("h", 443));
        assert!(matches!(
            target("ftp://h/auth?q"),
            Err(AuthdError::Scheme(s)) if s == "ftp"
        ));
        assert!(target("http://bad host/?q").is_err());
    }

    #[test]
    fn a_403_names_the_https_port() {
        let url = "http://127.0.0.1:4181/auth?secret=a+b&tls=false";
        assert_eq!(
            https_endpoint(url, br#"{"message":"TLS_REQUIRED","https_port":4182}"#).expect("valid"),
            "https://127.0.0.1:4182/auth?secret=a+b&tls=false"
        );
        assert_eq!(
            https_endpoint("http://[::1]:1/x?q", b"{}").expect("valid"),
            "https://[::1]:0/x?q"
        );
        assert!(matches!(
            https_endpoint("http://auth.example/x?q", b"{}"),
            Err(AuthdError::MissingPort(a)) if a == "auth.example"
        ));
        assert!(matches!(
            https_endpoint(url, b"not json"),
            Err(AuthdError::ForbiddenBody(_))
        ));
    }

    #[test]
    fn locations_resolve_against_the_answering_url() {
        let base = "http://127.0.0.1:4181/v1/auth?secret=s";
        let r = |l| resolve(base, l).expect("valid");
        assert_eq!(r("/auth?x=1"), "http://127.0.0.1:4181/auth?x=1");
        assert_eq!(r("other?y"), "http://127.0.0.1:4181/v1/other?y");
        assert_eq!(r("../up"), "http://127.0.0.1:4181/up");
        assert_eq!(r("https://h:9/a"), "https://h:9/a");
        assert_eq!(r("//h2:8/b"), "http://h2:8/b");
        assert!(matches!(
            resolve(base, "http://[bad"),
            Err(AuthdError::Location(_))
        ));
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
