//! `[web]`: the status page, its JSON API and the Prometheus metrics, served by
//! `cutover run`.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[web]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// `false`: no page, no API, no metrics.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address and port to listen on. Loopback only: the page has no login yet, and
    /// anyone who reaches it can pause or complete the migration.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: default_listen(),
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
        if !addr.ip().to_canonical().is_loopback() {
            return Err((
                "listen",
                format!(
                    "{addr} is not a loopback address: the page has no login, so it only \
                     listens on 127.0.0.1 or [::1]; reach it from elsewhere through an SSH \
                     tunnel (ssh -L 8080:127.0.0.1:8080 ...)"
                ),
            ));
        }
        Ok(addr)
    }

    /// Checks the keys (see [`WebConfig::addr`]).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.enabled {
            self.addr()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(listen: &str) -> WebConfig {
        WebConfig {
            enabled: true,
            listen: listen.into(),
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
        };
        assert!(off.validate().is_ok());
    }
}
