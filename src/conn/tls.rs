//! TLS on a connection's byte stream (T18, T20): nsqd's `tls.Config` as a
//! rustls `ServerConfig`, and `TlsStream`, a layer under compression that
//! starts in clear and is switched to TLS after the IDENTIFY answer went out.
//!
//! rustls' own `ServerConnection` is driven here rather than through
//! futures-rustls: the upgrade happens mid-stream with bytes already read
//! (they are the client's first TLS records), both halves of the split
//! stream must share one session, a refused handshake must fall back to
//! clear for nsqd's unencrypted error frame, and the session must leave the
//! socket to travel with a connection that moves to another core.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CipherSuite, ClientConfig, DistinguishedName, ProtocolVersion, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use thiserror::Error;

use super::stream::{ByteStream, ReadHalf, Transport};
use crate::config::{Options, TlsMinVersion, TlsRequired};
use crate::protocol::identify::TlsSummary;
use crate::protocol::{ClientError, ErrorCode};

/// nsqd's handshake deadline (`UpgradeTLS`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where system CA bundles live (Go's `x509.SystemCertPool` looks there
/// too): `require-verify` without `--tls-root-ca-file` verifies against them.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

#[derive(Debug, Error)]
pub enum TlsConfigError {
    /// nsqd's own start-up error text.
    #[error("cannot require TLS client connections without TLS key and cert")]
    RequiredWithoutCert,
    #[error("failed to build TLS config - {0}")]
    Build(String),
    #[error("failed to build client TLS config - {0}")]
    ClientBuild(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

fn build_err(e: impl std::fmt::Display) -> TlsConfigError {
    TlsConfigError::Build(e.to_string())
}

/// nsqd's `buildTLSConfig`: None without `--tls-cert`/`--tls-key`.
pub fn server_config(opts: &Options) -> Result<Option<Arc<ServerConfig>>, TlsConfigError> {
    let required = opts.tls_required_mode()?;
    if opts.tls_cert.is_empty() && opts.tls_key.is_empty() {
        if required != TlsRequired::No {
            return Err(TlsConfigError::RequiredWithoutCert);
        }
        return Ok(None);
    }
    let certs = CertificateDer::pem_slice_iter(&read_pem(&opts.tls_cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| build_err(format!("{}: {e}", opts.tls_cert)))?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&opts.tls_key)?)
        .map_err(|e| build_err(format!("{}: {e}", opts.tls_key)))?;
    // ring builds without cmake; rustls marks it deprecated only because it
    // lacks the post-quantum key exchange, which nsqd (Go 1.23) offers
    // only to clients that ask for it.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if opts.tls_min_version()? < TlsMinVersion::Tls12 {
        tracing::info!(
            "TLS: --tls-min-version {:?}: rustls speaks TLS 1.2 and 1.3 only, so older clients are refused",
            opts.tls_min_version
        );
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(protocol_versions(opts)?)
        .map_err(build_err)?;
    // nsqd reads the roots whatever the policy.
    let roots = match opts.tls_root_ca_file.as_str() {
        "" => None,
        file => Some(root_store(file)?),
    };
    let builder = match opts.tls_client_auth_policy.as_str() {
        "require" => builder.with_client_cert_verifier(Arc::new(AnyClientCert {
            algs: provider.signature_verification_algorithms,
        })),
        "require-verify" => {
            let roots = match roots {
                Some(roots) => roots,
                None => root_store("")?,
            };
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(build_err)?;
            builder.with_client_cert_verifier(verifier)
        }
        // nsqd: tls.NoClientCert; no certificate is asked for.
        _ => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(build_err)?;
    Ok(Some(Arc::new(config)))
}

/// nsqd's `buildClientTLSConfig`, for `https://` auth servers (A1): the
/// roots of `--tls-root-ca-file`, or the system's without it; no client
/// certificate. Built at start-up whatever the flags, as nsqd does, so a
/// bad `--tls-root-ca-file` stops the start with nsqd's text.
pub fn auth_client_config(opts: &Options) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let client_err = |e| match e {
        TlsConfigError::Build(text) => TlsConfigError::ClientBuild(text),
        e => e,
    };
    #[allow(deprecated)] // ring: see server_config
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(protocol_versions(opts)?)
        .map_err(build_err)
        .map_err(client_err)?
        .with_root_certificates(root_store(&opts.tls_root_ca_file).map_err(client_err)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `--tls-min-version` as rustls' versions (it speaks 1.2 and 1.3 only).
fn protocol_versions(
    opts: &Options,
) -> Result<&'static [&'static rustls::SupportedProtocolVersion], TlsConfigError> {
    static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static TLS12_13: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    Ok(match opts.tls_min_version()? {
        TlsMinVersion::Tls13 => &TLS13,
        _ => &TLS12_13,
    })
}

/// A PEM file; a failure in Go's words (`open <path>: no such file or directory`).
fn read_pem(path: &str) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|e| {
        let text = match e.kind() {
            io::ErrorKind::NotFound => "no such file or directory".to_string(),
            io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        build_err(format!("open {path}: {text}"))
    })
}

/// `--tls-root-ca-file`, or the system's CA bundle without it.
fn root_store(file: &str) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    let files: Vec<&str> = if file.is_empty() {
        SYSTEM_CA_FILES.to_vec()
    } else {
        vec![file]
    };
    for f in files {
        let pem = match read_pem(f) {
            Ok(pem) => pem,
            Err(e) if file.is_empty() => {
                tracing::debug!(file = f, error = %e, "no system CA bundle here");
                continue;
            }
            Err(e) => return Err(e),
        };
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| build_err(format!("{f}: {e}")))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 && !file.is_empty() {
            return Err(build_err("failed to append certificate to pool"));
        }
    }
    Ok(roots)
}

/// `require`: Go's RequireAnyClientCert. Any certificate, but the client
/// must still prove it holds its key.
#[derive(Debug)]
struct AnyClientCert {
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// T20: on a plain connection of a broker that requires TLS, the first
/// complete command line other than IDENTIFY is refused, before its body
/// is read (nsqd checks right after the line).
pub fn policy_violation(buf: &[u8]) -> Option<ClientError> {
    let nl = memchr::memchr(b'\n', buf)?;
    let mut line = &buf[..nl];
    if let Some(l) = line.strip_suffix(b"\r") {
        line = l;
    }
    let word = line.split(|&b| b == b' ').next().unwrap_or(b"");
    (word != b"IDENTIFY").then(|| {
        // nsqd echoes the command as sent, byte for byte.
        let text = [b"cannot ", word, b" in current state (TLS required)"].concat();
        ClientError::new(ErrorCode::Invalid, text)
    })
}

/// What /stats shows of a session, as nsqd formats it (its
/// `prettyConnectionState`; Go 1.23 always says the protocol is mutual).
pub fn summary(s: &ServerConnection) -> TlsSummary {
    let version = match s.protocol_version() {
        Some(ProtocolVersion::TLSv1_2) => "TLS1.2".to_string(),
        Some(ProtocolVersion::TLSv1_3) => "TLS1.3".to_string(),
        Some(v) => format!("Unknown {}", u16::from(v)),
        None => String::new(),
    };
    let cipher_suite = s
        .negotiated_cipher_suite()
        .map(|c| go_cipher_suite_name(c.suite()))
        .unwrap_or_default();
    TlsSummary {
        version,
        cipher_suite,
        negotiated_protocol: s
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        negotiated_protocol_is_mutual: true,
        peer_common_name: peer_common_name(s),
    }
}

/// The subject CN of the client's certificate as Go reads it
/// (`Subject.CommonName`: the last CN attribute wins); empty without a
/// certificate. rustls has already parsed the certificate, so a CN that
/// x509-parser cannot read is only logged.
fn peer_common_name(s: &ServerConnection) -> String {
    let Some(der) = s.peer_certificates().and_then(|c| c.first()) else {
        return String::new();
    };
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, cert)) => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .last()
            .unwrap_or_default()
            .to_string(),
        Err(e) => {
            tracing::info!(error = %e, "client certificate unreadable: empty common_name");
            String::new()
        }
    }
}

/// nsqd names only these suites; every other one (the TLS 1.3 ones
/// included) is `Unknown <number>`.
fn go_cipher_suite_name(suite: CipherSuite) -> String {
    let id = u16::from(suite);
    let name = match id {
        0x0005 => "TLS_RSA_WITH_RC4_128_SHA",
        0x000a => "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
        0x002f => "TLS_RSA_WITH_AES_128_CBC_SHA",
        0x0035 => "TLS_RSA_WITH_AES_256_CBC_SHA",
        0xc007 => "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
        0xc009 => "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        0xc00a => "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
        0xc011 => "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
        0xc012 => "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
        0xc013 => "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        0xc014 => "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        0xc02f => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xc02b => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        _ => return format!("Unknown {id}"),
    };
    name.to_string()
}

/// The text after `IDENTIFY failed ` for a refused handshake, in Go's
/// words where a client may look at them.
pub fn handshake_error_text(e: &io::Error) -> String {
    use rustls::{CertificateError, Error as E};
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(E::NoCertificatesPresented) => "tls: client didn't provide a certificate".into(),
        Some(E::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "tls: failed to verify certificate: x509: certificate signed by unknown authority"
                .into()
        }
        Some(E::InvalidCertificate(c)) => format!("tls: failed to verify certificate: {c:?}"),
        Some(E::AlertReceived(a)) => format!("remote error: tls: {a:?}"),
        Some(E::InvalidMessage(_)) => "tls: first record does not look like a TLS handshake".into(),
        Some(other) => format!("tls: {other}"),
        None if e.kind() == io::ErrorKind::UnexpectedEof => "EOF".into(),
        None if e.kind() == io::ErrorKind::TimedOut => "i/o timeout".into(),
        None => e.to_string(),
    }
}

/// T18 on a connection's reading half, once the IDENTIFY answer is on the
/// socket: TLS over `early` (bytes already read) and the socket, the
/// handshake within 5 s. Refused: the alert rustls queued goes out, the
/// stream is clear again, and the error is nsqd's E_IDENTIFY_FAILED.
pub async fn upgrade<S: ByteStream>(
    reader: &ReadHalf<TlsStream<S>>,
    config: Arc<ServerConfig>,
    early: &[u8],
) -> Result<TlsSummary, ClientError> {
    let failed = |text: String| {
        ClientError::new(ErrorCode::IdentifyFailed, format!("IDENTIFY failed {text}"))
    };
    reader
        .with_stream(|s| s.start(config, early))
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
    type PollFn<S> = fn(&mut TlsStream<S>, &mut Context<'_>) -> Poll<io::Result<()>>;
    let drive = |f: PollFn<S>| {
        std::future::poll_fn(move |cx| match reader.with_stream(|s| f(s, cx)) {
            Ok(p) => p,
            Err(e) => Poll::Ready(Err(e)),
        })
    };
    let handshake = within(HANDSHAKE_TIMEOUT, drive(TlsStream::poll_handshake)).await;
    match handshake {
        Ok(()) => reader
            .with_stream(|s| s.session().map(summary))
            .ok()
            .flatten()
            .ok_or_else(|| failed("no TLS session".into())),
        Err(e) => {
            let _ = within(ALERT_TIMEOUT, drive(TlsStream::poll_drain)).await;
            let _ = reader.with_stream(|s| s.abandon());
            Err(failed(handshake_error_text(&e)))
        }
    }
}

/// How long a refused handshake's alert may take to go out.
const ALERT_TIMEOUT: Duration = Duration::from_secs(1);

/// `io`, or a TimedOut error after `limit`.
async fn within(
    limit: Duration,
    io: impl std::future::Future<Output = io::Result<()>>,
) -> io::Result<()> {
    futures_lite::future::or(io, async {
        glommio::timer::sleep(limit).await;
        Err(io::ErrorKind::TimedOut.into())
    })
    .await
}

/// A byte stream that is plain until `start` and TLS after it.
pub struct TlsStream<S> {
    io: S,
    session: Option<Box<ServerConnection>>,
    /// Ciphertext read before the upgrade, fed to the session first.
    early: Vec<u8>,
    /// A writer waiting for the handshake to take its buffered plaintext.
    write_waker: Option<Waker>,
}

/// A glommio stream seen as blocking `io::Read`/`Write` for rustls, with
/// `WouldBlock` for "not ready" (the waker is registered by the poll).
struct SyncIo<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for SyncIo<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for SyncIo<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

fn would_block<T>(r: io::Result<T>) -> Poll<io::Result<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

impl<S: ByteStream> TlsStream<S> {
    /// `session`: a connection that moved here with its TLS session.
    pub fn new(io: S, session: Option<Box<ServerConnection>>) -> TlsStream<S> {
        TlsStream {
            io,
            session,
            early: Vec::new(),
            write_waker: None,
        }
    }

    /// TLS from the first byte (HTTPS).
    pub fn accept(io: S, config: Arc<ServerConfig>) -> Result<TlsStream<S>, rustls::Error> {
        Ok(TlsStream::new(
            io,
            Some(Box::new(ServerConnection::new(config)?)),
        ))
    }

    /// The socket and the session, for a move to another core.
    pub fn into_parts(self) -> (S, Option<Box<ServerConnection>>) {
        (self.io, self.session)
    }

    /// The session leaves with a connection that moves to another core.
    pub fn take_session(&mut self) -> Option<Box<ServerConnection>> {
        self.session.take()
    }

    pub fn session(&self) -> Option<&ServerConnection> {
        self.session.as_deref()
    }

    /// Everything from now on is TLS; `early` are bytes already read past
    /// the IDENTIFY, the client's first records.
    pub fn start(&mut self, config: Arc<ServerConfig>, early: &[u8]) -> Result<(), rustls::Error> {
        self.session = Some(Box::new(ServerConnection::new(config)?));
        self.early = early.to_vec();
        Ok(())
    }

    /// A refused handshake: back to clear for nsqd's error frame.
    pub fn abandon(&mut self) {
        self.session = None;
        self.early = Vec::new();
    }

    /// Writes what the session has to send (handshake, alerts, records).
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tls) = self.session.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while tls.wants_write() {
            let mut sink = SyncIo {
                io: &mut self.io,
                cx,
            };
            match would_block(tls.write_tls(&mut sink)) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads records into the session and processes them; Ok(0) on EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(tls) = self.session.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let was_handshaking = tls.is_handshaking();
        let read = if self.early.is_empty() {
            let mut source = SyncIo {
                io: &mut self.io,
                cx,
            };
            tls.read_tls(&mut source)
        } else {
            let mut rest = &self.early[..];
            let r = tls.read_tls(&mut rest);
            let used = self.early.len() - rest.len();
            self.early.drain(..used);
            r
        };
        let n = match would_block(read) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if let Err(e) = tls.process_new_packets() {
            // The alert rustls queued goes out if the socket takes it now.
            let _ = self.poll_drain(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        if was_handshaking && !tls.is_handshaking() {
            if let Some(w) = self.write_waker.take() {
                w.wake();
            }
        }
        Poll::Ready(Ok(n))
    }

    /// Drives the handshake to its end (the caller bounds it in time).
    pub fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Some(tls) = self.session.as_ref() else {
                return Poll::Ready(Err(io::Error::other("no TLS session")));
            };
            if !tls.is_handshaking() {
                return self.poll_drain(cx);
            }
            if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_read_tls(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let Some(tls) = self.session.as_mut() else {
                return Poll::Ready(Ok(0));
            };
            match tls.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Handshake messages, tickets or a key update may wait to go.
            if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(_)) => {}
                other => return other,
            }
        }
    }

    fn poll_write_tls(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Earlier records first: rustls' buffer stays bounded.
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map(|r| r.map(|()| 0)),
        }
        let Some(tls) = self.session.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let n = tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            // Still handshaking with its plaintext buffer full.
            self.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: ByteStream> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.session.is_some() {
            this.poll_read_tls(cx, buf)
        } else {
            Pin::new(&mut this.io).poll_read(cx, buf)
        }
    }
}

impl<S: ByteStream> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.session.is_some() {
            this.poll_write_tls(cx, buf)
        } else {
            Pin::new(&mut this.io).poll_write(cx, buf)
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    /// nsqd closes the raw socket, not the TLS conn: no close_notify.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_close(cx),
            other => other,
        }
    }
}

impl<S: ByteStream> ByteStream for TlsStream<S> {
    const TRANSPORT: Transport = S::TRANSPORT;
    const NATIVE_TIMEOUTS: bool = S::NATIVE_TIMEOUTS;

    fn raw_fd(&self) -> RawFd {
        self.io.raw_fd()
    }

    fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.io.set_read_timeout(dur)
    }

    fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.io.set_write_timeout(dur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_all_but_identify() {
        assert!(policy_violation(b"IDENTIFY\n").is_none());
        assert!(policy_violation(b"NOP").is_none(), "no whole line yet");
        let e = policy_violation(b"PUB t\r\n\0\0").expect("refused");
        assert_eq!(
            String::from_utf8_lossy(&e.to_frame_body()),
            "E_INVALID cannot PUB in current state (TLS required)"
        );
        let e = policy_violation(b"\n").expect("refused");
        assert_eq!(
            String::from_utf8_lossy(&e.to_frame_body()),
            "E_INVALID cannot  in current state (TLS required)"
        );
    }

    #[test]
    fn cipher_suite_names_as_nsqd() {
        assert_eq!(
            go_cipher_suite_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
        assert_eq!(
            go_cipher_suite_name(CipherSuite::TLS13_AES_128_GCM_SHA256),
            "Unknown 4865"
        );
    }
}
