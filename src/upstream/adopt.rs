//! The messages of a mailbox taken over from another shard, made uncertain.
//!
//! Its earlier owner may have copied any of them, and this spool has no record of which:
//! exactly the situation of an APPEND whose answer was lost. So each message not yet
//! settled is claimed as if it had been sent from the folder's first UID on, and
//! [`super::recover`] pairs it with its copy by fingerprint, or sends it.

use crate::spool::{Claim, MessageRecord, Spool};

use super::UpstreamError;

/// Claims under `claim` every record of `records` that could be sent now; returns the
/// records with those replaced by their claimed state.
pub(super) async fn claim_all(
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uv: u32,
    records: Vec<MessageRecord>,
    claim: &Claim,
) -> Result<Vec<MessageRecord>, UpstreamError> {
    let now = chrono::Utc::now().timestamp();
    let uids: Vec<u32> = records
        .iter()
        .filter(|r| r.state.claimable(now))
        .map(|r| r.uid)
        .collect();
    if uids.is_empty() {
        return Ok(records);
    }
    let (m, f, c) = (mailbox.to_string(), folder.to_string(), claim.clone());
    let claimed = spool
        .run_blocking(move |s| s.claim(&m, &f, uv, &uids, &c, now))
        .await?;
    let mut by_uid: std::collections::HashMap<u32, MessageRecord> =
        claimed.into_iter().map(|r| (r.uid, r)).collect();
    Ok(records
        .into_iter()
        .map(|r| by_uid.remove(&r.uid).unwrap_or(r))
        .collect())
}
