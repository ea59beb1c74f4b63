//! Sockets: TCP, implicit TLS and the TLS half of STARTTLS.
//!
//! Everything above this module sees one byte stream, whatever the wire looks like, so the
//! protocol code never branches on TLS.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A connected byte stream, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
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
            Stream::Tls(_) | Stream::Detached => {
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
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A broken system certificate must not stop the appliance; it just isn't trusted.
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca_pem {
            let pem = std::fs::read(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot read tls_ca_file {}: {e}", path.display()),
                )
            })?;
            let mut added = 0;
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
                added += 1;
            }
            if added == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("tls_ca_file {} holds no certificate", path.display()),
                ));
            }
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(format!("TLS setup: {e}")))?;
        let config = if verify {
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            tracing::warn!("tls_verify = false: server certificates are NOT checked");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth()
        };
        Ok(TlsSettings {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }
}

/// The verifier behind `tls_verify = false`: checks signatures (so the session is still
/// encrypted to whoever holds the key) but not who the certificate belongs to.
#[derive(Debug)]
struct AcceptAny(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
