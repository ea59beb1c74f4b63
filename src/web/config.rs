//! `[web]`: the status page, its JSON API and the Prometheus metrics, served by
//! `cutover run`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[web]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// `false`: no page, no API, no metrics.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address and port to listen on. Anything but loopback needs `password_file`:
    /// whoever reaches the page can pause or complete the migration.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The argon2 hash of the page's password (`cutover web-password` writes it). Set, the
    /// page asks for the password (a login form and a session cookie, or HTTP Basic for
    /// scripts and Prometheus) and is served over HTTPS.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The page's certificate and key (PEM). Unset with a password: a self-signed
    /// certificate is made at the first start and kept in the spool directory; its
    /// SHA-256 fingerprint is logged at every start.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: default_listen(),
            password_file: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl WebConfig {
    /// The socket address, or why it is refused: `(key, message)`.
    pub fn addr(&self) -> Result<SocketAddr, (&'static str, String)> {
        let addr: SocketAddr = self.listen.trim().parse().map_err(|_| {
            (
                "listen",
                format!(
                    "{:?} is not an address and port such as \"127.0.0.1:8080\"",
                    self.listen
                ),
            )
        })?;
        if !addr.ip().to_canonical().is_loopback() && self.password_file.is_none() {
            return Err((
                "listen",
                format!(
                    "{addr} is not a loopback address: anyone who reaches the page could \
                     pause or complete the migration, so it needs a password: set \
                     password_file (`cutover web-password` writes it), or listen on \
                     127.0.0.1 and use an SSH tunnel (ssh -L 8080:127.0.0.1:8080 ...)"
                ),
            ));
        }
        Ok(addr)
    }

    /// The page asks for a password.
    pub fn login_required(&self) -> bool {
        self.password_file.is_some()
    }

    /// The page is served over HTTPS: always with a password (it must not cross the
    /// network in clear), or when a certificate is given.
    pub fn https(&self) -> bool {
        self.password_file.is_some() || self.tls_cert.is_some()
    }

    /// Checks the keys (see [`WebConfig::addr`]).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.enabled {
            self.addr()?;
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err((
                "tls_cert",
                "tls_cert and tls_key go together: set both, or neither for a self-signed \
                 certificate"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(listen: &str) -> WebConfig {
        WebConfig {
            listen: listen.into(),
            ..Default::default()
        }
    }

    #[test]
    fn loopback_only() {
        assert_eq!(
            web("127.0.0.1:8080").addr().unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert!(web("[::1]:9000").addr().is_ok());
        let (key, msg) = web("0.0.0.0:8080").addr().unwrap_err();
        assert_eq!(key, "listen");
        assert!(msg.contains("not a loopback"), "{msg}");
        assert!(web("192.0.2.1:80").addr().is_err());
        assert!(web("localhost").addr().is_err());
        // Disabled: not checked.
        let off = WebConfig {
            enabled: false,
            listen: "0.0.0.0:1".into(),
            ..Default::default()
        };
        assert!(off.validate().is_ok());
        // Beyond loopback with a password: allowed, and over HTTPS.
        let open = WebConfig {
            listen: "0.0.0.0:8443".into(),
            password_file: Some("/etc/cutover/web-password".into()),
            ..Default::default()
        };
        assert!(open.validate().is_ok());
        assert!(open.login_required() && open.https());
        assert!(!web("127.0.0.1:1").https());
        let half = WebConfig {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert_eq!(half.validate().unwrap_err().0, "tls_cert");
    }
}
