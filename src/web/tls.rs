//! HTTPS for the page: the configured certificate, or a self-signed one made at the first
//! start and kept in `<spool>/web-tls/` (so that a browser that accepted it once keeps
//! accepting it). Its SHA-256 fingerprint is logged at every start, for the admin to
//! compare with what the browser shows.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use sha2::Digest;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::WebConfig;

/// `AB:CD:...`: the SHA-256 of the certificate's DER, as browsers show it.
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Makes the self-signed certificate in `dir` unless it is there; returns (cert, key)
/// paths.
pub fn self_signed(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    crate::daemon::files::create_dir_all(dir)?;
    let host = hostname();
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !host.is_empty() {
        names.push(host);
    }
    let made = rcgen::generate_simple_self_signed(names).context("making a certificate")?;
    crate::daemon::files::write(&key, made.key_pair.serialize_pem().as_bytes())?;
    crate::daemon::files::write(&cert, made.cert.pem().as_bytes())?;
    tracing::info!(file = %cert.display(), "made a self-signed certificate for the status page");
    Ok((cert, key))
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The acceptor for the page and the certificate's fingerprint.
pub fn acceptor(cfg: &WebConfig, spool_dir: &Path) -> anyhow::Result<(TlsAcceptor, String)> {
    let (cert_path, key_path) = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => self_signed(&spool_dir.join("web-tls"))?,
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&cert_path).with_context(|| format!("{}", cert_path.display()))?,
    ))
    .collect::<Result<_, _>>()
    .with_context(|| format!("reading {}", cert_path.display()))?;
    let Some(first) = certs.first() else {
        anyhow::bail!("{} holds no certificate", cert_path.display());
    };
    let fp = fingerprint(first);
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&key_path).with_context(|| format!("{}", key_path.display()))?,
    ))
    .with_context(|| format!("reading {}", key_path.display()))?
    .with_context(|| format!("{} holds no private key", key_path.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), fp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once() {
        let d = tempfile::tempdir().unwrap();
        let cfg = WebConfig::default();
        let (_, fp1) = acceptor(&cfg, d.path()).unwrap();
        let (_, fp2) = acceptor(&cfg, d.path()).unwrap();
        assert_eq!(fp1, fp2, "kept across starts");
        assert_eq!(fp1.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("web-tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
        let bad = WebConfig {
            tls_cert: Some(d.path().join("missing.pem")),
            tls_key: Some(d.path().join("missing.key")),
            ..Default::default()
        };
        assert!(acceptor(&bad, d.path()).is_err());
    }
}
