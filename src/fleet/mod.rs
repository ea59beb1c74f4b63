//! `[fleet]`: one migration spread over several appliances, each shared-nothing with its
//! own spool. Nothing coordinates them: every appliance reads the same CSV and keeps the
//! mailboxes that [`rendezvous`] hashing gives its shard, so they agree without talking.
//! Kubernetes schedules them and Prometheus combines their metrics (see
//! `deploy/kubernetes/`).

pub mod owner;
pub mod plan;
pub mod rendezvous;
pub mod shard;

use serde::Deserialize;

pub use shard::Shard;

/// `[fleet]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `"i/N"` (this is shard i of N, from 0), or `"ordinal/N"` for the ordinal of a
    /// StatefulSet pod (the number at the end of the host name). Unset: one appliance
    /// migrates every mailbox.
    #[serde(default)]
    pub shard: Option<String>,
    /// Base URLs of the other appliances' status pages (`http://host:port`): this page
    /// shows their `/api/status` next to its own.
    #[serde(default)]
    pub peers: Vec<String>,
    /// The plain password of the peers' pages (HTTP Basic), when they have one.
    #[serde(default)]
    pub peer_password_file: Option<std::path::PathBuf>,
    /// A CA certificate (PEM) the peers' HTTPS certificates are checked against, besides
    /// the system roots: the fleet's own certificate when every page uses it.
    #[serde(default)]
    pub peer_ca_file: Option<std::path::PathBuf>,
}

impl FleetConfig {
    /// This appliance's shard (`0/1` without `[fleet] shard`), or why `shard` is refused.
    pub fn shard(&self) -> Result<Shard, String> {
        match &self.shard {
            None => Ok(Shard::WHOLE),
            Some(s) => Shard::parse(s, shard::host_name().as_deref()),
        }
    }

    /// Whether a fleet is configured: then a mailbox this appliance did not own on its
    /// last run may already be at the destination, copied by its earlier owner.
    pub fn enabled(&self) -> bool {
        self.shard.is_some()
    }
}
