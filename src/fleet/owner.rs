//! The mailboxes of this appliance's shard, and the spool told which are new to it.

use super::Shard;
use crate::accounts::Account;
use crate::spool::Spool;

/// What this appliance takes of the CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub shard: Shard,
    /// Mailboxes of the CSV this shard owns.
    pub owned: usize,
    /// Mailboxes in the CSV.
    pub total: usize,
}

impl Ownership {
    /// `shard 1/4: 260 of 1,000 mailboxes`, for `cutover check` and the logs.
    pub fn line(&self) -> String {
        format!(
            "shard {}: {} of {} mailboxes",
            self.shard, self.owned, self.total
        )
    }
}

/// Keeps in `accounts` only the mailboxes `shard` owns.
pub fn keep_owned(shard: Shard, accounts: &mut Vec<Account>) -> Ownership {
    let total = accounts.len();
    accounts.retain(|a| shard.owns(&a.email));
    Ownership {
        shard,
        owned: accounts.len(),
        total,
    }
}

/// Tells the spool which mailboxes this appliance owns now (see `spool/owned.rs`), in a
/// fleet only: a single appliance owns every mailbox for ever, and its spool is the truth.
pub fn record(spool: &Spool, fleet: bool, accounts: &[Account]) -> anyhow::Result<()> {
    if !fleet {
        return Ok(());
    }
    let adopting = spool.set_owned(accounts.iter().map(|a| a.email.as_str()))?;
    for m in &adopting {
        tracing::info!(
            mailbox = %m,
            "mailbox new to this shard: its first pass looks for what is already at the \
             destination (by fingerprint) before sending anything"
        );
    }
    Ok(())
}
