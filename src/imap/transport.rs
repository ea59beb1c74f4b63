//! Sockets: TCP, implicit TLS and the TLS half of STARTTLS.
//!
//! Everything above this module sees one byte stream, whatever the wire looks like, so the
//! protocol code never branches on TLS.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Bytes read from the socket at once under TLS.
///
/// rustls asks its transport for 4 KiB at a time (and shrinks its buffer back to 4 KiB
/// whenever it has consumed everything), so a TLS stream read straight from the socket
/// costs a system call per 4 KiB: about 75,000 of them for 300 MB of mail. With this
/// buffer in between, one call takes what the kernel holds (up to 128 KiB) and rustls's
/// small reads are copies from memory.
const TLS_READ_BUFFER: usize = 128 * 1024;

/// Any byte stream a session can run over: what [`Stream::Other`] holds.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> ByteStream for T {}

/// A connected byte stream, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<BufReader<TcpStream>>>),
    /// A stream set up by the caller (see `Client::from_stream`): the protocol code runs
    /// over it unchanged, which is how it is tested with exact server bytes. It cannot be
    /// moved into TLS.
    Other(Box<dyn ByteStream>),
    /// Only while the socket moves into TLS; every I/O on it fails.
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection is being secured")
}

impl Stream {
    /// Wraps a plain stream in TLS (implicit TLS right after connect, or after STARTTLS).
    pub async fn upgrade(self, tls: &TlsSettings, host: &str) -> io::Result<Stream> {
        let tcp = match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(_) | Stream::Other(_) | Stream::Detached => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "connection is not a plain TCP stream",
                ))
            }
        };
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a valid TLS server name"),
            )
        })?;
        let tcp = BufReader::with_capacity(TLS_READ_BUFFER, tcp);
        let stream = tls.connector.connect(name, tcp).await.map_err(|e| {
            // rustls reports certificate problems as InvalidData; the caller tells those
            // (final) from a connection lost mid-handshake (worth a retry).
            io::Error::new(e.kind(), e.to_string())
        })?;
        Ok(Stream::Tls(Box::new(stream)))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Other(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Other(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Other(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Other(s) => s.is_write_vectored(),
            Stream::Detached => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Other(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Other(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

/// TLS trust settings, built once per server and shared by all its connections.
#[derive(Clone)]
pub struct TlsSettings {
    connector: TlsConnector,
}

impl TlsSettings {
    /// Trusts the system's CA store plus, when given, the CAs in `extra_ca_pem` (an
    /// appliance often talks to a legacy server whose certificate comes from an in-house CA).
    /// Verification is always on: a certificate that does not chain to a trusted CA or does
    /// not name the host is refused.
    pub fn new(extra_ca_pem: Option<&Path>) -> io::Result<TlsSettings> {
        Self::with_verification(extra_ca_pem, true)
    }

    /// As [`TlsSettings::new`]; `verify = false` accepts any certificate (the config's
    /// `tls_verify = false`, documented as dangerous) and says so in the log.
    pub fn with_verification(extra_ca_pem: Option<&Path>, verify: bool) -> io::Result<TlsSettings> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let extra = match extra_ca_pem {
            Some(path) => {
                let roots = read_ca_file(path)?;
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("tls_ca_file {}: {e}", path.display()),
                            )
                        })?;
                Some(verifier)
            }
            None => None,
        };
        if !verify {
            tracing::warn!("tls_verify = false: server certificates are NOT checked");
        }
        let verifier = Verifier {
            provider: provider.clone(),
            verify,
            extra,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(TlsSettings {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }
}

/// The CAs of a `tls_ca_file` (PEM), refusing a file that holds none.
fn read_ca_file(path: &Path) -> io::Result<RootCertStore> {
    let pem = std::fs::read(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read tls_ca_file {}: {e}", path.display()),
        )
    })?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert: CertificateDer<'static> = cert.map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tls_ca_file {} is not valid PEM: {e}", path.display()),
            )
        })?;
        roots.add(cert).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tls_ca_file {}: unusable certificate: {e}", path.display()),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("tls_ca_file {} holds no certificate", path.display()),
        ));
    }
    Ok(roots)
}

/// A verifier of the system's CA store, read once per process and only when a server
/// certificate needs it.
///
/// Reading the store parses every file of `/etc/ssl/certs` (about 300 on Debian), which
/// was a third of the CPU of a run that had nothing to copy. A certificate from the
/// `tls_ca_file` CA, the usual case for the legacy server, never needs it at all.
fn system_verifier(
    provider: &Arc<tokio_rustls::rustls::crypto::CryptoProvider>,
) -> Option<Arc<WebPkiServerVerifier>> {
    static SYSTEM: OnceLock<Option<Arc<WebPkiServerVerifier>>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A broken system certificate must not stop the appliance; it just isn't
                // trusted.
                let _ = roots.add(cert);
            }
            tracing::debug!(certificates = roots.len(), "system CA store loaded");
            if roots.is_empty() {
                return None;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .ok()
        })
        .clone()
}

/// Checks server certificates against the `tls_ca_file` CAs, then the system's; or, with
/// `tls_verify = false`, checks only the handshake signatures (so the session is still
/// encrypted to whoever holds the key) but not who the certificate belongs to.
#[derive(Debug)]
struct Verifier {
    provider: Arc<tokio_rustls::rustls::crypto::CryptoProvider>,
    verify: bool,
    extra: Option<Arc<WebPkiServerVerifier>>,
}

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        use tokio_rustls::rustls::{CertificateError, Error};
        if !self.verify {
            return Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion());
        }
        let mut refusal = None;
        if let Some(extra) = &self.extra {
            match extra.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                // Not from these CAs: perhaps from one the system trusts.
                Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                    refusal = Some(Error::InvalidCertificate(CertificateError::UnknownIssuer))
                }
                // From these CAs (accepted, or refused for its name, its dates...).
                other => return other,
            }
        }
        match system_verifier(&self.provider) {
            Some(system) => {
                system.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            None => {
                Err(refusal.unwrap_or(Error::InvalidCertificate(CertificateError::UnknownIssuer)))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
