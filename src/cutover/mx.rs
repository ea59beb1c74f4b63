//! MX lookups for the cutover watch, with hickory-resolver.
//!
//! Every check builds a fresh resolver, so nothing is answered from a cache: the watch
//! runs every few minutes at most, and a stale cached "still the old MX" is exactly what
//! it must not see. The TTL of the answer is kept, because the old record's TTL is the
//! floor of the grace period (a sender's resolver may keep using the old MX that long).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::Resolver;
use tokio::sync::{mpsc, watch};

use super::{normalise, CutoverConfig};

/// The MX records of a domain, as one lookup saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxAnswer {
    /// (preference, exchange), exchange normalised (lowercase, no trailing dot).
    pub exchanges: Vec<(u16, String)>,
    /// The largest TTL of the records, in seconds.
    pub ttl: u32,
}

impl MxAnswer {
    /// True if there is at least one MX and every one ends with `suffix`: mail for the
    /// domain can then only reach Office 365.
    pub fn all_point_to(&self, suffix: &str) -> bool {
        let suffix = normalise(suffix);
        let suffix = suffix.trim_start_matches('.');
        !self.exchanges.is_empty()
            && self
                .exchanges
                .iter()
                .all(|(_, e)| e == suffix || e.ends_with(&format!(".{suffix}")))
    }
}

/// Looks up the MX records of `domain`, at `server` or the system's resolvers.
pub async fn lookup(server: Option<SocketAddr>, domain: &str) -> Result<MxAnswer, String> {
    let mut builder = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => Resolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    opts.cache_size = 0;
    let resolver = builder
        .build()
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))?;
    // Fully qualified: no search domains appended.
    let fqdn = format!("{}.", normalise(domain));
    let lookup = resolver
        .mx_lookup(fqdn.as_str())
        .await
        .map_err(|e| format!("MX lookup of {domain}: {e}"))?;
    let mut answer = MxAnswer {
        exchanges: Vec::new(),
        ttl: 0,
    };
    for r in lookup.answers() {
        if let RData::MX(mx) = &r.data {
            answer
                .exchanges
                .push((mx.preference, normalise(&mx.exchange.to_ascii())));
            answer.ttl = answer.ttl.max(r.ttl);
        }
    }
    answer.exchanges.sort();
    Ok(answer)
}

/// What the watch tells the daemon after each lookup of a domain.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The watched domain, normalised.
    pub domain: String,
    /// `Ok(answer)`, or the lookup error (the cutover state is then left as it is).
    pub answer: Result<MxAnswer, String>,
}

/// Looks up every domain now and then every `check_interval`, sending each result to
/// `tx`, until `stop` turns true or the receiver is gone.
pub async fn watch(
    cfg: CutoverConfig,
    tx: mpsc::Sender<Observation>,
    mut stop: watch::Receiver<bool>,
) {
    let server = cfg.resolver_addr();
    let domains: Vec<String> = cfg.domains.iter().map(|d| normalise(d)).collect();
    loop {
        for domain in &domains {
            let answer = lookup(server, domain).await;
            match &answer {
                Ok(a) => tracing::debug!(domain, ?a, "MX looked up"),
                Err(e) => tracing::warn!(domain, error = %e, "MX lookup failed; will retry"),
            }
            let obs = Observation {
                domain: domain.clone(),
                answer,
            };
            if tx.send(obs).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.check_interval) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(exchanges: &[&str]) -> MxAnswer {
        MxAnswer {
            exchanges: exchanges.iter().map(|e| (10, normalise(e))).collect(),
            ttl: 300,
        }
    }

    #[test]
    fn every_mx_must_point_to_office365() {
        let s = ".mail.protection.outlook.com";
        assert!(answer(&["contoso-com.mail.protection.outlook.com."]).all_point_to(s));
        assert!(answer(&["A-B.Mail.Protection.Outlook.com"]).all_point_to(s));
        assert!(!answer(&[
            "contoso-com.mail.protection.outlook.com.",
            "mx.legacy.example."
        ])
        .all_point_to(s));
        assert!(!answer(&[]).all_point_to(s));
        // A suffix is matched on a label boundary.
        assert!(!answer(&["evilmail.protection.outlook.com"]).all_point_to(s));
        assert!(
            answer(&["mail.protection.outlook.com"]).all_point_to("mail.protection.outlook.com.")
        );
    }
}
