//! The end of a migration: the MX cutover.
//!
//! Mail keeps arriving at the legacy server until the organisation's MX records point at
//! Office 365. The daemon ([`crate::daemon`]) therefore watches the MX of every domain
//! listed in `[cutover] domains` ([`mx`]); once every MX of a domain ends with
//! `mx_suffix`, that domain's mailboxes enter `CutoverPending`: they keep syncing for the
//! `grace` period (senders' resolvers may still cache the old MX for as long as its TTL,
//! which is why that TTL is the floor of the grace), then get one final pass and are
//! `Completed`.

pub mod mx;
pub mod view;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

/// `[cutover]`: the MX watch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    /// Domains whose MX is watched. A mailbox belongs to the domain of its
    /// `EmailAddress`. Empty: no automatic cutover (only `cutover complete`).
    #[serde(default)]
    pub domains: Vec<String>,
    /// An MX "points at Office 365" when its exchange ends with this.
    #[serde(default = "default_mx_suffix")]
    pub mx_suffix: String,
    /// The DNS server to ask (`"192.0.2.53"` or `"127.0.0.1:5353"`); unset: the system's
    /// resolvers from `/etc/resolv.conf`.
    #[serde(default)]
    pub resolver: Option<String>,
    /// How often the MX records are looked up.
    #[serde(
        default = "default_check_interval",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub check_interval: Duration,
    /// How long mailboxes keep syncing after the MX moved, before the final pass. Microsoft
    /// advises 72 hours; the TTL of the old MX record is the floor.
    #[serde(
        default = "default_grace",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub grace: Duration,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            domains: Vec::new(),
            mx_suffix: default_mx_suffix(),
            resolver: None,
            check_interval: default_check_interval(),
            grace: default_grace(),
        }
    }
}

fn default_mx_suffix() -> String {
    ".mail.protection.outlook.com".into()
}
fn default_check_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_grace() -> Duration {
    Duration::from_secs(72 * 3600)
}

impl CutoverConfig {
    /// Checks the values; on error returns the key (without `cutover.`) and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for d in &self.domains {
            if d.trim().is_empty() || d.contains(char::is_whitespace) || d.contains('@') {
                return Err(("domains", format!("{d:?} is not a domain name")));
            }
        }
        if normalise(&self.mx_suffix).is_empty() {
            return Err(("mx_suffix", "must not be empty".into()));
        }
        if let Some(r) = &self.resolver {
            parse_resolver(r).map_err(|m| ("resolver", m))?;
        }
        if self.check_interval.is_zero() {
            return Err(("check_interval", "must be at least 1 second".into()));
        }
        Ok(())
    }

    /// The configured DNS server, if any (validated at load).
    pub fn resolver_addr(&self) -> Option<SocketAddr> {
        self.resolver
            .as_deref()
            .and_then(|r| parse_resolver(r).ok())
    }

    /// The watched domain `email` belongs to, if any (compared without case).
    pub fn domain_of(&self, email: &str) -> Option<String> {
        let domain = normalise(email.rsplit_once('@')?.1);
        self.domains
            .iter()
            .map(|d| normalise(d))
            .find(|d| *d == domain)
    }
}

/// Lowercase, without a trailing dot: how names are compared.
pub fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `"192.0.2.53"` (port 53), `"127.0.0.1:5353"`, `"::1"` or `"[::1]:5353"`.
fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{text:?} is not an IP address with an optional port (\"192.0.2.53\", \"127.0.0.1:5353\")"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_forms() {
        assert_eq!(
            parse_resolver("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_resolver("192.0.2.53"),
            Ok("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(parse_resolver("::1"), Ok("[::1]:53".parse().unwrap()));
        assert_eq!(
            parse_resolver("[::1]:5353"),
            Ok("[::1]:5353".parse().unwrap())
        );
        assert!(parse_resolver("dns.example").is_err());
    }

    #[test]
    fn domains_match_without_case() {
        let c = CutoverConfig {
            domains: vec!["Example.TEST.".into(), "other.test".into()],
            ..Default::default()
        };
        assert_eq!(
            c.domain_of("alice@example.test").as_deref(),
            Some("example.test")
        );
        assert_eq!(
            c.domain_of("Bob@EXAMPLE.test").as_deref(),
            Some("example.test")
        );
        assert_eq!(c.domain_of("carol@sub.example.test"), None);
        assert_eq!(c.domain_of("no-at-sign"), None);
        assert!(c.validate().is_ok());
        let bad = CutoverConfig {
            domains: vec!["a b".into()],
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "domains");
    }
}
