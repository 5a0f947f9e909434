//! `--tls-ca`: a publisher's connection upgraded to TLS after IDENTIFY, as nsqd's
//! clients do (IDENTIFY with tls_v1, the answer in clear, the handshake, then a framed
//! OK over TLS). One blocking rustls stream shared by the reading and writing sides
//! of a connection (one thread each connection).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::proto::{self, RecvBuf, FRAME_RESPONSE};

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A connection's byte stream, plain or TLS, shared by its reader and its writer.
#[derive(Clone)]
pub struct Stream(Rc<RefCell<Box<dyn ReadWrite>>>);

impl Stream {
    pub fn plain(s: TcpStream) -> Stream {
        Stream(Rc::new(RefCell::new(Box::new(s))))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// A client config trusting the PEM certificates of `ca_file`.
pub fn client_config(ca_file: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{ca_file}: {e}"))?;
    roots.add_parsable_certificates(certs);
    #[allow(deprecated)] // ring: no post-quantum key exchange, fine for a benchmark
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// After the IDENTIFY `answer` of a connection to `addr` (host:port): checks that the
/// broker agreed to TLS, then upgrades.
pub fn upgrade_answered(
    s: TcpStream,
    addr: &str,
    answer: &[u8],
    config: Arc<ClientConfig>,
    rb: &mut RecvBuf,
) -> io::Result<Stream> {
    let said: serde_json::Value = serde_json::from_slice(answer).unwrap_or_default();
    if said["tls_v1"] != serde_json::Value::Bool(true) {
        return Err(proto::io_err("--tls-ca: the broker did not agree to TLS (no --tls-cert?)"));
    }
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or("127.0.0.1");
    upgrade(s, host, config, rb)
}

/// After an IDENTIFY answer that said tls_v1:true: the handshake, then the framed OK.
pub fn upgrade(s: TcpStream, host: &str, config: Arc<ClientConfig>, rb: &mut RecvBuf) -> io::Result<Stream> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| proto::io_err(e.to_string()))?;
    let conn = ClientConnection::new(config, name).map_err(|e| proto::io_err(e.to_string()))?;
    let stream = Stream(Rc::new(RefCell::new(Box::new(StreamOwned::new(conn, s)))));
    let mut reader = stream.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((ty, data)) = rb.next_frame()? {
            if ty != FRAME_RESPONSE || data != b"OK" {
                return Err(proto::io_err(format!("TLS upgrade: {}", String::from_utf8_lossy(data))));
            }
            return Ok(stream);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no OK after the TLS handshake"));
        }
        rb.fill(&mut reader)?;
    }
}
